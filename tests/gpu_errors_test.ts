/**
 * GPU errors name what caused them: the op with its tensor shapes and the limit, a copy, an
 * allocation. Losing the device in the middle of a run ends it with that message and a non-zero
 * exit, the last checkpoint and the log intact, and `--resume` continues from them.
 */
import assert from "node:assert/strict";
import { readSafetensors } from "../cli/safetensors.ts";
import { readLog } from "../cli/runlog.ts";
import { gpuDevice } from "../core/device.ts";
import { defineKernel } from "../core/define_kernel.ts";
import { DeviceError, DeviceLimitError } from "../core/errors.ts";
import { encodeCopy, sync } from "../core/kernel.ts";
import { tensor, zeros } from "../core/tensor.ts";
import * as tree from "../core/tree.ts";
import { setup } from "./util.ts";

await setup();

Deno.test("GPU validation errors name the op, its shapes and the limit", async () => {
  const x = tensor([1, 2, 3, 4]);
  const y = zeros([4]);
  const limits = gpuDevice().limits;
  try {
    // Rejected by WebGPU when the pipeline is built: reported against the op and its bindings.
    const wide = defineKernel({
      name: "too_wide",
      inputs: { x: "f32" },
      outputs: { y: "f32" },
      grid: { workgroupSize: [limits.maxComputeInvocationsPerWorkgroup * 2] },
      body: "y[0] = x[0];",
    });
    wide({ x, y }, {}, [1]);
    await assert.rejects(
      sync,
      (e) =>
        e instanceof DeviceError &&
        /^GPU validation error in building the pipeline of too_wide\(tensor \[4\] f32 → tensor \[4\] f32; 1x1x1 workgroups\): .*max_compute_invocations_per_workgroup/
          .test(e.message),
    );
    // Refused before recording: the dispatch size and the limit, the aliased binding.
    const flat = defineKernel({
      name: "copy_flat",
      inputs: { x: "f32" },
      outputs: { y: "f32" },
      grid: { workgroupSize: [1] },
      body: "y[0] = x[0];",
    });
    const over = limits.maxComputeWorkgroupsPerDimension + 1;
    assert.throws(
      () => flat({ x, y }, {}, [over]),
      (e) =>
        e instanceof DeviceLimitError &&
        e.message.includes(`copy_flat: dispatch of ${over}x1x1 workgroups exceeds `) &&
        e.message.includes("maxComputeWorkgroupsPerDimension"),
    );
    assert.throws(
      () => flat({ x, y: x }, {}, [1]),
      /copy_flat\(tensor \[4\] f32 → tensor \[4\] f32; 1x1x1 workgroups\): output .* shares its buffer/,
    );
    assert.throws(
      () => encodeCopy(x.storage.buffer, y.storage.buffer, 4096),
      /copy of 4096 bytes from byte 0 of a 256-byte buffer .* out of range/,
    );
    await sync();
  } finally {
    tree.dispose([x, y]);
  }
});

Deno.test("losing the GPU device mid-run: the message, exit code != 0, the last checkpoint and the log intact, --resume continues", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-lost-" });
  try {
    const data = `${tmp}/train.jsonl`;
    await Deno.writeTextFile(
      data,
      Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: `Text ${i}. `.repeat(40) }))
        .join("\n") + "\n",
    );
    const out = `${tmp}/run`;
    const args = [
      ...["--steps", "8", "--eval-every", "2", "--log-every", "2", "--batch", "2", "--seq", "16"],
      ...["--eval-tokens", "64", "--data", data, "--out", out],
    ];
    const env = { SLTRAIN_CACHE: `${tmp}/cache`, LOSE_DEVICE_AT: "5" };
    const run = async (script: string, extra: string[] = []) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, ...args, ...extra],
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: r.code, err: new TextDecoder().decode(r.stderr) };
    };
    const lost = await run("tests/drivers/lose_device.ts");
    assert.notEqual(lost.code, 0);
    // Named with the phase it hit: the step after the one that ended with the loss.
    assert.match(lost.err, /error: step 6: the GPU device was lost \(destroyed: [^)]*\)/);
    assert.match(lost.err, /the last checkpoint is .*run\/checkpoint\.safetensors/);
    assert.doesNotMatch(lost.err, /^\s+at /m, "no stack trace");
    const ck = await readSafetensors(`${out}/checkpoint.safetensors`);
    assert.equal(ck.metadata.step, "4");
    const log = await readLog(`${out}/log.jsonl`);
    assert.ok(log.records.some((r) => r.kind === "eval" && r.step === 4));

    const resumed = await run("train.ts", ["--resume"]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.equal((await readSafetensors(`${out}/checkpoint.safetensors`)).metadata.step, "8");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
