"""The official SLTrain checkpoint layout (andyjm3/SLTrain), to and from `export.ts --format sltrain`.

The official code (splora/splora_linear.py `SpLoRaLinear`, saved by `SpLoRaModel.save_pretrained`
over its own peft_pretraining/modeling_llama.py LlamaForCausalLM) keeps, per reparameterized
linear `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}`:

| official        | dtype          | ours (export)  |
| --------------- | -------------- | -------------- |
| `.lora_B`       | model dtype    | `.B` [out, r]  |
| `.lora_A`       | model dtype    | `.A` [r, in]   |
| `.sparse_value` | model dtype    | `.V` [nnz]     |
| `.sparse_index` | int64 (buffer) | `.I` [nnz] u32 |

with W = lora_B @ (lora_A · lora_alpha/r), then sparse_value scatter-added at sparse_index of the
flattened W (the same W as ours). The folder holds `pytorch_model.bin` (torch.save of the state
dict, with each attention's `rotary_emb.inv_freq` buffer as that model keeps it), `config.json`
(Hugging Face LlamaConfig; our extra `sltrain_seed` records where the supports came from) and
`splora_config.json` ({r, lora_alpha, lora_dropout, sp_ratio, target_modules, trainable_scaling},
the keyword arguments of SpLoRaModel). Its RoPE has base 10000 and no other.
"""

import json
import os
import shutil
import uuid
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import safetensors as st
from .errors import FormatError
from .hf import HF_LINEARS, INDEX_LAYOUT, SLTRAIN_MODEL_TYPE, our_config, read_config
from .model import LINEARS, Config, Llama, Method, sparse_nnz

TARGET_MODULES = ["attn", "mlp", "attention"]
_OWN_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "splora_config.json")


def _new_folder(out, fill):
    """Builds `out` (which must not exist) under a temporary name, renamed when complete."""
    if os.path.exists(out):
        raise FormatError(f"{out} already exists; choose a new folder (nothing is overwritten)")
    tmp = f"{out.rstrip('/')}.tmp-{uuid.uuid4()}"
    os.makedirs(tmp)
    try:
        fill(tmp)
        if os.path.exists(out):
            raise FormatError(f"{out} appeared meanwhile; not replaced")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _copy_rest(src, dst):
    for name in sorted(os.listdir(src)):
        if name not in _OWN_FILES and os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def _write_json(path, value):
    with open(path, "w") as f:
        f.write(json.dumps(value, indent=2) + "\n")


def inv_freq(head_dim, base=10000):
    """The official model's rotary buffer: 1 / base^(arange(0, dim, 2) / dim) in float32."""
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


def to_official(src, out):
    """Converts an `export.ts --format sltrain` folder into the official layout at `out`."""
    c = read_config(src)
    if c["model_type"] != SLTRAIN_MODEL_TYPE:
        raise FormatError(f"{src}: not an SLTrain-factor folder (export.ts --format sltrain)")
    if c.get("rope_theta", 10000) != 10000:
        raise FormatError(f"{src}: rope_theta {c['rope_theta']}, but the official model's RoPE "
                          "base is fixed at 10000")
    s = c["sltrain"]
    cfg = Config(our_config(c))
    with st.SafetensorsFile(os.path.join(src, "model.safetensors")) as f:
        t = {n: f.tensor(n) for n in f.entries}
    state = OrderedDict([("model.embed_tokens.weight", t.pop("model.embed_tokens.weight"))])
    for i in range(cfg.layers):
        for name in LINEARS:
            p = f"model.layers.{i}.{HF_LINEARS[name]}"
            state[f"{p}.lora_A"] = t.pop(f"{p}.A")
            state[f"{p}.lora_B"] = t.pop(f"{p}.B")
            state[f"{p}.sparse_value"] = t.pop(f"{p}.V")
            state[f"{p}.sparse_index"] = t.pop(f"{p}.I")  # int64, as the official buffer
            if name == "o":
                state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq(
                    cfg.hidden // cfg.heads)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            state[f"model.layers.{i}.{norm}.weight"] = t.pop(f"model.layers.{i}.{norm}.weight")
    state["model.norm.weight"] = t.pop("model.norm.weight")
    state["lm_head.weight"] = t.pop("lm_head.weight")
    if t:
        raise FormatError(f"{src}: unexpected tensors {sorted(t)[:5]}")
    config = {k: v for k, v in c.items() if k != "sltrain"}
    config.update(architectures=["LlamaForCausalLM"], model_type="llama", sltrain_seed=s["seed"],
                  max_sequence_length=c.get("max_position_embeddings"))
    splora = {"r": s["rank"], "lora_alpha": s["alpha"], "lora_dropout": 0.0, "sp_ratio": s["delta"],
              "target_modules": TARGET_MODULES, "trainable_scaling": False}

    def fill(tmp):
        torch.save(state, os.path.join(tmp, "pytorch_model.bin"))
        _write_json(os.path.join(tmp, "config.json"), config)
        _write_json(os.path.join(tmp, "splora_config.json"), splora)
        _copy_rest(src, tmp)

    _new_folder(out, fill)


def _read_official(folder):
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(folder, "splora_config.json")) as f:
            splora = json.load(f)
    except (OSError, ValueError) as e:
        raise FormatError(f"{folder}: config.json or splora_config.json missing or not JSON ({e})") from None
    if splora.get("trainable_scaling"):
        raise FormatError(f"{folder}: trainable_scaling (a learned tanh scale) has no counterpart here")
    for k in ("r", "lora_alpha", "sp_ratio"):
        if not isinstance(splora.get(k), (int, float)):
            raise FormatError(f"{folder}: splora_config.json has no {k}")
    try:
        state = torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu")
    except (OSError, RuntimeError) as e:
        raise FormatError(f"{folder}/pytorch_model.bin: cannot be read ({e})") from None
    config.setdefault("max_position_embeddings", config.get("max_sequence_length"))
    return config, splora, state


def from_official(src, out):
    """Converts an official SLTrain checkpoint folder into an `export.ts --format sltrain` folder."""
    config, splora, state = _read_official(src)
    cfg = Config(our_config(config))
    rank, alpha, delta = splora["r"], splora["lora_alpha"], splora["sp_ratio"]
    tensors = []

    def take(name, ours, dtype=None):
        if name not in state:
            raise FormatError(f"{src}/pytorch_model.bin: tensor {name} is missing")
        t = state.pop(name)
        dt = dtype or {torch.float32: "F32", torch.bfloat16: "BF16"}.get(t.dtype)
        if dt is None:
            raise FormatError(f"{src}: {name} is {t.dtype}, expected float32 or bfloat16")
        tensors.append((ours, dt, list(t.shape), st.tensor_bytes(t, dt)))
        return t

    take("model.embed_tokens.weight", "model.embed_tokens.weight")
    for i in range(cfg.layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            take(f"model.layers.{i}.{norm}.weight", f"model.layers.{i}.{norm}.weight")
        state.pop(f"model.layers.{i}.self_attn.rotary_emb.inv_freq", None)
        for name, (o, n) in cfg.shapes().items():
            p = f"model.layers.{i}.{HF_LINEARS[name]}"
            b, a = take(f"{p}.lora_B", f"{p}.B"), take(f"{p}.lora_A", f"{p}.A")
            v = take(f"{p}.sparse_value", f"{p}.V")
            idx = state.get(f"{p}.sparse_index")
            nnz = sparse_nnz(delta, o, n)
            if list(b.shape) != [o, rank] or list(a.shape) != [rank, n] or v.numel() != nnz or \
                    idx is None or idx.numel() != nnz:
                raise FormatError(f"{src}: {p} does not have the shapes of r = {rank}, "
                                  f"sp_ratio = {delta} for a [{o}, {n}] linear")
            if nnz and (bool((idx[1:] <= idx[:-1]).any()) or int(idx[0]) < 0 or int(idx[-1]) >= o * n):
                raise FormatError(f"{src}: {p}.sparse_index is not sorted, unique and inside W")
            take(f"{p}.sparse_index", f"{p}.I", "U32")
    take("model.norm.weight", "model.norm.weight")
    take("lm_head.weight", "lm_head.weight")
    if state:
        raise FormatError(f"{src}: unexpected tensors {sorted(state)[:5]}")
    ours = {k: v for k, v in config.items() if k not in ("sltrain_seed", "max_sequence_length")}
    ours.update(architectures=["SLTrainLlamaForCausalLM"], model_type=SLTRAIN_MODEL_TYPE)
    ours["sltrain"] = {"rank": rank, "delta": delta, "alpha": alpha, "scale": alpha / rank,
                       "seed": config.get("sltrain_seed", 0), "index": INDEX_LAYOUT}

    def fill(tmp):
        st.write(os.path.join(tmp, "model.safetensors"), tensors, {"format": "pt"})
        _write_json(os.path.join(tmp, "config.json"), ours)
        _copy_rest(src, tmp)

    _new_folder(out, fill)


class OfficialLinear(nn.Module):
    """SpLoRaLinear's forward on its own tensors: W = lora_B @ (lora_A·scale), sparse_value
    scatter-added at sparse_index, y = x·Wᵀ (sparse_linear.cpp's sparse_linear_forward)."""

    def __init__(self, method, out, inp, dtype=torch.float32):
        super().__init__()
        self.out, self.inp, self.scale = out, inp, method.alpha / method.rank
        nnz = sparse_nnz(method.delta, out, inp)
        self.lora_A = nn.Parameter(torch.empty(method.rank, inp, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out, method.rank, dtype=dtype))
        self.register_buffer("sparse_index", torch.zeros(nnz, dtype=torch.int64))
        self.sparse_value = nn.Parameter(torch.empty(nnz, dtype=dtype))

    def forward(self, x):
        w = self.lora_B.mm(self.lora_A * self.scale)
        w = w.reshape(-1).scatter_add(0, self.sparse_index, self.sparse_value.to(w.dtype))
        return F.linear(x.to(w.dtype), w.view(self.out, self.inp))


class OfficialLlama(Llama):
    """The official layout's forward: OfficialLinear block linears and the official model's RoPE
    tables (inv_freq in float32, angles t·inv_freq, cos/sin in float32)."""

    def _tables(self, t, dtype, device):
        key = (t, dtype, device)
        if key not in self._rope:
            freqs = torch.einsum("i,j->ij", torch.arange(t, dtype=torch.float32),
                                 inv_freq(self.cfg.hidden // self.cfg.heads))
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            self._rope[key] = (freqs.cos().to(dtype).to(device), freqs.sin().to(dtype).to(device),
                               mask.to(device))
        return self._rope[key]


def load_official(folder):
    """An OfficialLlama holding the tensors of an official SLTrain folder (strict)."""
    config, splora, state = _read_official(folder)
    cfg = Config(our_config(config))
    if cfg.rope_base != 10000:
        raise FormatError(f"{folder}: rope_theta {cfg.rope_base}; the official model's base is 10000")
    method = Method("sltrain", splora["r"], splora["lora_alpha"], splora["sp_ratio"])
    dtype = state["model.embed_tokens.weight"].dtype
    model = OfficialLlama(cfg, method, dtype, linear=OfficialLinear)
    ours = {"model.embed_tokens.weight": "embed", "model.norm.weight": "finalNorm",
            "lm_head.weight": "lmHead"}
    for i in range(cfg.layers):
        ours[f"model.layers.{i}.input_layernorm.weight"] = f"layers.{i}.attnNorm"
        ours[f"model.layers.{i}.post_attention_layernorm.weight"] = f"layers.{i}.mlpNorm"
        state.pop(f"model.layers.{i}.self_attn.rotary_emb.inv_freq", None)
        for name in LINEARS:
            for k in ("lora_A", "lora_B", "sparse_value", "sparse_index"):
                ours[f"model.layers.{i}.{HF_LINEARS[name]}.{k}"] = f"layers.{i}.{name}.{k}"
    missing = sorted(set(ours) - set(state))
    if missing or set(state) - set(ours):
        raise FormatError(f"{folder}: missing {missing[:5]}, unexpected {sorted(set(state) - set(ours))[:5]}")
    model.load_state_dict({ours[k]: v for k, v in state.items()}, strict=True)
    return model
