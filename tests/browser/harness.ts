/**
 * The page side of the browser test suite: a `Deno.test` that registers tests (with `t.step`), and
 * a runner that runs them one by one in registration order and reports each result through
 * `report` (one JSON object per test; see `page.ts`). Imported first by the generated entry
 * module, so test files register as they are evaluated.
 * @module
 */

interface Registered {
  file: string;
  name: string;
  fn: (t: TestContext) => unknown;
  ignore: boolean;
}

interface TestContext {
  name: string;
  step(name: string | StepDef, fn?: (t: TestContext) => unknown): Promise<boolean>;
}

interface StepDef {
  name: string;
  fn: (t: TestContext) => unknown;
  ignore?: boolean;
}

/** One test's outcome, as posted to the server. */
export interface TestReport {
  /** The test file (e.g. `matmul_test.ts`). */
  file: string;
  /** The test's name. */
  name: string;
  /** `ok`, `failed` or `ignored`. */
  result: "ok" | "failed" | "ignored";
  /** Wall time in ms. */
  ms: number;
  /** The error's stack or message, when it failed. */
  error?: string;
  /** Steps run inside it. */
  steps: number;
}

const registered: Registered[] = [];
let currentFile = "(unknown)";

/** Marks the test file whose `Deno.test` calls follow (the generated entry calls it per file). */
export function setFile(file: string): void {
  currentFile = file;
}

type TestFn = (t: TestContext) => unknown;
type TestOptions = { name?: string; fn?: TestFn; ignore?: boolean; only?: boolean };

function register(a: string | TestOptions | TestFn, b?: TestOptions | TestFn, c?: TestFn): void {
  let def: TestOptions;
  if (typeof a === "string") {
    def = typeof b === "function" ? { name: a, fn: b } : { ...b, name: a, fn: c };
  } else if (typeof a === "function") {
    def = { name: a.name, fn: a };
  } else {
    def = typeof b === "function" ? { ...a, fn: b } : a;
  }
  if (!def.fn || !def.name) {
    throw new Error(`Deno.test in ${currentFile}: a name and a function are needed`);
  }
  registered.push({ file: currentFile, name: def.name, fn: def.fn, ignore: def.ignore === true });
}

// Only what the browser-suite tests touch: everything else stays undefined, so a test that needs
// Deno's file system fails loudly instead of silently passing.
(globalThis as unknown as { Deno: unknown }).Deno = { test: register };

function context(name: string, counter: { steps: number }): TestContext {
  return {
    name,
    async step(s, fn) {
      const def: StepDef = typeof s === "string" ? { name: s, fn: fn! } : s;
      if (def.ignore) return false;
      counter.steps++;
      await def.fn(context(def.name, counter));
      return true;
    },
  };
}

/** An error's stack (with its message) and every `cause` below it, as fast-check nests them. */
function describe(e: unknown): string {
  const lines: string[] = [];
  for (let c = e, depth = 0; c !== undefined && depth < 5; depth++) {
    const text = c instanceof Error
      ? (c.stack?.includes(c.message) ? c.stack : `${c.message}\n${c.stack}`)
      : String(c);
    lines.push(depth === 0 ? text : `Caused by: ${text}`);
    c = c instanceof Error ? c.cause : undefined;
  }
  return lines.join("\n");
}

/**
 * Runs every registered test whose name contains `filter`, handing `report` a JSON line before
 * each test and one with its outcome; resolves when all have run. A test that throws (or rejects)
 * fails with its stack; later tests still run.
 */
export async function runAll(
  filter: string,
  report: (line: string) => Promise<unknown>,
): Promise<void> {
  const post = (body: unknown) => report(JSON.stringify(body));
  const chosen = registered.filter((t) => t.name.includes(filter));
  await post({ planned: chosen.length, files: [...new Set(chosen.map((t) => t.file))] });
  for (const t of chosen) {
    const counter = { steps: 0 };
    const start = performance.now();
    let outcome: TestReport;
    if (t.ignore) {
      outcome = { file: t.file, name: t.name, result: "ignored", ms: 0, steps: 0 };
    } else {
      await post({ started: t.name, file: t.file });
      try {
        await t.fn(context(t.name, counter));
        outcome = {
          file: t.file,
          name: t.name,
          result: "ok",
          ms: performance.now() - start,
          steps: counter.steps,
        };
      } catch (e) {
        const error = describe(e);
        outcome = {
          file: t.file,
          name: t.name,
          result: "failed",
          ms: performance.now() - start,
          steps: counter.steps,
          error,
        };
      }
    }
    await post(outcome);
  }
}
