/**
 * One run per folder: a live run's lock refuses a second run naming it; a killed run's lock is
 * taken over; train.ts holds it while training and removes it when done.
 */
import assert from "node:assert/strict";
import { acquireRunLock, LOCK_FILE, ownerAlive, RunLockedError } from "../cli/run_lock.ts";

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** A process that sleeps until killed, and its pid. */
function sleeper(): Deno.ChildProcess {
  return new Deno.Command("sleep", { args: ["60"], stdout: "null", stderr: "null" }).spawn();
}

function writeLock(dir: string, pid: number): void {
  Deno.writeTextFileSync(
    `${dir}/${LOCK_FILE}`,
    JSON.stringify({ pid, hostname: Deno.hostname(), started: "then", args: ["--out", dir] }),
  );
}

Deno.test("run lock: taken, refused to a second holder naming the first, released", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const proc = sleeper();
    writeLock(dir, proc.pid);
    assert.throws(
      () => acquireRunLock(dir, ["second"]),
      (e: Error) =>
        e instanceof RunLockedError && e.message.includes(`pid ${proc.pid}`) &&
        e.message.includes("--out") && e.message.includes(LOCK_FILE),
    );
    assert.ok(await exists(`${dir}/${LOCK_FILE}`), "the live run's lock stays");
    proc.kill("SIGKILL");
    await proc.status;
    // Its process is gone: the lock is stale and taken over.
    const lock = acquireRunLock(dir, ["third"]);
    assert.equal(lock.tookOver?.pid, proc.pid);
    const owner = JSON.parse(await Deno.readTextFile(lock.path));
    assert.equal(owner.pid, Deno.pid);
    assert.deepEqual(owner.args, ["third"]);
    lock.release();
    assert.ok(!(await exists(lock.path)));
    // Garbage (a lock torn by a kill mid-write) is stale too.
    await Deno.writeTextFile(`${dir}/${LOCK_FILE}`, '{"pid":');
    const again = acquireRunLock(dir);
    assert.equal(again.tookOver, null);
    again.release();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("run lock: a release never removes a lock another process took over", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const lock = acquireRunLock(dir);
    const proc = sleeper();
    writeLock(dir, proc.pid);
    lock.release();
    assert.ok(await exists(`${dir}/${LOCK_FILE}`));
    proc.kill("SIGKILL");
    await proc.status;
    assert.equal(
      ownerAlive({ pid: proc.pid, hostname: Deno.hostname(), started: "", args: [] }),
      false,
    );
    assert.equal(ownerAlive({ pid: 1, hostname: "elsewhere", started: "", args: [] }), true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("train.ts: a second run on a folder in use is refused naming the first; after kill -9 the lock is taken over", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "sltrain-lock-" });
  const env = { SLTRAIN_CACHE: `${tmp}/cache` };
  const out = `${tmp}/run`;
  const data = `${tmp}/d.jsonl`;
  await Deno.writeTextFile(
    data,
    Array.from({ length: 4 }, (_, i) => JSON.stringify({ text: `Doc ${i}. `.repeat(40) })).join(
      "\n",
    ),
  );
  const args = (steps: number) => [
    "run",
    "-A",
    "train.ts",
    "--steps",
    String(steps),
    "--batch",
    "1",
    "--seq",
    "16",
    "--eval-every",
    "0",
    "--eval-tokens",
    "16",
    "--data",
    data,
    "--out",
    out,
  ];
  const first = new Deno.Command(Deno.execPath(), {
    args: args(100000),
    env,
    stdout: "null",
    stderr: "null",
  }).spawn();
  try {
    // Wait until the first run trains (its log exists).
    for (let i = 0; i < 600 && !(await exists(`${out}/log.jsonl`)); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const lock = JSON.parse(await Deno.readTextFile(`${out}/${LOCK_FILE}`));
    assert.equal(lock.pid, first.pid);
    for (const extra of [[], ["--resume"]]) {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [...args(2), ...extra],
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(r.stderr);
      assert.notEqual(r.code, 0);
      assert.match(err, new RegExp(`another run is training in this folder \\(pid ${first.pid}`));
    }
    first.kill("SIGKILL");
    await first.status;
    assert.ok(await exists(`${out}/${LOCK_FILE}`), "kill -9 leaves the lock behind");
    const r = await new Deno.Command(Deno.execPath(), {
      args: [...args(2), "--resume"],
      env,
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(r.code, 0, new TextDecoder().decode(r.stderr));
    assert.ok(!(await exists(`${out}/${LOCK_FILE}`)), "a finished run removes its lock");
  } finally {
    try {
      first.kill("SIGKILL");
    } catch { /* already ended */ }
    await first.status;
    await Deno.remove(tmp, { recursive: true });
  }
});
