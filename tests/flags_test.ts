/**
 * Flags are declared once (cli/flags.ts): --help is rendered from the declarations, every
 * declared default is one the flag's own check accepts, and every bad value of a number or
 * choice flag is refused by train.ts's settings (`buildRun`) with an error naming the flag.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  choiceFlag,
  type DefaultContext,
  defaultText,
  FlagError,
  FLAGS,
  type FlagSpec,
  helpText,
  methodName,
  numberFlag,
  parseFlags,
  parseFlagsWith,
  renderHelp,
} from "../cli/flags.ts";
import { type MethodName, METHODS } from "../cli/run_config.ts";
import { buildRun } from "../train.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { SAMPLE_FLAGS } from "../sample.ts";
import { PREPARE_FLAGS } from "../prepare.ts";
import { EXPORT_FLAGS } from "../export.ts";

/** Flags train.ts reads outside `buildRun` (checked through their reader instead). */
const READ_ELSEWHERE = new Set(["keep", "val-fraction", "packing", "method"]);

const numberFlags = Object.entries(FLAGS).filter(([, f]) => f.number);
const choiceFlags = Object.entries(FLAGS).filter(([, f]) => f.choices);

/** A method the flag applies to: its first, or sltrain for flags of every method. */
const methodFor = (spec: FlagSpec): MethodName => spec.methods?.[0] ?? "sltrain";

const context = fc.record({
  method: fc.constantFrom(...METHODS),
  hidden: fc.integer({ min: 1, max: 8192 }),
  steps: fc.integer({ min: 1, max: 1_000_000 }),
  rank: fc.integer({ min: 1, max: 2048 }),
}) satisfies fc.Arbitrary<DefaultContext>;

/** Asserts `f` throws a FlagError that starts with `--name value:`. */
async function refused(f: () => unknown, name: string, value: string): Promise<void> {
  await assert.rejects(
    async () => await f(),
    (e) => e instanceof FlagError && e.message.startsWith(`--${name} ${value}:`),
    `--${name}=${JSON.stringify(value)} was not refused by name`,
  );
}

function refusedBy(name: string, spec: FlagSpec, value: string): Promise<void> {
  const flags = parseFlags([`--${name}=${value}`]);
  if (name === "method") return refused(() => methodName(value), name, value);
  if (READ_ELSEWHERE.has(name)) {
    const read = spec.number ? () => numberFlag(flags, name) : () => choiceFlag(flags, name);
    return refused(read, name, value);
  }
  return refused(() => buildRun(flags, methodFor(spec), byteTokenizer(), null), name, value);
}

Deno.test("--help of every entry point lists each declared flag with its default", () => {
  const tables: [string, Record<string, FlagSpec>][] = [
    [helpText(), FLAGS],
    [renderHelp([], SAMPLE_FLAGS), SAMPLE_FLAGS],
    [renderHelp([], PREPARE_FLAGS), PREPARE_FLAGS],
    [renderHelp([], EXPORT_FLAGS), EXPORT_FLAGS],
  ];
  for (const [help, specs] of tables) {
    const lines = help.split("\n");
    for (const [name, spec] of Object.entries(specs)) {
      const line = lines.find((l) => l.trimStart().startsWith(`--${name} `));
      assert.ok(line, `--help does not list --${name}`);
      const d = defaultText(spec);
      if (d) assert.ok(line.endsWith(`[default: ${d}]`), line);
      else assert.ok(!line.includes("[default:"), line);
    }
  }
});

Deno.test("each flag declares a number rule or choices, never both, and a default they accept", () => {
  fc.assert(fc.property(context, (at) => {
    for (const specs of [FLAGS, SAMPLE_FLAGS, PREPARE_FLAGS, EXPORT_FLAGS]) {
      for (const [name, spec] of Object.entries(specs)) {
        assert.ok(!(spec.number && spec.choices), `--${name}`);
        if (spec.choices) assert.ok(spec.choices.includes(defaultText(spec)), `--${name}`);
        if (!spec.number || spec.default === undefined) continue;
        // With no value given, the flag reads as its (possibly derived) default, which its rule accepts.
        const v = numberFlag({}, name, at, specs);
        const d = spec.default;
        assert.equal(v, typeof d === "object" ? d.of(at) : d, `--${name}`);
        assert.ok(spec.number.ok(v), `--${name} default ${v} fails its own rule`);
      }
    }
  }));
});

Deno.test("every bad value of a number flag is refused naming the flag", async () => {
  for (const [name, spec] of numberFlags) {
    const rule = spec.number!;
    const bad = fc.oneof(
      fc.double().map(String),
      fc.integer({ min: -1_000_000, max: 1_000_000 }).map(String),
      fc.constantFrom("", " ", "two", "1e999", "NaN", "Infinity", "0x", "1,5"),
    ).filter((s) => s.trim() === "" || !Number.isFinite(Number(s)) || !rule.ok(Number(s)));
    await fc.assert(fc.asyncProperty(bad, (value) => refusedBy(name, spec, value)), {
      numRuns: 15,
    });
  }
});

Deno.test("every value outside a choice flag's choices is refused naming the flag", async () => {
  for (const [name, spec] of choiceFlags) {
    const bad = fc.string({ minLength: 1 }).filter((s) => !spec.choices!.includes(s));
    await fc.assert(fc.asyncProperty(bad, (value) => refusedBy(name, spec, value)), {
      numRuns: 15,
    });
  }
});

Deno.test("numberFlag and choiceFlag read any declaration table, refusing undeclared names", () => {
  const flags = parseFlagsWith(SAMPLE_FLAGS, ["--tokens", "7"]);
  assert.equal(numberFlag(flags, "tokens", undefined, SAMPLE_FLAGS), 7);
  assert.equal(numberFlag({}, "top-k", undefined, SAMPLE_FLAGS), 40);
  assert.equal(choiceFlag({}, "format", EXPORT_FLAGS), "hf");
  assert.throws(() => numberFlag({}, "nope"), /--nope: no such flag/);
  assert.throws(() => numberFlag({}, "dtype"), /--dtype: not a number flag/);
  assert.throws(() => numberFlag({}, "rank"), /--rank: its default needs a context/);
});
