/**
 * One run per folder: `run.lock` in a run folder names the process training there (its pid, host,
 * start time and command). A second run on the folder is refused naming the first; a lock whose
 * process is gone (killed with `kill -9`, a machine restart) is stale and taken over.
 * @module
 */

/** The lock file's name inside a run folder. */
export const LOCK_FILE = "run.lock";

/** What a lock file records about the run holding it. */
export interface LockOwner {
  /** Process id. */
  pid: number;
  /** Host name of the machine it runs on. */
  hostname: string;
  /** ISO time it took the lock. */
  started: string;
  /** Its command line (arguments only). */
  args: string[];
}

/** A run folder already in use by a live process. */
export class RunLockedError extends Error {
  /** Error class name. */
  override name = "RunLockedError";
}

/** A held lock: {@link RunLock.release} removes it (also when the run fails). */
export interface RunLock {
  /** The lock file. */
  readonly path: string;
  /** The stale lock taken over, if there was one. */
  readonly tookOver: LockOwner | null;
  /** Removes the lock file (once; synchronous, so it can run right before a forced exit). */
  release(): void;
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "unknown";
  }
}

/**
 * Whether `owner` may still be running: false only when it is known to be gone (its pid is this
 * process's or has no /proc entry on this host); a lock from another host counts as live.
 */
export function ownerAlive(owner: LockOwner): boolean {
  if (owner.hostname !== hostname()) return true;
  if (owner.pid === Deno.pid) return false;
  if (Deno.build.os === "linux") {
    try {
      Deno.statSync(`/proc/${owner.pid}`);
      return true;
    } catch {
      return false;
    }
  }
  try {
    // `kill -0` only asks whether the process exists.
    return new Deno.Command("kill", { args: ["-0", String(owner.pid)], stderr: "null" })
      .outputSync().success;
  } catch {
    return true;
  }
}

function readOwner(path: string): LockOwner | null {
  try {
    const o = JSON.parse(Deno.readTextFileSync(path));
    return Number.isSafeInteger(o?.pid) ? o as LockOwner : null;
  } catch {
    return null; // torn or garbage: the writer died before finishing it
  }
}

function lockedMessage(dir: string, path: string, o: LockOwner): string {
  return `${dir}: another run is training in this folder (pid ${o.pid} on ${o.hostname}, since ${o.started}: ` +
    `${o.args.join(" ")}); wait for it to end or stop it, or choose another --out (if no such ` +
    `process exists, delete ${path})`;
}

/** Throws {@link RunLockedError} naming the holder when a live run holds `dir`'s lock. */
export function assertUnlocked(dir: string): void {
  const path = `${dir}/${LOCK_FILE}`;
  const owner = readOwner(path);
  if (owner && ownerAlive(owner)) throw new RunLockedError(lockedMessage(dir, path, owner));
}

/**
 * Takes the lock of run folder `dir` (which must exist) for this process: created exclusively, so
 * of two runs starting at once exactly one gets it. A stale lock is replaced; a live one throws
 * {@link RunLockedError} naming its holder.
 */
export function acquireRunLock(dir: string, args: string[] = Deno.args): RunLock {
  const path = `${dir}/${LOCK_FILE}`;
  const me: LockOwner = {
    pid: Deno.pid,
    hostname: hostname(),
    started: new Date().toISOString(),
    args,
  };
  let tookOver: LockOwner | null = null;
  for (let attempt = 0;; attempt++) {
    try {
      using f = Deno.openSync(path, { write: true, createNew: true });
      f.writeSync(new TextEncoder().encode(JSON.stringify(me) + "\n"));
      break;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists) || attempt >= 3) throw e;
    }
    const owner = readOwner(path);
    if (owner && ownerAlive(owner)) throw new RunLockedError(lockedMessage(dir, path, owner));
    // Dead or unreadable: remove it and race for it again (another starter may win).
    tookOver = owner;
    try {
      Deno.removeSync(path);
    } catch { /* another starter removed it first */ }
  }
  let held = true;
  return {
    path,
    tookOver,
    release() {
      if (!held) return;
      held = false;
      // Only our own lock goes: never one another run took over meanwhile.
      if (readOwner(path)?.pid !== Deno.pid) return;
      try {
        Deno.removeSync(path);
      } catch { /* already gone */ }
    },
  };
}
