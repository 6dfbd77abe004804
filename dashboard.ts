/**
 * `deno task dashboard [FOLDER...]`: serves a live page of the runs in the given folders (run
 * folders that train.ts wrote, or folders holding them, `runs/` by default), finished or still
 * training, side by side; new runs and new log lines appear as they are written. `--help` lists
 * the flags.
 * @module
 */
import {
  DASHBOARD_PORT,
  FlagError,
  parseFlagsAndArgs,
  portFlag,
  renderHelp,
  runCli,
} from "./cli/flags.ts";
import type { FlagSpec } from "./cli/flags.ts";
import { startDashboard } from "./cli/dashboard_server.ts";

const FLAGS: Record<string, FlagSpec> = {
  port: {
    type: "string",
    default: String(DASHBOARD_PORT),
    help: "TCP port (0: any free port)",
  },
  host: {
    type: "string",
    default: "127.0.0.1",
    help: "address to listen on (0.0.0.0: every interface; anyone who reaches it sees the runs)",
  },
  help: { type: "boolean", help: "show this help" },
};

/** Parses `argv`, serves until SIGINT/SIGTERM; returns the exit status. */
export async function main(argv: string[]): Promise<number> {
  const { flags, args } = parseFlagsAndArgs(FLAGS, argv);
  if (flags.help) {
    console.log(renderHelp(
      [
        "Serve a live dashboard of training runs (loss, lr, tokens/s, gradient norm, memory).",
        "",
        "usage: deno run -A dashboard.ts [flags] [FOLDER...]   (default FOLDER: runs)",
      ],
      FLAGS,
      ["examples:", "  deno task dashboard runs/", "  deno task dashboard --port 0 runs/a runs/b"],
    ));
    return 0;
  }
  if (flags.host === "") throw new FlagError("--host needs an address");
  const roots = args.length > 0 ? args : ["runs"];
  const dashboard = await startDashboard({
    roots,
    port: portFlag(flags, "port"),
    hostname: typeof flags.host === "string" ? flags.host : undefined,
    title: `sltrain: ${roots.join(", ")}`,
    portHint: "--port PORT",
  }).catch((e) => {
    throw new FlagError((e as Error).message);
  });
  const { runs, notRuns } = dashboard.store;
  if (runs.length === 0) {
    await dashboard.close();
    throw new FlagError(`no run to show: ${notRuns.join("; ")}`);
  }
  for (const line of notRuns) console.error(`warning: ${line}`);
  console.error(
    `dashboard of ${runs.length} run${runs.length === 1 ? "" : "s"}: ${dashboard.url} ` +
      "(Ctrl-C stops it)",
  );
  const signal = await new Promise<Deno.Signal>((resolve) => {
    const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
    for (const s of signals) Deno.addSignalListener(s, () => resolve(s));
  });
  await dashboard.close();
  return signal === "SIGTERM" ? 143 : 130;
}

if (import.meta.main) await runCli(main);
