/// <reference lib="dom" />
/**
 * The demo's loss curve as an SVG element: training loss per step as a line, validation loss as
 * dots, axes with a few ticks. Plain DOM, no plotting library.
 * @module
 */

const W = 640, H = 260, PAD = { l: 48, r: 12, t: 12, b: 28 };
const SVG = "http://www.w3.org/2000/svg";

function el(name: string, attrs: Record<string, string | number>, text?: string): SVGElement {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Training losses (step i+1 for entry i) and validation (step, loss) pairs over `steps` steps. */
export function lossChart(train: number[], val: [number, number][], steps: number): SVGElement {
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "loss curve" });
  const all = [...train, ...val.map((v) => v[1])].filter(Number.isFinite);
  const xMax = Math.max(steps, train.length, 1);
  const [lo, hi] = all.length ? [Math.min(...all), Math.max(...all)] : [0, 1];
  const span = hi - lo || 1;
  const x = (s: number) => PAD.l + (s / xMax) * (W - PAD.l - PAD.r);
  const y = (v: number) => PAD.t + (1 - (v - lo) / span) * (H - PAD.t - PAD.b);
  svg.append(
    el("line", { x1: PAD.l, y1: H - PAD.b, x2: W - PAD.r, y2: H - PAD.b, class: "axis" }),
    el("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: H - PAD.b, class: "axis" }),
  );
  for (let k = 0; k <= 4; k++) {
    const v = lo + (span * k) / 4;
    svg.append(
      el("text", { x: PAD.l - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, v.toFixed(2)),
    );
    const s = Math.round((xMax * k) / 4);
    svg.append(
      el("text", { x: x(s), y: H - 8, class: "tick", "text-anchor": "middle" }, String(s)),
    );
  }
  if (train.length > 1) {
    const pts = train.map((v, i) => `${x(i + 1).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points: pts, class: "train" }));
  }
  for (const [s, v] of val) svg.append(el("circle", { cx: x(s), cy: y(v), r: 4, class: "val" }));
  svg.append(
    el(
      "text",
      { x: W - PAD.r, y: PAD.t + 10, class: "legend", "text-anchor": "end" },
      "— train   ● validation",
    ),
  );
  return svg;
}
