/**
 * `./sltrain` covers the whole workflow: `sample`, `export` and `prepare` run their entry points
 * (here: each one's --help, and a real prepare), and an unknown command prints the usage.
 */
import assert from "node:assert/strict";

async function sltrain(...args: string[]) {
  const r = await new Deno.Command("sh", {
    args: ["./sltrain", ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

Deno.test("./sltrain sample|export|prepare run sample.ts, export.ts and prepare.ts", async () => {
  for (
    const [cmd, says] of [
      ["sample", /Generate text from a train\.ts checkpoint/],
      ["export", /Export a train\.ts checkpoint as a Hugging Face LLaMA folder/],
      ["prepare", /Tokenize a corpus into token shards/],
    ] as const
  ) {
    const r = await sltrain(cmd, "--help");
    assert.equal(r.code, 0, r.err);
    assert.match(r.out + r.err, says);
  }
  const tmp = await Deno.makeTempDir();
  try {
    const docs = ["One document.", "Another one.", "A third."];
    await Deno.writeTextFile(
      `${tmp}/c.jsonl`,
      docs.map((text) => JSON.stringify({ text })).join("\n"),
    );
    const r = await sltrain("prepare", "--data", `${tmp}/c.jsonl`, "--out", `${tmp}/shards`);
    assert.equal(r.code, 0, r.err);
    assert.ok((await Deno.stat(`${tmp}/shards/manifest.json`)).isFile);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
  const bad = await sltrain("bogus");
  assert.equal(bad.code, 2);
  assert.match(bad.err, /\.\/sltrain prepare \[flags\]/);
});
