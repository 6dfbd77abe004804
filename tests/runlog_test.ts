/** The run log: torn last lines are tolerated on read and cut on resume, with what follows the checkpoint. */
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseLog, readLog, RunLog } from "../cli/runlog.ts";

const enc = new TextEncoder();

Deno.test("run log: a resumed run keeps exactly the records its checkpoint covers; a torn tail goes", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/log.jsonl`;
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 3 }), { maxLength: 12 }),
        fc.option(fc.string({ maxLength: 30 }).filter((s) => !s.includes("\n"))),
        fc.option(fc.integer({ min: 0, max: 20 })),
        async (gaps, tail, covered) => {
          let step = 0;
          const recs = gaps.map((g, i) => ({ kind: i % 3 ? "train" : "eval", step: step += g }));
          const lines = recs.map((r) => JSON.stringify(r) + "\n").join("");
          await Deno.writeFile(path, enc.encode(lines + (tail ?? "")));
          const read = await readLog(path);
          assert.deepEqual(read.records, recs);
          assert.equal(read.torn, !!tail);
          const { log, cut } = await RunLog.open(path, covered);
          const kept = covered === null ? [] : recs.filter((r) => r.step <= covered);
          log.append({ kind: "resume", step: covered ?? 0 });
          log.close();
          const after = await readLog(path);
          assert.deepEqual(after.records, [...kept, { kind: "resume", step: covered ?? 0 }]);
          assert.equal(after.torn, false);
          assert.equal(cut, recs.length - kept.length + (tail ? 1 : 0));
        },
      ),
      { numRuns: 100, seed: 5 },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run log: a damaged line before the last is an error naming the line; a missing log is empty", async () => {
  const bytes = enc.encode('{"kind":"train","step":1}\n{"kind":"tr\n{"kind":"train","step":2}\n');
  assert.throws(() => parseLog(bytes, "log.jsonl"), /log\.jsonl: line 2 is not a log record/);
  assert.throws(() => parseLog(enc.encode("[1]\n"), "x"), /line 1 is not a log record/);
  assert.deepEqual(await readLog("/nonexistent/log.jsonl"), { records: [], ends: [], torn: false });
});
