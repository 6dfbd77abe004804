/**
 * Runs a measurement in a fresh Deno process, so each row starts from an empty device and its peak
 * RSS is its own: the script is started again with `--child PAYLOAD`, and its last stdout line is
 * the JSON result.
 * @module
 */

/**
 * Runs `script --child payload` and parses the last line of its stdout; a failure (exit code,
 * no JSON, the timeout) comes back as a string saying so, with the end of its stderr.
 */
export async function runChild<T>(
  script: string,
  payload: string,
  timeoutSeconds: number,
): Promise<T | string> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, "--child", payload],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutSeconds * 1000),
  });
  try {
    const out = await cmd.output();
    const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
    if (out.code !== 0 || !text.startsWith("{")) {
      const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" ");
      return `failed (exit ${out.code}): ${err.slice(0, 300)}`;
    }
    return JSON.parse(text) as T;
  } catch (e) {
    return `failed: ${e instanceof Error ? e.message : e}`;
  }
}
