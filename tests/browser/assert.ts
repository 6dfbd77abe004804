/**
 * `node:assert/strict` for the browser test suite: the tests import Node's strict assert (Deno's
 * built-in), which a browser does not have; the browser bundle's import map points it here. Same
 * semantics for what the tests use — `deepEqual` is Node's deepStrictEqual (SameValue on
 * primitives, prototypes compared, typed arrays, Maps and Sets by content), `throws`/`rejects`
 * take a RegExp (tested against `String(error)`), an Error class, an object of expected properties
 * or a validation function.
 * @module
 */

/** A failed assertion (the class Node throws). */
export class AssertionError extends Error {
  /** Error class name. */
  override name = "AssertionError";
}

function fail(message?: string | Error, fallback = "Failed"): never {
  if (message instanceof Error) throw message;
  throw new AssertionError(message ?? fallback);
}

function show(v: unknown): string {
  try {
    if (typeof v === "string") return JSON.stringify(v);
    if (typeof v === "bigint") return `${v}n`;
    if (ArrayBuffer.isView(v)) {
      return `${v.constructor.name}(${(v as unknown as ArrayLike<number>).length}) [${
        Array.from(v as unknown as ArrayLike<number>).slice(0, 8).join(", ")
      }…]`;
    }
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 200 ? `${s.slice(0, 200)}…` : s;
  } catch {
    return String(v);
  }
}

/** Node's deepStrictEqual; returns the path of the first difference, or null when equal. */
export function difference(
  a: unknown,
  b: unknown,
  path = "",
  seen = new Map<object, unknown>(),
): string | null {
  if (Object.is(a, b)) return null;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) {
    return `${path || "value"}: ${show(a)} !== ${show(b)}`;
  }
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) {
    return `${
      path || "value"
    }: different prototypes (${a.constructor?.name} vs ${b.constructor?.name})`;
  }
  if (seen.get(a) === b) return null;
  seen.set(a, b);
  if (a instanceof Date) {
    return a.getTime() === (b as Date).getTime() ? null : `${path || "value"}: dates differ`;
  }
  if (a instanceof RegExp) {
    return String(a) === String(b) ? null : `${path || "value"}: ${a} !== ${b}`;
  }
  if (ArrayBuffer.isView(a) && !(a instanceof DataView)) {
    const x = a as unknown as ArrayLike<unknown>, y = b as unknown as ArrayLike<unknown>;
    if (x.length !== y.length) return `${path || "value"}: length ${x.length} !== ${y.length}`;
    for (let i = 0; i < x.length; i++) {
      if (!Object.is(x[i], y[i])) return `${path}[${i}]: ${show(x[i])} !== ${show(y[i])}`;
    }
    return null;
  }
  if (a instanceof Map) {
    const m = b as Map<unknown, unknown>;
    if (a.size !== m.size) return `${path || "value"}: Map size ${a.size} !== ${m.size}`;
    for (const [k, v] of a) {
      if (!m.has(k)) return `${path || "value"}: key ${show(k)} missing`;
      const d = difference(v, m.get(k), `${path}.get(${show(k)})`, seen);
      if (d) return d;
    }
    return null;
  }
  if (a instanceof Set) {
    const s = b as Set<unknown>;
    if (a.size !== s.size) return `${path || "value"}: Set size ${a.size} !== ${s.size}`;
    for (const v of a) {
      if (s.has(v)) continue;
      if (![...s].some((w) => difference(v, w, "", new Map()) === null)) {
        return `${path || "value"}: ${show(v)} missing from the Set`;
      }
    }
    return null;
  }
  if (Array.isArray(a) && a.length !== (b as unknown[]).length) {
    return `${path || "value"}: length ${a.length} !== ${(b as unknown[]).length}`;
  }
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) {
    return `${path || "value"}: keys [${ka}] !== [${kb}]`;
  }
  for (const k of ka) {
    if (!Object.hasOwn(b, k)) return `${path || "value"}: key ${k} missing`;
    const d = difference(
      (a as Record<string, unknown>)[k],
      (b as Record<string, unknown>)[k],
      Array.isArray(a) ? `${path}[${k}]` : `${path}.${k}`,
      seen,
    );
    if (d) return d;
  }
  return null;
}

type Expected =
  | RegExp
  | (new (...args: never[]) => unknown)
  | ((e: unknown) => boolean)
  | Record<string, unknown>;

function checkError(actual: unknown, expected: Expected | undefined, message?: string): void {
  if (expected === undefined) return;
  if (expected instanceof RegExp) {
    if (expected.test(String(actual))) return;
    fail(message, `The error ${show(String(actual))} does not match ${expected}`);
  }
  if (typeof expected === "function") {
    const proto = (expected as { prototype?: unknown }).prototype;
    if (proto !== undefined && actual instanceof (expected as new () => unknown)) return;
    if (expected === Error || proto instanceof Error) {
      fail(message, `The error is not an instance of ${expected.name}: ${String(actual)}`);
    }
    if ((expected as (e: unknown) => boolean)(actual) === true) return;
    fail(message, `The validation function rejected the error: ${String(actual)}`);
  }
  for (const [k, want] of Object.entries(expected)) {
    const got = (actual as Record<string, unknown>)?.[k];
    if (
      want instanceof RegExp && typeof got === "string"
        ? want.test(got)
        : difference(got, want) === null
    ) {
      continue;
    }
    fail(message, `error.${k}: ${show(got)} does not match ${show(want)}`);
  }
}

function splitArgs(
  expected?: Expected | string,
  message?: string,
): [Expected | undefined, string | undefined] {
  return typeof expected === "string" ? [undefined, expected] : [expected, message];
}

/** `assert(value, message)`: throws unless `value` is truthy. */
function ok(value: unknown, message?: string | Error): asserts value {
  if (!value) fail(message, `The expression evaluated to a falsy value: ${show(value)}`);
}

const assert = Object.assign(ok, {
  ok,
  AssertionError,
  /** SameValue equality (Node's strictEqual). */
  equal(actual: unknown, expected: unknown, message?: string | Error): void {
    if (!Object.is(actual, expected)) {
      fail(message, `Expected values to be strictly equal: ${show(actual)} !== ${show(expected)}`);
    }
  },
  notEqual(actual: unknown, expected: unknown, message?: string | Error): void {
    if (Object.is(actual, expected)) fail(message, `Expected ${show(actual)} to differ`);
  },
  deepEqual(actual: unknown, expected: unknown, message?: string | Error): void {
    const d = difference(actual, expected);
    if (d) fail(message, `Expected values to be deeply strictly equal: ${d}`);
  },
  notDeepEqual(actual: unknown, expected: unknown, message?: string | Error): void {
    if (difference(actual, expected) === null) {
      fail(message, `Expected ${show(actual)} to differ deeply`);
    }
  },
  match(value: string, re: RegExp, message?: string | Error): void {
    if (typeof value !== "string" || !re.test(value)) {
      fail(message, `${show(value)} does not match ${re}`);
    }
  },
  doesNotMatch(value: string, re: RegExp, message?: string | Error): void {
    if (typeof value !== "string" || re.test(value)) fail(message, `${show(value)} matches ${re}`);
  },
  fail(message?: string | Error): never {
    fail(message);
  },
  throws(fn: () => unknown, expected?: Expected | string, message?: string): void {
    const [exp, msg] = splitArgs(expected, message);
    try {
      fn();
    } catch (e) {
      checkError(e, exp, msg);
      return;
    }
    fail(msg, "Missing expected exception.");
  },
  async rejects(
    p: Promise<unknown> | (() => Promise<unknown>),
    expected?: Expected | string,
    message?: string,
  ): Promise<void> {
    const [exp, msg] = splitArgs(expected, message);
    try {
      await (typeof p === "function" ? p() : p);
    } catch (e) {
      checkError(e, exp, msg);
      return;
    }
    fail(msg, "Missing expected rejection.");
  },
});

/** `import assert from "node:assert/strict"`, for browsers. */
export default assert;
