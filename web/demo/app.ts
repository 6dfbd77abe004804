/// <reference lib="dom" />
/**
 * The demo page: choose a preset and a method, give it text (paste, drop a file, or the bundled
 * sample), train in the tab with a live loss curve, tokens/s and memory beside the estimate, stop
 * and continue, sample from the model, download the checkpoint. Every handler reports its errors
 * on the page; `window.demo` exposes the page's state to scripts (the headless check reads it).
 * @module
 */
import { init } from "../../mod.ts";
import { checkTextSize, type DemoSettings, InputError, Session, textOf } from "./session.ts";
import { lossChart } from "./chart.ts";

/** What the page shows, for people and for the headless check. */
interface DemoState {
  phase: "starting" | "ready" | "training" | "stopped" | "done" | "unavailable";
  adapter: string;
  step: number;
  steps: number;
  losses: number[];
  val: [number, number][];
  tokensPerSec: number;
  memory: { live: number; peak: number; estimate: number } | null;
  sample: string;
  message: string;
  /** Errors that reached the window's handlers (none should). */
  uncaught: number;
}

const state: DemoState = {
  phase: "starting",
  adapter: "",
  step: 0,
  steps: 0,
  losses: [],
  val: [],
  tokensPerSec: 0,
  memory: null,
  sample: "",
  message: "",
  uncaught: 0,
};
(globalThis as unknown as { demo: DemoState }).demo = state;

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const text = $<HTMLTextAreaElement>("text");
const buttons = {
  train: $<HTMLButtonElement>("train"),
  stop: $<HTMLButtonElement>("stop"),
  resume: $<HTMLButtonElement>("resume"),
  sample: $<HTMLButtonElement>("sample"),
  download: $<HTMLButtonElement>("download"),
};
let session: Session | null = null;
let stopRequested = false;

function settings(): DemoSettings {
  const num = (id: string) => Number($<HTMLInputElement>(id).value);
  return {
    preset: $<HTMLSelectElement>("preset").value as DemoSettings["preset"],
    method: $<HTMLSelectElement>("method").value as DemoSettings["method"],
    steps: num("steps"),
    batch: num("batch"),
    seq: num("seq"),
    seed: num("seed"),
  };
}

function show(message: string, kind: "info" | "error" = "info"): void {
  state.message = message;
  const box = $("message");
  box.textContent = message;
  box.className = kind;
}

const mb = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

function render(): void {
  $("step").textContent = `${state.step} / ${state.steps}`;
  $("loss").textContent = state.losses.length ? state.losses.at(-1)!.toFixed(4) : "–";
  $("val").textContent = state.val.length ? state.val.at(-1)![1].toFixed(4) : "–";
  $("speed").textContent = state.tokensPerSec ? `${Math.round(state.tokensPerSec)}` : "–";
  $("memory").textContent = state.memory
    ? `${mb(state.memory.live)} live, ${mb(state.memory.peak)} peak; estimate ${
      mb(state.memory.estimate)
    }`
    : "–";
  $("chart").replaceChildren(lossChart(state.losses, state.val, state.steps));
  const busy = state.phase === "training";
  const have = session !== null;
  buttons.train.disabled = busy || state.phase === "unavailable";
  buttons.stop.disabled = !busy;
  buttons.resume.disabled = busy || state.phase !== "stopped";
  buttons.sample.disabled = busy || !have;
  buttons.download.disabled = busy || !have;
  document.body.dataset.phase = state.phase;
}

/** Runs `fn`, showing any error on the page (a user's mistake as it is, anything else named). */
async function guarded(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const err = e as Error;
    show(err instanceof InputError ? err.message : `${err.name}: ${err.message}`, "error");
    if (state.phase === "training") state.phase = session ? "stopped" : "ready";
  } finally {
    render();
  }
}

async function trainLoop(): Promise<void> {
  const s = session!;
  state.phase = "training";
  stopRequested = false;
  render();
  const evalEvery = s.run.evalEvery;
  while (s.step < s.run.steps && !stopRequested) {
    const r = await s.trainStep();
    state.step = r.step;
    state.losses.push(r.loss);
    state.tokensPerSec = r.tokensPerSec;
    state.memory = s.memory();
    if (r.step % evalEvery === 0 || r.step === s.run.steps) {
      state.val.push([r.step, await s.validate()]);
    }
    render();
    // Let the page paint and take clicks between steps.
    await new Promise((res) => setTimeout(res, 0));
  }
  state.phase = s.step >= s.run.steps ? "done" : "stopped";
  show(
    state.phase === "done"
      ? `Trained ${s.step} steps. Sample from it, or download the checkpoint.`
      : `Stopped after step ${s.step}; continue when you like.`,
  );
}

buttons.train.onclick = () =>
  guarded(async () => {
    session?.dispose();
    session = null;
    Object.assign(state, {
      step: 0,
      losses: [],
      val: [],
      tokensPerSec: 0,
      sample: "",
      memory: null,
    });
    $("sample-out").textContent = "";
    const s = settings();
    session = Session.create(text.value, s);
    state.steps = s.steps;
    show(`Training ${s.method} on ${s.preset} (${session.model.config.layers} layers).`);
    state.val.push([0, await session.validate()]);
    await trainLoop();
  });

buttons.stop.onclick = () => {
  stopRequested = true;
};

buttons.resume.onclick = () => guarded(trainLoop);

buttons.sample.onclick = () =>
  guarded(async () => {
    const prompt = $<HTMLInputElement>("prompt").value;
    state.sample = await session!.sample(prompt, 200, (t) => {
      $("sample-out").textContent = prompt + t;
    });
    state.sample = prompt + state.sample;
  });

buttons.download.onclick = () =>
  guarded(async () => {
    const blob = await session!.checkpoint();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "checkpoint.safetensors";
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    show(
      `checkpoint.safetensors (${mb(blob.size)}): \`deno run -A sample.ts --checkpoint ` +
        "checkpoint.safetensors` and `export.ts` read it.",
    );
  });

async function useFile(file: File): Promise<void> {
  await guarded(async () => {
    checkTextSize(file.size, file.name); // before reading it

    const value = textOf(new Uint8Array(await file.arrayBuffer()), file.name);
    text.value = value;
    show(`Loaded ${file.name} (${mb(file.size)}).`);
  });
}

$<HTMLInputElement>("file").onchange = (e) => {
  const input = e.target as HTMLInputElement;
  const f = input.files?.[0];
  // Cleared, so that choosing the same file again (after fixing it) reads it again.
  if (f) useFile(f).finally(() => (input.value = ""));
};
text.ondragover = (e) => e.preventDefault();
text.ondrop = (e) => {
  e.preventDefault();
  const f = e.dataTransfer?.files[0];
  if (f) useFile(f);
};
$<HTMLButtonElement>("use-sample").onclick = () =>
  guarded(async () => {
    const r = await fetch("sample.txt");
    if (!r.ok) throw new Error(`sample.txt: HTTP ${r.status}`);
    text.value = await r.text();
    show("The sample: Genesis 1–4 (King James Version, public domain).");
  });

globalThis.addEventListener("error", (e) => {
  state.uncaught++;
  show(`Unexpected error: ${e.message}`, "error");
});
globalThis.addEventListener("unhandledrejection", (e) => {
  state.uncaught++;
  show(`Unexpected error: ${(e.reason as Error)?.message ?? e.reason}`, "error");
});

async function start(): Promise<void> {
  render();
  if (!("gpu" in navigator) || !navigator.gpu) {
    state.phase = "unavailable";
    show(
      "This browser has no WebGPU, which sltrain trains on. Use a current Chrome or Edge (or " +
        "Safari 26+, Firefox 141+), from https:// or http://127.0.0.1.",
      "error",
    );
    render();
    return;
  }
  await guarded(async () => {
    const info = await init();
    state.adapter = info.summary;
    $("adapter").textContent = info.summary;
    state.phase = "ready";
    show("Ready: give it text (or use the sample) and press Train.");
  });
  if (state.phase === "starting") state.phase = "unavailable";
  render();
}

start();
