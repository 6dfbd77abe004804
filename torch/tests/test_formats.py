"""Checksums, safetensors files and checkpoints: round trips and corruption."""

import os
import random
import tempfile
import unittest

import torch

from helpers import fresh_run, random_docs, run_config, write_shards
from sltrain_torch import checksum as ck
from sltrain_torch import safetensors as st
from sltrain_torch.checkpoint import Checkpoint, build_model, build_optimizer, save_checkpoint
from sltrain_torch.data import Shards
from sltrain_torch.errors import FormatError


class ChecksumTest(unittest.TestCase):
    def test_chunking_and_both_word_loops_agree(self):
        rng = random.Random(1)
        for _ in range(30):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
            whole = ck.checksum(data)
            c, i = ck.Checksum(), 0
            while i < len(data):
                j = i + rng.randrange(1, 9)
                c.update(data[i:j])
                i = j
            self.assertEqual(c.digest(), whole)
            a, b = ck._words_py(*ck._SEED, memoryview(data[:len(data) & ~3]).cast("I"))
            if ck._c_words is not None:
                ab = (ck.ctypes.c_uint32 * 2)(*ck._SEED)
                ck._c_words(ab, ck.ctypes.c_char_p(data), len(data) // 4)
                self.assertEqual((ab[0], ab[1]), (a, b))

    def test_any_single_word_change_changes_the_digest(self):
        data = bytearray(os.urandom(64))
        base = ck.checksum(bytes(data))
        for i in range(0, 64, 4):
            d = bytearray(data)
            d[i] ^= 1 << random.randrange(8)
            self.assertNotEqual(ck.checksum(bytes(d)), base)


class SafetensorsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "x.safetensors")
        self.a = torch.randn(3, 5)
        self.i = torch.tensor([0, 7, 2**32 - 1])
        st.write(self.path, [("a", "F32", [3, 5], st.tensor_bytes(self.a, "F32")),
                             ("i", "U32", [3], st.tensor_bytes(self.i, "U32")),
                             ("h", "BF16", [5], st.tensor_bytes(self.a[0], "BF16"))],
                 {"k": "v"}, checksums=True)

    def test_round_trip(self):
        with st.SafetensorsFile(self.path) as f:
            self.assertTrue(torch.equal(f.tensor("a"), self.a))
            self.assertTrue(torch.equal(f.tensor("i"), self.i))
            self.assertTrue(torch.equal(f.tensor("h"), self.a[0].to(torch.bfloat16)))
            self.assertEqual(f.metadata["k"], "v")
            self.assertEqual(f.data_start % 8, 0)

    def test_a_flipped_byte_names_the_tensor(self):
        with st.SafetensorsFile(self.path) as f:
            at = f.data_start + 5  # inside tensor a
        with open(self.path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 4]))
        with st.SafetensorsFile(self.path) as f:
            with self.assertRaisesRegex(FormatError, "tensor a does not match its checksum"):
                f.tensor("a")

    def test_truncated_and_edited_headers_are_refused(self):
        with open(self.path, "rb") as f:
            data = f.read()
        with open(self.path, "wb") as f:
            f.write(data[:-3])
        with self.assertRaisesRegex(FormatError, "truncated|outside"):
            st.SafetensorsFile(self.path)
        with open(self.path, "wb") as f:
            f.write(data.replace(b'"k":"v"', b'"k":"w"'))
        with self.assertRaisesRegex(FormatError, "header does not match its checksum"):
            st.SafetensorsFile(self.path)


class CheckpointTest(unittest.TestCase):
    def test_every_optimizer_layout_round_trips_bit_for_bit(self):
        variants = [{}, {"optimizer": "adamw8bit"}, {"clip": 1.0}, {"gradAccum": 2},
                    {"perLayer": True}, {"method": "full"}, {"method": "lowrank", "dtype": "bf16"}]
        for kw in variants:
            with self.subTest(**kw), tempfile.TemporaryDirectory() as d:
                run = run_config(**{"model": dict(run_config()["model"], hidden=64, heads=4), **kw})
                fresh_run(d, run, 10)
                a = Checkpoint(d)
                model = build_model(a)
                opt = build_optimizer(a, model)
                with torch.no_grad():  # some state worth keeping
                    for p in model.parameters():
                        p.grad = torch.randn_like(p.float()).to(p.dtype)
                opt.step()
                path = os.path.join(d, "again.safetensors")
                save_checkpoint(path, model, opt, 1, a.meta)
                b = Checkpoint(path)
                again = os.path.join(d, "again2.safetensors")
                save_checkpoint(again, build_model(b), build_optimizer(b, build_model(b)), 1, b.meta)
                with st.SafetensorsFile(path) as f, st.SafetensorsFile(again) as g:
                    self.assertEqual(list(f.entries), list(g.entries))
                    self.assertEqual(f.metadata["skeleton"], g.metadata["skeleton"])
                    for n in f.entries:
                        self.assertEqual(f.raw(n), g.raw(n), n)

    def test_other_formats_are_refused_by_name(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "checkpoint.safetensors")
            st.write(path, [], {"format": "sltrain-checkpoint-v9", "step": "0"}, checksums=True)
            with self.assertRaisesRegex(FormatError, "not an sltrain checkpoint.*v9"):
                Checkpoint(d)
            st.write(path, [], {"format": "sltrain-checkpoint-v2", "step": "0"})
            with self.assertRaisesRegex(FormatError, "checksums are missing"):
                Checkpoint(d)


class ShardChecksumTest(unittest.TestCase):
    def test_a_damaged_byte_names_the_file_and_offset(self):
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "shards")
            write_shards(folder, random_docs(20))
            Shards(folder)
            path = os.path.join(folder, "train-00001.bin")
            with open(path, "r+b") as f:
                f.seek(32 + 7)
                b = f.read(1)
                f.seek(32 + 7)
                f.write(bytes([b[0] ^ 4]))
            with self.assertRaisesRegex(FormatError, r"train-00001\.bin: bytes 32-131 \(checksum chunk 0\) "
                                        r"do not match their sha256"):
                Shards(folder)

    def test_version_1_folders_are_refused_with_what_to_do(self):
        with tempfile.TemporaryDirectory() as d:
            folder = os.path.join(d, "shards")
            write_shards(folder, random_docs(20))
            path = os.path.join(folder, "manifest.json")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(text.replace('"version": 2', '"version": 1'))
            with self.assertRaisesRegex(FormatError, "version 1 shards have no checksums.*prepare"):
                Shards(folder)


if __name__ == "__main__":
    unittest.main()
