"""Source-free, pickle-free storage of an arbitrary network through torch.fx.

A pruned user network must rebuild without the user's source. ``torch.fx.symbolic_trace``
inlines every user class into generated Python text whose leaves are stock ``torch.nn``
layers; we store that text, each leaf's constructor arguments, and the state_dict. The blob
holds only str/int/float/bool/list/dict/tensors, so it loads with
``torch.load(weights_only=True)``. The rebuilt module is a real ``nn.Module`` of real
``nn.Conv2d``/``nn.BatchNorm2d``/``nn.Linear`` layers: it trains, exports to ONNX and can be
pruned again by Torch-Pruning. Loading executes the stored ``forward`` text (readable, but
trust the file as you would trust code). Chosen over ``torch.save(module)`` (needs the
source), ``torch.jit`` (deprecated, not re-prunable) and ``torch.export`` (cannot train);
/work/notes/torch_pruning.md section 5 has the comparison runs.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.fx
from torch import nn

from usnprune.errors import CheckpointError

FX_FORMAT = "fxmodule-v1"


def _ctor_kwargs(m: nn.Module) -> dict:
    kw = {}
    for p in list(inspect.signature(type(m).__init__).parameters)[1:]:
        if p in ("device", "dtype", "args", "kwargs"):
            continue
        if p == "bias":  # Conv/Linear/BatchNorm take bias: bool
            b = getattr(m, "bias", None)
            kw[p] = b if isinstance(b, bool) else (b is not None)
            continue
        if hasattr(m, p):
            v = getattr(m, p)
            kw[p] = list(v) if isinstance(v, tuple) else v
    return kw


def trace(model: nn.Module, what: str) -> torch.fx.GraphModule:
    if isinstance(model, torch.fx.GraphModule):
        return model
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... on data-dependent control flow
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{what}: torch.fx cannot trace the network, so it cannot be saved without its "
                              f"source ({type(e).__name__}: {first})") from None


def to_blob(model: nn.Module, what: str) -> dict:
    """The storable description of ``model`` (traced with torch.fx)."""
    gm = trace(model, what)
    leaves = {}
    for name, m in gm.named_modules():
        if name and not list(m.children()) and type(m) is not nn.Module:
            cls = type(m)
            if not (cls.__module__.startswith("torch.nn.") and getattr(nn, cls.__name__, None) is cls):
                raise CheckpointError(f"{what}: layer {name} is a {cls.__module__}.{cls.__name__}, not a torch.nn "
                                      f"layer; it cannot be rebuilt without its source")
            leaves[name] = {"type": cls.__name__, "kwargs": _ctor_kwargs(m), "training": m.training}
    sd = {k: v.detach().cpu() for k, v in gm.state_dict().items()}

    def owned(k: str) -> bool:
        return any(k.startswith(leaf + ".") for leaf in leaves)

    consts = {}  # fx tensor constants (_tensor_constant0, ...) are plain attributes
    for n in gm.graph.nodes:
        if n.op == "get_attr" and n.target not in sd and n.target not in leaves and "." not in n.target:
            v = getattr(gm, n.target)
            if isinstance(v, torch.Tensor):
                consts[n.target] = v.detach().cpu().clone()
    return {"format": FX_FORMAT, "torch": str(torch.__version__), "code": gm.code, "leaves": leaves,
            "extra_params": [k for k, _ in gm.named_parameters() if not owned(k)],
            "extra_buffers": [k for k, _ in gm.named_buffers() if not owned(k)],
            "consts": consts, "state_dict": sd}


def _set(root: nn.Module, qualname: str, value) -> None:
    *parents, last = qualname.split(".")
    mod = root
    for p in parents:
        if not hasattr(mod, p):
            mod.add_module(p, nn.Module())
        mod = getattr(mod, p)
    if isinstance(value, nn.Module):
        mod.add_module(last, value)
    elif isinstance(value, nn.Parameter):
        mod.register_parameter(last, value)
    else:
        mod.register_buffer(last, value)


def from_blob(blob: dict, what: str) -> torch.fx.GraphModule:
    """Rebuild the module :func:`to_blob` described; any inconsistency is a CheckpointError."""
    if not isinstance(blob, dict) or blob.get("format") != FX_FORMAT:
        raise CheckpointError(f"{what}: the network is not stored as {FX_FORMAT}")
    try:
        g = {"torch": torch, "inf": math.inf, "nan": math.nan, "device": torch.device, "NoneType": type(None)}
        exec(compile(blob["code"], f"<{what}>", "exec"), g)
        root = type("FxRebuilt", (nn.Module,), {"forward": g["forward"]})()
        for name, spec in blob["leaves"].items():
            if not hasattr(nn, spec["type"]):
                raise CheckpointError(f"{what}: layer {name} is a {spec['type']!r}, not a torch.nn layer")
            kw = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["kwargs"].items()}
            layer = getattr(nn, spec["type"])(**kw)
            layer.train(bool(spec["training"]))
            _set(root, name, layer)
        sd = blob["state_dict"]
        for k in blob["extra_params"]:
            _set(root, k, nn.Parameter(sd[k].clone()))
        for k in blob["extra_buffers"]:
            _set(root, k, sd[k].clone())
        for k, v in blob["consts"].items():
            setattr(root, k, v)
        root.load_state_dict(sd, strict=True)
        return torch.fx.symbolic_trace(root)
    except CheckpointError:
        raise
    except Exception as e:  # a hand-edited or foreign blob: say what failed, no traceback
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise CheckpointError(f"{what}: the stored network does not rebuild ({type(e).__name__}: {first})") from None
