"""The official SLTrain layout: both conversions, bit for bit, and its forward against ours."""

import filecmp
import json
import os
import tempfile
import unittest

import torch

from helpers import MODEL
from sltrain_torch.errors import FormatError
from sltrain_torch.hf import load_export
from sltrain_torch.model import Config, Method
from sltrain_torch.official import (OfficialLinear, OfficialLlama, from_official, inv_freq,
                                    load_official, to_official)


def official_folder(folder, dtype=torch.float32):
    """An official checkpoint folder with random weights, as SpLoRaModel.save_pretrained writes."""
    cfg = Config(MODEL)
    model = OfficialLlama(cfg, Method("sltrain", 4, 2.0, 0.05), dtype, linear=OfficialLinear)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("sparse_index"):
            t = torch.randperm(t.numel() * 20, generator=g)[:t.numel()].sort()[0]
        else:
            t = torch.randn(t.shape, generator=g).to(t.dtype)
        state[name] = t
    official = {}
    for name, t in state.items():  # our module names -> the official ones
        parts = name.split(".")
        if parts[0] == "layers":
            i, what = parts[1], parts[2]
            if what in ("attnNorm", "mlpNorm"):
                key = "input_layernorm" if what == "attnNorm" else "post_attention_layernorm"
                official[f"model.layers.{i}.{key}.weight"] = t
                continue
            proj = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                    "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                    "down": "mlp.down_proj"}[what]
            official[f"model.layers.{i}.{proj}.{parts[3]}"] = t
            if what == "o" and parts[3] == "lora_A":
                official[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq(8)
        else:
            official[{"embed": "model.embed_tokens.weight", "finalNorm": "model.norm.weight",
                      "lmHead": "lm_head.weight"}[name]] = t
    os.makedirs(folder)
    torch.save(official, os.path.join(folder, "pytorch_model.bin"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
              "intermediate_size": 40, "num_attention_heads": 2, "num_hidden_layers": 2,
              "vocab_size": 32, "rms_norm_eps": 1e-6, "max_sequence_length": 64,
              "initializer_range": 0.02, "hidden_act": "silu", "sltrain_seed": 9}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "splora_config.json"), "w") as f:
        json.dump({"r": 4, "lora_alpha": 2.0, "lora_dropout": 0.0, "sp_ratio": 0.05,
                   "target_modules": ["attn", "mlp", "attention"], "trainable_scaling": False}, f)
    return official


class OfficialTest(unittest.TestCase):
    def test_round_trips_are_bit_identical_and_forwards_agree(self):
        for dtype in (torch.float32, torch.bfloat16):
            with self.subTest(dtype=dtype), tempfile.TemporaryDirectory() as d:
                p = lambda name: os.path.join(d, name)  # noqa: E731
                state = official_folder(p("official"), dtype)
                from_official(p("official"), p("ours"))
                to_official(p("ours"), p("official2"))
                back = torch.load(p("official2/pytorch_model.bin"))
                self.assertEqual(sorted(back), sorted(state))
                for name, t in state.items():
                    self.assertEqual(back[name].dtype, t.dtype, name)
                    self.assertTrue(torch.equal(back[name], t), name)
                from_official(p("official2"), p("ours2"))
                self.assertTrue(filecmp.cmp(p("ours/model.safetensors"),
                                            p("ours2/model.safetensors"), shallow=False))
                with open(p("ours/config.json")) as f:
                    self.assertEqual(json.load(f)["sltrain"]["seed"], 9)
                ours, _ = load_export(p("ours"), torch.float32)
                theirs = load_official(p("official")).float()
                x = torch.randint(0, 32, (2, 12))
                a, b = ours.logits(x), theirs.logits(x)
                self.assertLess(float((a - b).abs().max() / a.abs().max()), 1e-5)

    def test_refusals_name_the_problem(self):
        with tempfile.TemporaryDirectory() as d:
            official_folder(os.path.join(d, "official"))
            from_official(os.path.join(d, "official"), os.path.join(d, "ours"))
            with self.assertRaisesRegex(FormatError, "already exists"):
                from_official(os.path.join(d, "official"), os.path.join(d, "ours"))
            with open(os.path.join(d, "official", "splora_config.json"), "w") as f:
                json.dump({"r": 4, "lora_alpha": 2.0, "sp_ratio": 0.05, "trainable_scaling": True}, f)
            with self.assertRaisesRegex(FormatError, "trainable_scaling"):
                from_official(os.path.join(d, "official"), os.path.join(d, "x"))
            self.assertFalse(os.path.exists(os.path.join(d, "x")))


if __name__ == "__main__":
    unittest.main()
