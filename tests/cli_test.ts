/**
 * train.ts as a user runs it: bad input in a subprocess must exit non-zero, say on stderr what is
 * wrong, and leave earlier runs untouched. One short real run provides the checkpoint cases.
 */
import assert from "node:assert/strict";
import { defaultText, FLAGS } from "../cli/flags.ts";
import { init } from "../core/device.ts";

interface Result {
  code: number;
  out: string;
  err: string;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Every file of a folder with its bytes, to show nothing was touched. */
async function snapshot(dir: string): Promise<Map<string, Uint8Array>> {
  const m = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) m.set(e.name, await Deno.readFile(`${dir}/${e.name}`));
  }
  return m;
}

async function copyRun(from: string, to: string): Promise<void> {
  await Deno.mkdir(to);
  for await (const e of Deno.readDir(from)) {
    await Deno.copyFile(`${from}/${e.name}`, `${to}/${e.name}`);
  }
}

const bufferLimit = (await init()).limits.maxBufferSize;

Deno.test("train.ts as a user runs it", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-cli-" });
  try {
    // A private token cache, so the test neither reads nor fills the user's.
    const env = { SLTRAIN_CACHE: `${tmp}/cache` };
    const dataFile = `${tmp}/train.jsonl`;
    await Deno.writeTextFile(
      dataFile,
      Array.from(
        { length: 6 },
        (_, i) =>
          JSON.stringify({
            text: `Document ${i}. The jury said the election was fair. `.repeat(8),
          }),
      ).join("\n") + "\n",
    );
    const SHORT = [
      "--steps",
      "2",
      "--eval-every",
      "0",
      "--batch",
      "2",
      "--seq",
      "16",
      "--eval-tokens",
      "64",
      "--data",
      dataFile,
    ];

    const train = async (...args: string[]): Promise<Result> => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "train.ts", ...args],
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const dec = new TextDecoder();
      return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
    };

    const fails = async (args: string[], re: RegExp): Promise<Result> => {
      const r = await train(...args);
      assert.notEqual(r.code, 0, `train.ts ${args.join(" ")} exited 0`);
      assert.match(r.err, re, `train.ts ${args.join(" ")}`);
      return r;
    };

    // The one real run; its folder serves every checkpoint case.
    const run = `${tmp}/run`;
    const first = await train(...SHORT, "--out", run);

    await t.step("a short run succeeds and its summary names the real output paths", async () => {
      assert.equal(first.code, 0, first.err);
      for (const f of ["loss.svg", "log.jsonl", "checkpoint.safetensors"]) {
        assert.ok(await exists(`${run}/${f}`), f);
        assert.ok(
          first.out.includes(`${run}/${f}`),
          `summary does not name ${run}/${f}:\n${first.out}`,
        );
      }
    });

    await t.step("--help exits 0 and lists every flag with its default", async () => {
      const r = await train("--help");
      assert.equal(r.code, 0);
      for (const [name, f] of Object.entries(FLAGS)) {
        const line = r.out.split("\n").find((l) => l.trimStart().startsWith(`--${name} `));
        assert.ok(line, `--help does not list --${name}`);
        const d = defaultText(f);
        if (d) assert.ok(line.includes(`[default: ${d}]`), `--${name}: ${line}`);
      }
    });

    await t.step("bad flags and values are refused before anything is created", async () => {
      const out = `${tmp}/never`;
      const cases: [string[], RegExp][] = [
        [["--bogus"], /--bogus/],
        [["--method", "foo"], /--method foo: unknown method/],
        [
          ["--optimizer", "sgd"],
          /--optimizer sgd: unknown optimizer \(expected one of adamw, adamw8bit\)/,
        ],
        [["--compare", "full,foo"], /--compare foo: unknown method/],
        [["--rank", "128"], /rank 128 must be < min\(out, in\) = 128/],
        [["--method", "fira", "--rank", "128"], /--method fira: fira.rank 128 must be < min/],
        [["--method", "apollo", "--apollo-scale", "0"], /--apollo-scale 0: must be positive/],
        [
          ["--method", "apollo", "--apollo-granularity", "row"],
          /--apollo-granularity row: unknown/,
        ],
        [["--method", "fira", "--galore-scale", "0"], /--galore-scale 0: must be positive/],
        [["--delta", "0"], /--delta 0: must be in \(0, 1\)/],
        [["--delta", "1.5"], /--delta 1\.5: must be in \(0, 1\)/],
        [["--steps", "two"], /--steps two: must be a positive integer/],
        [["--dtype", "fp16"], /--dtype fp16: unknown dtype \(expected one of f32, bf16\)/],
        [["--method", "full", "--keep-weight"], /--keep-weight: applies to sltrain only, not full/],
        [["--data", `${tmp}/missing.txt`], /missing\.txt does not exist/],
        [["--method", "lowrank", "--relora-every", "4"], /--relora-every: applies to relora only/],
        [
          ["--method", "full", "--refactor-every", "4"],
          /--refactor-every: applies to sltrain, lowrank, loro only, not full/,
        ],
        [
          ["--compare", "full,galore", "--delta", "0.1"],
          /--delta: applies to sltrain only, not full, galore/,
        ],
        [
          ["--method", "golore", "--rank", "128"],
          /--rank 128: golore.rank 128 must be < min\(out, in\)/,
        ],
        [
          ["--method", "golore", "--golore-rand-ratio", "2"],
          /--golore-rand-ratio 2: must be in \[0, 1\]/,
        ],
        [["--method", "loro", "--rank", "128"], /rank 128 must be < min\(out, in\)/],
        [
          ["--method", "loro", "--loro-exact-every", "0"],
          /--loro-exact-every 0: must be a positive integer/,
        ],
        [
          ["--method", "loro", "--per-layer"],
          /--per-layer: loro steps each linear's B and A together/,
        ],
        [["--method", "spam", "--spam-threshold=-1"], /--spam-threshold -1: must be non-negative/],
        [
          ["--method", "spam", "--momentum-reset-every", "0"],
          /--momentum-reset-every 0: must be a positive integer/,
        ],
        [
          ["--method", "spam", "--optimizer", "adamw8bit"],
          /--optimizer adamw8bit: spam keeps f32 moments/,
        ],
        [
          ["--method", "stable-spam", "--stable-spam-gammas", "0.9,1,0.9"],
          /--stable-spam-gammas 0.9,1,0.9: must be three numbers in \[0, 1\)/,
        ],
        [
          ["--method", "stable-spam", "--stable-spam-eta", "2"],
          /--stable-spam-eta 2: must be in \[0, 1\]/,
        ],
      ];
      await Deno.writeTextFile(`${tmp}/empty.txt`, "");
      cases.push([["--data", `${tmp}/empty.txt`], /empty\.txt holds no text/]);
      for (const [args, re] of cases) {
        // Later flags win, so each case overrides SHORT (e.g. its --data).
        await fails([...SHORT, ...args, "--out", out], re);
        assert.ok(!(await exists(out)), `${args.join(" ")} created ${out}`);
      }
    });

    await t.step(
      "--out: a file, or an existing run without --resume, is refused and left as it was",
      async () => {
        const file = `${tmp}/a-file`;
        await Deno.writeTextFile(file, "keep me");
        await fails([...SHORT, "--out", file], /--out .*a-file: is a file, not a folder/);
        assert.equal(await Deno.readTextFile(file), "keep me");
        const before = await snapshot(run);
        await fails([...SHORT, "--out", run], /already holds a run; pass --resume/);
        assert.deepEqual(await snapshot(run), before);
      },
    );

    await t.step(
      "--resume: a folder without a checkpoint, or a missing folder, is refused",
      async () => {
        const empty = `${tmp}/empty-run`;
        await Deno.mkdir(empty);
        await fails([...SHORT, "--resume", "--out", empty], /holds no checkpoint\.safetensors/);
        // Nothing (e.g. an empty log.jsonl) may be left that would block a fresh run there.
        assert.deepEqual([...(await snapshot(empty)).keys()], []);
        await fails([...SHORT, "--resume", "--out", `${tmp}/nowhere`], /nowhere does not exist/);
      },
    );

    await t.step(
      "--resume: a checkpoint from another config (rank, optimizer) names the differing setting",
      async () => {
        const before = await snapshot(run);
        await fails(
          [...SHORT, "--rank", "16", "--resume", "--out", run],
          /rank: checkpoint 32, now 16/,
        );
        await fails(
          [...SHORT, "--optimizer", "adamw8bit", "--resume", "--out", run],
          /optimizer: checkpoint "adamw", now "adamw8bit"/,
        );
        await fails(
          [...SHORT, "--dtype", "bf16", "--resume", "--out", run],
          /dtype: checkpoint "f32", now "bf16"/,
        );
        assert.deepEqual(await snapshot(run), before);
      },
    );

    await t.step(
      "--resume: a truncated or garbage checkpoint is reported and left as it was",
      async () => {
        const cut = `${tmp}/cut`;
        await copyRun(run, cut);
        const bytes = await Deno.readFile(`${cut}/checkpoint.safetensors`);
        await Deno.writeFile(
          `${cut}/checkpoint.safetensors`,
          bytes.subarray(0, bytes.length - 1000),
        );
        let before = await snapshot(cut);
        await fails(
          [...SHORT, "--resume", "--out", cut],
          /cut\/checkpoint\.safetensors is not a valid safetensors file: .*truncated/,
        );
        assert.deepEqual(await snapshot(cut), before);

        const junk = `${tmp}/junk`;
        await copyRun(run, junk);
        await Deno.writeTextFile(
          `${junk}/checkpoint.safetensors`,
          "garbage, not a checkpoint at all",
        );
        before = await snapshot(junk);
        await fails(
          [...SHORT, "--resume", "--out", junk],
          /junk\/checkpoint\.safetensors is not a valid/,
        );
        assert.deepEqual(await snapshot(junk), before);
      },
    );

    // A model with one weight over the device's buffer limit fails inside the run, after the log
    // was opened: the folder must not be left half-written. (Weights over one binding train: ops
    // window them.) Only where that limit is small (software adapters: 2 GiB).
    await t.step({
      name: "a run that fails before its first checkpoint leaves nothing that blocks a rerun",
      ignore: bufferLimit > 2 ** 32,
      fn: async () => {
        const cfg = `${tmp}/too-big.json`;
        const intermediate = Math.floor(bufferLimit / 64) + 8;
        await Deno.writeTextFile(
          cfg,
          JSON.stringify({ vocabSize: 256, hidden: 16, intermediate, heads: 2, layers: 1 }),
        );
        const out = `${tmp}/failed`;
        // A budget far above the host's memory, so the run gets as far as the device.
        const budget = ["--max-device-bytes", "1TB"];
        const args = [...SHORT, ...budget, "--model", cfg, "--method", "full", "--out", out];
        await fails(args, /over the device's maxBufferSize/);
        assert.ok(!(await exists(out)), "the failed run left its folder behind");
        // A folder the user made stays, empty, and the same command reports the same error again.
        await Deno.mkdir(out);
        await fails(args, /over the device's maxBufferSize/);
        assert.deepEqual([...(await snapshot(out)).keys()], []);
      },
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
