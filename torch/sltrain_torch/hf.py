"""The folders `export.ts` writes (Hugging Face layout), read into the package's model.

`--format hf`: a dense LlamaForCausalLM (`model.layers.N.self_attn.q_proj.weight`, ...).
`--format sltrain`: model_type `sltrain_llama`, a `sltrain` section in config.json (rank, delta,
alpha, scale, seed, index), and per block linear `P.B` [out, r], `P.A` [r, in], `P.V` [nnz] and
`P.I` [nnz] (u32 flat indices row·in + col, sorted), so W = scale·B@A with V added at I.
"""

import json
import os


from . import safetensors as st
from .errors import FormatError
from .model import Config, Llama, Method

HF_LINEARS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
SLTRAIN_MODEL_TYPE = "sltrain_llama"
INDEX_LAYOUT = "row * in_features + col, u32, sorted ascending, unique"


def hf_name(path):
    """Our parameter path (`layers.0.q.A`, `embed`) -> the export's tensor name."""
    if path == "embed":
        return "model.embed_tokens.weight"
    if path == "finalNorm":
        return "model.norm.weight"
    if path == "lmHead":
        return "lm_head.weight"
    _, i, name, *rest = path.split(".")
    if name == "attnNorm":
        return f"model.layers.{i}.input_layernorm.weight"
    if name == "mlpNorm":
        return f"model.layers.{i}.post_attention_layernorm.weight"
    suffix = {"w": "weight", "A": "A", "B": "B", "V": "V", "support": "I"}[rest[0]]
    return f"model.layers.{i}.{HF_LINEARS[name]}.{suffix}"


def our_config(c):
    """Our LlamaConfig fields from an exported config.json."""
    return {"vocabSize": c["vocab_size"], "hidden": c["hidden_size"],
            "intermediate": c["intermediate_size"], "heads": c["num_attention_heads"],
            "layers": c["num_hidden_layers"], "maxSeqLen": c.get("max_position_embeddings"),
            "rmsNormEps": c["rms_norm_eps"], "ropeBase": c.get("rope_theta", 10000.0),
            "initStd": c.get("initializer_range", 0.02)}


def read_config(folder):
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError):
        raise FormatError(f"{path}: missing or not JSON (not a folder written by export.ts?)") from None
    if c.get("model_type") not in ("llama", SLTRAIN_MODEL_TYPE):
        raise FormatError(f"{path}: model_type {c.get('model_type')!r} is not llama or {SLTRAIN_MODEL_TYPE}")
    if c.get("tie_word_embeddings") or c.get("rope_scaling") or \
            c.get("num_key_value_heads", c["num_attention_heads"]) != c["num_attention_heads"]:
        raise FormatError(f"{path}: tied embeddings, rope_scaling and grouped-query attention are not ours")
    if c["model_type"] == SLTRAIN_MODEL_TYPE:
        s = c.get("sltrain") or {}
        if not all(k in s for k in ("rank", "delta", "alpha", "seed")):
            raise FormatError(f"{path}: the sltrain section needs rank, delta, alpha and seed")
    return c


def load_export(folder, dtype=None):
    """(model, config.json dict) of an export.ts folder; weights kept in their stored dtype unless
    `dtype` is given."""
    c = read_config(folder)
    s = c.get("sltrain")
    method = Method("sltrain", s["rank"], s["alpha"], s["delta"]) if s else Method("dense")
    with st.SafetensorsFile(os.path.join(folder, "model.safetensors")) as f:
        stored = {n: f.tensor(n) for n in f.entries}
    float_dtype = dtype or next(t.dtype for n, t in stored.items() if n.endswith("embed_tokens.weight"))
    model = Llama(Config(our_config(c)), method, float_dtype)
    state = {}
    for name, own in model.state_dict().items():
        t = stored.pop(hf_name(name), None)
        if t is None:
            raise FormatError(f"{folder}: tensor {hf_name(name)} is missing")
        if tuple(t.shape) != tuple(own.shape):
            raise FormatError(f"{folder}: {hf_name(name)} is {list(t.shape)}, expected {list(own.shape)}")
        state[name] = t.to(own.dtype)
    if stored:
        raise FormatError(f"{folder}: unexpected tensors {sorted(stored)[:5]}")
    model.load_state_dict(state, strict=True)
    return model, c
