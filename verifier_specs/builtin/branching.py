"""How the builtin verifier splits an open domain (mixed into ``bab.Search``).

Two kinds of split (``split.py``), chosen per domain from the bound computation just done:

* a *ReLU split* along the kink of the first-layer ReLU with the largest BaBSR score
  (Bunel et al., "Branch and bound for piecewise linear neural network verification",
  JMLR 2020): the multiplier the backward pass brought to that ReLU for the domain's worst
  open row, times what its relaxation can cost -- the chord's intercept (its largest gap)
  for a negative multiplier, half the lower line's largest gap for a positive one. Taken
  when that score is at least ``relu_split_ratio`` times the best score of any deeper
  ReLU (default 0: whenever a first-layer ReLU is unstable). Two inputs only (exact
  polygon domains).
* an *input split* (halving the bounding box) along the input chosen by ``branching``:
  ``unstable`` -- the input with the largest share of the ranges of the neurons whose
  relaxation is not exact; ``widest`` -- the widest relative to the root box;
  ``gradient`` -- where the worst row's linear bound varies most (measured worst).
"""

from __future__ import annotations

import numpy as np
import torch


class Branching:
    """Needs ``self.first`` (first-layer ReLU outputs -> their affine pre-activation),
    ``self.relus`` and ``self.opts``."""

    def choose(self, grp, batch: dict, res, idx: torch.Tensor, wrow: torch.Tensor,
                root_w: np.ndarray):
        """How to split each alive domain: ``(kind, dims, w, d)``, kind 1 a ReLU split along
        ``w . x + d = 0``, kind 0 an input split of ``dims``."""
        n = len(root_w)
        A = len(idx)
        ii = idx.numpy()
        rel = (batch["hi"][ii] - batch["lo"][ii]) / root_w
        dims = self._input_dims(res, idx, wrow, rel)
        kind = np.zeros(A, dtype=np.int64)
        w, d = np.zeros((A, n)), np.zeros(A)
        if not self.first:
            return kind, dims, w, d
        # the backward row of each domain's worst row; scores over the whole batch (indexing
        # the relaxations first would copy them), then the alive domains' rows
        B = len(batch["lo"])
        brow = torch.zeros(B, dtype=torch.long)
        brow[idx] = (res.rows[idx] == wrow.unsqueeze(1)).to(torch.int64).argmax(1)
        best_first = torch.full((A,), -1.0, dtype=torch.float64)
        best_idx = torch.zeros(A, dtype=torch.long)
        best_t = [None] * A
        best_deep = torch.zeros(A, dtype=torch.float64)
        ratio = self.opts.relu_split_ratio
        for t, lam in res.lams.items():
            if lam is None or t not in self.relus or (ratio == 0 and t not in self.first):
                continue
            s = _babsr(lam[torch.arange(B), brow], res.relax[t])
            if s is None:
                continue
            m, j = s.reshape(B, -1)[idx].max(1)
            if t in self.first:
                better = m > best_first
                best_first = torch.where(better, m, best_first)
                best_idx = torch.where(better, j, best_idx)
                for a in torch.nonzero(better).flatten().tolist():
                    best_t[a] = t
            else:
                best_deep = torch.maximum(best_deep, m)
        use = (best_first > 0) & (best_first >= ratio * best_deep)
        for a in torch.nonzero(use).flatten().tolist():
            W, off = self.first[best_t[a]]
            j = int(best_idx[a])
            kind[a], w[a], d[a] = 1, W[:, j], off[j]
        return kind, dims, w, d

    def _input_dims(self, res, idx: torch.Tensor, wrow: torch.Tensor, rel: np.ndarray) -> np.ndarray:
        if self.opts.branching == "unstable" and res.scores is not None:
            sc = res.scores[idx].numpy()
            dims = sc.argmax(1)
            flat = sc.max(1) <= 0  # nothing unstable left: fall back to the widest
            dims[flat] = rel[flat].argmax(1)
            return dims
        if self.opts.branching == "gradient":
            n = rel.shape[1]
            c = res.coefs[idx, wrow, :n].abs().numpy()
            dims = c.argmax(1)
            flat = c.max(1) <= 0
            dims[flat] = rel[flat].argmax(1)
            return dims
        return rel.argmax(1)


def _babsr(lam: torch.Tensor, relax) -> torch.Tensor | None:
    """BaBSR's score of every unstable ReLU for the multiplier ``lam`` that reached it."""
    ls, lb, us, ub = relax
    # the kink within 1e-6 of the range's end (a domain already cut along it, up to
    # rounding) is as good as stable: splitting there again would make no progress
    unstable = (us > 1e-6) & (us < 1 - 1e-6) & (ub > 0)
    if not bool(unstable.any()):
        return None
    us_c = us.clamp(1e-12, 1 - 1e-12)
    low_gap = torch.minimum(ub / us_c, ub / (1 - us_c)) * 0.5  # min(-l, u) / 2
    s = torch.where(lam < 0, -lam * ub, lam * low_gap)
    return torch.where(unstable, s, torch.zeros_like(s))


__all__ = ["Branching"]
