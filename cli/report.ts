/**
 * End-of-run reports: the summary table (one row per method) and the loss-curve plot.
 * @module
 */
import { fmtBytes, fmtCount, fmtDuration, table } from "./format.ts";
import { lossPlotSvg, type Series } from "./plot.ts";
import type { RunResult } from "./trainer.ts";

/** The side-by-side summary table of finished runs. */
export function summaryTable(results: readonly RunResult[]): string {
  const rows = results.map((r) => {
    const val = r.history.val.at(-1)?.[1] ?? NaN;
    const init = r.history.val[0]?.[1] ?? NaN;
    const train = r.history.train.at(-1)?.[1] ?? NaN;
    return [
      r.run.method,
      fmtCount(r.params.trainable),
      fmtCount(r.params.total),
      fmtBytes(r.estimatedBytes),
      fmtBytes(r.measuredBytes),
      fmtBytes(r.peakBytes),
      fmtBytes(r.stateBytes),
      `${Math.round(r.tokensPerSec)}`,
      `${r.steps}`,
      fmtDuration(r.seconds),
      train.toFixed(4),
      val.toFixed(4),
      Math.exp(val).toFixed(2),
      Math.exp(init).toFixed(2),
    ];
  });
  return table(
    [
      "method",
      "trainable",
      "params",
      "est. mem",
      "meas. mem",
      "peak mem",
      "opt state",
      "tok/s",
      "steps",
      "time",
      "train loss",
      "val loss",
      "val ppl",
      "ppl@0",
    ],
    rows,
  );
}

/** One SVG with every run's train (solid) and validation (dashed) loss. */
export function lossPlot(results: readonly RunResult[], title: string): string {
  const series: Series[] = [];
  results.forEach((r, i) => {
    series.push({ label: `${r.run.method} train`, points: r.history.train, color: i });
    series.push({ label: `${r.run.method} val`, points: r.history.val, color: i, dashed: true });
  });
  return lossPlotSvg(series, title);
}
