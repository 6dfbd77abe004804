/**
 * kill -9 at random moments: train.ts is killed with SIGKILL (fast-check picks when: a time after
 * the start, a time after its n-th line of output, the moment its n-th checkpoint file appears,
 * i.e. mid-write, or in the middle of its n-th step, evaluation or checkpoint write, where the
 * fault hook `SLTRAIN_FAULT=stall@<phase>:<n>` holds it), possibly again while resuming, and then
 * resumed to the end. At least one kill lands in each phase, and one while a checkpoint's
 * temporary file exists. Every time, the
 * checkpoint on disk is complete, the log reads as JSONL (a torn last line tolerated: a kill is
 * rarely quick enough to cut one of its single-write lines, so some kills also leave half a
 * record, as a kill mid-write would), and the finished run's files equal an uninterrupted run's
 * bit for bit, with each step logged once.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { readSafetensors } from "../cli/safetensors.ts";
import { type LogRecord, readLog } from "../cli/runlog.ts";

const ARGS = [
  "--steps",
  "8",
  "--eval-every",
  "3",
  "--log-every",
  "2",
  "--batch",
  "2",
  "--seq",
  "16",
  "--eval-tokens",
  "64",
  "--keep",
  "2",
];

/**
 * When to kill: `ms` after the start, after the n-th stderr line, after the n-th temp file, or
 * inside the n-th occurrence of a phase (held there by the stall fault).
 */
type Trigger =
  | { kind: "time"; ms: number }
  | { kind: "line"; n: number; ms: number }
  | { kind: "tmpfile"; n: number; ms: number }
  | { kind: "phase"; phase: Phase; n: number };

type Phase = "step" | "eval" | "checkpoint";

const triggerArb: fc.Arbitrary<Trigger> = fc.oneof(
  fc.record({ kind: fc.constant("time" as const), ms: fc.integer({ min: 300, max: 2500 }) }),
  fc.record({
    kind: fc.constant("line" as const),
    n: fc.integer({ min: 1, max: 9 }),
    ms: fc.integer({ min: 0, max: 60 }),
  }),
  fc.record({
    kind: fc.constant("tmpfile" as const),
    n: fc.integer({ min: 1, max: 3 }),
    ms: fc.integer({ min: 0, max: 3 }),
  }),
  fc.record({
    kind: fc.constant("phase" as const),
    phase: fc.constantFrom<Phase>("step", "eval", "checkpoint"),
    n: fc.integer({ min: 1, max: 3 }),
  }),
);

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Runs train.ts in `dir` and kills it with SIGKILL when `trigger` fires (if it has not ended). */
async function runUntil(
  args: string[],
  dir: string,
  env: Record<string, string>,
  trigger: Trigger | null,
  signals: Deno.Signal[] = ["SIGKILL"],
): Promise<{ killed: boolean; code: number; err: string; tmpAtKill: boolean }> {
  const fault: Record<string, string> = trigger?.kind === "phase"
    ? { SLTRAIN_FAULT: `stall@${trigger.phase}:${trigger.n}` }
    : {};
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train.ts", ...args],
    env: { ...env, ...fault },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let ended = false;
  let tmpAtKill = false;
  const timers: ReturnType<typeof setTimeout>[] = [];
  const kill = () => {
    if (ended) return;
    tmpAtKill = [...Deno.readDirSync(dir)].some((e) => e.name.includes(".tmp-"));
    for (const signal of signals) {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
    }
  };
  const later = (ms: number) => timers.push(setTimeout(kill, ms));
  if (trigger?.kind === "time") later(trigger.ms);
  const watcher = trigger?.kind === "tmpfile" ? Deno.watchFs(dir, { recursive: false }) : null;
  const watching = (async () => {
    if (!watcher || trigger?.kind !== "tmpfile") return;
    let seen = 0;
    for await (const ev of watcher) {
      if (
        ev.kind === "create" && ev.paths.some((p) => p.includes(".tmp-")) && ++seen === trigger.n
      ) {
        if (trigger.ms === 0) kill();
        else later(trigger.ms);
      }
    }
  })();
  let err = "";
  let lines = 0;
  for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
    err += chunk;
    if (trigger?.kind === "phase" && err.includes("SLTRAIN_FAULT: stalled in")) kill();
    const n = chunk.split("\n").length - 1;
    if (trigger?.kind === "line" && lines < trigger.n && lines + n >= trigger.n) later(trigger.ms);
    lines += n;
  }
  const status = await child.status;
  ended = true;
  for (const t of timers) clearTimeout(t);
  watcher?.close();
  await watching;
  return { killed: status.signal === "SIGKILL", code: status.code, err, tmpAtKill };
}

/** What two runs' logs may differ in: when, how fast, how much memory (the rest is bit-exact). */
const MEASURED = [
  "time",
  "stepSeconds",
  "tokensPerSec",
  "seconds",
  "liveBytes",
  "peakBytes",
  "allocatedBytes",
  "allocatedPeak",
];

const strip = (records: LogRecord[]) =>
  records.filter((r) => r.kind !== "resume").map((r) =>
    Object.fromEntries(Object.entries(r).filter(([k]) => !MEASURED.includes(k)))
  );

async function files(dir: string): Promise<Map<string, Uint8Array>> {
  const m = new Map<string, Uint8Array>();
  for (const e of [...Deno.readDirSync(dir)].sort((a, b) => a.name < b.name ? -1 : 1)) {
    if (e.name.endsWith(".safetensors")) m.set(e.name, await Deno.readFile(`${dir}/${e.name}`));
  }
  return m;
}

/** A temp folder, the data file, the flags, and the files of an uninterrupted run. */
async function reference() {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-crash-" });
  const env = { SLTRAIN_CACHE: `${tmp}/cache` };
  const data = `${tmp}/train.jsonl`;
  await Deno.writeTextFile(
    data,
    Array.from(
      { length: 6 },
      (_, i) => JSON.stringify({ text: `Document ${i}. The jury said it was fair. `.repeat(8) }),
    ).join("\n") + "\n",
  );
  const args = [...ARGS, "--data", data];
  const ref = `${tmp}/ref`;
  const r = await runUntil([...args, "--out", ref], tmp, env, null);
  assert.equal(r.code, 0, r.err);
  const refFiles = await files(ref);
  assert.deepEqual([...refFiles.keys()], [
    "checkpoint.safetensors",
    "checkpoint.step-6.safetensors",
  ]);
  const refLog = strip((await readLog(`${ref}/log.jsonl`)).records);
  /** Asserts that the run in `dir` ended with the reference's files and log. */
  const sameAsReference = async (dir: string, what: string) => {
    const got = await files(dir);
    assert.deepEqual([...got.keys()], [...refFiles.keys()]);
    for (const [name, bytes] of refFiles) {
      assert.ok(
        bytes.length === got.get(name)!.length && bytes.every((b, i) => b === got.get(name)![i]),
        `${name} differs from the uninterrupted run's (${what})`,
      );
    }
    const log = await readLog(`${dir}/log.jsonl`);
    assert.equal(log.torn, false);
    assert.deepEqual(strip(log.records), refLog, `log (${what})`);
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.includes(".tmp")),
      [],
    );
  };
  return { tmp, env, args, sameAsReference };
}

Deno.test("kill -9 at random moments, then --resume: the run ends bit-identical to an uninterrupted one", async () => {
  const { tmp, env, args, sameAsReference } = await reference();
  const stats = {
    cases: 0,
    attempts: 0,
    kills: 0,
    midWrite: 0,
    torn: 0,
    noCheckpointYet: 0,
    midStep: 0,
    midEval: 0,
    midCheckpoint: 0,
  };
  const PHASE_STAT = { step: "midStep", eval: "midEval", checkpoint: "midCheckpoint" } as const;
  try {
    let k = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(triggerArb, fc.boolean()), { minLength: 1, maxLength: 3 }),
        async (kills) => {
          const triggers = kills.map(([t]) => t);
          stats.cases++;
          const dir = `${tmp}/run-${k++}`;
          await Deno.mkdir(dir);
          const hasRun = async () =>
            await exists(`${dir}/checkpoint.safetensors`) || await exists(`${dir}/log.jsonl`);
          let lastStep = 0;
          for (const [trigger, tear] of [...kills, [null, false] as const]) {
            const resume = await hasRun() ? ["--resume"] : [];
            const res = await runUntil([...args, ...resume, "--out", dir], dir, env, trigger);
            if (trigger) stats.attempts++;
            if (!res.killed) {
              assert.equal(res.code, 0, `${JSON.stringify(trigger)}: ${res.err}`);
              continue;
            }
            stats.kills++;
            if (res.tmpAtKill) stats.midWrite++;
            if (trigger?.kind === "phase") stats[PHASE_STAT[trigger.phase]]++;
            // What a kill leaves: a complete checkpoint (checksums verified) no older than the
            // last one, and a log that reads (a torn last line is tolerated).
            if (await exists(`${dir}/checkpoint.safetensors`)) {
              const ck = await readSafetensors(`${dir}/checkpoint.safetensors`);
              const step = Number(ck.metadata.step);
              assert.ok([3, 6, 8].includes(step) && step >= lastStep, `checkpoint step ${step}`);
              lastStep = step;
            } else stats.noCheckpointYet++;
            if (tear && await exists(`${dir}/log.jsonl`)) {
              await Deno.writeTextFile(`${dir}/log.jsonl`, '{"time":"2026-01-01T0', {
                append: true,
              });
            }
            if ((await readLog(`${dir}/log.jsonl`)).torn) stats.torn++;
          }
          await sameAsReference(dir, `triggers ${JSON.stringify(triggers)}`);
          await Deno.remove(dir, { recursive: true });
        },
      ),
      {
        numRuns: 10,
        seed: 7,
        endOnFailure: true,
        // One case that kills in each phase for sure: mid-step 4 (after the checkpoint of step
        // 3), then in the resumed run mid-evaluation (step 6), then mid-checkpoint-write.
        examples: [[[
          [{ kind: "phase", phase: "step", n: 4 }, false],
          [{ kind: "phase", phase: "eval", n: 1 }, false],
          [{ kind: "phase", phase: "checkpoint", n: 1 }, true],
        ]]],
      },
    );
    console.log(`kill -9 property: ${JSON.stringify(stats)}`);
    for (const k of ["midStep", "midEval", "midCheckpoint", "midWrite"] as const) {
      assert.ok(stats[k] >= 1, `no kill landed ${k}: ${JSON.stringify(stats)}`);
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("SIGTERM behaves like Ctrl-C: the run stops after its step with a checkpoint (exit 143); twice quits at once; --resume ends bit-identical", async () => {
  const { tmp, env, args, sameAsReference } = await reference();
  const stats = { cases: 0, stoppedAfterStep: 0, quitAtOnce: 0, endedFirst: 0 };
  try {
    await fc.assert(
      fc.asyncProperty(
        // From the run's first line on (the signal handlers are in place by then).
        fc.integer({ min: 5, max: 9 }),
        fc.integer({ min: 0, max: 40 }),
        fc.boolean(),
        async (n, ms, twice) => {
          const dir = await Deno.makeTempDir({ dir: tmp });
          const signals: Deno.Signal[] = twice ? ["SIGTERM", "SIGTERM"] : ["SIGTERM"];
          const res = await runUntil(
            [...args, "--out", dir],
            dir,
            env,
            { kind: "line", n, ms },
            signals,
          );
          stats.cases++;
          if (!res.err.includes("SIGTERM: stopping")) {
            stats.endedFirst++;
            assert.equal(res.code, 0, res.err); // it had ended before the signal
          } else if (!twice) {
            stats.stoppedAfterStep++;
            assert.equal(res.code, 143, res.err);
            const step = Number(/interrupted at step (\d+)/.exec(res.err)?.[1]);
            const ck = await readSafetensors(`${dir}/checkpoint.safetensors`);
            assert.equal(
              Number(ck.metadata.step),
              step,
              "the checkpoint is the step it stopped at",
            );
            const trained = (await readLog(`${dir}/log.jsonl`)).records.filter((r) =>
              r.kind === "train"
            );
            assert.equal(trained.at(-1)?.step, step, "every step up to the stop is logged");
          } else {
            stats.quitAtOnce++;
            assert.equal(res.code, 143, res.err);
          }
          const hasRun = await Deno.stat(`${dir}/log.jsonl`).then(() => true, () => false);
          const rest = await runUntil(
            [...args, ...(hasRun ? ["--resume"] : []), "--out", dir],
            dir,
            env,
            null,
          );
          assert.equal(rest.code, 0, rest.err);
          await sameAsReference(dir, `SIGTERM after line ${n} + ${ms} ms${twice ? ", twice" : ""}`);
        },
      ),
      { numRuns: 4, seed: 8, endOnFailure: true },
    );
    console.log(`SIGTERM property: ${JSON.stringify(stats)}`);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
