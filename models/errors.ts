/**
 * The error type of model configs and methods, and the value formatting its messages share.
 * @module
 */
import { SLTrainError } from "../core/errors.ts";

/** A model config, a model-method pair or an optimizer option is invalid; the message names the field. */
export class ConfigError extends SLTrainError {
  /** Error class name. */
  override name = "ConfigError";
}

/** A value as an error message should quote it (missing, NaN and strings included). */
export function show(v: unknown): string {
  if (v === undefined) return "nothing (missing)";
  return typeof v === "number" ? String(v) : JSON.stringify(v) ?? String(v);
}
