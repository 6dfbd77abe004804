/**
 * The demo page (web/demo) in headless Chromium, as a user uses it: the bad inputs each give a
 * message on the page, training on the sample lowers the validation loss, a sample appears, and
 * the downloaded checkpoint is one that sample.ts and export.ts load.
 */
import assert from "node:assert/strict";
import { checkDemo } from "../web/demo/check.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function run(script: string, args: string[]): Promise<{ code: number; out: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}${script}`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: o.code, out: dec.decode(o.stdout) + dec.decode(o.stderr) };
}

Deno.test("web demo in Chromium: bad inputs named on the page, training lowers the loss, a sample appears, the checkpoint loads in sample.ts and export.ts", async () => {
  const r = await checkDemo(6, 4);
  assert.equal(r.uncaught, 0, "no error escaped to the window");
  assert.match(r.badInputs["empty text"], /text is empty/);
  assert.match(
    r.badInputs["a file over the budget (40 MB)"],
    /huge\.txt is 40 MiB.*at most 32 MiB/,
  );
  assert.match(r.badInputs["a binary file"], /model\.bin looks binary/);
  assert.match(r.badInputs["a non-UTF-8 file"], /latin1\.txt is not UTF-8 text/);
  assert.match(r.badInputs["text too short for one window"], /needs at least 129/);
  assert.match(r.badInputs["steps 0"], /steps must be a whole number/);
  assert.match(r.noWebGpu, /WebGPU/);
  assert.equal(r.losses.length, 6);
  assert.ok(r.losses.every(Number.isFinite));
  assert.ok(r.val.at(-1)![1] < r.val[0][1] - 0.1, `validation loss fell: ${JSON.stringify(r.val)}`);
  assert.ok(r.sample.startsWith("And God said") && r.sample.length > 40, r.sample);
  assert.equal(r.memory.live >= r.memory.estimate, true);
  assert.equal(r.checkpoint.metadata.step, "6");
  const dir = await Deno.makeTempDir({ prefix: "sltrain-demo-" });
  try {
    await Deno.writeFile(`${dir}/checkpoint.safetensors`, r.checkpoint.file);
    const s = await run("sample.ts", [
      "--checkpoint",
      `${dir}/checkpoint.safetensors`,
      "--prompt",
      "In the",
      "--tokens",
      "16",
    ]);
    assert.equal(s.code, 0, s.out);
    const e = await run("export.ts", [
      "--checkpoint",
      `${dir}/checkpoint.safetensors`,
      "--out",
      `${dir}/hf`,
      "--format",
      "sltrain",
    ]);
    assert.equal(e.code, 0, e.out);
    assert.ok((await Deno.stat(`${dir}/hf/model.safetensors`)).size > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
