/**
 * The error of a bad command-line flag or flag value, in a module of its own so that code the
 * browser bundles (the fault hooks of file writes) can throw it without the flag parser.
 * @module
 */

/** A bad flag or flag value. */
export class FlagError extends Error {}
