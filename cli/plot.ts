/**
 * A dependency-free SVG line plot of loss curves (train and validation, several runs), with an
 * optional second quantity (the learning rate) on its own axis at the right.
 * @module
 */

/** One curve. */
export interface Series {
  /** Legend label. */
  label: string;
  /** (step, value) points. */
  points: [number, number][];
  /** Draw dashed (e.g. validation). */
  dashed?: boolean;
  /** Color index shared by a run's train and validation curves. */
  color?: number;
  /** Plot against the right-hand axis (drawn thin), e.g. the learning rate. */
  right?: boolean;
}

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"];

function niceTicks(lo: number, hi: number, n = 5): number[] {
  const span = hi - lo || 1;
  const step0 = span / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) {
    ticks.push(+v.toPrecision(6));
  }
  return ticks;
}

function esc(s: string): string {
  return s.replace(/[<>&"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

const finitePoints = (s: Series) => s.points.filter(([, y]) => Number.isFinite(y));

/** The padded value range of `series` (0..1 when empty). */
function range(series: readonly Series[]): [number, number] {
  const ys = series.flatMap((s) => finitePoints(s).map((p) => p[1]));
  const y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  const pad = (y1 - y0) * 0.05 || Math.abs(y0) * 0.05 || 0.5;
  return [y0 - pad, y1 + pad];
}

/**
 * Renders the curves as a standalone SVG document: `yLabel` on the left axis, and the series
 * marked `right` against a right-hand axis labelled `rightLabel`.
 */
export function lossPlotSvg(
  series: readonly Series[],
  title: string,
  yLabel = "loss",
  rightLabel = "lr",
): string {
  const hasRight = series.some((s) => s.right);
  const W = 760, H = 440, L = 64, R = hasRight ? 250 : 180, T = 40, B = 48;
  const xs = series.flatMap((s) => finitePoints(s).map((p) => p[0]));
  const x0 = Math.min(0, ...xs), x1 = Math.max(1, ...xs);
  const [ylo, yhi] = range(series.filter((s) => !s.right));
  const [rlo, rhi] = range(series.filter((s) => s.right));
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => T + (1 - (y - ylo) / (yhi - ylo)) * (H - T - B);
  const sr = (y: number) => T + (1 - (y - rlo) / (rhi - rlo)) * (H - T - B);
  const plotRight = W - R;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${L}" y="24" font-size="15">${esc(title)}</text>`,
  ];
  for (const t of niceTicks(ylo, yhi)) {
    out.push(`<line x1="${L}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/>`);
    out.push(`<text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`);
  }
  if (hasRight) {
    for (const t of niceTicks(rlo, rhi)) {
      out.push(
        `<text x="${plotRight + 6}" y="${sr(t) + 4}" fill="#666">${+t.toPrecision(3)}</text>`,
      );
    }
    const mid = (T + H - B) / 2;
    out.push(
      `<text x="${plotRight + 58}" y="${mid}" transform="rotate(90 ${
        plotRight + 58
      } ${mid})" text-anchor="middle" fill="#666">${esc(rightLabel)}</text>`,
    );
  }
  for (const t of niceTicks(x0, x1)) {
    out.push(`<text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${t}</text>`);
  }
  out.push(
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${
      H - T - B
    }" fill="none" stroke="#333"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">step</text>`,
    `<text x="16" y="${(T + H - B) / 2}" transform="rotate(-90 16 ${
      (T + H - B) / 2
    })" text-anchor="middle">${esc(yLabel)}</text>`,
  );
  const legendX = plotRight + (hasRight ? 80 : 12);
  series.forEach((s, i) => {
    const color = COLORS[(s.color ?? i) % COLORS.length];
    const p = finitePoints(s);
    const y = s.right ? sr : sy;
    const style = `stroke="${color}" stroke-width="${s.right ? 1 : 1.6}"${
      s.dashed ? ' stroke-dasharray="6 4"' : s.right ? ' stroke-dasharray="1 3"' : ""
    }`;
    if (p.length > 0) {
      const d = p.map(([px, py], j) => `${j ? "L" : "M"}${sx(px).toFixed(1)},${y(py).toFixed(1)}`)
        .join("");
      out.push(`<path d="${d}" fill="none" ${style}/>`);
      if (p.length === 1) {
        out.push(`<circle cx="${sx(p[0][0])}" cy="${y(p[0][1])}" r="3" fill="${color}"/>`);
      }
    }
    const ly = T + 14 + i * 18;
    out.push(
      `<line x1="${legendX}" x2="${legendX + 24}" y1="${ly - 4}" y2="${ly - 4}" ${style}/>`,
      `<text x="${legendX + 30}" y="${ly}">${esc(s.label)}</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n");
}
