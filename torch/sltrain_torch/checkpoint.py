"""Our run folders and checkpoints (cli/checkpoint.ts), read and written from PyTorch.

A checkpoint is one safetensors file with metadata `format` (`sltrain-checkpoint-v3`, with SHA-256
checksums; v2 files, with the older 64-bit checksums, and v1 files, without, still load), `step`, `skeleton` (JSON of {params, buffers, optState} with every
tensor replaced by {"$tensor": name}) and `meta` (JSON: run config, data position `stream`, loss
`history`, and `data` provenance when our side recorded it). Parameter tensors are named
`params.<path>` (`params.layers.0.q.A`), supports `buffers.layers.N.<linear>` (u32), and the
optimizer state `opt.<path>`: AdamW's `{count, m: [...], v: [...]}` with one moment per parameter in
our leaf order (8-bit moments as {codes: u8, absmax: f32}), inside `[clip, adam]` when the run
clips, inside `{micro, acc, inner}` when it accumulates gradients, and one such state per
parameter (a list) for per-layer updates.
"""

import json
import math
import os

import torch

from . import safetensors as st
from .adamw import AdamW, Quantized, lr_schedule
from .errors import FormatError, UnsupportedRunError
from .model import Config, Llama, Method, our_param_paths

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "sltrain-checkpoint-v3"
# v2: the older 64-bit checksums (still verified); v1: no checksums.
_OLDER_CHECKED_FORMATS = ("sltrain-checkpoint-v2",)
_UNCHECKED_FORMATS = ("sltrain-checkpoint-v1",)
CONTINUED_METHODS = ("full", "lowrank", "sltrain")
_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


class Checkpoint:
    """A read checkpoint: `path`, `step`, `meta` (run, stream, history, data), `run`, and the
    tensors by our names (`params`, `buffers`: {path: tensor}; `opt`: the state tree)."""

    def __init__(self, path):
        if os.path.isdir(path):
            path = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.exists(path):
            raise FormatError(f"{path}: no checkpoint there (is it a run folder of train.ts?)")
        self.path = path
        with st.SafetensorsFile(path) as f:
            md = f.metadata
            fmt = md.get("format")
            checked = (FORMAT,) + _OLDER_CHECKED_FORMATS
            if fmt not in checked and fmt not in _UNCHECKED_FORMATS:
                raise FormatError(f"{path} is not an sltrain checkpoint this package reads (format "
                                  f"{json.dumps(fmt)}; it reads {FORMAT} and "
                                  f"{', '.join(_OLDER_CHECKED_FORMATS + _UNCHECKED_FORMATS)})")
            if fmt in checked and f.checksums is None:
                raise FormatError(f"{path}: checkpoint checksums are missing (corrupt checkpoint?)")
            try:
                skeleton, self.meta = json.loads(md["skeleton"]), json.loads(md["meta"])
                self.step = int(md["step"])
            except (KeyError, ValueError):
                raise FormatError(f"{path}: checkpoint metadata is missing or not valid JSON") from None

            def fill(node):
                if isinstance(node, dict) and isinstance(node.get("$tensor"), str):
                    if node["$tensor"] not in f.entries:
                        raise FormatError(f"{path}: tensor {node['$tensor']} is missing (corrupt checkpoint?)")
                    return f.tensor(node["$tensor"])
                if isinstance(node, dict):
                    return {k: fill(v) for k, v in node.items()}
                if isinstance(node, list):
                    return [fill(v) for v in node]
                return node

            self.params = _flat(fill(skeleton["params"]))
            self.buffers = _flat(fill(skeleton["buffers"]))
            self.opt = fill(skeleton["optState"])
        self.run = {"optimizer": "adamw", **self.meta["run"]}

    @property
    def method(self):
        return Method.of_run(self.run)

    @property
    def config(self):
        return Config(self.run["model"])


def _flat(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = enumerate(tree) if isinstance(tree, list) else tree.items()
    out = {}
    for k, v in items:
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_continuable(run, path):
    """Raises UnsupportedRunError unless this package continues `run` exactly."""
    why = None
    if run["method"] not in CONTINUED_METHODS:
        why = (f"method {run['method']}: this package continues {', '.join(CONTINUED_METHODS)} "
               "(the GaLore, Fira and APOLLO projector states and ReLoRA's merges are not carried)")
    elif run.get("optimizer") not in ("adamw", "adamw8bit"):
        why = f"optimizer {run.get('optimizer')}: only adamw and adamw8bit are carried"
    elif run.get("dtype", "f32") not in _DTYPES:
        why = f"dtype {run.get('dtype')}: only f32 and bf16 weights are carried"
    elif run["method"] == "sltrain" and run.get("refactorEvery", 0) > 0:
        why = "SLTrain with --refactor-every (weight refactorization and momentum resets) is not carried"
    if why:
        raise UnsupportedRunError(f"{path}: cannot continue this run in PyTorch: {why}")


def build_model(ck, device="cpu"):
    """The run's model with the checkpoint's weights and supports (exactly: dtypes kept)."""
    cfg, method = ck.config, ck.method
    dtype = _DTYPES.get(ck.run.get("dtype", "f32"))
    if dtype is None:
        raise UnsupportedRunError(f"{ck.path}: weight dtype {ck.run.get('dtype')} is not f32 or bf16")
    model = Llama(cfg, method, dtype)
    state = {path: ck.params.get(path) for path in our_param_paths(cfg, method)}
    missing = [p for p, t in state.items() if t is None]
    extra = sorted(set(ck.params) - set(state))
    if missing or extra:
        raise FormatError(f"{ck.path}: its parameters do not fit a {ck.run['method']} model of its "
                          f"config: missing {missing[:5]}, unexpected {extra[:5]}")
    buf = "support" if method.kind == "sltrain" else "frozen" if method.kind == "relora" else None
    for name, t in ck.buffers.items():
        if buf is None:
            raise FormatError(f"{ck.path}: unexpected buffer {name} for method {ck.run['method']}")
        state[f"{name}.{buf}"] = t
    own = model.state_dict()
    for name, t in state.items():
        if name not in own or tuple(own[name].shape) != tuple(t.shape):
            raise FormatError(f"{ck.path}: tensor {name} {list(t.shape)} does not fit the model "
                              f"({list(own[name].shape) if name in own else 'no such tensor'})")
        if own[name].dtype != t.dtype:
            raise UnsupportedRunError(f"{ck.path}: tensor {name} is {t.dtype}, the run's "
                                      f"dtype {ck.run.get('dtype', 'f32')} needs {own[name].dtype}")
    model.load_state_dict(state, strict=True)
    return model.to(device)


def _adam_core(opt, run, path):
    """(count, [m], [v]) out of the optimizer-state tree of `run` (see the module doc)."""
    node = opt
    if run.get("gradAccum", 1) > 1:
        if not (isinstance(node, dict) and "inner" in node):
            raise FormatError(f"{path}: gradient accumulation state missing")
        if node.get("micro") != 0:
            raise FormatError(f"{path}: saved in the middle of an accumulated step")
        node = node["inner"]
    if run.get("clip", 0) > 0:
        if not (isinstance(node, list) and len(node) == 2):
            raise FormatError(f"{path}: clipping state missing")
        node = node[1]
    if run.get("perLayer"):
        if not isinstance(node, list):
            raise FormatError(f"{path}: per-layer optimizer state missing")
        counts = {s["count"] for s in node}
        if len(counts) != 1:
            raise FormatError(f"{path}: per-layer states at different counts {sorted(counts)}")
        return counts.pop(), [s["m"][0] for s in node], [s["v"][0] for s in node]
    if not (isinstance(node, dict) and {"count", "m", "v"} <= set(node)):
        raise FormatError(f"{path}: no AdamW state (count, m, v) in the checkpoint")
    return node["count"], node["m"], node["v"]


def _moment(x, p, path, i):
    if isinstance(x, dict):
        q = Quantized(x["codes"], x["absmax"])
        if q.codes.numel() != p.numel() or q.absmax.numel() != -(-p.numel() // q.block):
            raise FormatError(f"{path}: 8-bit moment {i} does not fit its parameter {list(p.shape)}")
        return Quantized(q.codes.to(p.device), q.absmax.to(p.device))
    if x.numel() != p.numel():
        raise FormatError(f"{path}: moment {i} does not fit its parameter {list(p.shape)}")
    return x.reshape(p.shape).float().to(p.device)


def our_params(model):
    """The model's parameters in our leaf order (the order of the stored moments)."""
    named = dict(model.named_parameters())
    return [named[p] for p in our_param_paths(model.cfg, model.method)]


def build_optimizer(ck, model, run=None):
    """Our AdamW over the model, holding the checkpoint's moments and update count. `run` (the
    checkpoint's by default) gives the schedule, e.g. with more `steps`."""
    run = run or ck.run
    params = our_params(model)
    count, m, v = _adam_core(ck.opt, ck.run, ck.path)
    if len(m) != len(params) or len(v) != len(params):
        raise FormatError(f"{ck.path}: {len(m)} moments for {len(params)} parameters")
    opt = AdamW(params, lr_schedule(run), run.get("weightDecay", 0.0),
                eight_bit=run["optimizer"] == "adamw8bit")
    opt.count = count
    opt.m = [_moment(x, p, ck.path, i) for i, (x, p) in enumerate(zip(m, params))]
    opt.v = [_moment(x, p, ck.path, i) for i, (x, p) in enumerate(zip(v, params))]
    return opt


def _opt_tree(run, opt):
    def moment(x):
        return {"codes": x.codes, "absmax": x.absmax} if isinstance(x, Quantized) else x

    if run.get("perLayer"):
        node = [{"count": opt.count, "m": [moment(a)], "v": [moment(b)]}
                for a, b in zip(opt.m, opt.v)]
    else:
        node = {"count": opt.count, "m": [moment(x) for x in opt.m], "v": [moment(x) for x in opt.v]}
    if run.get("clip", 0) > 0:
        node = [{"norm": None}, node]
    if run.get("gradAccum", 1) > 1:
        node = {"micro": 0, "acc": None, "inner": node}
    return node


def _params_tree(model):
    """The parameters as our nested tree, keys in our order (so our leaf order is kept)."""
    named = dict(model.named_parameters())
    tree = {"embed": named["embed"], "layers": []}
    for i in range(model.cfg.layers):
        layer = {}
        for path in our_param_paths(model.cfg, model.method):
            parts = path.split(".")
            if parts[0] == "layers" and parts[1] == str(i):
                if len(parts) == 3:
                    layer[parts[2]] = named[path]
                else:
                    layer.setdefault(parts[2], {})[parts[3]] = named[path]
        tree["layers"].append(layer)
    tree["finalNorm"], tree["lmHead"] = named["finalNorm"], named["lmHead"]
    return tree


def _file_dtype(t):
    if t.dtype == torch.int64:
        return "U32"
    return {torch.float32: "F32", torch.bfloat16: "BF16", torch.uint8: "U8"}[t.dtype]


def save_checkpoint(path, model, opt, step, meta, keep=1):
    """Writes a checkpoint our side resumes from (atomic, checksummed); refuses non-finite
    tensors. With `keep` > 1 the replaced checkpoint stays as `<stem>.step-<k>.safetensors`."""
    run = meta["run"]
    params = _params_tree(model)
    buffers = {"layers": [{} for _ in range(model.cfg.layers)]}
    for name, t in model.named_buffers():
        i, lin, _ = name.split(".")[1:]
        buffers["layers"][int(i)][lin] = t
    tensors = []

    def skeleton(node, root):
        if isinstance(node, torch.Tensor):
            t = node.detach().cpu()
            if t.is_floating_point() and not bool(torch.isfinite(t.float()).all()):
                raise FloatingPointError(f"checkpoint: {root} holds a non-finite value; not written")
            dtype = _file_dtype(t)
            tensors.append((root, dtype, list(t.shape), st.tensor_bytes(t, dtype)))
            return {"$tensor": root}
        if isinstance(node, dict):
            return {k: skeleton(v, f"{root}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [skeleton(v, f"{root}.{i}") for i, v in enumerate(node)]
        if isinstance(node, float) and not math.isfinite(node):
            raise ValueError(f"checkpoint: non-finite number at {root}")
        return node

    parts = {"params": skeleton(params, "params"), "buffers": skeleton(buffers, "buffers"),
             "optState": skeleton(_opt_tree(run, opt), "opt")}
    metadata = {"format": FORMAT, "step": str(step),
                "skeleton": json.dumps(parts, separators=(",", ":")),
                "meta": json.dumps(meta, separators=(",", ":"))}
    if keep > 1:
        _keep_previous(path, step)
    st.write(path, tensors, metadata, checksums=True)
    if keep > 1:
        _prune(path, keep - 1)


def _kept(path):
    folder, stem = os.path.dirname(path) or ".", os.path.basename(path)[:-len(".safetensors")]
    found = []
    for name in os.listdir(folder):
        k = name[len(stem) + 6:-len(".safetensors")]
        if name.startswith(f"{stem}.step-") and name.endswith(".safetensors") and k.isdigit():
            found.append((int(k), os.path.join(folder, name)))
    return sorted(found)


def _keep_previous(path, step):
    try:
        with st.SafetensorsFile(path) as f:
            old = int(f.metadata["step"])
    except (FormatError, KeyError, ValueError):
        return
    if old == step:
        return
    target = f"{path[:-len('.safetensors')]}.step-{old}.safetensors"
    if os.path.exists(target):
        os.remove(target)
    os.link(path, target)


def _prune(path, keep):
    kept = _kept(path)
    for _, name in kept[:max(0, len(kept) - keep)]:
        os.remove(name)
