/**
 * Faults injected through train.ts's test hook (`SLTRAIN_FAULT`, see cli/faults.ts): an
 * out-of-memory error mid-step, a full disk mid-evaluation, a lost device mid-checkpoint-write.
 * Each ends the run with one message naming the failure and the operation, a non-zero exit, the
 * last complete checkpoint and the log intact (no temporary file left), and `--resume` then ends
 * bit for bit where an uninterrupted run ends. bench/fault_table.ts runs every kind in every phase.
 */
import assert from "node:assert/strict";
import { readLog } from "../cli/runlog.ts";
import { readSafetensors } from "../cli/safetensors.ts";
import { parseFault } from "../cli/faults.ts";

const ARGS = [
  ...["--steps", "4", "--eval-every", "2", "--log-every", "1", "--batch", "2", "--seq", "16"],
  ...["--eval-tokens", "64"],
];

async function train(args: string[], env: Record<string, string>) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train.ts", ...ARGS, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: r.code, err: new TextDecoder().decode(r.stderr) };
}

/** Every tensor of a checkpoint, by name. */
async function tensors(path: string): Promise<Map<string, Uint8Array>> {
  const f = await readSafetensors(path);
  return new Map(
    Object.entries(f.tensors).map(([k, t]) => [k, new Uint8Array(t.data.buffer)]),
  );
}

const trainLosses = async (dir: string) =>
  (await readLog(`${dir}/log.jsonl`)).records.filter((r) => r.kind === "train").map((r) => [
    r.step,
    r.loss,
  ]);

Deno.test("SLTRAIN_FAULT parses kind@phase[:n] and refuses anything else", () => {
  assert.deepEqual(parseFault("oom@step:3"), { kind: "oom", phase: "step", n: 3 });
  assert.deepEqual(parseFault("enospc@checkpoint"), { kind: "enospc", phase: "checkpoint", n: 1 });
  for (const bad of ["oom", "oom@lunch", "fire@step", "oom@step:0", "oom@step:x"]) {
    assert.throws(() => parseFault(bad), /SLTRAIN_FAULT .*expected <kind>@<phase>\[:<n>\]/);
  }
});

Deno.test("injected faults end the run naming the failure and the op; checkpoint and log intact; --resume is bit-exact", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-fault-" });
  try {
    const data = `${tmp}/train.jsonl`;
    await Deno.writeTextFile(
      data,
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: `Text ${i}. `.repeat(40) }))
        .join("\n") + "\n",
    );
    const env = { SLTRAIN_CACHE: `${tmp}/cache` };
    const ref = `${tmp}/ref`;
    const r = await train(["--data", data, "--out", ref], env);
    assert.equal(r.code, 0, r.err);
    const want = await tensors(`${ref}/checkpoint.safetensors`);
    const wantLosses = await trainLosses(ref);

    const cases: [string, RegExp][] = [
      [
        "oom@step:3",
        /^error: step 3: GPU out-of-memory error in allocating tensor .* \(injected by SLTRAIN_FAULT\)$/m,
      ],
      [
        "enospc@eval:3",
        /^error: appending the eval record of step 4 to .*\/log\.jsonl: No space left on device \(os error 28\)/m,
      ],
      [
        "device-lost@checkpoint:2",
        /^error: writing the checkpoint of step 4 to .*: the GPU device was lost \(destroyed[^)]*\); the last work/m,
      ],
    ];
    for (const [fault, message] of cases) {
      await t.step(fault, async () => {
        const out = `${tmp}/${fault.replace(/[@:]/g, "-")}`;
        const failed = await train(["--data", data, "--out", out], {
          ...env,
          SLTRAIN_FAULT: fault,
        });
        assert.notEqual(failed.code, 0);
        assert.match(failed.err, message);
        assert.equal(failed.err.split("\n").filter((l) => l.startsWith("error: ")).length, 1);
        assert.doesNotMatch(failed.err, /^\s+at /m, "no stack trace");
        assert.match(failed.err, /the last checkpoint is .*checkpoint\.safetensors, and --resume/);
        // The last complete checkpoint (step 2) verifies; the log parses; no temporary file.
        const ck = await readSafetensors(`${out}/checkpoint.safetensors`);
        assert.equal(ck.metadata.step, "2");
        const log = await readLog(`${out}/log.jsonl`);
        assert.ok(log.records.some((rec) => rec.kind === "train" && rec.step === 2));
        const names = [...Deno.readDirSync(out)].map((e) => e.name);
        assert.ok(!names.some((n) => n.includes(".tmp")), `left ${names}`);
        assert.ok(!names.includes("run.lock"), "the lock is released");

        const resumed = await train(["--data", data, "--out", out, "--resume"], env);
        assert.equal(resumed.code, 0, resumed.err);
        const got = await tensors(`${out}/checkpoint.safetensors`);
        assert.deepEqual([...got.keys()], [...want.keys()]);
        for (const [k, v] of want) assert.deepEqual(got.get(k), v, `${fault}: ${k} differs`);
        assert.deepEqual(await trainLosses(out), wantLosses);
      });
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
