"""Continuing runs: exact resume, several processes = one, and refusals before any step."""

import json
import os
import socket
import tempfile
import unittest

import torch
import torch.multiprocessing as mp

from helpers import fresh_run, random_docs, run_config, write_shards
from sltrain_torch import safetensors as st
from sltrain_torch import train
from sltrain_torch.data import Sequences, Shards
from sltrain_torch.errors import (DataMismatchError, FormatError, UnsupportedRunError,
                                  WorldSizeError)

DOCS = random_docs(40)


def losses(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def _rank(rank, world, port, argv, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    code = train.main(argv)
    if code:
        raise SystemExit(code)


class TrainTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        self.shards = os.path.join(self.d, "shards")
        write_shards(self.shards, DOCS)
        s = Shards(self.shards)
        self.count = Sequences(s.train, 8, "packed", 0, 0).count

    def tearDown(self):
        self.tmp.cleanup()

    def start(self, name, **kw):
        folder = os.path.join(self.d, name)
        fresh_run(folder, run_config(**kw), self.count)
        return folder

    def args(self, run, out, *extra):
        return ["--run", run, "--data", self.shards, "--out", out, "--device", "cpu", *extra]

    def test_resume_in_pytorch_is_exact_for_f32_and_8bit(self):
        for opt in ("adamw", "adamw8bit"):
            with self.subTest(opt=opt):
                run = self.start(f"run-{opt}", optimizer=opt, model=dict(
                    run_config()["model"], hidden=64, heads=4))
                a, b = os.path.join(self.d, f"a-{opt}"), os.path.join(self.d, f"b-{opt}")
                self.assertEqual(train.main(self.args(run, a, "--keep", "2")), 0)
                first = losses(a)
                self.assertEqual(sorted(first), [1, 2, 3, 4, 5, 6])
                self.assertEqual(train.main(self.args(
                    os.path.join(a, "checkpoint.step-3.safetensors"), b)), 0)
                again = losses(b)
                for s in (4, 5, 6):
                    self.assertEqual(again[s], first[s])

    def test_two_processes_equal_one(self):
        run = self.start("run", gradAccum=2, clip=0.5)
        one, two = os.path.join(self.d, "one"), os.path.join(self.d, "two")
        self.assertEqual(train.main(self.args(run, one, "--steps", "4")), 0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_rank, args=(2, port, self.args(run, two, "--steps", "4"), two), nprocs=2)
        a, b = losses(one), losses(two)
        self.assertEqual(sorted(a), sorted(b))
        for s in a:
            self.assertLess(abs(a[s] - b[s]) / abs(a[s]), 1e-5)

    def refused(self, error, run, *extra, world=1, pattern=""):
        out = os.path.join(self.d, "never")
        with open(os.path.join(run, "checkpoint.safetensors"), "rb") as f:
            before = f.read()
        with self.assertRaisesRegex(error, pattern):
            train.Trainer(train.parse_args(self.args(run, out, *extra)), 0, world)
        self.assertFalse(os.path.exists(out))
        with open(os.path.join(run, "checkpoint.safetensors"), "rb") as f:
            self.assertEqual(f.read(), before)

    def test_bad_inputs_are_named_before_any_step(self):
        run = self.start("run")
        self.refused(WorldSizeError, run, world=3, pattern="3 processes cannot split .* batch of 4")
        self.refused(UnsupportedRunError, self.start("galore", method="galore"), pattern="galore")
        self.refused(UnsupportedRunError, self.start("refactor", refactorEvery=2),
                     pattern="refactor")
        other = os.path.join(self.d, "other-tok")
        write_shards(other, DOCS, name="another-tokenizer")
        self.shards = other
        self.refused(DataMismatchError, run, pattern="tokenizer name 'another-tokenizer'")
        bigger = os.path.join(self.d, "bigger-vocab")
        write_shards(bigger, DOCS, vocab=64)
        self.shards = bigger
        self.refused(DataMismatchError, run, pattern="64 ids, the model 32")
        fewer = os.path.join(self.d, "fewer-docs")
        write_shards(fewer, DOCS[:30])
        self.shards = fewer
        self.refused(DataMismatchError, run, pattern="not the same corpus")
        self.shards = os.path.join(self.d, "shards")
        self.refused(DataMismatchError, run, "--packing", "none", pattern="packed")
        path = os.path.join(run, "checkpoint.safetensors")
        with st.SafetensorsFile(path) as f:  # a newer version, with valid checksums
            tensors = [(n, e[0], e[3], f.raw(n)) for n, e in f.entries.items()]
            md = {k: v for k, v in f.metadata.items() if not k.startswith("sltrain.")}
        st.write(path, tensors, {**md, "format": "sltrain-checkpoint-v7"}, checksums=True)
        self.refused(FormatError, run, pattern="not an sltrain checkpoint .*v7")


if __name__ == "__main__":
    unittest.main()
