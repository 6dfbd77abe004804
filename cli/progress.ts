/**
 * Training progress: a redrawn one-line bar on a TTY, plain periodic lines otherwise.
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
    const text = `${this.#label} step ${p.step}/${p.total}  loss ${p.loss.toFixed(4)}  lr ${
      p.lr.toExponential(2)
    }  ${Math.round(p.tokensPerSec)} tok/s  ETA ${fmtDuration(eta)}  mem ${
      fmtBytes(p.liveBytes)
    } (peak ${fmtBytes(p.peakBytes)})`;
    if (this.#tty) {
      const width = 24;
      const done = Math.round((p.step / Math.max(1, p.total)) * width);
      const bar = `[${"#".repeat(done)}${".".repeat(width - done)}]`;
      Deno.stderr.writeSync(this.#enc.encode(`\r\x1b[2K${bar} ${text}`));
    } else if (p.step - this.#lastLine >= this.#every || p.step === p.total) {
      this.#lastLine = p.step;
      console.error(text);
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
