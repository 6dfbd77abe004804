/**
 * The dashboard server's view of run folders: which folders are runs (they hold `log.jsonl` or
 * `summary.json`), found under the folders it was given and again as new ones appear, and each
 * run's log followed as it grows: only the bytes added since the last look are read, complete
 * lines that are not records are counted and left out, a last line without its newline (torn)
 * waits, and a log cut back by a resume is read again from the start.
 * @module
 */
import type { LogRecord, RunDelta, Snapshot } from "../web/dashboard/model.ts";
import { LOG_FILE } from "./runlog.ts";

/** The files that make a folder a run. */
const RUN_FILES = [LOG_FILE, "summary.json"];

/** How deep under a given folder runs are looked for (runs/compare-…/galore is 2). */
const MAX_DEPTH = 3;

/** True for a plain file (a symbolic link, which could point outside the run folder, is not). */
async function isFile(path: string): Promise<boolean> {
  return await Deno.lstat(path).then((s) => s.isFile, () => false);
}

/** True when `dir` holds a run's log or summary. */
async function isRunFolder(dir: string): Promise<boolean> {
  for (const f of RUN_FILES) if (await isFile(`${dir}/${f}`)) return true;
  return false;
}

/**
 * The run folders at or under `root` (not below a run folder, nor in hidden folders), sorted.
 * Throws when `root` does not exist or is not a folder.
 */
export async function findRuns(root: string): Promise<string[]> {
  const info = await Deno.stat(root).catch(() => null);
  if (!info) throw new Error(`${root}: no such folder`);
  if (!info.isDirectory) throw new Error(`${root}: is a file, not a run folder`);
  const found: string[] = [];
  const walk = async (dir: string, depth: number) => {
    if (await isRunFolder(dir)) {
      found.push(dir);
      return;
    }
    if (depth === MAX_DEPTH) return;
    const subs: string[] = [];
    try {
      for await (const e of Deno.readDir(dir)) {
        if (e.isDirectory && !e.name.startsWith(".") && e.name !== "node_modules") {
          subs.push(e.name);
        }
      }
    } catch { /* unreadable: no runs there */ }
    for (const s of subs.sort()) await walk(`${dir}/${s}`, depth + 1);
  };
  await walk(root.replace(/\/+$/, "") || "/", 0);
  return found;
}

/** What the page is told about a folder it was given that is not a run and holds none. */
function notRunMessage(root: string): string {
  return `${root} is not a run folder (it has no log.jsonl or summary.json) and none of the ` +
    "folders under it is one: give a folder train.ts wrote (its --out), or one that holds such " +
    "folders";
}

function isRecord(v: unknown): v is LogRecord {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    typeof (v as LogRecord).kind === "string" && Number.isSafeInteger((v as LogRecord).step);
}

/** Bytes of the last line read kept to notice a log cut back and rewritten between two looks. */
const TAIL = 64;

/** One run's log and summary, followed (see the module doc). */
export class RunFollower {
  readonly id: string;
  readonly dir: string;
  readonly name: string;
  #records: LogRecord[] = [];
  #offset = 0;
  #tail = new Uint8Array(0);
  #skipped = 0;
  #torn = false;
  #summary: Record<string, unknown> | null = null;
  #summaryMtime = -1;
  /** The log's size and time when last read: unchanged, it is not opened again. */
  #logStamp = "";
  #dec = new TextDecoder();

  constructor(id: string, dir: string, name: string) {
    this.id = id;
    this.dir = dir;
    this.name = name;
  }

  /** Everything known so far, as a message that replaces what a page holds. */
  full(): RunDelta {
    return this.#delta(true, this.#records.slice());
  }

  #delta(reset: boolean, records: LogRecord[]): RunDelta {
    return {
      id: this.id,
      name: this.name,
      reset,
      from: this.#records.length - records.length,
      records,
      skipped: this.#skipped,
      torn: this.#torn,
      summary: this.#summary,
    };
  }

  /**
   * Reads what changed since the last call (the summary too when `summary`); null when nothing
   * did.
   */
  async poll(summary = true): Promise<RunDelta | null> {
    const summaryChanged = summary && await this.#pollSummary();
    const info = await Deno.lstat(`${this.dir}/${LOG_FILE}`).catch(() => null);
    const stamp = info?.isFile ? `${info.size}:${info.mtime?.getTime()}` : "";
    if (stamp === this.#logStamp && !summaryChanged) return null;
    this.#logStamp = stamp;
    let bytes: Uint8Array;
    let reset = false;
    try {
      if (!stamp) throw new Deno.errors.NotFound("no log");
      bytes = await this.#readFrom(Math.max(0, this.#offset - this.#tail.length));
      const kept = bytes.subarray(0, this.#tail.length);
      if (this.#tail.length > 0 && !sameBytes(kept, this.#tail)) {
        // Cut back (a resume) and possibly rewritten since: read it all again.
        reset = true;
        bytes = await this.#readFrom(0);
      } else bytes = bytes.subarray(this.#tail.length);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      bytes = new Uint8Array(0);
      reset = this.#offset > 0;
    }
    if (reset) {
      this.#records = [];
      this.#offset = 0;
      this.#tail = new Uint8Array(0);
      this.#skipped = 0;
    }
    const added: LogRecord[] = [];
    let start = 0;
    for (let nl = bytes.indexOf(10); nl >= 0; nl = bytes.indexOf(10, start)) {
      let rec: unknown = null;
      try {
        rec = JSON.parse(this.#dec.decode(bytes.subarray(start, nl)));
      } catch { /* counted below */ }
      if (isRecord(rec)) added.push(rec);
      else if (nl > start) this.#skipped++;
      start = nl + 1;
    }
    if (start > 0) {
      this.#tail = bytes.slice(Math.max(0, start - TAIL), start);
      this.#offset += start;
    }
    const torn = start < bytes.length;
    const changed = reset || added.length > 0 || torn !== this.#torn || summaryChanged;
    this.#torn = torn;
    for (const r of added) this.#records.push(r);
    if (!changed) return null;
    return this.#delta(reset, reset ? this.#records.slice() : added);
  }

  /** The log's bytes from `offset` to its end. */
  async #readFrom(offset: number): Promise<Uint8Array> {
    using file = await Deno.open(`${this.dir}/${LOG_FILE}`);
    const size = (await file.stat()).size;
    if (size < offset) return new Uint8Array(0);
    await file.seek(offset, Deno.SeekMode.Start);
    const buf = new Uint8Array(size - offset);
    let n = 0;
    while (n < buf.length) {
      const got = await file.read(buf.subarray(n));
      if (got === null) break;
      n += got;
    }
    return buf.subarray(0, n);
  }

  /** Rereads summary.json when its time changed; true when it did (a half-written one waits). */
  async #pollSummary(): Promise<boolean> {
    const path = `${this.dir}/summary.json`;
    const info = await Deno.lstat(path).then((i) => i.isFile ? i : null, () => null);
    const mtime = info?.mtime?.getTime() ?? -1;
    if (mtime === this.#summaryMtime) return false;
    if (!info) {
      this.#summaryMtime = -1;
      const had = this.#summary !== null;
      this.#summary = null;
      return had;
    }
    try {
      this.#summary = JSON.parse(await Deno.readTextFile(path));
      this.#summaryMtime = mtime;
      return true;
    } catch {
      return false;
    }
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/**
 * The runs under the folders a server was given, each followed: {@link RunStore.poll} returns
 * what changed, {@link RunStore.snapshot} everything.
 */
export class RunStore {
  readonly #roots: readonly string[];
  readonly #title: string;
  readonly #reportEmpty: boolean;
  #runs = new Map<string, RunFollower>();
  #notRuns: string[] = [];

  /**
   * A store over `roots` (nothing is read until {@link scan}); `title` names the page. With
   * `reportEmpty` false, a root with no run yet is not reported (a run about to start there).
   */
  constructor(roots: readonly string[], title: string, reportEmpty = true) {
    this.#roots = roots;
    this.#title = title;
    this.#reportEmpty = reportEmpty;
  }

  /** The runs found so far, in the order found. */
  get runs(): readonly RunFollower[] {
    return [...this.#runs.values()];
  }

  /** Lines about the given folders that hold no run. */
  get notRuns(): readonly string[] {
    return this.#notRuns;
  }

  /**
   * Looks for run folders under every root again (new runs get the next id); returns the new
   * ones. A root that does not exist or holds no run is reported in {@link notRuns}.
   */
  async scan(): Promise<RunFollower[]> {
    const fresh: RunFollower[] = [];
    const notRuns: string[] = [];
    for (const root of this.#roots) {
      let dirs: string[];
      try {
        dirs = await findRuns(root);
      } catch (e) {
        notRuns.push((e as Error).message);
        continue;
      }
      if (dirs.length === 0 && this.#reportEmpty) notRuns.push(notRunMessage(root));
      for (const dir of dirs) {
        if (this.#runs.has(dir)) continue;
        const f = new RunFollower(String(this.#runs.size), dir, dir);
        this.#runs.set(dir, f);
        fresh.push(f);
      }
    }
    this.#notRuns = notRuns;
    return fresh;
  }

  /** What changed in every run since the last poll (their summaries too when `summary`). */
  async poll(summary = true): Promise<RunDelta[]> {
    const out: RunDelta[] = [];
    for (const f of this.#runs.values()) {
      const d = await f.poll(summary);
      if (d) out.push(d);
    }
    return out;
  }

  /** Everything, as a page's first message. */
  snapshot(): Snapshot {
    return {
      title: this.#title,
      runs: this.runs.map((f) => f.full()),
      notRuns: [...this.#notRuns],
    };
  }

  /** The run with this id, or undefined. */
  run(id: string): RunFollower | undefined {
    return this.runs.find((f) => f.id === id);
  }
}
