/**
 * The fault table: every injected fault (out of memory, device lost, disk full) in every phase
 * (training step, evaluation, checkpoint write) of a tiny train.ts run, and a real full disk (a
 * 8 MiB tmpfs, mounted when this runs as root on Linux); for each, the message, the exit code,
 * whether the last checkpoint and the log are intact, and whether `--resume` ends bit for bit
 * where an uninterrupted run ends. Prints a Markdown table.
 *
 *   deno run -A bench/fault_table.ts [--tmpfs /mnt/sltrain-full]
 * @module
 */
import { parseArgs } from "node:util";
import { readLog } from "../cli/runlog.ts";
import { readSafetensors } from "../cli/safetensors.ts";

const { values: f } = parseArgs({ options: { tmpfs: { type: "string" } } });
const ARGS = [
  ...["--steps", "6", "--eval-every", "2", "--log-every", "1", "--batch", "2", "--seq", "16"],
  ...["--eval-tokens", "64"],
];
const tmp = await Deno.makeTempDir({ prefix: "sltrain-faults-" });
const data = `${tmp}/train.jsonl`;
await Deno.writeTextFile(
  data,
  Array.from({ length: 6 }, (_, i) => JSON.stringify({ text: `Text ${i}. `.repeat(40) })).join(
    "\n",
  ),
);
const env = { SLTRAIN_CACHE: `${tmp}/cache` };

async function train(out: string, extra: string[], fault?: string) {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train.ts", ...ARGS, "--data", data, "--out", out, ...extra],
    env: fault ? { ...env, SLTRAIN_FAULT: fault } : env,
    stdout: "null",
    stderr: "piped",
  }).output();
  return { code: r.code, err: new TextDecoder().decode(r.stderr) };
}

async function fingerprint(dir: string): Promise<string> {
  const ck = await readSafetensors(`${dir}/checkpoint.safetensors`);
  const parts = Object.keys(ck.tensors).sort().map((k) => ck.tensors[k].data);
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    bytes.set(new Uint8Array(p.buffer, p.byteOffset, p.byteLength), o);
    o += p.byteLength;
  }
  const losses = (await readLog(`${dir}/log.jsonl`)).records.filter((r) => r.kind === "train")
    .map((r) => `${r.step}:${r.loss}`).join(",");
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return `${new Uint8Array(d).slice(0, 8).join(".")}|${losses}`;
}

async function intact(dir: string): Promise<string> {
  try {
    const step = (await readSafetensors(`${dir}/checkpoint.safetensors`)).metadata.step;
    await readLog(`${dir}/log.jsonl`);
    const temps = [...Deno.readDirSync(dir)].filter((e) => e.name.includes(".tmp"));
    return `checkpoint of step ${step} verifies, log parses${temps.length ? ", temp left!" : ""}`;
  } catch (e) {
    return `NOT intact: ${(e as Error).message}`;
  }
}

const ref = `${tmp}/ref`;
await train(ref, []);
const want = await fingerprint(ref);
const rows: string[] = [
  "| fault | phase | message | exit | checkpoint and log | `--resume` |",
  "| --- | --- | --- | --- | --- | --- |",
];

/** One fault's row; `freed` is where the run folder resumes (a disk with space again). */
async function row(label: string, phase: string, out: string, fault?: string, freed = out) {
  const r = await train(out, [], fault);
  const msg = r.err.split("\n").find((l) => l.startsWith("error: ")) ?? "(none)";
  const kept = await intact(out);
  if (freed !== out) {
    await Deno.mkdir(freed);
    for (const e of Deno.readDirSync(out)) {
      await Deno.copyFile(`${out}/${e.name}`, `${freed}/${e.name}`);
    }
  }
  const again = await train(freed, ["--resume"]);
  const same = again.code === 0 && await fingerprint(freed) === want;
  rows.push(
    `| ${label} | ${phase} | ${
      msg.replaceAll(tmp, "<tmp>").replaceAll("|", "\\|")
    } | ${r.code} | ${kept} | ${same ? "bit-exact" : `DIFFERS (exit ${again.code})`} |`,
  );
  console.error(rows.at(-1));
}

try {
  for (const kind of ["oom", "device-lost", "enospc"]) {
    // The second occurrence of each phase, so a checkpoint (step 2) exists before it.
    for (const [phase, n] of [["step", 3], ["eval", 3], ["checkpoint", 2]] as const) {
      await row(kind, phase, `${tmp}/${kind}-${phase}`, `${kind}@${phase}:${n}`);
    }
  }
  if (f.tmpfs) {
    // A real full disk: 8 MiB holds one 5 MB checkpoint, not the next one beside it.
    await Deno.mkdir(f.tmpfs, { recursive: true });
    const mount = await new Deno.Command("mount", {
      args: ["-t", "tmpfs", "-o", "size=8m", "tmpfs", f.tmpfs],
    }).output();
    if (!mount.success) throw new Error(`mount: ${new TextDecoder().decode(mount.stderr)}`);
    try {
      // Resumed from a copy on a disk with space, as a user would after freeing some.
      const run = `${f.tmpfs}/run`;
      await row("real ENOSPC (8 MiB tmpfs)", "checkpoint", run, undefined, `${tmp}/freed`);
    } finally {
      await new Deno.Command("umount", { args: [f.tmpfs] }).output();
    }
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
console.log(rows.join("\n"));
