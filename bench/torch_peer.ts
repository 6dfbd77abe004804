/**
 * Finds and runs the PyTorch CPU peer (`bench/torch_ref/`) for the benchmarks: Debian's
 * `/usr/bin/python3` with `python3-torch` and `libopenblas0-pthread` (without OpenBLAS, torch
 * silently multiplies on the reference BLAS at a few GFLOP/s, which is no peer). The environment
 * presets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE; they are removed for the child process only.
 * Never a test dependency: callers skip the peer with `why` when it is missing.
 * @module
 */

/** Python interpreter used for the peer: `$SLTRAIN_PYTHON`, else Debian's. */
export const PYTHON: string = Deno.env.get("SLTRAIN_PYTHON") ?? "/usr/bin/python3";

/** Threads the peer uses (torch.set_num_threads): the whole 2-core machine, like our adapter. */
export const TORCH_THREADS = 2;

/** What {@link probeTorch} found. */
export interface TorchPeer {
  /** True when torch imports and multiplies through OpenBLAS. */
  ok: boolean;
  /** Why the peer is unusable (when not ok). */
  why?: string;
  /** torch.__version__. */
  version?: string;
  /** GFLOP/s of a 1024³ f32 matmul in the probe (a sanity figure, not a benchmark). */
  gflops?: number;
}

const INSTALL = "apt-get install -y python3-torch libopenblas0-pthread";

/** The environment of the peer: ours minus the OpenBLAS presets. */
function peerEnv(): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  return env;
}

/**
 * Runs `PYTHON args...` with the peer's environment (plus `env`); stderr passes through unless
 * captured.
 */
export async function runPython(
  args: string[],
  opts: { stderr?: "inherit" | "piped"; env?: Record<string, string> } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(PYTHON, {
    args,
    env: { ...peerEnv(), ...opts.env },
    clearEnv: true,
    stdout: "piped",
    stderr: opts.stderr ?? "inherit",
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: dec.decode(out.stdout),
    stderr: opts.stderr === "piped" ? dec.decode(out.stderr) : "",
  };
}

const PROBE = `
import json, time, torch
torch.set_num_threads(${TORCH_THREADS})
a = torch.randn(1024, 1024); b = torch.randn(1024, 1024)
a @ b
t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
maps = open("/proc/self/maps").read()
print(json.dumps({"version": torch.__version__, "openblas": "openblas" in maps,
                  "gflops": 2 * 1024**3 / dt / 1e9}))
`;

/** Checks that the peer can run: python, torch, and OpenBLAS linked in. */
export async function probeTorch(): Promise<TorchPeer> {
  let r;
  try {
    r = await runPython(["-c", PROBE], { stderr: "piped" });
  } catch (e) {
    return { ok: false, why: `${PYTHON} not runnable (${(e as Error).message}); ${INSTALL}` };
  }
  if (r.code !== 0) {
    const last = r.stderr.trim().split("\n").at(-1) ?? "";
    return { ok: false, why: `torch unavailable in ${PYTHON} (${last}); ${INSTALL}` };
  }
  const p = JSON.parse(r.stdout);
  if (!p.openblas) {
    return {
      ok: false,
      version: p.version,
      gflops: p.gflops,
      why: `torch ${p.version} runs on the reference BLAS (${
        p.gflops.toFixed(1)
      } GFLOP/s), not OpenBLAS; apt-get install -y libopenblas0-pthread`,
    };
  }
  return { ok: true, version: p.version, gflops: p.gflops };
}

/** Path of a script in bench/torch_ref/. */
export function torchRefScript(name: string): string {
  return new URL(`./torch_ref/${name}`, import.meta.url).pathname;
}
