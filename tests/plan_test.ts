/** The planner: sizes from the command line, predicted peaks, what fits, refusing up front. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { FlagError, parseFlags } from "../cli/flags.ts";
import {
  applyVariant,
  checkDeviceBudget,
  fitReport,
  parseByteSize,
  planPeak,
  planRows,
} from "../cli/plan.ts";
import { buildRun } from "../train.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { tokenizerFlag } from "../cli/data_source.ts";

Deno.test("sizes: decimal and binary units, any case, plain bytes; bad ones name the flag", () => {
  assert.equal(parseByteSize("24GB", "fit"), 24e9);
  assert.equal(parseByteSize("16 GiB", "fit"), 16 * 2 ** 30);
  assert.equal(parseByteSize("512mb", "fit"), 512e6);
  assert.equal(parseByteSize("1.5e9", "fit"), 1.5e9);
  assert.equal(parseByteSize("2k", "fit"), 2000);
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 2 ** 50 }), (n) => {
      assert.equal(parseByteSize(String(n), "x"), n);
      assert.equal(parseByteSize(`${n}KiB`, "x"), n * 1024);
    }),
    { numRuns: 200, seed: 42 },
  );
  for (const bad of ["", "GB", "-3GB", "0", "24 XB", "1.2.3", "24GBs", "abc"]) {
    assert.throws(
      () => parseByteSize(bad, "max-device-bytes"),
      (e) => e instanceof FlagError && e.message.startsWith(`--max-device-bytes ${bad}:`),
    );
  }
});

const run350m = async (...more: string[]) =>
  await buildRun(
    parseFlags(["--model", "350m", "--batch", "1", "--seq", "256", ...more]),
    "sltrain",
    await tokenizerFlag("llama"),
    null,
  );

Deno.test("peaks: each memory option lowers the prediction it should, more tokens raise it", async () => {
  const run = await run350m();
  const base = { method: "full", optimizer: "adamw", dtype: "bf16", batch: 1 } as const;
  const plain = planPeak(applyVariant(run, { ...base, perLayer: false, recompute: false }));
  const pl = planPeak(applyVariant(run, { ...base, perLayer: true, recompute: false }));
  const plrc = planPeak(applyVariant(run, { ...base, perLayer: true, recompute: true }));
  assert.ok(pl.total < plain.total && plrc.total < pl.total);
  assert.equal(pl.gradients, 0);
  const eight = planPeak(
    applyVariant(run, { ...base, optimizer: "adamw8bit", perLayer: true, recompute: true }),
  );
  assert.ok(eight.steady < plrc.steady);
  const big = planPeak({
    ...applyVariant(run, { ...base, perLayer: true, recompute: false }),
    batch: 8,
  });
  assert.ok(big.activations > 7 * pl.activations);
});

Deno.test("fit: the fastest that fits is listed and within budget; nothing fits names the least", async () => {
  const run = await run350m();
  const rows = planRows(run, 3e9);
  assert.ok(rows.some((r) => r.fits) && rows.some((r) => !r.fits));
  const report = fitReport(run, 3e9);
  const best = rows.filter((r) => r.fits)
    .sort((a, b) => a.cost - b.cost || a.peak.total - b.peak.total)[0];
  assert.match(report, /fastest that fits: /);
  assert.ok(report.includes(`--method ${best.method} --optimizer ${best.optimizer}`));
  const tiny = fitReport(run, 1e6);
  const least = Math.min(...planRows(run, 1e6).map((r) => r.peak.total));
  assert.match(tiny, /nothing fits 1\.00 MB: the smallest is .*, which needs /);
  assert.ok(least > 1e6);
});

Deno.test("--max-device-bytes refuses up front, naming the estimate and the budget", async () => {
  const run = await buildRun(parseFlags(["--model", "tiny"]), "sltrain", byteTokenizer(), null);
  checkDeviceBudget(run, 1e12);
  assert.throws(
    () => checkDeviceBudget(run, 1e6),
    (e) =>
      e instanceof FlagError && /--max-device-bytes 1\.00 MB: sltrain on tiny is predicted to need/
        .test(e.message),
  );
});
