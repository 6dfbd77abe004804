/**
 * train.ts with a fault: the GPU device is destroyed right after step `$LOSE_DEVICE_AT`, as a
 * driver crash or a GPU reset would lose it. Run by gpu_errors_test.ts as a subprocess.
 */
import { gpuDevice } from "../../core/device.ts";
import { runCli } from "../../cli/flags.ts";
import { main } from "../../train.ts";

const at = Number(Deno.env.get("LOSE_DEVICE_AT"));
await runCli((argv) => main(argv, { onStep: (step) => step === at && gpuDevice().destroy() }));
