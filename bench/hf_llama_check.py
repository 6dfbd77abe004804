#!/usr/bin/python3
"""Checks an exported Hugging Face LLaMA folder against logits computed by sltrain.

usage: /usr/bin/python3 bench/hf_llama_check.py HF_DIR LOGITS_JSON [--tol 1e-4]

LOGITS_JSON (written by bench/hf_export_check.ts) holds {"tokens": [[...], ...], "logits": FILE},
FILE the raw little-endian f32 logits [B, T, V] our forward produced for those tokens.

Debian has no `transformers` package and PyPI is unreachable, so this file re-implements the
forward of transformers' `modeling_llama.py` (LlamaForCausalLM, eager attention, v4.40-4.46) for
the configs export.ts writes: LlamaRMSNorm (variance in float32, weight * normalized), rotary
embedding with `inv_freq = 1 / theta^(arange(0, dim, 2) / dim)`, `emb = cat(freqs, freqs)`,
`q * cos + rotate_half(q) * sin` with `rotate_half(x) = cat(-x2, x1)` and position ids 0..T-1,
causal softmax(q k^T / sqrt(head_dim)) v (SDPA's math), o_proj, residual, SwiGLU MLP
`down(silu(gate(x)) * up(x))`, final norm, untied lm_head. Weights load by their HF names from
model.safetensors or the shards of model.safetensors.index.json (F32, BF16, F16). An SLTrain-factor
folder (model_type sltrain_llama) is rebuilt as W = scale * B @ A with V added at the flat
indices I (row * in + col), the layout the README documents.

Not a CI dependency: needs Debian's python3-torch (`apt-get install -y python3-torch
libopenblas0-pthread`, run with /usr/bin/python3).
"""
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "U32": None, "I32": torch.int32}


def read_safetensors(path):
    """All tensors of one safetensors file (header validated by offsets), as torch tensors."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        raw = bytearray(data[base + a : base + b])
        shape = e["shape"]
        if e["dtype"] == "U32":
            # torch 1.13 has no uint32: go through int64.
            vals = struct.unpack(f"<{len(raw) // 4}I", raw)
            out[name] = torch.tensor(vals, dtype=torch.int64).reshape(shape)
        else:
            out[name] = torch.frombuffer(raw, dtype=DTYPES[e["dtype"]]).reshape(shape).clone()
    return out


def load_weights(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for file in files:
        weights.update(read_safetensors(os.path.join(folder, file)))
    return weights


def linear_weights(cfg, w, dtype):
    """Dense weight of every block linear, rebuilding SLTrain factors when the folder holds them."""
    sl = cfg.get("sltrain")
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    out = {}
    for i in range(cfg["num_hidden_layers"]):
        for n in names:
            p = f"model.layers.{i}.{n}"
            if sl is None:
                out[p] = w[f"{p}.weight"].to(dtype)
                continue
            B, A, V, I = (w[f"{p}.{k}"] for k in "BAVI")
            W = sl["alpha"] / sl["rank"] * (B.to(dtype) @ A.to(dtype))
            assert torch.all(I[1:] > I[:-1]), f"{p}.I is not sorted and unique"
            W.view(-1)[I] += V.to(dtype)
            out[p] = W
    return out


def rms_norm(x, weight, eps):
    # LlamaRMSNorm.forward
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def forward(cfg, w, tokens, dtype=torch.float32):
    H = cfg["num_attention_heads"]
    D = cfg["hidden_size"]
    dh = cfg.get("head_dim") or D // H
    eps = cfg["rms_norm_eps"]
    lin = linear_weights(cfg, w, dtype)
    g = lambda name: w[name].to(dtype)
    b, t = tokens.shape
    x = g("model.embed_tokens.weight")[tokens]
    # LlamaRotaryEmbedding (default rope type): float32 frequencies, cos/sin cast to the dtype.
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dh, 2, dtype=torch.int64).float() / dh))
    pos = torch.arange(t).float()[None, :].expand(b, t)
    freqs = pos[:, :, None] * inv_freq[None, None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]
    mask = torch.full((t, t), torch.finfo(dtype).min, dtype=dtype).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms_norm(x, g(f"{p}.input_layernorm.weight"), eps)
        q = (h @ lin[f"{p}.self_attn.q_proj"].T).view(b, t, H, dh).transpose(1, 2)
        k = (h @ lin[f"{p}.self_attn.k_proj"].T).view(b, t, H, dh).transpose(1, 2)
        v = (h @ lin[f"{p}.self_attn.v_proj"].T).view(b, t, H, dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = q @ k.transpose(2, 3) / math.sqrt(dh) + mask
        attn = torch.softmax(scores.float(), dim=-1).to(dtype) @ v
        attn = attn.transpose(1, 2).reshape(b, t, D)
        x = x + attn @ lin[f"{p}.self_attn.o_proj"].T
        h = rms_norm(x, g(f"{p}.post_attention_layernorm.weight"), eps)
        gate = torch.nn.functional.silu(h @ lin[f"{p}.mlp.gate_proj"].T)
        x = x + (gate * (h @ lin[f"{p}.mlp.up_proj"].T)) @ lin[f"{p}.mlp.down_proj"].T
    x = rms_norm(x, g("model.norm.weight"), eps)
    return x @ g("lm_head.weight").T


def main(argv):
    folder, ref = argv[0], argv[1]
    tol = float(argv[argv.index("--tol") + 1]) if "--tol" in argv else 1e-4
    torch.set_num_threads(2)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_type"] in ("llama", "sltrain_llama"), cfg["model_type"]
    assert not cfg.get("tie_word_embeddings") and cfg.get("rope_scaling") is None
    assert cfg["num_key_value_heads"] == cfg["num_attention_heads"] and cfg["hidden_act"] == "silu"
    with open(ref) as f:
        spec = json.load(f)
    tokens = torch.tensor(spec["tokens"], dtype=torch.int64)
    ours = torch.frombuffer(bytearray(open(os.path.join(os.path.dirname(ref), spec["logits"]), "rb").read()),
                            dtype=torch.float32).reshape(*tokens.shape, cfg["vocab_size"])
    w = load_weights(folder)
    theirs = forward(cfg, w, tokens)
    diff = (theirs - ours).abs().max().item()
    scale = theirs.abs().max().item()
    rel = diff / scale
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    ok = rel <= tol
    print(f"{folder}: max |torch - ours| = {diff:.3e}, max |logit| = {scale:.3f}, "
          f"relative {rel:.2e} (tol {tol:.0e}), argmax agreement {agree * 100:.1f}% -> "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
