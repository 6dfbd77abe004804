/**
 * End-of-run reports: the summary table (one row per method) and the loss-curve plot.
 * @module
 */
import { fmtBytes, fmtCount, fmtDuration, table } from "./format.ts";
import { lossPlotSvg, type Series } from "./plot.ts";
import type { History, RunResult } from "./trainer.ts";
import { lrSchedule, type RunConfig } from "./run_config.ts";
import { writeTextAtomic } from "./write_atomic.ts";

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
      fmtBytes(r.allocatedPeak),
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
      "alloc peak",
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

/** What a loss plot needs of a run: its settings (for the lr schedule) and its curves. */
export interface PlotRun {
  /** The run's settings. */
  run: RunConfig;
  /** Its loss curves so far. */
  history: History;
}

/**
 * One SVG with every run's train (solid) and validation (dashed) loss, and its learning rate
 * (dotted, right-hand axis) at the logged steps.
 */
export function lossPlot(runs: readonly PlotRun[], title: string): string {
  const series: Series[] = [];
  runs.forEach(({ run, history }, i) => {
    const lr = lrSchedule(run);
    series.push({ label: `${run.method} train`, points: history.train, color: i });
    series.push({ label: `${run.method} val`, points: history.val, color: i, dashed: true });
    series.push({
      label: `${run.method} lr`,
      points: history.train.map(([step]) => [step, lr(step - 1)]),
      color: i,
      right: true,
    });
  });
  return lossPlotSvg(series, title);
}

/**
 * Writes {@link lossPlot} to `path` atomically (a temporary file renamed over it), so a viewer
 * reloading it while a run rewrites it at each evaluation never sees half a file.
 */
export async function writeLossPlot(
  path: string,
  runs: readonly PlotRun[],
  title: string,
): Promise<void> {
  await writeTextAtomic(path, lossPlot(runs, title));
}
