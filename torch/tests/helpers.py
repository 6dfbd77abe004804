"""Small fixtures for the package tests: a tiny run config, a shard folder, a fresh checkpoint."""

import json
import os
import struct

import numpy as np
import torch

from sltrain_torch.adamw import AdamW, lr_schedule
from sltrain_torch.checkpoint import our_params, save_checkpoint
from sltrain_torch.data import CHUNK_BYTES, chunk_sums
from sltrain_torch.model import Config, Llama, Method, init_fresh

torch.set_num_threads(2)

MODEL = {"vocabSize": 32, "hidden": 16, "intermediate": 40, "heads": 2, "layers": 2,
         "maxSeqLen": 64, "rmsNormEps": 1e-6, "ropeBase": 10000, "initStd": 0.02}


def run_config(method="sltrain", **kw):
    """A RunConfig dict as train.ts writes it (tiny shapes)."""
    run = {"model": MODEL, "modelName": "test", "method": method, "optimizer": "adamw", "rank": 4,
           "delta": 0.05, "alpha": 2, "lr": 3e-3, "warmup": 2, "steps": 6, "minLrRatio": 0.1,
           "batch": 4, "seq": 8, "gradAccum": 1, "clip": 0, "weightDecay": 0.1, "perLayer": False,
           "galoreGap": 200, "galoreScale": 0.25, "refactorEvery": 0, "reloraEvery": 5,
           "recoverySteps": 10, "evalEvery": 3, "evalTokens": 64, "seed": 7, "logEvery": 1,
           "onNonfinite": "stop", "dtype": "f32", "recompute": False, "keepWeight": False}
    run.update(kw)
    return run


def _head(magic, a, b):
    return magic + struct.pack("<IIII", 2, a, b, CHUNK_BYTES) + b"sha256".ljust(12, b"\0")


def write_shards(folder, docs, vocab=32, val_docs=None, name="test-tok"):
    """A shard folder as prepare.ts writes it (uint16 ids, shards of 50 ids)."""
    os.makedirs(folder)
    per = 50
    splits = {}
    for split, ds in (("train", docs), ("val", val_docs or docs[:2])):
        stream, index = [], []
        for d in ds:
            if d:
                index += [len(stream), len(d)]
            stream += list(d) + [0]
        shards = []
        for k in range(0, len(stream), per):
            part = np.array(stream[k:k + per], dtype="<u2")
            fname = f"{split}-{k // per:05d}.bin"
            with open(os.path.join(folder, fname), "wb") as f:
                f.write(_head(b"SLTS", 2, len(part)) + part.tobytes() + chunk_sums(part.tobytes()))
            shards.append(fname)
        with open(os.path.join(folder, f"{split}.docs"), "wb") as f:
            entries = np.array(index, "<u8").tobytes()
            f.write(_head(b"SLTD", 16, 0) + entries + chunk_sums(entries))
        splits[split] = {"tokens": len(stream), "docs": len(index) // 2, "shards": shards,
                         "index": f"{split}.docs"}
    manifest = {"format": "sltrain-shards", "version": 2, "dtype": "uint16", "shardTokens": per,
                "checksum": {"algorithm": "sha256", "chunkBytes": CHUNK_BYTES},
                "tokenizer": {"name": name, "vocabSize": vocab, "eos": 0, "pad": 0, "files": []},
                "splits": splits, "source": {"data": "test", "valData": None, "valFraction": 0.1}}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def random_docs(n, seed=0, vocab=32):
    g = np.random.default_rng(seed)
    return [list(g.integers(1, vocab, size=int(g.integers(3, 40)))) for _ in range(n)]


def fresh_run(folder, run, sequences, tokenizer="test-tok"):
    """A run folder holding a step-0 checkpoint of `run` (weights drawn by torch)."""
    os.makedirs(folder, exist_ok=True)
    model = Llama(Config(run["model"]), Method.of_run(run),
                  torch.bfloat16 if run["dtype"] == "bf16" else torch.float32)
    init_fresh(model, "hf", 3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".B"):  # nonzero, so that every factor gets a gradient
                p.normal_(0, 0.02)
    opt = AdamW(our_params(model), lr_schedule(run), eight_bit=run["optimizer"] == "adamw8bit")
    meta = {"run": run, "stream": {"epoch": 0, "index": 0}, "history": {"train": [], "val": []},
            "data": {"tokenizer": {"name": tokenizer, "vocabSize": 32, "eos": 0, "pad": 0},
                     "packing": "packed", "sequences": sequences}}
    save_checkpoint(os.path.join(folder, "checkpoint.safetensors"), model, opt, 0, meta)
    return model
