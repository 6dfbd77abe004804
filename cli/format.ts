/**
 * Human-readable numbers and plain-text tables for the CLI.
 * @module
 */

/** Bytes as `12.3 MB` (decimal units, as the paper's estimates). */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : n >= 100 ? 0 : n >= 10 ? 1 : 2)} ${units[i]}`;
}

/** A count as `43.53M`, `1.20k`. */
export function fmtCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(2)}k`;
  return `${n}`;
}

/** Seconds as `1h02m`, `3m05s`, `12.3s`. */
export function fmtDuration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "–";
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(Math.round(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

/** A table with a header row, columns padded to their widths (numbers right-aligned). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, j) => Math.max(h.length, ...rows.map((r) => (r[j] ?? "").length)));
  const isNum = header.map((_, j) =>
    rows.every((r) => /^[-+]?[\d.,]+[%×kMBGT]?( ?[kMGT]?B)?$|^–$/.test(r[j] ?? ""))
  );
  const line = (cells: readonly string[]) =>
    cells.map((c, j) => (isNum[j] ? c.padStart(widths[j]) : c.padEnd(widths[j]))).join("  ");
  return [line(header), widths.map((w) => "─".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}
