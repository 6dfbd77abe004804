/**
 * Progress of training or any long job: a redrawn one-line bar on a TTY, plain periodic lines
 * otherwise.
 * @module
 */
import { fmtBytes, fmtDuration } from "./format.ts";

/** What one progress update shows. */
export interface ProgressInfo {
  /** Completed optimizer steps. */
  step: number;
  /** Total steps. */
  total: number;
  /** Latest training loss (NaN if not read yet). */
  loss: number;
  /** Learning rate of the last step. */
  lr: number;
  /** Training tokens per second. */
  tokensPerSec: number;
  /** Seconds since the start of training. */
  elapsed: number;
  /** Live device bytes. */
  liveBytes: number;
  /** Peak device bytes. */
  peakBytes: number;
}

/** Draws progress to stderr; `every` controls how often non-TTY lines are printed. */
export class Progress {
  #tty = Deno.stderr.isTerminal();
  #enc = new TextEncoder();
  #label: string;
  #every: number;
  #lastLine = 0;

  /** Creates a progress printer; `label` prefixes each line (e.g. the method). */
  constructor(label: string, every: number) {
    this.#label = label;
    this.#every = Math.max(1, every);
  }

  /** Shows an update (redraw on a TTY; a line every `every` steps otherwise). */
  update(p: ProgressInfo): void {
    const eta = p.step > 0 ? (p.elapsed / p.step) * (p.total - p.step) : NaN;
    this.show(
      p.step,
      p.total,
      `step ${p.step}/${p.total}  loss ${p.loss.toFixed(4)}  lr ${p.lr.toExponential(2)}  ${
        Math.round(p.tokensPerSec)
      } tok/s  ETA ${fmtDuration(eta)}  mem ${fmtBytes(p.liveBytes)} (peak ${
        fmtBytes(p.peakBytes)
      })`,
    );
  }

  /**
   * Shows `text` for `done` of `total` units of any kind: a redrawn bar on a TTY, otherwise a
   * line each time `every` more units are done, and once at the end.
   */
  show(done: number, total: number, text: string): void {
    const line = `${this.#label} ${text}`;
    if (this.#tty) {
      const width = 24;
      const filled = Math.round((Math.min(done, total) / Math.max(1, total)) * width);
      const bar = `[${"#".repeat(filled)}${".".repeat(width - filled)}]`;
      Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[2K${bar} ${line}`));
    } else if (
      done - this.#lastLine >= this.#every || (done === total && this.#lastLine !== total)
    ) {
      this.#lastLine = done;
      console.error(line);
    }
  }

  /** Prints a message on its own line without breaking the bar. */
  log(message: string): void {
    if (this.#tty) Deno.stderr.writeSync(this.#enc.encode("\r\x1b[2K"));
    console.error(message);
  }

  /** Ends the bar line. */
  done(): void {
    if (this.#tty) Deno.stderr.writeSync(this.#enc.encode("\n"));
  }
}
