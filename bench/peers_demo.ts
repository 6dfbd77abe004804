/**
 * Peer matmul demo: runs every peer at 256³ and 1024³ (NN by default) and prints a table.
 *
 * Usage (from the repo root):
 *   DENO_WEBGPU_BACKEND=vulkan deno run -A bench/peers_demo.ts [--layouts=NN,NT,TN]
 *     [--sizes=256,1024 | --shapes=2048x512x1376,...] [--peers=tfjs-wasm,...] [--max-seconds=10]
 *
 * Cells whose predicted time (from the same peer+layout at an earlier, smaller shape) exceeds
 * `--max-seconds` per matmul are reported as skipped.
 *
 * @module
 */
import {
  benchPeerMatmul,
  closePeers,
  type Layout,
  type PeerName,
  PEERS,
  peerVersions,
} from "./peers.ts";

/** Parses `--name=value` flags. */
function flag(name: string): string | undefined {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a?.slice(name.length + 3);
}

/** Entry point of the demo. */
async function main(): Promise<void> {
  const layouts = (flag("layouts") ?? "NN").split(",") as Layout[];
  const peers = (flag("peers")?.split(",") as PeerName[] | undefined) ?? [...PEERS];
  const maxSeconds = Number(flag("max-seconds") ?? 10);
  const shapes: [number, number, number][] = flag("shapes")
    ? flag("shapes")!.split(",").map((s) => s.split("x").map(Number) as [number, number, number])
    : (flag("sizes") ?? "256,1024").split(",").map(Number).map((s) => [s, s, s]);

  console.log("versions:", JSON.stringify(await peerVersions()));
  const header = "| peer | shape (m×k×n) | layout | GFLOP/s | median ms | reps×inner | note |";
  const rows: string[] = [header, "|---|---|---|---|---|---|---|"];
  const t0 = performance.now();
  // Best GFLOP/s seen per peer+layout, to skip cells that would blow the time cap.
  const seen = new Map<string, number>();
  for (const [m, k, n] of shapes) {
    for (const layout of layouts) {
      for (const peer of peers) {
        const key = `${peer}/${layout}`;
        const r = await benchPeerMatmul(peer, m, k, n, layout, {
          maxSeconds,
          expectGflops: seen.get(key),
        });
        if (r.gflops) seen.set(key, Math.max(seen.get(key) ?? 0, r.gflops));
        const row = r.error
          ? `| ${peer} | ${m}×${k}×${n} | ${layout} | – | – | – | ERROR: ${r.error} |`
          : `| ${peer} | ${m}×${k}×${n} | ${layout} | ${r.gflops!.toFixed(2)} | ${
            r.medianMs!.toFixed(2)
          } | ${r.reps}×${r.inner} | ${r.note}; max rel err ${r.maxRelErr!.toExponential(1)} |`;
        console.error(row); // progress
        rows.push(row);
      }
    }
  }
  console.log(rows.join("\n"));
  console.log(`total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  closePeers(); // jax-js's wasm workers would otherwise keep the process alive
}

if (import.meta.main) await main();
