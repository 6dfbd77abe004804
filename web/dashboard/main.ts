/// <reference lib="dom" />
/**
 * The dashboard page: runs from the server's event stream (`api/stream`: a snapshot, then each
 * run's new records as they are logged), or from the data a standalone `dashboard.html` carries;
 * controls for the x axis, smoothing and log scale; a legend that hides and shows runs; the
 * charts and tables. It requests nothing but its own server's stream.
 *
 * For tests and benchmarks, `globalThis.sltrainDashboard` tells what is drawn: points per panel,
 * and when each render happened with the last step of each run it showed.
 * @module
 */
import { Charts, COLORS } from "./charts.ts";
import {
  applyDelta,
  type RunDelta,
  type RunView,
  settingsOf,
  skippedNotice,
  type Snapshot,
  type XAxis,
} from "./model.ts";
import { eventsTable, runLabel, settingsTable, summaryTable } from "./tables.ts";

/** What the page tells tests (see the module doc). */
interface DashboardHook {
  /** Points drawn per panel (loss, lr, tokens, grad, memory). */
  plotted: Record<string, number>;
  /** Each render: when (Date.now()) and the last step of each run it drew. */
  renders: { at: number; steps: Record<string, number> }[];
  /** The connection line, as shown. */
  status: string;
  /** The notices, as shown. */
  notices: string[];
  /** Milliseconds spent in renders so far (the page's own cost). */
  renderMs: number;
}

const state = {
  title: "sltrain",
  runs: new Map<string, RunView>(),
  notRuns: [] as string[],
  hidden: new Set<string>(),
  axis: "step" as XAxis,
  smoothing: 0.6,
  log: false,
  status: "",
};

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (string | Node)[]
): HTMLElementTagNameMap[K] {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
}

// Layout.
const heading = el("h1");
const status = el("span", { className: "status" });
const axisSelect = el(
  "select",
  { title: "x axis" },
  ...(["step", "tokens", "time"] as const).map((v) =>
    el("option", { value: v }, v === "time" ? "wall time" : v)
  ),
);
const smoothing = el("input", {
  type: "range",
  min: "0",
  max: "0.99",
  step: "0.01",
  value: String(state.smoothing),
  title: "smoothing (exponential moving average weight)",
});
const smoothingValue = el("output");
const logScale = el("input", { type: "checkbox", title: "log scale on the y axes" });
const controls = el(
  "div",
  { className: "controls" },
  el("label", {}, "x axis ", axisSelect),
  el("label", {}, "smoothing ", smoothing, smoothingValue),
  el("label", {}, logScale, " log scale"),
  status,
);
const notices = el("div", { className: "notices" });
const legend = el("div", { className: "legend" });
const chartsBox = el("div", { className: "charts" });
const summaryBox = el("div", { className: "table" });
const settingsBox = el("div", { className: "table" });
const eventsBox = el("div", { className: "table" });
document.body.append(
  el("header", {}, heading, controls),
  notices,
  legend,
  chartsBox,
  el("h2", {}, "Summary"),
  summaryBox,
  el("h2", {}, "Events"),
  eventsBox,
  el("h2", {}, "Settings"),
  settingsBox,
);
const charts = new Charts(chartsBox);
const hook: DashboardHook = {
  plotted: charts.plotted,
  renders: [],
  status: "",
  notices: [],
  renderMs: 0,
};
(globalThis as unknown as { sltrainDashboard: DashboardHook }).sltrainDashboard = hook;

axisSelect.onchange = () => {
  state.axis = axisSelect.value as XAxis;
  schedule();
};
smoothing.oninput = () => {
  state.smoothing = Number(smoothing.value);
  schedule();
};
logScale.onchange = () => {
  state.log = logScale.checked;
  schedule();
};

/** Every run in arrival order with its color. */
function colored(): { run: RunView; color: string }[] {
  return [...state.runs.values()].map((run, i) => ({ run, color: COLORS[i % COLORS.length] }));
}

let pending = false;
/** What the settings table was last drawn from (it changes rarely and is the largest). */
let settingsKey = "";

/** Renders once after the current burst of messages. */
function schedule(): void {
  if (pending) return;
  pending = true;
  setTimeout(render, 0);
}

function render(): void {
  pending = false;
  const t0 = performance.now();
  const all = colored();
  const shown = all.filter(({ run }) => !state.hidden.has(run.id));
  document.title = heading.textContent = state.title;
  smoothingValue.textContent = state.smoothing.toFixed(2);
  status.textContent = hook.status = state.status;

  const lines = [
    ...state.notRuns,
    skippedNotice([...state.runs.values()]) ?? "",
    state.runs.size === 0 ? "No run has logged anything yet." : "",
  ].filter(Boolean);
  hook.notices = lines;
  notices.replaceChildren(...lines.map((t) => el("p", {}, t)));

  legend.replaceChildren(...all.map(({ run, color }) => {
    const box = el("input", { type: "checkbox", checked: !state.hidden.has(run.id) });
    box.onchange = () => {
      if (box.checked) state.hidden.delete(run.id);
      else state.hidden.add(run.id);
      schedule();
    };
    return el("label", { className: "chip" }, box, runLabel(run.name, color));
  }));

  charts.update({ axis: state.axis, smoothing: state.smoothing, log: state.log, runs: shown });
  summaryBox.replaceChildren(summaryTable(all));
  eventsBox.replaceChildren(eventsTable(shown));
  const key = JSON.stringify(all.map(({ run, color }) => [run.name, color, settingsOf(run)]));
  if (key !== settingsKey) {
    settingsKey = key;
    settingsBox.replaceChildren(settingsTable(all));
  }
  hook.renders.push({
    at: Date.now(),
    steps: Object.fromEntries(
      all.map(({ run }) => [run.name, run.records.reduce((m, r) => Math.max(m, r.step), 0)]),
    ),
  });
  if (hook.renders.length > 1000) hook.renders.splice(0, 500);
  hook.renderMs += performance.now() - t0;
}

function load(snap: Snapshot): void {
  state.title = snap.title;
  state.notRuns = snap.notRuns;
  state.runs.clear();
  for (const d of snap.runs) applyDelta(state.runs, d);
  schedule();
}

function connect(): void {
  const stream = new EventSource("api/stream");
  state.status = "connecting…";
  stream.addEventListener("snapshot", (e) => {
    state.status = "live";
    load(JSON.parse((e as MessageEvent).data));
  });
  stream.addEventListener("run", (e) => {
    applyDelta(state.runs, JSON.parse((e as MessageEvent).data) as RunDelta);
    schedule();
  });
  stream.onerror = () => {
    // EventSource reconnects by itself; the server sends a fresh snapshot when it does.
    state.status = "server not reachable (the run ended?): showing the last data received; " +
      "retrying";
    schedule();
  };
}

const embedded = document.getElementById("sltrain-data");
if (embedded) {
  const snap = JSON.parse(embedded.textContent ?? "{}") as Snapshot & {
    savedAt: string;
    source: string;
  };
  load(snap);
  state.status = `saved ${
    new Date(snap.savedAt).toLocaleString()
  }; live updates: deno task dashboard ${snap.source}`;
} else connect();
schedule();
