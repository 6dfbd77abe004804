/**
 * The dashboard without a browser: following a log as it grows (torn and malformed lines, a log
 * cut back by a resume), finding run folders, the server's bad-input behaviour (a port in use, a
 * folder that is not a run, no file outside the run folders: `../` is a 404), the live stream,
 * the page's data functions, the standalone page, and the committed bundle being up to date.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { findRuns, RunFollower, RunStore } from "../cli/dashboard_runs.ts";
import { startDashboard } from "../cli/dashboard_server.ts";
import { dashboardHtml, writeStandaloneDashboard } from "../cli/dashboard_page.ts";
import { FlagError, parseFlags, portFlag } from "../cli/flags.ts";
import {
  align,
  applyDelta,
  curve,
  type LogRecord,
  type RunView,
  skippedNotice,
  smooth,
} from "../web/dashboard/model.ts";
import { buildAssets } from "../web/dashboard/build.ts";

const enc = new TextEncoder();

async function tempRun(lines: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  await Deno.writeTextFile(`${dir}/log.jsonl`, lines);
  return dir;
}

const line = (r: LogRecord) => JSON.stringify(r) + "\n";

Deno.test("dashboard: a followed log yields each record once, however its bytes arrive; malformed lines are counted, a torn tail waits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.oneof(
            fc.record({ kind: fc.constantFrom("train", "eval"), step: fc.nat(1000) }).map((r) => ({
              text: line({ ...r, loss: 1.5, note: "ünïcode ✓" }),
              record: r as LogRecord | null,
            })),
            fc.constantFrom('{"kind":"tr\n', "[1,2]\n", "not json\n", '{"step":1}\n').map((
              text,
            ) => ({ text, record: null })),
          ),
          { maxLength: 20 },
        ),
        fc.string({ maxLength: 12 }).filter((s) => !s.includes("\n")),
        fc.array(fc.nat(), { maxLength: 6 }),
        async (lines, tail, cutsRaw) => {
          const bytes = enc.encode(lines.map((l) => l.text).join("") + tail);
          const cuts = [...new Set(cutsRaw.map((c) => c % (bytes.length + 1)))].sort((a, b) =>
            a - b
          );
          await Deno.writeFile(`${dir}/log.jsonl`, new Uint8Array(0));
          const f = new RunFollower("0", dir, dir);
          const seen: LogRecord[] = [];
          // The file grows chunk by chunk (a cut may split a multi-byte character).
          for (const end of [...cuts, bytes.length]) {
            await Deno.writeFile(`${dir}/log.jsonl`, bytes.subarray(0, end));
            const d = await f.poll();
            if (d) {
              assert.equal(d.reset, false);
              assert.equal(d.from, seen.length);
              seen.push(...d.records);
            }
          }
          const want = lines.filter((l) => l.record).map((l) => l.text);
          assert.deepEqual(seen.map(line), want.map((t) => line(JSON.parse(t))));
          const full = f.full();
          assert.equal(full.skipped, lines.filter((l) => !l.record).length);
          assert.equal(full.torn, tail.length > 0);
        },
      ),
      { numRuns: 60, seed: 11 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dashboard: a log cut back and rewritten (a resume) is read again from its start", async () => {
  const dir = await tempRun(line({ kind: "train", step: 1 }) + line({ kind: "train", step: 2 }));
  try {
    const f = new RunFollower("0", dir, dir);
    assert.equal((await f.poll())!.records.length, 2);
    assert.equal(await f.poll(), null, "nothing new");
    // Cut to step 1 and continued, growing past the old size between two looks.
    await Deno.writeTextFile(
      `${dir}/log.jsonl`,
      line({ kind: "train", step: 1 }) + line({ kind: "resume", step: 1, cut: 1 }) +
        line({ kind: "train", step: 2, loss: 2 }),
    );
    const d = (await f.poll())!;
    assert.equal(d.reset, true);
    assert.deepEqual(d.records.map((r) => r.kind), ["train", "resume", "train"]);
    await Deno.remove(`${dir}/log.jsonl`);
    assert.equal((await f.poll())!.reset, true, "a log removed empties the run");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dashboard: run folders are found at or under the folders given; a folder that is not a run says so", async () => {
  const root = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  try {
    for (const d of ["cmp/full", "cmp/galore", "solo", ".hidden/x", "empty/deeper"]) {
      await Deno.mkdir(`${root}/${d}`, { recursive: true });
    }
    for (const d of ["cmp/full", "cmp/galore", ".hidden/x"]) {
      await Deno.writeTextFile(`${root}/${d}/log.jsonl`, "");
    }
    await Deno.writeTextFile(`${root}/solo/summary.json`, "{}");
    assert.deepEqual(await findRuns(root), [
      `${root}/cmp/full`,
      `${root}/cmp/galore`,
      `${root}/solo`,
    ]);
    assert.deepEqual(await findRuns(`${root}/solo`), [`${root}/solo`]);
    const store = new RunStore([`${root}/cmp`, `${root}/empty`, `${root}/nope`], "t");
    await store.scan();
    assert.equal(store.runs.length, 2);
    assert.match(store.notRuns[0], /empty is not a run folder \(it has no log\.jsonl/);
    assert.match(store.notRuns[1], /nope: no such folder/);
    await assert.rejects(findRuns(`${root}/cmp/full/log.jsonl`), /is a file, not a run folder/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

/** A raw HTTP/1.1 GET (the path exactly as written, no URL normalization by a client). */
async function rawGet(port: number, path: string, host = `127.0.0.1:${port}`): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(
      enc.encode(`GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`),
    );
    const chunks: Uint8Array[] = [];
    const buf = new Uint8Array(65536);
    for (let n; (n = await conn.read(buf)) !== null;) chunks.push(buf.slice(0, n));
    return new TextDecoder().decode(
      chunks.reduce((a, b) => new Uint8Array([...a, ...b]), new Uint8Array(0)),
    );
  } finally {
    conn.close();
  }
}

Deno.test("dashboard server: no file outside the run folders is served (../ is a 404, a symbolic link too); a run's own files are", async () => {
  const parent = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  const run = `${parent}/run`;
  await Deno.mkdir(run);
  await Deno.writeTextFile(`${run}/log.jsonl`, line({ kind: "train", step: 1, loss: 2 }));
  await Deno.writeTextFile(`${run}/loss.svg`, "<svg/>");
  await Deno.writeTextFile(`${run}/secret.txt`, "run folder, but not a served file");
  await Deno.writeTextFile(`${parent}/secret.txt`, '{"note": "outside the run folder"}');
  await Deno.symlink(`${parent}/secret.txt`, `${run}/summary.json`);
  const d = await startDashboard({ roots: [run], port: 0 });
  try {
    const ok = await rawGet(d.port, "/runs/0/loss.svg");
    assert.match(ok, /^HTTP\/1\.1 200/);
    assert.match(ok, /<svg\/>/);
    for (
      const path of [
        "/../secret.txt",
        "/runs/0/../secret.txt",
        "/runs/0/../../secret.txt",
        "/runs/0/..%2F..%2Fsecret.txt",
        "/runs/0/%2e%2e/%2e%2e/secret.txt",
        "/runs/0/secret.txt",
        "/runs/0/summary.json",
        "/runs/1/loss.svg",
        `/${parent}/secret.txt`,
        "/runs/0//etc/passwd",
        "/etc/passwd",
      ]
    ) {
      const r = await rawGet(d.port, path);
      assert.match(r, /^HTTP\/1\.1 404/, path);
      assert.doesNotMatch(r, /outside the run folder|not a served file/, path);
    }
    // The linked summary is not followed into the stream either.
    assert.doesNotMatch(await rawGet(d.port, "/api/snapshot"), /outside the run folder/);
    // Addressed to another host name (DNS rebinding): refused.
    assert.match(await rawGet(d.port, "/", "evil.example:80"), /^HTTP\/1\.1 403/);
    assert.match(await rawGet(d.port, "/"), /^HTTP\/1\.1 200[\s\S]*<script type="module">/);
  } finally {
    await d.close();
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test("dashboard server: a port in use is an error naming it and how to choose another", async () => {
  const dir = await tempRun("");
  const busy = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  try {
    const port = (busy.addr as Deno.NetAddr).port;
    await assert.rejects(
      startDashboard({ roots: [dir], port, portHint: "--port PORT" }),
      new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use.*--port PORT, or 0 for any`),
    );
  } finally {
    busy.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dashboard server: the stream sends a snapshot, then each new record; new run folders join", async () => {
  const root = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  await Deno.mkdir(`${root}/a`);
  await Deno.writeTextFile(`${root}/a/log.jsonl`, line({ kind: "train", step: 1, loss: 3 }));
  const d = await startDashboard({ roots: [root], port: 0, pollMs: 20 });
  const res = await fetch(`${d.url}api/stream`);
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  const until = async (re: RegExp) => {
    while (!re.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended before ${re}: ${text}`);
      text += value;
    }
  };
  try {
    await until(/event: snapshot\ndata: .*"step":1/);
    await Deno.writeTextFile(`${root}/a/log.jsonl`, line({ kind: "train", step: 2, loss: 2 }), {
      append: true,
    });
    await until(/event: run\ndata: \{"id":"0".*"from":1,"records":\[\{"kind":"train","step":2/);
    await Deno.mkdir(`${root}/b`);
    await Deno.writeTextFile(`${root}/b/log.jsonl`, line({ kind: "eval", step: 0, valLoss: 5 }));
    await until(/event: run\ndata: \{"id":"1","name":"[^"]*\/b".*"valLoss":5/);
  } finally {
    await reader.cancel();
    await d.close();
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("dashboard page data: smoothing keeps a constant, stays within the values, and is the identity at 0", () => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: -1e3, max: 1e3, noNaN: true }), { maxLength: 40 }),
      fc.double({ min: 0, max: 0.99, noNaN: true }),
      fc.double({ min: -5, max: 5, noNaN: true }),
      (ys, w, c) => {
        const s = smooth(ys, w);
        assert.equal(s.length, ys.length);
        for (let i = 0; i < ys.length; i++) {
          const seen = ys.slice(0, i + 1);
          const eps = 1e-9 * (1 + Math.max(...seen.map(Math.abs)));
          assert.ok(s[i] >= Math.min(...seen) - eps && s[i] <= Math.max(...seen) + eps);
        }
        for (const v of smooth(ys.map(() => c), w)) {
          assert.ok(Math.abs(v - c) <= 1e-9 * (1 + Math.abs(c)));
        }
        assert.deepEqual(smooth(ys, 0), ys);
      },
    ),
    { numRuns: 200, seed: 3 },
  );
  assert.throws(() => smooth([1], 1), /smoothing must be in \[0, 1\)/);
});

Deno.test("dashboard page data: aligned curves keep every point of every curve", () => {
  fc.assert(
    fc.property(
      fc.array(fc.uniqueArray(fc.integer({ min: 0, max: 50 }), { maxLength: 12 }), {
        maxLength: 4,
      }),
      (xsets) => {
        const curves = xsets.map((xs) => {
          const sorted = xs.slice().sort((a, b) => a - b);
          return [sorted, sorted.map((x) => x * 10 + 1)] as [number[], number[]];
        });
        const [xs, ...ys] = align(curves);
        assert.deepEqual(xs, [...new Set(xsets.flat())].sort((a, b) => a - b));
        curves.forEach(([cx, cy], k) => {
          const got = (xs as number[]).flatMap((x, i) => ys[k][i] === null ? [] : [[x, ys[k][i]]]);
          assert.deepEqual(got, cx.map((x, i) => [x, cy[i]]));
        });
      },
    ),
    { numRuns: 100, seed: 4 },
  );
});

Deno.test("dashboard page data: curves by step, tokens and wall time; a resume's repeated steps replace the old ones; skipped lines are reported", () => {
  const runs = new Map<string, RunView>();
  const t = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
  const recs: LogRecord[] = [
    { kind: "start", step: 0, time: t(0), run: { method: "sltrain", steps: 4 } },
    { kind: "train", step: 1, time: t(2), loss: 5, trainTokens: 64 },
    { kind: "train", step: 2, time: t(4), loss: 4, trainTokens: 128 },
    { kind: "resume", step: 1, time: t(10), cut: 1 },
    { kind: "train", step: 2, time: t(12), loss: 3.5, trainTokens: 128 },
    { kind: "train", step: 3, time: t(14), loss: NaN as unknown as number, trainTokens: 192 },
    { kind: "eval", step: 3, time: t(15), valLoss: 3.2, valPpl: Math.exp(3.2) },
  ];
  applyDelta(runs, {
    id: "0",
    name: "r",
    reset: true,
    from: 0,
    records: recs.slice(0, 3),
    skipped: 0,
    torn: false,
    summary: null,
  });
  // A delta overlapping what the page holds keeps one copy.
  const run = applyDelta(runs, {
    id: "0",
    name: "r",
    reset: false,
    from: 2,
    records: recs.slice(2),
    skipped: 2,
    torn: true,
    summary: null,
  });
  assert.equal(run.records.length, recs.length);
  const loss = { kind: "train", field: "loss" } as const;
  assert.deepEqual(curve(run, loss, "step"), [[1, 2], [5, 3.5]]);
  assert.deepEqual(curve(run, loss, "tokens"), [[64, 128], [5, 3.5]]);
  assert.deepEqual(curve(run, loss, "time"), [[2, 4, 12], [5, 4, 3.5]]);
  assert.deepEqual(curve(run, { kind: "eval", field: "valLoss" }, "step"), [[3], [3.2]]);
  assert.equal(
    skippedNotice([run]),
    "Not shown: r: skipped 2 malformed lines and a torn last line.",
  );
});

Deno.test("dashboard: the standalone page carries the run's data, escaped, and no link to anything", async () => {
  const dir = await tempRun(
    line({ kind: "start", step: 0, run: { method: "full" } }) +
      line({ kind: "train", step: 1, loss: 2, note: "</script><script>alert(1)</script>" }) +
      "torn",
  );
  try {
    await writeStandaloneDashboard(`${dir}/dashboard.html`, [dir], "a </title> title");
    const html = await Deno.readTextFile(`${dir}/dashboard.html`);
    assert.equal(html.match(/<\/script>/g)?.length, 2, "only the two script elements close");
    assert.match(html, /<title>a &#60;\/title&#62; title<\/title>/);
    const data = JSON.parse(
      /id="sltrain-data" type="application\/json">(.*?)<\/script>/s.exec(html)![1],
    );
    assert.equal(data.runs[0].records[1].note, "</script><script>alert(1)</script>");
    assert.equal(data.runs[0].torn, true);
    assert.equal(data.source, dir);
    // Nothing to fetch: no src or href attributes and no URL the page would load.
    assert.doesNotMatch(html, /\s(src|href)=|https?:\/\/(?!www\.w3\.org)/);
    assert.doesNotMatch(dashboardHtml({ js: "", css: "" }, "t"), /sltrain-data/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("dashboard: the committed bundle is what web/dashboard builds now (else: deno task build:dashboard)", async () => {
  const built = await buildAssets();
  const dist = new URL("../web/dashboard/dist/", import.meta.url);
  assert.equal(await Deno.readTextFile(new URL("dashboard.js", dist)), built.js);
  assert.equal(await Deno.readTextFile(new URL("dashboard.css", dist)), built.css);
  assert.ok(built.js.length < 100_000, `the page stays small: ${built.js.length} B`);
});

Deno.test("train.ts --dashboard [PORT]: bare means the default port; a bad port names the flag", () => {
  assert.equal(portFlag(parseFlags(["--dashboard"]), "dashboard"), 7070);
  assert.equal(portFlag(parseFlags(["--dashboard", "--steps", "3"]), "dashboard"), 7070);
  assert.equal(portFlag(parseFlags(["--dashboard", "0"]), "dashboard"), 0);
  assert.equal(portFlag(parseFlags(["--dashboard=8123"]), "dashboard"), 8123);
  assert.equal(parseFlags(["--steps", "3"]).dashboard, undefined);
  assert.throws(
    () => portFlag(parseFlags(["--dashboard", "70000"]), "dashboard"),
    (e) =>
      e instanceof FlagError && /--dashboard 70000: must be a port in 0\.\.65535/.test(e.message),
  );
});

Deno.test("dashboard.ts: a folder that is not a run, or no folder at all, is an error that says so", async () => {
  const root = await Deno.makeTempDir({ prefix: "sltrain-dash-" });
  try {
    await Deno.mkdir(`${root}/notes/deeper`, { recursive: true });
    const run = async (...args: string[]) => {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "dashboard.ts", "--port", "0", ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: r.code, err: new TextDecoder().decode(r.stderr) };
    };
    const notes = await run(`${root}/notes`);
    assert.equal(notes.code, 2);
    assert.match(
      notes.err,
      /^error: no run to show: .*notes is not a run folder \(it has no log\.jsonl or summary\.json\) and none of the folders under it is one/m,
    );
    const missing = await run(`${root}/nope`);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /^error: no run to show: .*nope: no such folder/m);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
