/// <reference lib="dom" />
/**
 * The dashboard's tables: the summary (one row per run), the settings side by side (rows that
 * differ between runs marked), and the latest events.
 * @module
 */
import { fmtBytes, fmtCount, fmtDuration } from "../../cli/format.ts";
import {
  EVENT_KINDS,
  flatSettings,
  type RunView,
  settingsOf,
  summarize,
  type SummaryRow,
} from "./model.ts";

type Cell = string | Node;

/** A table element from a header and rows of text (or of elements). */
function table(header: readonly Cell[], rows: readonly (readonly Cell[])[]): HTMLElement {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of header) {
    const th = document.createElement("th");
    th.append(h);
    head.append(th);
  }
  const body = t.createTBody();
  for (const r of rows) {
    const tr = body.insertRow();
    for (const c of r) tr.insertCell().append(c);
  }
  return t;
}

const opt = (v: number | null, f: (v: number) => string) => v === null ? "–" : f(v);

/** A run's name with its color swatch. */
export function runLabel(name: string, color: string): HTMLElement {
  const span = document.createElement("span");
  const dot = document.createElement("i");
  dot.className = "swatch";
  dot.style.background = color;
  span.append(dot, name);
  return span;
}

/** The summary table: what each run reached, how fast, in how much memory. */
export function summaryTable(runs: readonly { run: RunView; color: string }[]): HTMLElement {
  const rows = runs.map(({ run, color }) => {
    const s: SummaryRow = summarize(run);
    return [
      runLabel(s.name, color),
      s.method,
      s.status,
      s.steps === null ? `${s.step}` : `${s.step} / ${s.steps}`,
      s.params ? `${fmtCount(s.params.trainable)} / ${fmtCount(s.params.total)}` : "–",
      opt(s.trainLoss, (v) => v.toFixed(4)),
      opt(s.valLoss, (v) => v.toFixed(4)),
      opt(s.valPpl, (v) => v.toFixed(2)),
      opt(s.tokensPerSec, (v) => `${Math.round(v)}`),
      opt(s.peakBytes, fmtBytes),
      opt(s.gradNorm, (v) => v.toPrecision(3)),
      opt(s.seconds, fmtDuration),
    ];
  });
  return table(
    [
      "run",
      "method",
      "status",
      "step",
      "trainable / params",
      "train loss",
      "val loss",
      "val ppl",
      "tok/s (median)",
      "peak mem",
      "grad norm",
      "time",
    ],
    rows,
  );
}

/** The settings of every run side by side; rows whose values differ are marked. */
export function settingsTable(runs: readonly { run: RunView; color: string }[]): HTMLElement {
  const flat = runs.map(({ run }) => {
    const s = settingsOf(run);
    return s ? flatSettings(s) : {};
  });
  const differs = (k: string) => new Set(flat.map((f) => f[k])).size > 1;
  // What tells the runs apart first.
  const all = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  const keys = [...all.filter(differs), ...all.filter((k) => !differs(k))];
  const t = table(
    ["setting", ...runs.map(({ run, color }) => runLabel(run.name, color))],
    keys.map((k) => [k, ...flat.map((f) => f[k] ?? "–")]),
  );
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    if (differs(keys[i])) tr.classList.add("differs");
  });
  return t;
}

/** Fields of an event worth showing besides its kind and step. */
function eventDetail(r: Record<string, unknown>): string {
  const parts: string[] = [];
  if (typeof r.seconds === "number") parts.push(`${r.seconds.toFixed(2)} s`);
  if (typeof r.matrices === "number") parts.push(`${r.matrices} matrices`);
  if (typeof r.cut === "number") parts.push(`${r.cut} records cut`);
  if (Array.isArray(r.nonfinite)) parts.push(`non-finite: ${r.nonfinite.slice(0, 3).join(", ")}`);
  if (r.loss !== undefined && r.kind !== "train") parts.push(`loss ${r.loss}`);
  return parts.join(", ");
}

/** The latest `limit` events of all runs, newest first, with each kind's count per run. */
export function eventsTable(
  runs: readonly { run: RunView; color: string }[],
  limit = 30,
): HTMLElement {
  const events = runs.flatMap(({ run, color }) =>
    run.records.filter((r) => EVENT_KINDS.has(r.kind)).map((r) => ({ r, run, color }))
  );
  events.sort((a, b) => (b.r.time ?? "").localeCompare(a.r.time ?? ""));
  if (events.length === 0) {
    return Object.assign(document.createElement("p"), { textContent: "none" });
  }
  return table(
    ["run", "step", "event", "detail", "time"],
    events.slice(0, limit).map(({ r, run, color }) => [
      runLabel(run.name, color),
      String(r.step),
      r.kind,
      eventDetail(r),
      r.time ? new Date(r.time).toLocaleTimeString() : "–",
    ]),
  );
}
