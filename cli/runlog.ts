/**
 * A run's `log.jsonl`: one JSON record per line, appended as the run goes. A process killed
 * mid-write can leave a torn last line; readers tolerate it, and a resumed run cuts it away
 * together with every record the checkpoint it resumes from does not cover (see
 * {@link RunLog.open}), so the log of a run resumed any number of times has each step's records
 * once, in order.
 * @module
 */

import { beforeWrite } from "./faults.ts";

/** The log's file name in a run folder. */
export const LOG_FILE = "log.jsonl";

/** One record of the log: a `kind` (train, eval, refactor, merge, resume, nonfinite) and a step. */
export interface LogRecord {
  /** What happened. */
  kind: string;
  /** The optimizer step it belongs to (0 = before the first step). */
  step: number;
  /** Anything else (loss, lr, time, ...). */
  [field: string]: unknown;
}

/** The records of a log, and whether its last line was torn (cut mid-write). */
export interface ParsedLog {
  /** Complete records, in order. */
  records: LogRecord[];
  /** Byte offset just past each record's line. */
  ends: number[];
  /** True when the file ends in a line without its newline (a write cut short). */
  torn: boolean;
}

function isRecord(v: unknown): v is LogRecord {
  return typeof v === "object" && v !== null && !Array.isArray(v) &&
    typeof (v as LogRecord).kind === "string" && Number.isSafeInteger((v as LogRecord).step);
}

/**
 * Parses a log's bytes. A last line without its newline is torn (each record is written with its
 * newline in one write, so only a write cut short leaves one) and left out; a complete line that
 * is not a record is an error naming the line.
 */
export function parseLog(bytes: Uint8Array, source: string): ParsedLog {
  const records: LogRecord[] = [];
  const ends: number[] = [];
  const dec = new TextDecoder("utf-8", { fatal: true });
  for (let start = 0; start < bytes.length;) {
    const nl = bytes.indexOf(10, start);
    if (nl < 0) return { records, ends, torn: true };
    let rec: unknown = null;
    try {
      rec = JSON.parse(dec.decode(bytes.subarray(start, nl)));
    } catch { /* reported below */ }
    if (!isRecord(rec)) {
      throw new Error(
        `${source}: line ${records.length + 1} is not a log record (the file was edited or ` +
          "damaged); move the file aside to resume",
      );
    }
    records.push(rec);
    ends.push(start = nl + 1);
  }
  return { records, ends, torn: false };
}

/** Reads a log, tolerating a torn last line; a missing file has no records. */
export async function readLog(path: string): Promise<ParsedLog> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { records: [], ends: [], torn: false };
    throw new Error(`cannot read ${path}: ${(e as Error).message}`);
  }
  return parseLog(bytes, path);
}

/** An open log that appends records, each in one write of a whole line. */
export class RunLog {
  #file: Deno.FsFile;
  #path: string;
  #enc = new TextEncoder();

  private constructor(file: Deno.FsFile, path: string) {
    this.#file = file;
    this.#path = path;
  }

  /**
   * Opens `path` for appending after cutting it back to what a run starting at `covered` has
   * already done: the records of steps up to `covered` stay, anything later (steps the run will do
   * again, bit for bit the same) and a torn last line go. `covered` is the step of the checkpoint
   * a run resumes from, or null for a run that starts from scratch (every record goes). Returns
   * the log and how many records were cut.
   */
  static async open(path: string, covered: number | null): Promise<{ log: RunLog; cut: number }> {
    const parsed = await readLog(path);
    const later = covered === null ? 0 : parsed.records.findIndex((r) => r.step > covered);
    const kept = later < 0 ? parsed.records.length : later;
    const bytes = kept === 0 ? 0 : parsed.ends[kept - 1];
    const file = await Deno.open(path, { write: true, create: true });
    try {
      if (bytes !== (await file.stat()).size) {
        await file.truncate(bytes);
        await file.sync();
      }
      await file.seek(0, Deno.SeekMode.End);
    } catch (e) {
      file.close();
      throw e;
    }
    return {
      log: new RunLog(file, path),
      cut: parsed.records.length - kept + (parsed.torn ? 1 : 0),
    };
  }

  /** Appends a record as one line (one write, so a kill leaves at most this line torn). */
  append(record: LogRecord): void {
    const bytes = this.#enc.encode(JSON.stringify(record) + "\n");
    try {
      beforeWrite(this.#path);
      let off = 0;
      while (off < bytes.length) off += this.#file.writeSync(bytes.subarray(off));
    } catch (e) {
      throw new Error(
        `appending the ${record.kind} record of step ${record.step} to ${this.#path}: ${
          (e as Error).message
        }`,
        {
          cause: e,
        },
      );
    }
  }

  /** Makes every record appended so far durable (before a checkpoint that covers them). */
  sync(): void {
    this.#file.syncSync();
  }

  /** Closes the file. */
  close(): void {
    this.#file.close();
  }
}
