import assert from "node:assert/strict";
import type { RunConfig } from "../cli/run_config.ts";
import { trainRun } from "../cli/trainer.ts";
import {
  argmax,
  disposeLoaded,
  generate,
  loadModel,
  nextLogits,
  sampleToken,
  textStream,
} from "../cli/generate.ts";
import { packedSequences } from "../data/batches.ts";
import { byteTokenizer } from "../data/tokenizer.ts";
import { Rng } from "../core/rng.ts";
import { tensor } from "../core/tensor.ts";
import { forward } from "../models/llama.ts";
import { quietIO, toyConfig, toyRun } from "./fixtures.ts";
import { assertClose, setup } from "./util.ts";

await setup();

function randomLogits(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => 4 * rng.nextNormal());
}

// --- sampling on the CPU ---

Deno.test("greedy picks the argmax (the first one on ties), whatever the generator", () => {
  for (let s = 0; s < 20; s++) {
    const l = randomLogits(50, s);
    const best = l.indexOf(Math.max(...l));
    assert.equal(argmax(l), best);
    assert.equal(sampleToken(l, { greedy: true, temperature: 5, topK: 3 }, new Rng(s)), best);
  }
  assert.equal(argmax([1, 3, 3, 2]), 1);
});

Deno.test("top-k never picks outside the k likeliest tokens", () => {
  const rng = new Rng(7);
  for (let s = 0; s < 10; s++) {
    const l = randomLogits(64, 100 + s);
    const k = 1 + (s % 6);
    const top = new Set([...l.keys()].sort((a, b) => l[b] - l[a]).slice(0, k));
    for (let i = 0; i < 300; i++) {
      const id = sampleToken(l, { temperature: 3, topK: k }, rng);
      assert.ok(top.has(id), `k=${k}: picked ${id}, not among ${[...top]}`);
    }
  }
  // k = 1 is greedy.
  const l = randomLogits(64, 3);
  assert.equal(sampleToken(l, { temperature: 1, topK: 1 }, rng), argmax(l));
});

Deno.test("temperature -> 0 equals greedy", () => {
  const rng = new Rng(1);
  for (let s = 0; s < 10; s++) {
    const l = randomLogits(40, 200 + s);
    // Distinct by at least 1e-2 in f32, so at T = 1e-4 any other token has weight < e^-100.
    const sorted = [...l].sort((a, b) => b - a);
    if (sorted[0] - sorted[1] < 1e-2) continue;
    for (const temperature of [0, 1e-7, 1e-4]) {
      assert.equal(sampleToken(l, { temperature }, rng), argmax(l), `T=${temperature}`);
    }
  }
});

Deno.test("temperature 1 samples the softmax distribution", () => {
  const l = [0, 1, 2, Math.log(0.5)];
  const z = l.reduce((a, v) => a + Math.exp(v), 0);
  const counts = [0, 0, 0, 0];
  const rng = new Rng(3);
  const n = 20000;
  for (let i = 0; i < n; i++) counts[sampleToken(l, { temperature: 1 }, rng)]++;
  // Binomial std at n = 20000 is below 0.0036; 0.015 is over 4 std.
  counts.forEach((c, i) => assert.ok(Math.abs(c / n - Math.exp(l[i]) / z) < 0.015, `id ${i}`));
});

Deno.test("same seed, same samples; another seed differs", () => {
  const l = randomLogits(256, 9);
  const draw = (seed: number) => {
    const rng = new Rng(seed);
    return Array.from({ length: 50 }, () => sampleToken(l, { temperature: 1, topK: 40 }, rng));
  };
  assert.deepEqual(draw(1), draw(1));
  assert.notDeepEqual(draw(1), draw(2));
});

Deno.test("textStream: pieces of split multi-byte characters add up to the decoded text", () => {
  const tok = byteTokenizer();
  const text = "jury: héllo 日本 🙂!";
  const s = textStream(tok.decode);
  const pieces = tok.encode(text).map((id) => s.push(id));
  assert.equal(pieces.join("") + s.flush(), text);
  // The three bytes of 日 come out as one piece on the third byte.
  assert.ok(pieces.includes("日"));
  const bad = textStream(tok.decode);
  assert.equal(bad.push(0xe6), "");
  assert.equal(bad.flush(), "\uFFFD");
});

async function sample(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "sample.ts", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

// --- end to end, from a checkpoint of a 2-step run ---

Deno.test("from a checkpoint of a 2-step run", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    const model = toyConfig(256, 32);
    const run: RunConfig = toyRun({ model, warmup: 1, evalTokens: 16 });

    {
      const tok = byteTokenizer();
      const docs = ["The jury said it was fair.", "The jury went home.", "It rained."].map((t) =>
        Uint32Array.from(tok.encode(t))
      );
      await trainRun(run, {
        train: packedSequences(docs, 8, 0, 0),
        val: packedSequences(docs.slice(0, 1), 8, 0, 0),
      }, quietIO(dir));
    }

    await t.step(
      "generate from a 2-step checkpoint: the requested number of in-vocab tokens, seeded",
      async () => {
        const loaded = await loadModel(dir);
        try {
          assert.equal(loaded.step, 2);
          assert.equal(loaded.run.method, "sltrain");
          const prompt = byteTokenizer().encode("The jury");
          const streamed: number[] = [];
          const opts = { tokens: 12, window: 6, seed: 4, temperature: 1, topK: 20 };
          const a = await generate(loaded, prompt, {
            ...opts,
            onToken: (id) => void streamed.push(id),
          });
          assert.equal(a.length, 12);
          assert.deepEqual(streamed, a);
          assert.ok(a.every((id) => Number.isInteger(id) && id >= 0 && id < 256));
          assert.deepEqual(await generate(loaded, prompt, opts), a);
          const g = await generate(loaded, prompt, { ...opts, tokens: 3, greedy: true });
          assert.equal(g.length, 3);
          await assert.rejects(() => generate(loaded, [], opts), /no tokens/);
          await assert.rejects(() => generate(loaded, [300], opts), /outside \[0, 256\)/);
        } finally {
          disposeLoaded(loaded);
        }
      },
    );

    await t.step("nextLogits equals the last position of the full forward", async () => {
      const loaded = await loadModel(`${dir}/checkpoint.safetensors`);
      try {
        const ids = [84, 104, 101, 32, 106, 117];
        const tokens = tensor(Int32Array.from(ids), [1, ids.length], "i32");
        const full = forward(loaded.model, loaded.params, tokens);
        const all = await full.data();
        full.dispose();
        tokens.dispose();
        const last = await nextLogits(loaded.model, loaded.params, ids);
        assertClose(last, all.subarray((ids.length - 1) * 256), { atol: 1e-5, rtol: 1e-4 });
      } finally {
        disposeLoaded(loaded);
      }
    });

    await t.step(
      "loadModel: errors name a missing path, a folder without a checkpoint, a corrupt file",
      async () => {
        const empty = await Deno.makeTempDir();
        await assert.rejects(() => loadModel(`${empty}/nope`), /nope does not exist/);
        await assert.rejects(() => loadModel(empty), /holds no checkpoint\.safetensors/);
        const bytes = await Deno.readFile(`${dir}/checkpoint.safetensors`);
        await Deno.writeFile(`${empty}/cut.safetensors`, bytes.subarray(0, bytes.length >> 1));
        await assert.rejects(
          () => loadModel(`${empty}/cut.safetensors`),
          /cut\.safetensors.*truncated/,
        );
        await Deno.remove(empty, { recursive: true });
      },
    );

    await t.step("sample.ts: streams prompt + continuation; same seed, same text", async () => {
      const args = ["--checkpoint", dir, "--prompt", "The jury", "--tokens", "6", "--seed", "3"];
      const a = await sample(...args);
      assert.equal(a.code, 0, a.err);
      assert.ok(a.out.startsWith("The jury"), a.out);
      assert.deepEqual(await sample(...args), a);
    });

    await t.step("sample.ts: bad input exits non-zero and names the problem", async () => {
      const cases: [string[], RegExp][] = [
        [["--prompt", "x"], /--checkpoint is required/],
        [["--checkpoint", dir, "--prompt", ""], /--prompt .*empty/],
        [["--checkpoint", dir], /--prompt/],
        [["--checkpoint", dir, "--prompt", "x", "--tokens", "0"], /--tokens 0/],
        [["--checkpoint", dir, "--prompt", "x", "--top-k", "1.5"], /--top-k 1\.5/],
        [["--checkpoint", dir, "--prompt", "x", "--temperature", "hot"], /--temperature hot/],
        [["--checkpoint", `${dir}/none`, "--prompt", "x"], /none does not exist/],
        [["--checkpoint", dir, "--prompt", "x", "--tokenizer", "llama"], /32000 ids.*256/],
        [["--checkpoint", dir, "--prompt", "x", "--frobnicate"], /frobnicate/],
      ];
      for (const [args, re] of cases) {
        const r = await sample(...args);
        assert.notEqual(r.code, 0, args.join(" "));
        assert.match(r.err, re, args.join(" "));
      }
      const garbage = `${dir}/garbage.safetensors`;
      await Deno.writeTextFile(garbage, "this is not a checkpoint, just some text");
      const r = await sample("--checkpoint", garbage, "--prompt", "x");
      assert.notEqual(r.code, 0);
      assert.match(r.err, /garbage\.safetensors is not a valid safetensors file/);
      const help = await sample("--help");
      assert.equal(help.code, 0);
      for (
        const f of ["checkpoint", "prompt", "tokens", "temperature", "top-k", "greedy", "seed"]
      ) {
        assert.match(help.out, new RegExp(`--${f}\\b`));
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
