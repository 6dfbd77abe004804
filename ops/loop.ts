/**
 * Unrolled WGSL loops for kernels where one invocation walks a long row or column.
 *
 * Why: Mesa's llvmpipe/lavapipe caps the loop back-edges of one invocation at 65535, counted over
 * ALL loops of the shader together (gallivm's loop limiter), and then silently leaves the loops:
 * a 3-pass softmax over a 32000-long row wrote only its first 1534 outputs. Unrolling by U divides
 * the back-edges by U; {@link checkLoopBudget} turns what is still too long into an error.
 * @module
 */
import { deviceInfo } from "../core/device.ts";
import { DeviceLimitError } from "../core/errors.ts";

/** Loop back-edges one invocation may take on a software adapter (65535, less a margin). */
export const LOOP_BUDGET = 65000;

/** Default unroll factor of {@link forUnrolled}. */
export const UNROLL = 16;

/**
 * WGSL for `for (j = start; j < end; j++) { body(j) }`, unrolled by `u` (then a scalar tail), in its
 * own block. `body(idx, k)` gets a WGSL index expression and the unrolled lane k in [0, u) (0 in the
 * tail), so a reduction can keep `u` partial accumulators. Back-edges: (end - start) / u + u.
 */
export function forUnrolled(
  j: string,
  start: string,
  end: string,
  body: (idx: string, k: number) => string,
  u = UNROLL,
): string {
  const lines: string[] = [];
  for (let k = 0; k < u; k++) lines.push(body(k === 0 ? j : `(${j} + ${k}u)`, k));
  return `{
    var ${j} = ${start};
    for (; ${j} + ${u}u <= ${end}; ${j} += ${u}u) {
      ${lines.join("\n      ")}
    }
    for (; ${j} < ${end}; ${j}++) { ${body(j, 0)} }
  }`;
}

/** WGSL declaring `u` accumulators `name0..` set to `init`. */
export function accDecl(name: string, init: string, u = UNROLL): string {
  return Array.from({ length: u }, (_, k) => `var ${name}${k} = ${init};`).join(" ");
}

/** WGSL expression combining `u` accumulators pairwise with `op` ("+" or a function like "max"). */
export function accCombine(name: string, op: string, u = UNROLL): string {
  let terms = Array.from({ length: u }, (_, k) => `${name}${k}`);
  while (terms.length > 1) {
    const next: string[] = [];
    for (let i = 0; i < terms.length; i += 2) {
      if (i + 1 === terms.length) next.push(terms[i]);
      else {next.push(
          op === "+" ? `(${terms[i]} + ${terms[i + 1]})` : `${op}(${terms[i]}, ${terms[i + 1]})`,
        );}
    }
    terms = next;
  }
  return terms[0];
}

/**
 * Throws a DeviceLimitError on software adapters when one invocation would take more than
 * {@link LOOP_BUDGET} loop back-edges (the result would silently be truncated).
 */
export function checkLoopBudget(op: string, backEdges: number, what: string): void {
  if (backEdges > LOOP_BUDGET && deviceInfo().kind === "cpu") {
    throw new DeviceLimitError(
      `${op}: ${what} needs ${backEdges} loop iterations in one invocation, over the software ` +
        `adapter's limit of ${LOOP_BUDGET} (llvmpipe stops loops silently beyond it)`,
    );
  }
}

/** Back-edges of `passes` unrolled loops over `n` elements each. */
export function unrolledEdges(n: number, passes = 1, u = UNROLL): number {
  return passes * (Math.floor(n / u) + u);
}
