/**
 * What train.ts leaves to look at while it runs: `loss.svg` and `dashboard.html` redrawn at every
 * evaluation (whole files, never a temporary one left behind), and `--dashboard` on a port that is
 * taken refused before training, naming the port and the way out.
 */
import assert from "node:assert/strict";
import { main } from "../train.ts";

async function dataFile(dir: string): Promise<string> {
  const path = `${dir}/train.jsonl`;
  await Deno.writeTextFile(
    path,
    Array.from(
      { length: 6 },
      (_, i) =>
        JSON.stringify({ text: `Document ${i}. The jury said the election was fair. `.repeat(8) }),
    )
      .join("\n") + "\n",
  );
  return path;
}

const SHORT = ["--batch", "2", "--seq", "16", "--eval-tokens", "64", "--log-every", "1"];

/** The last step of the data a standalone dashboard.html carries. */
function lastStep(html: string): number {
  const json = /id="sltrain-data" type="application\/json">(.*?)<\/script>/s.exec(html)![1];
  const records = JSON.parse(json).runs[0].records as { step: number }[];
  return Math.max(...records.map((r) => r.step));
}

Deno.test("train.ts redraws loss.svg and dashboard.html at every evaluation", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-plots-" });
  const out = `${tmp}/run`;
  const seen = new Map<number, { svg: string; html: string; files: string[] }>();
  // A private token cache, so the test neither reads nor fills the user's.
  const cache = Deno.env.get("SLTRAIN_CACHE");
  Deno.env.set("SLTRAIN_CACHE", `${tmp}/cache`);
  try {
    const data = await dataFile(tmp);
    const code = await main([
      ...SHORT,
      "--steps",
      "4",
      "--eval-every",
      "2",
      "--data",
      data,
      "--out",
      out,
    ], {
      onStep: (step) => {
        seen.set(step, {
          svg: Deno.readTextFileSync(`${out}/loss.svg`),
          html: Deno.readTextFileSync(`${out}/dashboard.html`),
          files: [...Deno.readDirSync(out)].map((e) => e.name).sort(),
        });
      },
    });
    assert.equal(code, 0);
    // After step 1 only step 0's evaluation is drawn; after step 2's, steps 0–2.
    assert.equal(lastStep(seen.get(1)!.html), 0);
    assert.equal(lastStep(seen.get(2)!.html), 2);
    assert.equal(seen.get(3)!.svg, seen.get(2)!.svg, "no redraw between evaluations");
    assert.notEqual(seen.get(2)!.svg, seen.get(1)!.svg);
    for (const [step, s] of seen) {
      assert.match(s.svg, /^<svg[\s\S]*sltrain lr[\s\S]*<\/svg>$/, `loss.svg after step ${step}`);
      assert.ok(!s.files.some((f) => f.includes(".tmp")), `temporary files: ${s.files}`);
    }
    assert.equal(lastStep(await Deno.readTextFile(`${out}/dashboard.html`)), 4);
  } finally {
    if (cache === undefined) Deno.env.delete("SLTRAIN_CACHE");
    else Deno.env.set("SLTRAIN_CACHE", cache);
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("train.ts --dashboard on a port in use: an error naming it and how to choose another, before training, leaving nothing", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-plots-" });
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (busy.addr as Deno.NetAddr).port;
  try {
    const data = await dataFile(tmp);
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "train.ts",
        ...SHORT,
        ...["--steps", "2", "--data", data, "--out", `${tmp}/run`, "--dashboard", String(port)],
      ],
      env: { SLTRAIN_CACHE: `${tmp}/cache` },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(r.stderr);
    assert.equal(r.code, 2, err);
    assert.match(
      err,
      new RegExp(
        `error: --dashboard: port ${port} on 127\\.0\\.0\\.1 is already in use.*choose another ` +
          "with --dashboard PORT, or 0 for any free port",
      ),
    );
    assert.doesNotMatch(err, /step 0: val loss/, "no training started");
    assert.equal(await Deno.stat(`${tmp}/run`).then(() => true, () => false), false);
  } finally {
    busy.close();
    await Deno.remove(tmp, { recursive: true });
  }
});
