"""Data movement that keeps every value: Reshape, Flatten, Identity, Squeeze, Unsqueeze.

Each is a reshape of the per-sample shape; the transpose is the inverse reshape, and no
rounding happens. A VNNLIB instance has batch 1, so shapes are resolved for an input of
batch 1 and the leading dimension must stay the batch: a reshape that would fold the batch
into the features (``Reshape(x, [-1])``, ``Squeeze`` without axes, ``Unsqueeze`` at 0) is
rejected rather than guessed.
"""

from __future__ import annotations

import numpy as np

from .base import AffineRule, NodeInfo


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


RULES = [Reshape, Flatten, Identity, Squeeze, Unsqueeze]
__all__ = ["Flatten", "Identity", "Reshape", "RULES", "Squeeze", "Unsqueeze"]
