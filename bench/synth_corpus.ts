/**
 * A large synthetic-plus-real corpus for measuring prepare.ts and shard streaming at scale:
 * JSONL files of documents that mix shuffled Brown-corpus paragraphs with generated lines
 * (numbers, names, dates), written under a folder of your choice. Deterministic for a seed.
 *
 * Usage: `deno run -A bench/synth_corpus.ts --out /tmp/big --bytes 2e9 [--files 8] [--seed 1]`
 * @module
 */
import { parseArgs } from "node:util";
import { loadBrown } from "../data/brown.ts";
import { Rng } from "../core/rng.ts";

const { values: f } = parseArgs({
  options: {
    out: { type: "string" },
    bytes: { type: "string", default: "2e9" },
    files: { type: "string", default: "8" },
    seed: { type: "string", default: "1" },
  },
});
if (!f.out) throw new Error("--out is required");
const total = Number(f.bytes);
const files = Number(f.files);
const rng = new Rng(Number(f.seed));
const paragraphs = (await loadBrown()).flatMap((d) => d.text.split(/\n+/)).filter((p) => p.trim());
const CITIES = ["Atlanta", "Boston", "Dallas", "Denver", "Fresno", "Omaha", "Reno", "Tulsa"];
const ITEMS = ["valves", "crates", "ledgers", "lamps", "barrels", "cables", "tickets", "maps"];
const pick = <T>(xs: readonly T[]) => xs[rng.nextInt(xs.length)];

function synthetic(): string {
  const day = String(1 + rng.nextInt(28)).padStart(2, "0");
  const month = String(1 + rng.nextInt(12)).padStart(2, "0");
  return `Order ${rng.nextInt(1e6)} shipped ${rng.nextInt(500)} ${pick(ITEMS)} from ${
    pick(CITIES)
  } to ${pick(CITIES)} on 19${50 + rng.nextInt(50)}-${month}-${day} at $${
    (rng.nextInt(1e5) / 100).toFixed(2)
  } each.`;
}

/** One document: 4-40 paragraphs, about a third of them generated. */
function document(): string {
  const n = 4 + rng.nextInt(37);
  const parts: string[] = [];
  for (let i = 0; i < n; i++) parts.push(rng.nextInt(3) === 0 ? synthetic() : pick(paragraphs));
  return parts.join("\n");
}

await Deno.mkdir(f.out, { recursive: true });
const enc = new TextEncoder();
let written = 0;
for (let k = 0; k < files; k++) {
  const target = Math.round((total * (k + 1)) / files);
  using file = await Deno.open(`${f.out}/part-${String(k).padStart(3, "0")}.jsonl`, {
    write: true,
    create: true,
    truncate: true,
  });
  const lines: string[] = [];
  let pending = 0;
  while (written + pending < target) {
    const line = JSON.stringify({ text: document() }) + "\n";
    lines.push(line);
    pending += enc.encode(line).length;
    if (pending > 1 << 24 || written + pending >= target) {
      const bytes = enc.encode(lines.join(""));
      for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
      written += bytes.length;
      lines.length = 0;
      pending = 0;
    }
  }
}
console.log(`${f.out}: ${files} JSONL files, ${(written / 1e9).toFixed(2)} GB`);
