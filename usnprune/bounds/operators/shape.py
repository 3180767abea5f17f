"""Data movement that keeps every value: Reshape, Flatten, Identity, Squeeze, Unsqueeze,
Transpose, Concat, Pad.

Every output element is one input element (or, for Concat and Pad, a constant), so the
matrix has entries 0 and 1, ``|M| = M``, intervals map through as they are
(``moves_data``), and no rounding happens. The reshapes' transpose is the inverse
reshape; Transpose's the inverse permutation; Concat's the slice of each input; Pad's the
crop (and a negative pad, a crop, has the zero pad as its transpose). A VNNLIB instance has batch 1, so shapes are resolved for an input of
batch 1 and the leading dimension must stay the batch: a reshape that would fold the batch
into the features (``Reshape(x, [-1])``, ``Squeeze`` without axes, ``Unsqueeze`` at 0) is
rejected rather than guessed.
"""

from __future__ import annotations

import numpy as np

import torch
import torch.nn.functional as F

from .base import AffineRule, NodeInfo, per_sample_const, tensor


class _Reshaping(AffineRule):
    rounding = 0
    moves_data = True  # y is a rearrangement of x: intervals map through apply as they are

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        full = self.target((1,) + tuple(self.in_shapes[0]))
        if not full or full[0] != 1:
            raise info.fail(f"the result {list(full)} would not keep the batch dimension first")
        self.out_shape = tuple(int(s) for s in full[1:])
        if int(np.prod(self.out_shape)) != int(np.prod(self.in_shapes[0])):
            raise info.fail(f"cannot reshape {self.in_shapes[0]} into {self.out_shape}")

    def target(self, full_in: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def apply(self, i, x):
        return x.reshape((x.shape[0],) + self.out_shape)

    def apply_T(self, i, lam):
        return lam.reshape((lam.shape[0],) + tuple(self.in_shapes[0]))


class Reshape(_Reshaping):
    op_types = ("Reshape",)

    def target(self, full_in):
        shape = [int(s) for s in self.info.const(1, "shape").reshape(-1)]
        allowzero = int(self.info.attr("allowzero", 0))
        out = []
        for k, s in enumerate(shape):
            if s == 0 and not allowzero:
                if k >= len(full_in):
                    raise self.info.fail(f"shape entry {k} is 0 but the input has rank {len(full_in)}")
                s = full_in[k]
            out.append(s)
        if out.count(-1) > 1:
            raise self.info.fail("more than one -1 in the target shape")
        total = int(np.prod(full_in))
        if -1 in out:
            rest = int(np.prod([s for s in out if s != -1]))
            if rest == 0 or total % rest:
                raise self.info.fail(f"cannot reshape {list(full_in)} into {shape}")
            out[out.index(-1)] = total // rest
        return tuple(out)


class Flatten(_Reshaping):
    op_types = ("Flatten",)

    def target(self, full_in):
        axis = int(self.info.attr("axis", 1))
        if axis < 0:
            axis += len(full_in)
        # axis 0 gives [1, everything], which at batch 1 is the per-sample flatten.
        return (int(np.prod(full_in[:axis])) if axis > 0 else 1, int(np.prod(full_in[axis:])))


class Identity(_Reshaping):
    op_types = ("Identity",)

    def target(self, full_in):
        return full_in


def _axes(info: NodeInfo, rank: int) -> list[int] | None:
    axes = info.attr("axes")
    if axes is None and 1 in info.consts:
        axes = info.consts[1].reshape(-1).tolist()
    if axes is None:
        return None
    return sorted(int(a) + rank if int(a) < 0 else int(a) for a in axes)


class Squeeze(_Reshaping):
    op_types = ("Squeeze",)

    def target(self, full_in):
        axes = _axes(self.info, len(full_in))
        if axes is None:
            raise self.info.fail("Squeeze without axes would remove the batch dimension")
        if 0 in axes:
            raise self.info.fail("squeezing axis 0 would remove the batch dimension")
        for a in axes:
            if a >= len(full_in) or full_in[a] != 1:
                raise self.info.fail(f"axis {a} of {list(full_in)} is not of size 1")
        return tuple(s for k, s in enumerate(full_in) if k not in axes)


class Unsqueeze(_Reshaping):
    op_types = ("Unsqueeze",)

    def target(self, full_in):
        rank = len(full_in) + len(self.info.attr("axes") or self.info.consts.get(1, np.zeros(0)).reshape(-1))
        axes = _axes(self.info, rank)
        if not axes:
            raise self.info.fail("Unsqueeze needs axes")
        if 0 in axes:
            raise self.info.fail("unsqueezing at axis 0 would move the batch dimension")
        out = list(full_in)
        for a in axes:
            out.insert(a, 1)
        return tuple(out)


class Transpose(AffineRule):
    """A permutation of the axes that keeps the batch first (``perm`` defaults to reversal,
    which would move it, so it must be given)."""

    op_types = ("Transpose",)
    rounding = 0
    moves_data = True

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        rank = 1 + len(self.in_shapes[0])
        perm = info.attr("perm")
        perm = list(range(rank))[::-1] if perm is None else [int(p) + rank if int(p) < 0 else int(p) for p in perm]
        if sorted(perm) != list(range(rank)):
            raise info.fail(f"perm {perm} is not a permutation of {rank} axes")
        if perm[0] != 0:
            raise info.fail(f"perm {perm} would move the batch dimension")
        self.perm = tuple(perm)
        self.inverse = tuple(int(i) for i in np.argsort(perm))
        self.out_shape = tuple(self.in_shapes[0][p - 1] for p in perm[1:])

    def apply(self, i, x):
        return x.permute(self.perm)

    def apply_T(self, i, lam):
        return lam.permute(self.inverse)


class Concat(AffineRule):
    """Concatenation along a non-batch axis of bounded tensors and constants (a constant
    input carries the batch dimension 1)."""

    op_types = ("Concat",)
    rounding = 0
    moves_data = True
    var_inputs = None  # any input may be bounded

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        rank = 1 + len(self.in_shapes[0])
        axis = int(info.attr("axis", 1 << 30))
        if axis == 1 << 30:
            raise info.fail("missing axis")
        axis = axis + rank if axis < 0 else axis
        if not 1 <= axis < rank:
            raise info.fail(f"axis {info.attr('axis')} must be a non-batch axis of the rank-{rank} data")
        self.axis = axis
        var_of = {p: k for k, p in enumerate(info.var_pos)}
        self.parts: list[tuple[int | None, tuple[int, ...]]] = []  # (bounded input index or None, shape)
        consts = []
        for p, name in enumerate(info.inputs):
            if not name:
                raise info.fail(f"input {p} is empty")
            if p in var_of:
                shape = tuple(self.in_shapes[var_of[p]])
                self.parts.append((var_of[p], shape))
                consts.append(None)
            else:
                c = per_sample_const(info, p, rank)
                if c.ndim != rank - 1:
                    raise info.fail(f"constant input '{name}' of shape {info.consts[p].shape} is not of rank {rank}")
                self.parts.append((None, c.shape))
                consts.append(c)
        ref = self.parts[0][1]
        for _, shape in self.parts:
            if len(shape) != len(ref) or any(a != b for d, (a, b) in enumerate(zip(shape, ref)) if d != axis - 1):
                raise info.fail(f"input shapes {[s for _, s in self.parts]} differ outside axis {axis}")
        self.starts = np.cumsum([0] + [s[axis - 1] for _, s in self.parts])[:-1].tolist()
        out = list(ref)
        out[axis - 1] = sum(s[axis - 1] for _, s in self.parts)
        self.out_shape = tuple(out)
        self._start = {k: self.starts[j] for j, (k, _) in enumerate(self.parts) if k is not None}
        if any(c is not None for c in consts):
            self.offset = torch.cat([tensor(c) if c is not None else torch.zeros(s, dtype=torch.float64)
                                     for c, (_, s) in zip(consts, self.parts)], dim=axis - 1)

    def combine(self, xs, absolute=False):
        N = next(x.shape[0] for x in xs if x is not None)
        ref = next(x for x in xs if x is not None)
        pieces = []
        for k, shape in self.parts:
            x = xs[k] if k is not None else None
            pieces.append(x if x is not None else torch.zeros((N,) + shape, dtype=ref.dtype))
        return torch.cat(pieces, dim=self.axis)

    def apply(self, i, x):
        xs = [None] * len(self.in_shapes)
        xs[i] = x
        return self.combine(xs)

    def apply_T(self, i, lam):
        return lam.narrow(self.axis, self._start[i], self.in_shapes[i][self.axis - 1])


class Pad(AffineRule):
    """Constant padding (``mode=constant``, any constant value, negative pads crop) of the
    non-batch axes; ``pads``/``value`` as attributes (opset < 11) or constant inputs, with
    the optional ``axes`` input (opset 18). ``reflect``/``edge``/``wrap`` are refused."""

    op_types = ("Pad",)
    rounding = 0
    moves_data = True

    def __init__(self, info: NodeInfo) -> None:
        super().__init__(info)
        mode = info.attr("mode", "constant")
        if mode != "constant":
            raise info.fail(f"mode={mode!r} is not supported (only constant padding)")
        shape = tuple(self.in_shapes[0])
        rank = 1 + len(shape)
        pads = info.attr("pads")
        if pads is None:
            pads = info.const(1, "pads")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        value = float(info.attr("value", 0.0))
        if len(info.inputs) > 2 and info.inputs[2]:
            v = info.const(2, "constant_value")
            if np.size(v) != 1:
                raise info.fail("constant_value must be a scalar")
            value = float(np.ravel(v)[0])
        axes = list(range(rank))
        if len(info.inputs) > 3 and info.inputs[3]:
            axes = [int(a) + rank if int(a) < 0 else int(a) for a in info.const(3, "axes").reshape(-1)]
        if len(pads) != 2 * len(axes):
            raise info.fail(f"{len(pads)} pads for {len(axes)} axes")
        begin, end = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            if not 0 <= a < rank:
                raise info.fail(f"axis {a} out of range for rank {rank}")
            begin[a], end[a] = pads[k], pads[k + len(axes)]
        if begin[0] or end[0]:
            raise info.fail("padding the batch dimension is not supported")
        out = tuple(s + begin[a + 1] + end[a + 1] for a, s in enumerate(shape))
        if min(out) < 1:
            raise info.fail(f"pads {pads} leave an empty tensor")
        self.out_shape = out
        self.tpad = tuple(p for a in range(rank - 1, 0, -1) for p in (begin[a], end[a]))  # last axis first
        self.tpad_T = tuple(-p for p in self.tpad)
        if value != 0.0:
            self.offset = F.pad(torch.zeros((1,) + shape, dtype=torch.float64), self.tpad, value=value)[0]

    def apply(self, i, x):
        return F.pad(x, self.tpad)

    def apply_T(self, i, lam):
        return F.pad(lam, self.tpad_T)


RULES = [Reshape, Flatten, Identity, Squeeze, Unsqueeze, Transpose, Concat, Pad]
__all__ = ["Concat", "Flatten", "Identity", "Pad", "Reshape", "RULES", "Squeeze", "Transpose", "Unsqueeze"]
