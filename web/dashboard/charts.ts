/// <reference lib="dom" />
/**
 * The dashboard's plots: one uPlot chart per panel (loss, lr, tokens/s, gradient norm, memory),
 * every visible run overlaid in its color, against the chosen x axis, smoothed and on a log
 * scale when asked. A chart is rebuilt only when its series change (runs shown, smoothing on or
 * off, axis, scale); new points just replace its data.
 * @module
 */
import uPlot from "uplot";
import { fmtBytes, fmtCount, fmtDuration } from "../../cli/format.ts";
import { align, curve, type Metric, type RunView, smooth, type XAxis } from "./model.ts";

/** Run colors, in the order runs appear. */
export const COLORS = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
];

/** A line of a panel: a metric, drawn dashed and with points or not, smoothed or not. */
interface Line extends Metric {
  /** Suffix of the series label. */
  label: string;
  dash?: number[];
  points?: boolean;
  /** Smoothing applies (noisy per-step values). */
  smooth?: boolean;
}

interface Panel {
  id: string;
  title: string;
  lines: Line[];
  format: (v: number) => string;
}

const plain = (v: number) =>
  Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-2 && v !== 0)
    ? v.toExponential(1)
    : String(+v.toPrecision(4));

/** The panels, in page order. */
export const PANELS: readonly Panel[] = [
  {
    id: "loss",
    title: "loss (train solid, validation dashed)",
    lines: [
      { kind: "train", field: "loss", label: "train", smooth: true },
      { kind: "eval", field: "valLoss", label: "val", dash: [6, 4], points: true },
    ],
    format: plain,
  },
  {
    id: "lr",
    title: "learning rate",
    lines: [{ kind: "train", field: "lr", label: "lr" }],
    format: plain,
  },
  {
    id: "tokens",
    title: "tokens/s",
    lines: [{ kind: "train", field: "tokensPerSec", label: "tok/s", smooth: true }],
    format: (v) => fmtCount(Math.round(v)),
  },
  {
    id: "grad",
    title: "gradient norm (before clipping)",
    lines: [{ kind: "train", field: "gradNorm", label: "grad norm", smooth: true }],
    format: plain,
  },
  {
    id: "memory",
    title: "device memory (live solid, step peak dashed)",
    lines: [
      { kind: "train", field: "liveBytes", label: "live" },
      { kind: "train", field: "peakBytes", label: "peak", dash: [6, 4] },
    ],
    format: fmtBytes,
  },
];

/** What the charts show. */
export interface View {
  axis: XAxis;
  /** EMA weight in [0, 1). */
  smoothing: number;
  log: boolean;
  /** Runs to draw, each with its color. */
  runs: { run: RunView; color: string }[];
}

const X_LABELS: Record<XAxis, string> = {
  step: "step",
  tokens: "training tokens",
  time: "wall time since the run's start",
};

/** Whole-number tick steps (1, 2, 5, 10, …) for the step and token axes. */
const WHOLE_STEPS = Array.from({ length: 13 }, (_, e) => [1, 2, 5].map((m) => m * 10 ** e)).flat();

const xFormat = (axis: XAxis) => (v: number) =>
  axis === "time" ? fmtDuration(v) : axis === "tokens" ? fmtCount(v) : String(v);

interface Built {
  chart: uPlot;
  key: string;
  panel: Panel;
}

/** The charts of the page, each in its own element under `root`. */
export class Charts {
  #built = new Map<string, Built>();
  #boxes = new Map<string, HTMLElement>();
  /** Points drawn per panel at the last update (non-null y values over all series). */
  readonly plotted: Record<string, number> = {};

  constructor(root: HTMLElement) {
    for (const p of PANELS) {
      const box = document.createElement("section");
      box.className = "panel";
      box.dataset.panel = p.id;
      const h = document.createElement("h3");
      h.textContent = p.title;
      box.append(h);
      root.append(box);
      this.#boxes.set(p.id, box);
    }
    addEventListener("resize", () => {
      for (const b of this.#built.values()) b.chart.setSize(this.#size(b.panel.id));
    });
  }

  #size(id: string): { width: number; height: number } {
    return { width: Math.max(240, this.#boxes.get(id)!.clientWidth - 16), height: 220 };
  }

  /** Draws every panel for `view`. */
  update(view: View): void {
    for (const panel of PANELS) this.#draw(panel, view);
  }

  #draw(panel: Panel, view: View): void {
    const series: uPlot.Series[] = [{ label: X_LABELS[view.axis] }];
    const curves: [number[], number[]][] = [];
    for (const { run, color } of view.runs) {
      for (const line of panel.lines) {
        let [xs, ys] = curve(run, line, view.axis);
        if (view.log) {
          // A log scale cannot show 0 (the lr at step 1) or below.
          const keep = ys.map((y) => y > 0);
          xs = xs.filter((_, i) => keep[i]);
          ys = ys.filter((_, i) => keep[i]);
        }
        const base = {
          label: `${run.name} ${line.label}`,
          dash: line.dash,
          spanGaps: true,
          points: { show: line.points ?? false, size: 5 },
          value: (_u: uPlot, v: number | null) => v === null ? "–" : panel.format(v),
        };
        if (line.smooth && view.smoothing > 0) {
          curves.push([xs, ys], [xs, smooth(ys, view.smoothing)]);
          series.push(
            { ...base, label: `${base.label} (raw)`, stroke: `${color}40`, width: 1 },
            { ...base, stroke: color, width: 1.6 },
          );
        } else {
          curves.push([xs, ys]);
          series.push({ ...base, stroke: color, width: 1.6 });
        }
      }
    }
    const data = align(curves) as uPlot.AlignedData;
    this.plotted[panel.id] = data.slice(1).reduce(
      (n, ys) => n + (ys as (number | null)[]).filter((v) => v !== null).length,
      0,
    );
    const key = JSON.stringify([series.map((s) => [s.label, s.stroke]), view.axis, view.log]);
    const built = this.#built.get(panel.id);
    if (built && built.key === key) {
      built.chart.setData(data);
      return;
    }
    built?.chart.destroy();
    const opts: uPlot.Options = {
      ...this.#size(panel.id),
      series,
      scales: { x: { time: false }, y: { distr: view.log ? 3 : 1 } },
      axes: [
        {
          label: X_LABELS[view.axis],
          values: (_u, vals) => vals.map(xFormat(view.axis)),
          incrs: view.axis === "time" ? undefined : WHOLE_STEPS,
        },
        { values: (_u, vals) => vals.map(panel.format), size: 64 },
      ],
      legend: { show: false },
      cursor: { sync: { key: "sltrain" } },
    };
    const chart = new uPlot(opts, data, this.#boxes.get(panel.id)!);
    this.#built.set(panel.id, { chart, key, panel });
  }
}
