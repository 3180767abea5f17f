"""The Wasserstein concentration loss on unit gates.

``W1(G, T_p)`` between the empirical distribution ``G`` of all gates (pooled across layers)
and the target ``T_p`` with mass ``p`` at 0 and ``1 - p`` at 1. In one dimension the optimal
transport pairs sorted samples, so with ``n`` gates and ``t`` the sorted target sample
(``round(p n)`` zeros, then ones) ``W1 = mean_i |sort(g)_i - t_i|``. ``torch.sort`` passes
gradients to the sorted elements, so the loss is differentiable in the gates: the smallest
``p n`` gates are pulled to 0 and the rest to 1, whichever layer they belong to. That is the
"concentration across layers": the units that will be removed end up with near-zero gates
before they are removed, so removing them changes the function little.
"""

from __future__ import annotations

import torch


def target_sample(n: int, p: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """The sorted target sample: ``round(p * n)`` zeros then ones."""
    k = int(round(p * n))
    t = torch.ones(n, device=device, dtype=dtype)
    t[:k] = 0.0
    return t


def w1_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """W1 between two equal-size 1-D samples: mean |sort(a) - sort(b)|."""
    if a.numel() != b.numel():
        raise ValueError("samples must have the same size")
    return (torch.sort(a.reshape(-1)).values - torch.sort(b.reshape(-1)).values).abs().mean()


def w1_to_target(gates: torch.Tensor, p: float) -> torch.Tensor:
    """``W1(G, T_p)`` for the pooled gates ``gates`` (1-D)."""
    g = gates.reshape(-1)
    return (torch.sort(g).values - target_sample(g.numel(), p, g.device, g.dtype)).abs().mean()


def usn_gate_penalty(gates: dict[str, torch.Tensor], usn: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum_j (1 - USN_j) |g_j|`` over every unit."""
    return sum(((1.0 - usn[n]) * g.abs()).sum() for n, g in gates.items())


def pooled(gates: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in gates.values()])
