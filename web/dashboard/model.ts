/**
 * The dashboard's data, with no DOM: the runs as the server (or a standalone page) hands them
 * over, the curves drawn from their log records against step, tokens or wall time, smoothing, the
 * summary and settings tables. Shared by the page and the Deno tests.
 * @module
 */

/** One record of a run's `log.jsonl` (README, "The run log"). */
export interface LogRecord {
  /** train, eval, start, refresh, refactor, merge, resume, skip, nonfinite. */
  kind: string;
  /** The optimizer step it belongs to. */
  step: number;
  /** ISO time it was written. */
  time?: string;
  /** Any other field. */
  [field: string]: unknown;
}

/** What the server sends about one run: everything (`reset`) or what is new since last time. */
export interface RunDelta {
  /** Stable id for the server's lifetime. */
  id: string;
  /** Display name: the folder, relative to the folder the server was given. */
  name: string;
  /** True when `records` replace every record known so far (first message, or a cut log). */
  reset: boolean;
  /**
   * Index in the run's records of `records[0]` (0 when `reset`): a page that already holds some
   * of them (a snapshot taken while they were sent) keeps one copy.
   */
  from: number;
  /** Complete records read since the last message (all of them when `reset`). */
  records: LogRecord[];
  /** Complete lines so far that were not log records (malformed, edited), left out. */
  skipped: number;
  /** True while the log ends in a line without its newline (torn by a kill), left out. */
  torn: boolean;
  /** The run's `summary.json` once written (a finished or interrupted run), else null. */
  summary: Record<string, unknown> | null;
}

/** A complete message: every run, and the folders given that hold none. */
export interface Snapshot {
  /** Page title. */
  title: string;
  /** Every run, each with `reset`. */
  runs: RunDelta[];
  /** One line per given folder that is not a run and holds none. */
  notRuns: string[];
}

/** A run as the page holds it. */
export interface RunView {
  /** Same as {@link RunDelta}. */
  id: string;
  /** Same as {@link RunDelta}. */
  name: string;
  /** Every record so far, in log order. */
  records: LogRecord[];
  /** Same as {@link RunDelta}. */
  skipped: number;
  /** Same as {@link RunDelta}. */
  torn: boolean;
  /** Same as {@link RunDelta}. */
  summary: Record<string, unknown> | null;
}

/** Applies a message to the runs the page holds (adding the run if new). */
export function applyDelta(runs: Map<string, RunView>, d: RunDelta): RunView {
  let run = runs.get(d.id);
  if (!run || d.reset) {
    run = { id: d.id, name: d.name, records: [], skipped: 0, torn: false, summary: null };
    runs.set(d.id, run);
  }
  const have = run.records.length - d.from;
  for (const r of d.records.slice(Math.max(0, have))) run.records.push(r);
  run.skipped = d.skipped;
  run.torn = d.torn;
  run.summary = d.summary;
  return run;
}

/** What the x axis counts. */
export type XAxis = "step" | "tokens" | "time";

/** A plotted quantity: which records hold it, under which field. */
export interface Metric {
  /** Record kind. */
  kind: "train" | "eval";
  /** Field of those records. */
  field: string;
}

/** The x of a record: its step, the training tokens so far, or seconds since the run's start. */
export function xOf(r: LogRecord, axis: XAxis, t0: number): number | null {
  if (axis === "step") return r.step;
  if (axis === "tokens") return typeof r.trainTokens === "number" ? r.trainTokens : null;
  const t = typeof r.time === "string" ? Date.parse(r.time) : NaN;
  return Number.isFinite(t) ? (t - t0) / 1000 : null;
}

/** When the run began: its first record's time (ms since the epoch), NaN when none has one. */
export function startTime(run: RunView): number {
  for (const r of run.records) {
    const t = typeof r.time === "string" ? Date.parse(r.time) : NaN;
    if (Number.isFinite(t)) return t;
  }
  return NaN;
}

/**
 * One curve of a run: (x, value) for each record of `metric.kind` with a finite value, x
 * increasing (a record whose x goes back, as after a resume that repeats steps, replaces what it
 * overlaps, so the curve is the run as it stands).
 */
export function curve(run: RunView, metric: Metric, axis: XAxis): [number[], number[]] {
  const t0 = startTime(run);
  const xs: number[] = [];
  const ys: number[] = [];
  for (const r of run.records) {
    if (r.kind !== metric.kind) continue;
    const y = r[metric.field];
    const x = xOf(r, axis, t0);
    if (typeof y !== "number" || !Number.isFinite(y) || x === null) continue;
    while (xs.length > 0 && xs[xs.length - 1] >= x) {
      xs.pop();
      ys.pop();
    }
    xs.push(x);
    ys.push(y);
  }
  return [xs, ys];
}

/**
 * Exponential moving average with TensorBoard's debiasing: s_k = w·s_{k−1} + (1 − w)·y_k from
 * s = 0, divided by 1 − w^(k+1), so the first points are not pulled toward zero. w = 0 returns the
 * values as they are; w must be in [0, 1).
 */
export function smooth(ys: readonly number[], weight: number): number[] {
  if (!(weight >= 0 && weight < 1)) throw new RangeError(`smoothing must be in [0, 1): ${weight}`);
  if (weight === 0) return ys.slice();
  let s = 0;
  let debias = 1;
  return ys.map((y) => {
    s = weight * s + (1 - weight) * y;
    debias *= weight;
    return s / (1 - debias);
  });
}

/**
 * Several curves on one sorted x axis, as uPlot takes them: [xs, ys₀, ys₁, …], each ys null
 * where its curve has no point at that x.
 */
export function align(curves: readonly [number[], number[]][]): (number | null)[][] {
  const xs = [...new Set(curves.flatMap(([x]) => x))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const out: (number | null)[][] = [xs];
  for (const [cx, cy] of curves) {
    const ys: (number | null)[] = new Array(xs.length).fill(null);
    cx.forEach((x, i) => ys[at.get(x)!] = cy[i]);
    out.push(ys);
  }
  return out;
}

/** The run's settings: from its summary.json when written, else its log's start record. */
export function settingsOf(run: RunView): Record<string, unknown> | null {
  const fromSummary = run.summary?.run;
  if (fromSummary && typeof fromSummary === "object") return fromSummary as Record<string, unknown>;
  const start = run.records.findLast((r) => r.kind === "start");
  return start && typeof start.run === "object" ? start.run as Record<string, unknown> : null;
}

/** Nested settings as dotted keys (`model.hidden`), values as text. */
export function flatSettings(
  settings: Record<string, unknown>,
  prefix = "",
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(settings)) {
    if (v && typeof v === "object" && !Array.isArray(v)) {
      Object.assign(out, flatSettings(v as Record<string, unknown>, `${prefix}${k}.`));
    } else out[`${prefix}${k}`] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}

/** One row of the summary table. */
export interface SummaryRow {
  /** Run name. */
  name: string;
  /** Method, or "?" before the settings are known. */
  method: string;
  /** finished, interrupted, or "running" (no summary.json yet: training, or stopped hard). */
  status: string;
  /** Last logged step. */
  step: number;
  /** Steps the run was set to. */
  steps: number | null;
  /** Trainable and total parameters. */
  params: { trainable: number; total: number } | null;
  /** Last training loss. */
  trainLoss: number | null;
  /** Last validation loss and its perplexity. */
  valLoss: number | null;
  valPpl: number | null;
  /** Median tokens/s over the train records. */
  tokensPerSec: number | null;
  /** Largest per-step peak of device bytes. */
  peakBytes: number | null;
  /** Gradient norm at the last train record. */
  gradNorm: number | null;
  /** Seconds from the first record to the last. */
  seconds: number | null;
}

function median(v: number[]): number | null {
  if (v.length === 0) return null;
  const s = v.slice().sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

const num = (v: unknown): number | null => typeof v === "number" && Number.isFinite(v) ? v : null;

/** The summary table's row of a run. */
export function summarize(run: RunView): SummaryRow {
  const settings = settingsOf(run);
  const train = run.records.filter((r) => r.kind === "train");
  const evals = run.records.filter((r) => r.kind === "eval");
  const start = run.records.findLast((r) => r.kind === "start");
  const lastTrain = train.at(-1);
  const lastEval = evals.at(-1);
  const t0 = startTime(run);
  const tEnd = Date.parse(run.records.at(-1)?.time ?? "");
  const peaks = train.map((r) => num(r.peakBytes)).filter((v): v is number => v !== null);
  return {
    name: run.name,
    method: typeof settings?.method === "string" ? settings.method : "?",
    status: run.summary ? (run.summary.interrupted ? "interrupted" : "finished") : "running",
    step: run.records.reduce((m, r) => Math.max(m, r.step), 0),
    steps: num(settings?.steps),
    params: start?.params as SummaryRow["params"] ??
      (run.summary?.params as SummaryRow["params"] ?? null),
    trainLoss: num(lastTrain?.loss),
    valLoss: num(lastEval?.valLoss),
    valPpl: num(lastEval?.valPpl),
    tokensPerSec: median(
      train.map((r) => num(r.tokensPerSec)).filter((v): v is number => v !== null),
    ),
    peakBytes: peaks.length ? Math.max(...peaks) : null,
    gradNorm: num(lastTrain?.gradNorm),
    seconds: Number.isFinite(t0) && Number.isFinite(tEnd) ? (tEnd - t0) / 1000 : null,
  };
}

/** The records that are events rather than measurements: refreshes, resets, resumes, skips. */
export const EVENT_KINDS: ReadonlySet<string> = new Set([
  "refresh",
  "refactor",
  "merge",
  "resume",
  "skip",
  "nonfinite",
]);

/** What the page says about lines it could not show, or null when there are none. */
export function skippedNotice(runs: readonly RunView[]): string | null {
  const parts = runs.filter((r) => r.skipped > 0 || r.torn).map((r) => {
    const what = [
      r.skipped > 0 ? `${r.skipped} malformed line${r.skipped === 1 ? "" : "s"}` : "",
      r.torn ? "a torn last line" : "",
    ].filter(Boolean).join(" and ");
    return `${r.name}: skipped ${what}`;
  });
  return parts.length ? `Not shown: ${parts.join("; ")}.` : null;
}
