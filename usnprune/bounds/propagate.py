"""Sound bounds of a :class:`~usnprune.bounds.graph.Graph` over many input boxes at once.

Notation. A batch holds ``B`` boxes ``[lo, hi]`` of the ``n`` network inputs. Inside a box
an input is ``x = mid + rad * t`` with ``t`` in ``[-1, 1]^n``. A *linear bound* of a tensor
is a pair of affine functions of ``t`` per element, stored as coefficient stacks
``[B, K, *shape]`` with ``K = n + 1`` (slots ``0..n-1`` multiply ``t_i``, slot ``n`` is the
constant); ``min_t`` of one is ``const - sum_i |coef_i|``.

* :func:`forward` -- forward-mode linear bounds for every tensor (auto_LiRPA's "forward"):
  affine rules map the centre ``m = (L + U) / 2`` with ``M`` and the radius
  ``r = (U - L) / 2`` with ``|M|`` (algebraically the W+/W- split), activations apply their
  relaxation on concretized pre-activation bounds, and every tensor's interval is the
  concretized linear bound intersected with plain interval propagation (IBP).
* :func:`backward` -- the CROWN pass for the property rows ``C @ y``: back through affine
  rules by their transposes and through activations by their relaxations (sign-split on
  the multipliers), using the forward intermediate bounds ("forward+crown"). It can stop
  at the output of an activation ``depth`` activations before the output and plug in that
  tensor's forward linear bound there; ``depth=None`` goes back to the input.
* :func:`float32_error` -- a bound on how far the float32 evaluation of the ONNX file
  (onnxruntime) can be from the exact real-number function over a box, per output.

All arithmetic is float64; ``bab`` adds a margin that covers both float64 rounding in here
and the float32 error (see ``docs/verifiers.md``).
"""

from __future__ import annotations

import dataclasses

import torch

from .domains import Domains
from .graph import Graph
from .operators import ActivationRule, AffineRule, MaxRule
from .operators.base import DTYPE

U32 = 2.0**-24  # unit roundoff of float32


@dataclasses.dataclass
class LinBound:
    lw: torch.Tensor  # [B, K, *shape] lower affine function of t
    uw: torch.Tensor  # [B, K, *shape] upper (the same object when exact)
    lo: torch.Tensor  # [B, *shape] sound interval
    hi: torch.Tensor

    @property
    def exact(self) -> bool:
        return self.lw is self.uw


@dataclasses.dataclass
class ForwardResult:
    out: LinBound  # the graph output
    relax: dict[str, tuple[torch.Tensor, ...]]  # activation output tensor -> (ls, lb, us, ub), [B, *shape]
    kept: dict[str, LinBound]  # tensors the backward pass stops at
    intervals: dict[str, tuple[torch.Tensor, torch.Tensor]]  # every tensor, when asked for
    n: int
    split_scores: torch.Tensor | None = None  # [B, n]: how much each input drives unstable neurons


def concretize(lw: torch.Tensor, uw: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    lo = lw[:, n] - lw[:, :n].abs().sum(1)
    hi = uw[:, n] + uw[:, :n].abs().sum(1)
    return lo, hi


def input_bound(graph: Graph, lo: torch.Tensor, hi: torch.Tensor) -> LinBound:
    """The exact linear form of the input over each box: ``x = mid + rad * t``."""
    B, n = lo.shape
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    w = torch.zeros((B, n + 1, n), dtype=DTYPE)
    idx = torch.arange(n)
    w[:, idx, idx] = rad
    w[:, n, :] = mid
    w = w.reshape((B, n + 1) + graph.input_shape)
    shape = (B,) + graph.input_shape
    return LinBound(w, w, lo.reshape(shape), hi.reshape(shape))


def _add_const(w: torch.Tensor, n: int, offset: torch.Tensor) -> torch.Tensor:
    """``w`` with ``offset`` added to the constant slot, out of place (``w`` may alias an input)."""
    return torch.cat([w[:, :n], (w[:, n] + offset).unsqueeze(1)], dim=1)


def stop_tensors(graph: Graph, depth: int | None) -> set[str]:
    """Where a backward pass of the given depth stops (always includes the input)."""
    stops = {graph.input_name}
    if depth is None:
        return stops
    seen, todo = set(), [graph.output_name]
    while todo:
        t = todo.pop()
        if t in seen or t == graph.input_name:
            continue
        seen.add(t)
        node = graph.producer[t]
        if not isinstance(node.rule, AffineRule) and graph.relu_depth[t] >= depth:
            stops.add(t)
            continue
        todo.extend(node.inputs)
    return stops


def forward(graph: Graph, lo: torch.Tensor, hi: torch.Tensor, *, keep: set[str] = frozenset(),
            ibp: bool = True, relu_lower: str = "adaptive", keep_intervals: bool | set = False,
            split_scores: bool = False, domains: Domains | None = None, refine: int = 0) -> ForwardResult:
    """Forward-mode linear bounds over the boxes ``[lo, hi]`` (``[B, n]`` float64), or over
    ``domains`` (boxes cut by half-spaces; ``lo``/``hi`` are then their bounding boxes).

    ``refine``: the input of every ReLU layer with at most this many neurons is also bounded
    by a backward (CROWN) pass to the input, through the relaxations found so far, and the
    two intervals intersected ("crown" intermediate bounds: tighter than forward mode, at a
    backward pass of two rows per neuron)."""
    dom = domains if domains is not None else Domains(lo, hi)
    B, n = lo.shape
    K = n + 1
    state: dict[str, LinBound] = {graph.input_name: input_bound(graph, lo, hi)}
    x_in = state[graph.input_name]
    relax: dict[str, tuple] = {}
    kept: dict[str, LinBound] = {}
    intervals: dict[str, tuple] = {}
    scores = torch.zeros((B, n), dtype=DTYPE) if split_scores else None
    if graph.input_name in keep:
        kept[graph.input_name] = state[graph.input_name]
    def wanted(t):
        return keep_intervals is True or (keep_intervals and t in keep_intervals)

    if wanted(graph.input_name):
        x = state[graph.input_name]
        intervals[graph.input_name] = (x.lo, x.hi)
    for k, node in enumerate(graph.nodes):
        ins = [state[t] for t in node.inputs]
        rule = node.rule
        shape = graph.shapes[node.output]
        if isinstance(rule, AffineRule):
            out = _affine(rule, ins, graph, node, B, K, n, shape, ibp, dom)
        elif isinstance(rule, MaxRule):
            out, rel = _max(rule, ins[0], n, dom)
            relax[node.output] = rel
            if scores is not None:
                scores += _max_instability(rule, ins[0], rel, n)
        else:
            x = ins[0]
            if refine and not x.exact and node.op_type == "Relu" and x.lo[0].numel() <= refine:
                ins[0] = x = _refined(graph, node.inputs[0], x, relax, x_in, dom)
            out, rel = _activation(rule, x, n, relu_lower, dom)
            relax[node.output] = rel  # by tensor: ONNX output names are unique, node names need not be
            if scores is not None:
                scores += _instability(ins[0], rel, n)
        state[node.output] = out
        if node.output in keep:
            kept[node.output] = out
        if wanted(node.output):
            intervals[node.output] = (out.lo, out.hi)
        for t in node.inputs:  # free what no later node reads
            if graph.last_use.get(t) == k and t != graph.output_name:
                state.pop(t, None)
    return ForwardResult(state[graph.output_name], relax, kept, intervals, n, scores)


def _refined(graph: Graph, t: str, x: LinBound, relax: dict, inp: LinBound, dom: Domains) -> LinBound:
    """``x`` with its interval intersected with CROWN's bounds of tensor ``t``."""
    B = x.lo.shape[0]
    N = x.lo[0].numel()
    eye = torch.eye(N, dtype=DTYPE)
    C = torch.cat([eye, -eye]).unsqueeze(0).expand(B, -1, -1)
    part = ForwardResult(None, relax, {graph.input_name: inp}, {}, dom.n)
    v = dom.lower(backward(graph, part, C, None, start=t))
    lo = torch.maximum(x.lo, v[:, :N].reshape(x.lo.shape))
    hi = torch.minimum(x.hi, (-v[:, N:]).reshape(x.hi.shape))
    return LinBound(x.lw, x.uw, lo, hi)


def _instability(x: LinBound, rel, n: int) -> torch.Tensor:
    """``[B, n]``: for each input, its share of the range of every not-exactly-relaxed
    neuron (|coefficient| / width), summed. Bisecting the input with the largest share
    stabilises the most neurons: the "which input to split" signal for branching."""
    ls, lb, us, ub = rel
    loose = (ls != us) | (lb != ub)
    if not bool(loose.any()):
        return torch.zeros((x.lw.shape[0], n), dtype=DTYPE)
    width = (x.hi - x.lo).clamp(min=1e-30)
    share = (x.lw[:, :n].abs() + x.uw[:, :n].abs()) * (loose / width).unsqueeze(1)
    return share.reshape(share.shape[0], n, -1).sum(-1)


def _affine(rule: AffineRule, ins: list[LinBound], graph: Graph, node, B, K, n, shape, ibp, dom: Domains) -> LinBound:
    def flat(t):
        return t.reshape((B * K,) + tuple(t.shape[2:]))

    if all(b.exact for b in ins):
        w = rule.combine([flat(b.lw) for b in ins]).reshape((B, K) + shape)
        if rule.offset is not None:
            w = _add_const(w, n, rule.offset)
        lw = uw = w
    else:
        m = rule.combine([flat(b.lw) if b.exact else flat((b.lw + b.uw) * 0.5) for b in ins]).reshape((B, K) + shape)
        r = rule.combine([None if b.exact else flat((b.uw - b.lw) * 0.5) for b in ins], absolute=True)
        r = r.reshape((B, K) + shape)
        if rule.offset is not None:
            m = _add_const(m, n, rule.offset)
        lw, uw = m - r, m + r
    if getattr(rule, "moves_data", False):
        # every output is one input element or a constant: the inputs' intervals (already
        # intersected with everything known) map through exactly, tighter than
        # re-concretizing, and free
        return LinBound(lw, uw, rule.forward(*(b.lo for b in ins)), rule.forward(*(b.hi for b in ins)))
    # cut domains matter most where a bound is exact in the input (the first layer: a ReLU
    # cut along its own kink becomes stable); deeper, the bounding box is ~5x cheaper
    lo, hi = dom.concretize(lw, uw) if (lw is uw or dom.deep) else dom.box_concretize(lw, uw)
    if ibp and rule.rounding > 0:  # negation gains nothing from IBP
        mid = rule.combine([(b.lo + b.hi) * 0.5 for b in ins])
        rad = rule.combine([(b.hi - b.lo) * 0.5 for b in ins], absolute=True)
        if rule.offset is not None:
            mid = mid + rule.offset
        lo = torch.maximum(lo, mid - rad)
        hi = torch.minimum(hi, mid + rad)
    return LinBound(lw, uw, lo, hi)


def _activation(rule: ActivationRule, x: LinBound, n: int, mode: str, dom: Domains):
    l, u = x.lo, x.hi
    ls, lb, us, ub = rule.relax(l, u, mode)
    # ReLU/Clip slopes are non-negative, so lower bounds map to lower bounds directly.
    ls1, us1 = ls.unsqueeze(1), us.unsqueeze(1)
    stable = bool(torch.equal(ls, us) and torch.equal(lb, ub))
    if x.exact and stable:
        w = x.lw * ls1
        w[:, n] += lb
        lw = uw = w
    else:
        lw = x.lw * ls1
        lw[:, n] += lb
        uw = x.uw * us1
        uw[:, n] += ub
    lo, hi = rule.interval(l, u)
    clo, chi = dom.concretize(lw, uw) if dom.deep else dom.box_concretize(lw, uw)
    return LinBound(lw, uw, torch.maximum(lo, clo), torch.minimum(hi, chi)), (ls, lb, us, ub)


def _max(rule: MaxRule, x: LinBound, n: int, domains: Domains):
    """Selection relaxation of a window maximum (see ``operators.base.MaxRule``)."""
    idx, dom, umax = rule.select(x.lo, x.hi)
    lw = rule.gather(x.lw, idx)
    if x.exact and bool(dom.all()):
        uw = lw  # every window has a dominant element: y = x_j exactly
    else:
        uw = rule.gather(x.uw, idx)
        d = dom.reshape((dom.shape[0], 1) + tuple(rule.out_shape))
        const = torch.zeros_like(uw)
        const[:, n] = umax.reshape((umax.shape[0],) + tuple(rule.out_shape))
        uw = torch.where(d, uw, const)
    lo, hi = rule.interval(x.lo, x.hi)
    clo, chi = domains.concretize(lw, uw) if domains.deep else domains.box_concretize(lw, uw)
    return LinBound(lw, uw, torch.maximum(lo, clo), torch.minimum(hi, chi)), (idx, dom, umax)


def _max_instability(rule: MaxRule, x: LinBound, rel, n: int) -> torch.Tensor:
    """Like :func:`_instability`, for the windows without a dominant element, through the
    selected element."""
    idx, dom, _ = rel
    if bool(dom.all()):
        return torch.zeros((x.lw.shape[0], n), dtype=DTYPE)
    B = x.lw.shape[0]
    width = (x.hi - x.lo).clamp(min=1e-30).unsqueeze(1)
    share = rule.gather((x.lw[:, :n].abs() + x.uw[:, :n].abs()) / width, idx)
    loose = (~dom).reshape((B, 1) + tuple(rule.out_shape))
    return (share * loose).reshape(B, n, -1).sum(-1)


def _contract(lam: torch.Tensor, b: LinBound) -> torch.Tensor:
    """Lower bound of ``lam . z`` for ``z`` within ``b``: ``[B, R, K]`` coefficients of ``t``."""
    B, R = lam.shape[:2]
    lam = lam.reshape(B, R, -1)
    lw = b.lw.reshape(B, b.lw.shape[1], -1)
    if b.exact:
        return torch.einsum("brs,bks->brk", lam, lw)
    uw = b.uw.reshape(B, b.uw.shape[1], -1)
    return torch.einsum("brs,bks->brk", lam.clamp(min=0), lw) + torch.einsum("brs,bks->brk", lam.clamp(max=0), uw)


def backward(graph: Graph, fwd: ForwardResult, C: torch.Tensor, depth: int | None,
             record: dict | None = None, alphas: dict | None = None, start: str | None = None) -> torch.Tensor:
    """Coefficients ``[B, R, K]`` of affine functions of ``t`` that lower-bound ``C @ y`` per box.

    ``C`` is ``[R, n_outputs]`` (the same rows for every box) or ``[B, R, n_outputs]``.
    ``fwd`` must have been run with ``keep=stop_tensors(graph, depth)``. ``record``: a dict
    whose keys name activation outputs; each gets the multiplier ``[B, R, *shape]`` that
    reached it (branching scores neurons by it). ``alphas``: ReLU output -> lower slopes
    ``[B, R, *shape]`` in ``[0, 1]`` for its unstable neurons (alpha-CROWN; every slope in
    ``[0, 1]`` is a sound lower line through the origin). ``start``: bound rows of this
    tensor instead of the output (``C`` ``[B, R, numel]``; intermediate-bound refinement).
    """
    n = fwd.n
    K = n + 1
    start = start or graph.output_name
    B = fwd.out.lo.shape[0] if C.dim() == 2 else C.shape[0]
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    R = C.shape[1]
    stops = stop_tensors(graph, depth)
    lams: dict[str, torch.Tensor] = {start: C.reshape((B, R) + graph.shapes[start])}
    acc = torch.zeros((B, R, K), dtype=DTYPE)
    last = len(graph.nodes) if start == graph.output_name else graph.nodes.index(graph.producer[start]) + 1
    for node in reversed(graph.nodes[:last]):
        lam = lams.pop(node.output, None)
        if lam is None:
            continue
        if node.output in stops:
            acc += _contract(lam, fwd.kept[node.output])
            continue
        rule = node.rule
        if isinstance(rule, MaxRule):
            idx, dom, umax = fwd.relax[node.output]
            d = dom.reshape((B, 1) + tuple(rule.out_shape))
            # a positive multiplier takes y >= x_j; a negative one y <= x_j where j
            # dominates, else y <= max u (a constant)
            g = rule.scatter(torch.where(d, lam, lam.clamp(min=0)), idx)
            um = umax.reshape((B, 1) + tuple(rule.out_shape))
            acc[:, :, n] += (torch.where(d, 0.0, lam.clamp(max=0)) * um).reshape(B, R, -1).sum(-1)
            t = node.inputs[0]
            lams[t] = lams[t] + g if t in lams else g
        elif isinstance(rule, AffineRule):
            out_shape = tuple(lam.shape[2:])
            flat = lam.reshape((B * R,) + out_shape)
            for i, t in enumerate(node.inputs):
                g = rule.apply_T(i, flat).reshape((B, R) + graph.shapes[t])
                lams[t] = lams[t] + g if t in lams else g
            if rule.offset is not None:
                acc[:, :, n] += (lam * rule.offset).reshape(B, R, -1).sum(-1)
        else:
            if record is not None and node.output in record:
                record[node.output] = lam
            ls, lb, us, ub = (v.unsqueeze(1) for v in fwd.relax[node.output])
            if alphas is not None and node.output in alphas:
                ls = torch.where((us > 0) & (us < 1), alphas[node.output], ls)
            # a positive multiplier takes the lower relaxation, a negative one the upper
            neg = lam < 0
            g = lam * torch.where(neg, us, ls)
            acc[:, :, n] += (lam * torch.where(neg, ub, lb)).reshape(B, R, -1).sum(-1)
            t = node.inputs[0]
            lams[t] = lams[t] + g if t in lams else g
    lam = lams.pop(graph.input_name, None)
    if lam is not None:
        acc += _contract(lam, fwd.kept[graph.input_name])
    return acc


def optimize_alpha(graph: Graph, fwd: ForwardResult, C: torch.Tensor, depth: int | None, lower,
                   iters: int, lr: float, init: dict | None = None) -> tuple[torch.Tensor, dict]:
    """alpha-CROWN on the rows ``C``: the lower slopes of the unstable ReLUs, one per box,
    row and neuron, maximise the concretized bound ``lower(coefs)`` (``[B, R]``) by projected
    Adam steps from ``init`` (a parent's slopes) or CROWN's adaptive choice. Every iterate
    is sound; per box and row the best bound found is kept, so the result is never worse
    than plain CROWN (the first iterate). Returns its coefficients and the final slopes."""
    B = fwd.out.lo.shape[0]
    R = C.shape[-2]
    alphas = {}
    for node in graph.nodes:
        if node.op_type != "Relu" or node.output not in fwd.relax:
            continue
        ls, _, us, _ = fwd.relax[node.output]
        if not bool(((us > 0) & (us < 1)).any()):
            continue
        start = ls.unsqueeze(1).expand((B, R) + tuple(ls.shape[1:]))
        a0 = init.get(node.output) if init else None
        if a0 is None or tuple(a0.shape) != tuple(start.shape):
            a0 = start
        else:  # a parent's slopes; where it had none (nan), CROWN's choice
            a0 = torch.where(torch.isnan(a0), start, a0.to(start.dtype)).clamp(0.0, 1.0)
        alphas[node.output] = a0.detach().clone().requires_grad_(True)
    if not alphas or iters <= 0:
        return backward(graph, fwd, C, depth), {}
    params = list(alphas.values())
    m1 = [torch.zeros_like(a) for a in params]  # Adam's moments, by hand: torch.optim imports
    m2 = [torch.zeros_like(a) for a in params]  # torch._dynamo and sympy (seconds) on first use
    best_lb = best = None
    for it in range(iters + 1):
        with torch.enable_grad():
            coefs = backward(graph, fwd, C, depth, alphas=alphas)
            lb = lower(coefs)
        with torch.no_grad():
            if best is None:
                best, best_lb = coefs.detach().clone(), lb.detach().clone()
            else:
                better = lb.detach() > best_lb
                best = torch.where(better.unsqueeze(-1), coefs.detach(), best)
                best_lb = torch.maximum(best_lb, lb.detach())
        if it == iters:
            break
        with torch.enable_grad():
            grads = torch.autograd.grad(lb.sum(), params, allow_unused=True)
        with torch.no_grad():
            for a, g, p1, p2 in zip(params, grads, m1, m2):
                if g is None:
                    continue
                p1.mul_(0.9).add_(g, alpha=0.1)
                p2.mul_(0.999).addcmul_(g, g, value=0.001)
                step = lr * (p1 / (1 - 0.9 ** (it + 1))) / ((p2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
                a.add_(step).clamp_(0.0, 1.0)  # ascent on the bound
    return best, {t: a.detach() for t, a in alphas.items()}


def lower_of(coefs: torch.Tensor, n: int) -> torch.Tensor:
    """``min_t`` of affine functions ``[..., K]`` over ``t`` in ``[-1, 1]^n``."""
    return coefs[..., n] - coefs[..., :n].abs().sum(-1)


def forward_rows(fwd: ForwardResult, C: torch.Tensor) -> torch.Tensor:
    """The forward-only bound of ``C @ y``: ``[B, R, K]`` coefficients."""
    out = fwd.out
    B = out.lo.shape[0]
    lw = out.lw.reshape(B, out.lw.shape[1], -1)
    uw = out.uw.reshape(B, out.uw.shape[1], -1)
    Cp, Cn = C.clamp(min=0), C.clamp(max=0)
    if C.dim() == 2:
        return torch.einsum("rs,bks->brk", Cp, lw) + torch.einsum("rs,bks->brk", Cn, uw)
    return torch.einsum("brs,bks->brk", Cp, lw) + torch.einsum("brs,bks->brk", Cn, uw)


def interval_rows(fwd: ForwardResult, C: torch.Tensor) -> torch.Tensor:
    """The interval bound of ``C @ y``: ``[B, R]``."""
    lo = fwd.out.lo.reshape(fwd.out.lo.shape[0], -1)
    hi = fwd.out.hi.reshape(fwd.out.hi.shape[0], -1)
    return lo @ C.clamp(min=0).T + hi @ C.clamp(max=0).T


def gamma(k: int, u: float = U32) -> float:
    """Higham's gamma_k = k u / (1 - k u): the relative error bound of k roundings."""
    return k * u / (1.0 - k * u) if k > 0 else 0.0


def float32_error(graph: Graph, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per output: a bound on |float32 evaluation - exact value| over the box ``[lo, hi]`` (``[1, n]``).

    Standard forward error analysis (Higham, Accuracy and Stability of Numerical
    Algorithms, sec. 3.1): a sum of k products computed in any order with rounding to
    nearest is within ``gamma_k * sum |w_i x_i|`` of the exact sum. Through a layer,
    ``e_out <= |M| e_in + gamma_k (|M| (|x| + e_in) + |offset|)`` with ``|x|`` bounded by the
    interval bounds over the box; ReLU and Clip are 1-Lipschitz and exact, so they pass the
    error on. The input itself is float32-rounded by the caller widening the box.
    """
    fwd = forward(graph, lo, hi, keep_intervals=True)
    iv = fwd.intervals
    err: dict[str, torch.Tensor] = {graph.input_name: torch.zeros_like(iv[graph.input_name][0])}
    for node in graph.nodes:
        rule = node.rule
        if isinstance(rule, AffineRule):
            prop = None
            mag = None
            for i, t in enumerate(node.inputs):
                e_in = err[t]
                a, b = iv[t]
                m_i = rule.apply_abs(i, torch.maximum(a.abs(), b.abs()) + e_in)
                p_i = rule.apply_abs(i, e_in)
                prop = p_i if prop is None else prop + p_i
                mag = m_i if mag is None else mag + m_i
            if rule.offset is not None:
                mag = mag + rule.offset.abs()
            err[node.output] = prop + gamma(rule.rounding) * mag
        elif isinstance(rule, MaxRule):
            err[node.output] = rule.forward(err[node.inputs[0]])  # |max(a + e) - max(a)| <= max |e|
        else:
            err[node.output] = err[node.inputs[0]]
    return err[graph.output_name].reshape(-1)


__all__ = ["ForwardResult", "LinBound", "backward", "concretize", "float32_error", "forward", "forward_rows",
           "gamma", "input_bound", "interval_rows", "lower_of", "optimize_alpha", "stop_tensors"]
