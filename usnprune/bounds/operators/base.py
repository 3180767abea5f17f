"""The two kinds of bound rule every ONNX operator maps to.

A rule is built once per ONNX node (:meth:`Rule.build`) from the node's attributes, its
constant inputs and the per-sample shapes of its non-constant ("bounded") inputs. Every
tensor the engine handles has a leading batch dimension ``N``; per-sample shapes exclude it.

* :class:`AffineRule` -- the output is an affine function of the bounded inputs,
  ``y = sum_i M_i x_i + offset``. A rule implements ``apply`` (``M_i x``), ``apply_abs``
  (``|M_i| x``) and ``apply_T`` (``M_i^T lam``). The engine derives everything else from
  these: concrete evaluation, forward-mode linear bounds (centre/radius form
  ``M m -/+ |M| r``, which equals the W+/W- split), interval bounds, the backward (CROWN)
  pass, and the float32 rounding-error bound.
* :class:`ActivationRule` -- an element-wise non-linear function with a sound linear
  relaxation ``ls*z + lb <= f(z) <= us*z + ub`` for ``z`` in ``[l, u]``.
* :class:`MaxRule` -- each output element is the maximum of a window of input elements
  (MaxPool). Its relaxation (DeepPoly's, also auto_LiRPA's default) selects per output the
  window element ``j`` with the largest lower bound: ``y >= x_j`` always; ``y <= x_j`` when
  ``j`` dominates (``l_j >= u_k`` for every other ``k`` of the window, then ``y = x_j``),
  otherwise ``y <= max_k u_k``.

``rounding`` is how many float32 roundings an output element of the real ONNX evaluation
may accumulate beyond those of its inputs, as a multiple of the fan-in (see
``bounds.float32_error``): 0 for pure data movement, 1 for one add or multiply, and the
number of summed terms plus one for dot products.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from usnprune.errors import UsnpruneError

DTYPE = torch.float64


class UnsupportedModel(UsnpruneError):
    """The ONNX model uses something the builtin verifier cannot bound."""


@dataclasses.dataclass
class NodeInfo:
    """What a rule is built from: one ONNX node, with its inputs classified."""

    name: str
    op_type: str
    attrs: dict[str, Any]
    inputs: list[str]  # all input names, in ONNX order ('' for an omitted optional input)
    consts: dict[int, np.ndarray]  # input position -> constant value
    var_pos: list[int]  # positions of the bounded (input-dependent) inputs
    var_shapes: list[tuple[int, ...]]  # their per-sample shapes, in var_pos order
    outputs: list[str] = dataclasses.field(default_factory=list)  # output names, in ONNX order

    def fail(self, what: str) -> UnsupportedModel:
        return UnsupportedModel(f"node '{self.name}' ({self.op_type}): {what}")

    def const(self, pos: int, what: str) -> np.ndarray:
        if pos in self.consts:
            return self.consts[pos]
        if pos < len(self.inputs) and self.inputs[pos] and pos in self.var_pos:
            raise self.fail(f"its {what} input '{self.inputs[pos]}' is not a constant "
                            "(the builtin verifier needs constant weights and shapes)")
        raise self.fail(f"missing {what} input")

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=DTYPE)


def per_sample_const(info: NodeInfo, pos: int, rank: int) -> np.ndarray:
    """The constant input at ``pos`` for one sample: against data of ``rank`` dimensions (the
    batch included) a constant of full rank must have a leading 1, and a higher rank would
    add dimensions in front of the batch."""
    c = np.asarray(info.consts[pos], dtype=np.float64)
    if c.ndim > rank:
        raise info.fail(f"constant input '{info.inputs[pos]}' of shape {c.shape} has more dimensions than the "
                        f"data ({rank} with the batch)")
    if c.ndim == rank:
        if c.shape[0] != 1:
            raise info.fail(f"constant input '{info.inputs[pos]}' has batch dimension {c.shape[0]}, expected 1")
        c = c[0]
    return c


def unbroadcast(lam: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum ``lam`` ``[N, *out]`` down to ``[N, *shape]`` (the transpose of broadcasting)."""
    extra = lam.dim() - 1 - len(shape)
    if extra > 0:
        lam = lam.sum(dim=tuple(range(1, 1 + extra)))
    dims = tuple(i + 1 for i, s in enumerate(shape) if s == 1 and lam.shape[i + 1] != 1)
    if dims:
        lam = lam.sum(dim=dims, keepdim=True)
    return lam


class Rule:
    """Base of all bound rules; subclasses set ``op_types`` and ``kind``."""

    op_types: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[str] = "?"
    # Input positions that may be bounded (None: any); any other non-constant input is rejected.
    var_inputs: ClassVar[tuple[int, ...] | None] = (0,)

    def __init__(self, info: NodeInfo) -> None:
        self.info = info
        self.name = info.name
        self.in_shapes = list(info.var_shapes)

    @classmethod
    def build(cls, info: NodeInfo) -> "Rule":
        for p in info.var_pos:
            if cls.var_inputs is not None and p not in cls.var_inputs:
                raise info.fail(f"input {p} ('{info.inputs[p]}') depends on the network input; the builtin "
                                "verifier needs it constant (weights, shapes and limits must be constants)")
        if not info.var_pos:
            raise info.fail("no input depends on the network input (fold constants first, e.g. with onnxsim)")
        return cls(info)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class AffineRule(Rule):
    kind = "affine"
    rounding: int = 0  # float32 roundings per output element (0: exact data movement)
    offset: torch.Tensor | None = None  # [*out] constant term, or None

    def apply(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_abs(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """``|M_i| x``; equal to ``apply`` for rules whose matrix is non-negative."""
        return self.apply(i, x)

    def apply_T(self, i: int, lam: torch.Tensor) -> torch.Tensor:
        """``M_i^T lam`` for ``lam`` ``[N, *out]``; default: a vector-Jacobian product."""
        x0 = torch.zeros((lam.shape[0],) + tuple(self.in_shapes[i]), dtype=lam.dtype, requires_grad=True)
        with torch.enable_grad():
            y = self.apply(i, x0)
            (g,) = torch.autograd.grad(y, x0, grad_outputs=lam)
        return g

    def combine(self, xs: list[torch.Tensor | None], absolute: bool = False) -> torch.Tensor:
        """``sum_i M_i x_i`` (``|M_i|`` with ``absolute``) over the inputs; ``None`` is a zero
        input. Rules with several inputs may override it with something cheaper (Concat)."""
        out = None
        for i, x in enumerate(xs):
            if x is None:
                continue
            y = self.apply_abs(i, x) if absolute else self.apply(i, x)
            out = y if out is None else out + y
        return out

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = self.combine(list(xs))
        if self.offset is not None:
            out = out + self.offset
        return out


class ActivationRule(Rule):
    kind = "activation"

    def relax(self, l: torch.Tensor, u: torch.Tensor, mode: str = "adaptive"):
        """``(ls, lb, us, ub)``: ``ls*z + lb <= f(z) <= us*z + ub`` for every ``z`` in ``[l, u]``.

        ``mode`` picks among sound relaxations where there is a choice (``adaptive``,
        ``parallel``, ``zero``; see ``activation``)."""
        raise NotImplementedError

    def interval(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f([l, u])`` for a monotone non-decreasing ``f``."""
        return self.forward(l), self.forward(u)


class MaxRule(Rule):
    """Maximum over windows of a ``[batch, C, *spatial]`` tensor (see the module docstring).

    Subclasses provide ``forward`` and ``windows(v)``: ``v [N, C, *spatial]`` ->
    ``[N, C, L, W]`` values of the ``W`` window positions of each of the ``L`` outputs of
    a channel (``-inf`` where a window reaches into padding), and ``index [L, W]``: the
    flat spatial input index of each window position (any valid index where padded).
    """

    kind = "max"
    index: torch.Tensor  # [L, W] int64

    def windows(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def interval(self, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward(l), self.forward(u)  # max is non-decreasing in every element

    def select(self, l: torch.Tensor, u: torch.Tensor):
        """``(idx, dom, umax)`` per output ``[N, C, L]``: the flat input index of the element
        with the largest lower bound, whether it dominates its window, and the window's
        largest upper bound."""
        lw, uw = self.windows(l), self.windows(u)
        lmax, j = lw.max(-1)
        umax = uw.max(-1).values
        others = uw.scatter(-1, j.unsqueeze(-1), -torch.inf).max(-1).values
        dom = lmax >= others  # ties are dominant too: x_k <= u_k <= l_j <= x_j
        idx = self.index[torch.arange(self.index.shape[0]), j]  # broadcasts to [N, C, L]
        return idx, dom, umax

    def gather(self, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``w [N, K, C, *spatial]`` -> ``[N, K, *out]``: the selected element of each window."""
        N, K, C = w.shape[:3]
        flat = w.reshape(N, K, C, -1)
        g = torch.gather(flat, 3, idx.unsqueeze(1).expand(N, K, C, idx.shape[-1]))
        return g.reshape((N, K) + tuple(self.out_shape))

    def scatter(self, lam: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The transpose of :meth:`gather`: ``lam [N, R, *out]`` -> ``[N, R, C, *spatial]``."""
        N, R, C = lam.shape[:3]
        flat = lam.reshape(N, R, C, -1)
        out = torch.zeros((N, R, C, self.in_size), dtype=lam.dtype)
        out.scatter_add_(3, idx.unsqueeze(1).expand(N, R, C, idx.shape[-1]), flat)
        return out.reshape((N, R) + tuple(self.in_shapes[0]))
