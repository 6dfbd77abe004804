"""Continues one of our runs in PyTorch, on one process or many (torchrun), and writes it back.

    PYTHONPATH=torch torchrun --nproc_per_node N -m sltrain_torch.train \\
        --run RUN_DIR --data SHARD_DIR [--out OUT_DIR] [--steps N] [--device cpu|cuda]

Reads the run's checkpoint (weights, SLTrain supports, AdamW moments f32 or 8-bit, update count,
data position, history), the token shards it trained on (prepare.ts, `--data`), and trains from the next step exactly as train.ts would:
the same batches in the same order, the same loss, AdamW arithmetic and schedule, evaluations and
checkpoints at the same steps. Every process takes batch/N rows of each global batch; the loss
is the summed cross-entropy over the global count of targets, so any N gives the same update as one
process. DistributedDataParallel averages gradients (gloo on CPU, NCCL on GPUs). Checkpoints and
`log.jsonl` are written by rank 0 in our format into OUT (default: the run folder itself, like
`train.ts --resume`), so `train.ts --resume`, `sample.ts` and `export.ts` take the run back.

Everything is checked before the first step (named errors, nothing written): the run's method,
dtype and format, the shards' tokenizer against the run's, the world size against the batch.
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from .checkpoint import (CHECKPOINT_FILE, Checkpoint, build_model, build_optimizer,
                         check_continuable, save_checkpoint)
from .adamw import lr_schedule
from .data import BatchStream, Sequences, Shards, validation_batches
from .errors import DataMismatchError, FormatError, SltrainTorchError, WorldSizeError

LOG_FILE = "log.jsonl"


def check_data(ck, shards, packing):
    """Raises DataMismatchError unless the shards give this run's sequences."""
    run, t = ck.run, shards.tokenizer
    where = f"{shards.folder} does not match the run {ck.path}"
    if t["vocabSize"] != run["model"]["vocabSize"]:
        raise DataMismatchError(f"{where}: its tokenizer {t.get('name')} has {t['vocabSize']} ids, "
                                f"the model {run['model']['vocabSize']}")
    src = ck.meta.get("data")
    if src is None:
        return packing or "packed"
    mine = src["tokenizer"]
    for k in ("name", "vocabSize", "eos", "pad"):
        if t.get(k) != mine.get(k):
            raise DataMismatchError(f"{where}: tokenizer {k} {t.get(k)!r}, the run's {mine.get(k)!r}")
    if packing is not None and packing != src["packing"]:
        raise DataMismatchError(f"--packing {packing}: the run packed its data as {src['packing']}")
    return src["packing"]


def split_rows(batch, world, rank):
    """The rows of each global batch that process `rank` of `world` computes."""
    if batch % world:
        raise WorldSizeError(f"{world} processes cannot split the run's batch of {batch} sequences "
                             "evenly; use a process count that divides it")
    per = batch // world
    return range(rank * per, (rank + 1) * per)


def average_in_f32(params):
    """Averages the gradients over the processes in float32, rounded back once: DDP's job where
    gloo cannot reduce (or broadcast) bfloat16 tensors."""
    flat = torch.cat([p.grad.float().reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view(p.shape))


def read_log(path, upto):
    """Complete records of a log.jsonl with step <= upto (a torn last line is dropped)."""
    try:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return []
    records = []
    for n, line in enumerate(lines[:-1], 1):
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not (isinstance(rec, dict) and isinstance(rec.get("step"), int)):
            raise FormatError(f"{path}: line {n} is not a log record (edited or damaged?)")
        records.append(rec)
    return [r for r in records if r["step"] <= upto]


class Trainer:
    """One continuation: set up (all checks), then `run()`."""

    def __init__(self, args, rank=0, world=1):
        self.rank, self.world = rank, world
        self.ck = ck = Checkpoint(args.run)
        check_continuable(ck.run, ck.path)
        self.run = dict(ck.run)
        if args.steps is not None:
            self.run["steps"] = args.steps
        if self.run["steps"] <= ck.step:
            raise SltrainTorchError(f"{ck.path} is at step {ck.step}; --steps {self.run['steps']} "
                                    "leaves nothing to train")
        self.rows = split_rows(self.run["batch"], world, rank)
        self.shards = Shards(args.data)
        packing = check_data(ck, self.shards, args.packing)
        tok = self.shards.tokenizer
        seq = self.run["seq"]
        train = Sequences(self.shards.train, seq, packing, tok["eos"], tok["pad"])
        src = ck.meta.get("data")
        if src is not None and src["sequences"] != train.count:
            raise DataMismatchError(f"{args.data} makes {train.count} training sequences, the run "
                                    f"trained on {src['sequences']}: not the same corpus")
        self.val = Sequences(self.shards.val, seq, packing, tok["eos"], tok["pad"])
        self.stream = BatchStream(train, self.run["batch"], self.run["seed"])
        self.stream.state = ck.meta["stream"]
        self.out = args.out or os.path.dirname(ck.path)
        self.ckpt_path = os.path.join(self.out, CHECKPOINT_FILE)
        self._check_out()
        self.device = torch.device(args.device)
        self.model = build_model(ck, self.device)
        self.opt = build_optimizer(ck, self.model, self.run)
        self.step = ck.step
        self.history = {"train": [], "val": [], **ck.meta.get("history", {})}
        self.keep = args.keep
        self.ddp = self.model
        # Every process loaded the same checkpoint, so nothing needs a broadcast first.
        self.bf16_gloo = world > 1 and dist.get_backend() == "gloo" and self.run.get("dtype") == "bf16"
        if world > 1 and not self.bf16_gloo:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 broadcast_buffers=False)
        self.stop = False

    def _check_out(self):
        same = os.path.abspath(self.out) == os.path.abspath(os.path.dirname(self.ck.path))
        if same and os.path.basename(self.ck.path) != CHECKPOINT_FILE:
            raise SltrainTorchError(f"{self.ck.path} is not the run's latest checkpoint: continuing "
                                    f"it in {self.out} would replace a later one; pass a new --out")
        taken = [f for f in (CHECKPOINT_FILE, LOG_FILE) if os.path.exists(os.path.join(self.out, f))]
        if not same and taken:
            raise SltrainTorchError(f"--out {self.out}: already holds a run ({taken[0]}); choose "
                                    "another folder")

    def log(self, rec):
        if self.rank == 0:
            rec = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"), **rec}
            self._log.write(json.dumps(rec) + "\n")
            self._log.flush()

    def _open_log(self):
        os.makedirs(self.out, exist_ok=True)
        path = os.path.join(self.out, LOG_FILE)
        src = os.path.join(os.path.dirname(self.ck.path), LOG_FILE)
        records = read_log(src, self.ck.step)
        before = len(read_log(path, float("inf"))) if os.path.exists(path) else 0
        with open(f"{path}.tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(f"{path}.tmp", path)
        self._log = open(path, "a")
        self.log({"kind": "resume", "step": self.step, "cut": max(0, before - len(records)),
                  "engine": f"pytorch {torch.__version__}", "processes": self.world})

    def micro_step(self, last):
        """Forward + backward of one global micro-batch on this process's rows; its mean loss."""
        inputs, targets = self.stream.next()
        count = int((targets != -100).sum())
        if count == 0:
            raise SltrainTorchError(f"step {self.step + 1}: a batch with no targets")
        mine = slice(self.rows.start, self.rows.stop)
        x, y = inputs[mine].to(self.device), targets[mine].to(self.device)
        accum = self.run.get("gradAccum", 1)
        sync = last or self.ddp is self.model
        ctx = self.ddp.no_sync() if not sync else contextlib.nullcontext()
        with ctx:
            total = self.ddp(x, y)
            (total * (self.world / (count * accum))).backward()
        total = total.detach()
        if self.world > 1:
            dist.all_reduce(total)
        return total.item() / count

    def evaluate(self):
        s, c = 0.0, 0
        if self.rank == 0:
            for x, y in validation_batches(self.val, self.run["batch"], self.run["evalTokens"]):
                ds, dc = self.model.eval_sums(x.to(self.device), y.to(self.device))
                s, c = s + ds, c + dc
            loss = s / c if c else float("nan")
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {self.step}: the validation loss is {loss}")
            self.history["val"].append([self.step, loss])
            self.log({"kind": "eval", "step": self.step, "valLoss": loss,
                      "valPpl": math.exp(loss), "tokens": c})
            print(f"step {self.step}: val loss {loss:.4f}, ppl {math.exp(loss):.2f} ({c} tokens)",
                  file=sys.stderr)

    def save(self):
        if self.rank == 0:
            meta = {**self.ck.meta, "run": self.run, "stream": self.stream.state,
                    "history": self.history}
            self._log.flush()
            os.fsync(self._log.fileno())
            save_checkpoint(self.ckpt_path, self.model, self.opt, self.step, meta, self.keep)
        if self.world > 1:
            dist.barrier()

    def run_steps(self):
        """Trains to the run's last step (or a stop signal); returns this process's step losses."""
        run = self.run
        if self.rank == 0:
            self._open_log()
        schedule = lr_schedule(run)
        losses, t0 = [], time.perf_counter()
        params = [p for p in self.model.parameters()]
        while self.step < run["steps"]:
            accum = run.get("gradAccum", 1)
            loss = sum(self.micro_step(k == accum - 1) for k in range(accum)) / accum
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {self.step + 1}: the loss is {loss}; stopped without "
                                         "a checkpoint (the last one is kept)")
            if self.bf16_gloo:
                average_in_f32(params)
            if run.get("clip", 0) > 0:
                torch.nn.utils.clip_grad_norm_(params, run["clip"])
            self.opt.step()
            self.opt.zero_grad()
            self.step += 1
            losses.append(loss)
            self.history["train"].append([self.step, loss])
            self.log({"kind": "train", "step": self.step, "loss": loss, "lr": schedule(self.step - 1)})
            if self.rank == 0 and (self.step % run["logEvery"] == 0 or self.step == run["steps"]):
                rate = (len(losses) * run["batch"] * run["seq"] * run.get("gradAccum", 1)
                        / (time.perf_counter() - t0))
                print(f"step {self.step}/{run['steps']}  loss {loss:.4f}  {rate:.0f} tok/s",
                      file=sys.stderr)
            last = self.step == run["steps"]
            if run["evalEvery"] > 0 and self.step % run["evalEvery"] == 0 and not last:
                self.evaluate()
                self.save()
            if self._should_stop():
                break
        evaluated = self.history["val"][-1][0] if self.history["val"] else -1
        if self.step == run["steps"] and evaluated != self.step:
            self.evaluate()
        self.save()
        if self.rank == 0:
            self._log.close()
        return losses

    def _should_stop(self):
        flag = torch.tensor([1.0 if self.stop else 0.0], device=self.device)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def parse_args(argv=None):
    """The command line (see the module doc)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder (or a checkpoint file in one)")
    ap.add_argument("--data", required=True, help="the shard folder the run trained on")
    ap.add_argument("--out", help="output run folder (default: the run folder itself)")
    ap.add_argument("--steps", type=int, help="train to this step (default: the run's steps)")
    ap.add_argument("--packing", choices=["packed", "none"],
                    help="for checkpoints that do not record it (default packed)")
    ap.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--keep", type=int, default=1, help="checkpoints to keep, as train.ts --keep")
    ap.add_argument("--threads", type=int, help="torch CPU threads per process")
    return ap.parse_args(argv)


def main(argv=None):
    """Runs one process of a continuation (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK); returns
    the exit status: 0, 2 for a refused input, 130 when stopped by a signal (with a checkpoint)."""
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() if args.device is None else args.device.startswith("cuda")
    args.device = f"cuda:{local}" if cuda else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if world > 1:
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    code = 0
    try:
        trainer = Trainer(args, rank, world)
        handler = lambda *_: setattr(trainer, "stop", True)  # noqa: E731
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, handler)
        trainer.run_steps()
        if rank == 0:
            print(f"checkpoint at step {trainer.step}: {trainer.ckpt_path}", file=sys.stderr)
        code = 130 if trainer.stop else 0
    except SltrainTorchError as e:
        print(f"sltrain_torch.train: {type(e).__name__}: {e}", file=sys.stderr)
        code = 2
    except FloatingPointError as e:  # a non-finite loss or weight: the last checkpoint is kept
        print(f"sltrain_torch.train: {e}", file=sys.stderr)
        code = 1
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
