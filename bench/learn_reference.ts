/**
 * Replays the training runs of tests/learn_test.ts (`learn_runs.ts`: each method on `tiny`, 20
 * steps of fixed text) in the PyTorch reference: the test's pinned first losses and final
 * validation losses are what `bench/torch_ref` computes from the same weights and batches, not
 * what this code computed. Run this to regenerate the pins (prints the table the test holds):
 *
 *   deno run -A bench/learn_reference.ts
 * @module
 */
import { type MethodName, METHODS } from "../cli/run_config.ts";
import { init } from "../core/device.ts";
import { learnData, learnRun } from "./learn_runs.ts";
import { writeDump } from "./torch_dump.ts";
import { runPython, torchRefScript } from "./torch_peer.ts";

if (import.meta.main) {
  await init();
  const dir = await Deno.makeTempDir({ prefix: "sltrain-learn-ref-" });
  const methods = [...METHODS] as MethodName[];
  for (const m of methods) await writeDump(`${dir}/${m}`, { run: learnRun(m), data: learnData() });
  const py = await runPython([
    torchRefScript("replay_many.py"),
    ...methods.map((m) => `${dir}/${m}`),
  ]);
  if (py.code !== 0) throw new Error(`replay_many.py failed (exit ${py.code})`);
  const r = (x: number) => Number(x.toFixed(4));
  console.log("const REFERENCE: Record<MethodName, { first: number[]; val: number }> = {");
  for (const m of methods) {
    const t = JSON.parse(await Deno.readTextFile(`${dir}/${m}/torch.json`));
    console.log(
      `  ${JSON.stringify(m)}: { first: ${JSON.stringify(t.losses.slice(0, 6).map(r))}, val: ${
        r(t.val.at(-1)[1])
      } },`,
    );
  }
  console.log("};");
}
