"""The verify command (section 5.3): a query and its ONNX files -> one of the four results.

1. The query, VNN-LIB 1.0 or 2.0, is read into usnprune's one model of a query
   (:mod:`usnprune.export.vnnlib`; 2.0 through the standard's ``vnnlib`` package).
2. Section 5.3.2's three errors, in the order the clause lists them, before any work:
   (1) ``--network`` names exactly the declared networks (a 1.0 query declares none: it
   takes exactly one model, under any name); (2) the models' input and output element
   types are the declared ones, unless declared ``real`` (1.0's sort ``Real`` is real);
   (3) a declared type this solver does not analyse soundly in floating point is refused
   (rewrite the query in ``real`` to consent). A declared shape that the model's does not
   match (its dynamic dimensions aside) is refused as well: the query is about another model.
3. The model is brought to the bound engine's form (:mod:`.lift`) and decided by the
   builtin verifier's branch and bound (``verifier_specs/builtin/bab.py``), with the
   worst-case float32 rounding bound added to every proof when a variable is declared
   ``float32`` (:mod:`.capabilities`).
4. ``certified`` is ``unsat``; ``timeout`` is ``timed-out``; ``unknown`` is ``unknown``;
   ``falsified`` is ``sat`` only after the point is run through the original ONNX file with
   onnxruntime and its output checked against the query (else ``unknown``, saying why).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import onnx

from usnprune.errors import UsnpruneError
from usnprune.export.vnnlib import VERSION_1, Property, VnnlibError, parse_file

from . import assignment, capabilities, lift, spec

NO_TIMEOUT = 1e9  # seconds: no --timeout means "until decided"
UNBOUNDED_SEARCH = (1.0, 1000.0)  # unbounded inputs: counterexamples are searched this far from the bounds
RESULT_OF = {"certified": spec.UNSAT, "falsified": spec.SAT, "timeout": spec.TIMED_OUT, "unknown": spec.UNKNOWN}


class SolverError(UsnpruneError):
    """verify cannot answer: section 5.3.2's conditions, or a query or model it cannot read."""


@dataclasses.dataclass
class Request:
    query: Path
    networks: list[tuple[str, str]]  # (declared name, ONNX path) per --network, in order
    timeout: float | None = None  # seconds
    serialise: str | None = None  # --serialise-assignments folder (not supported: printed instead)


@dataclasses.dataclass
class Answer:
    result: str  # one of spec.RESULTS
    assignment: list[str] = dataclasses.field(default_factory=list)  # 5.3.1 lines after `sat`
    note: str = ""  # for stderr


def onnx_type(elem_type: int) -> str:
    """An ONNX tensor element type in the standard's spelling (ONNX "Set 1" names)."""
    name = onnx.TensorProto.DataType.Name(elem_type)
    return {"FLOAT": "float32", "DOUBLE": "float64"}.get(name, name.lower())


def read_query(path: Path) -> Property:
    try:
        return parse_file(path)
    except VnnlibError as e:
        raise SolverError(f"{e}") from None


def model_for(prop: Property, request: Request) -> tuple[str, onnx.ModelProto]:
    """5.3.2(1): the one model the query's one network maps to."""
    declared = prop.declared.name
    given = [name for name, _ in request.networks]
    if prop.version == VERSION_1:
        if len(request.networks) != 1:
            raise SolverError(f"a VNN-LIB 1.0 query is about one network: give {spec.NETWORK} <name>=<onnx> "
                              f"exactly once (got {len(request.networks)})")
    elif given != [declared]:
        extra = [n for n in given if n != declared]
        if extra:
            raise SolverError(f"{spec.NETWORK} maps {extra[0]!r}, which {request.query.name} does not declare "
                              f"(it declares {declared!r})")
        raise SolverError(f"{request.query.name} declares network {declared!r}: give {spec.NETWORK} "
                          f"{declared}=<onnx file> exactly once")
    path = Path(request.networks[0][1])
    if not path.is_file():
        raise SolverError(f"{path}: no such ONNX file")
    try:
        return str(path), onnx.load(str(path))
    except Exception as e:  # protobuf raises several types for a corrupt file
        raise SolverError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def _graph_io(model: onnx.ModelProto) -> tuple[list, list]:
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits], list(model.graph.output)


def check_model(prop: Property, model: onnx.ModelProto, source: str) -> dict[str, tuple[int, ...]]:
    """5.3.2(2) and (3), and the shapes; returns the concrete shape of every graph input and
    output (the declared one, which instantiates the model's dynamic dimensions)."""
    inputs, outputs = _graph_io(model)
    net = prop.declared
    if prop.version == VERSION_1:  # scalars X_0 .. : one flat input and output
        if len(inputs) != 1 or len(outputs) != 1:
            raise SolverError(f"{source}: a VNN-LIB 1.0 query needs a model with one input and one output")
        pairs = [(inputs[0], "X", spec.REAL, None, prop.n_inputs), (outputs[0], "Y", spec.REAL, None, prop.n_outputs)]
    else:
        if len(inputs) != len(net.inputs) or len(outputs) != len(net.outputs):
            raise SolverError(f"{source} has {len(inputs)} inputs and {len(outputs)} outputs; network "
                              f"{net.name} declares {len(net.inputs)} and {len(net.outputs)}")
        pairs = [(v, d.name, d.dtype, d.shape, d.size)
                 for v, d in zip(inputs + outputs, net.inputs + net.outputs)]
    shapes = {}
    for value, name, dtype, shape, size in pairs:
        tt = value.type.tensor_type
        mine = onnx_type(tt.elem_type)
        if dtype != spec.REAL and mine != dtype:  # 5.3.2(2)
            raise SolverError(f"{source}: {value.name!r} is {mine}, but the query declares {name} {dtype}; the types "
                              f"must agree unless the query is written in {spec.REAL}")
        if dtype != spec.REAL and dtype not in capabilities.SOUND_FOR:  # 5.3.2(3)
            raise SolverError(f"{name} is declared {dtype}, which usnprune-solver does not analyse soundly (it does "
                              f"{', '.join(capabilities.SOUND_FOR)}); write the query in {spec.REAL} to consent to an "
                              "analysis in real arithmetic")
        if mine != "float32":  # the engine calibrates and replays through onnxruntime in float32
            raise SolverError(f"{source}: {value.name!r} is {mine}; usnprune-solver verifies float32 models")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if shape is None:  # 1.0 declares only the number of values; a dynamic dimension is the batch, 1
            concrete = tuple(d if d is not None else 1 for d in dims)
            if int(np.prod(concrete)) != size:
                raise SolverError(f"{source}: {value.name!r} has shape {dims}, the query {size} values")
            shapes[value.name] = concrete
            continue
        if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims, shape)):
            raise SolverError(f"{source}: {value.name!r} has shape {['?' if d is None else d for d in dims]}, the "
                              f"query declares {name} {assignment.dims(shape)}")
        shapes[value.name] = tuple(shape)
    return shapes


def engine_form(model: onnx.ModelProto, source: str):
    """The bound engine's graph of ``model`` and the ONNX model it was read from."""
    from usnprune.bounds.graph import read_graph
    from usnprune.bounds.operators import UnsupportedModel

    model = lift.ceil_as_floor(lift.conv1d_as_2d(model))
    try:
        return read_graph(model), model
    except UnsupportedModel as first:
        try:
            lifted = lift.lift(model)
            return read_graph(lifted), lifted
        except (lift.CannotLift, UnsupportedModel):
            raise SolverError(f"{source}: {first}") from None


def verify(request: Request, started: float | None = None) -> Answer:
    """Answer one verify command; ``started`` is when the clock of ``--timeout`` began."""
    started = time.monotonic() if started is None else started
    prop = read_query(request.query)
    source, original = model_for(prop, request)
    shapes = check_model(prop, original, source)
    original = lift.with_shapes(original, shapes)
    graph, form = engine_form(original, source)
    rigorous = any(v.dtype in capabilities.SOUND_FOR for v in prop.declared.variables)
    return _decide(prop, graph, form, original, rigorous, request, started)


def restricted(prop: Property, reach: float) -> Property:
    """``prop`` with every unbounded side of an input box cut at ``reach`` from the other side
    (or from 0): a counterexample in it is one of ``prop``; an unsat proves nothing."""
    ds = []
    for d in prop.disjuncts:
        lo, hi = d.lower.copy(), d.upper.copy()
        lo = np.where(np.isfinite(lo), lo, np.where(np.isfinite(hi), hi - 2 * reach, -reach))
        hi = np.where(np.isfinite(hi), hi, np.where(np.isfinite(d.lower), d.lower + 2 * reach, reach))
        ds.append(dataclasses.replace(d, lower=lo, upper=hi))
    return dataclasses.replace(prop, disjuncts=ds)


def _decide(prop, graph, form, original, rigorous, request, started) -> Answer:
    import torch

    from usnprune.export.onnx_model import session
    from usnprune.system import thread_share
    from usnprune.verifier_specs.builtin import bab
    from usnprune.verifier_specs.builtin.options import BuiltinOptions

    if not prop.disjuncts:
        return Answer(spec.UNSAT, note="the query's assertions are unsatisfiable on their own")
    opts = BuiltinOptions(rigorous_float32=rigorous)
    torch.set_num_threads(thread_share())
    # no source file: candidates replay on this default session of the form the engine reads
    # (the judge's kind); a sat is confirmed on the original model below
    model = bab.PreparedModel(graph, session(form))
    bounded = all(np.isfinite(d.lower).all() and np.isfinite(d.upper).all() for d in prop.disjuncts)
    for searched in ([prop] if bounded else [restricted(prop, r) for r in UNBOUNDED_SEARCH]):
        try:
            out = bab.verify(model, searched, request.timeout or NO_TIMEOUT, opts, start=started)
        except UsnpruneError as e:
            raise SolverError(str(e)) from None
        if out.status == "error":
            raise SolverError(out.message)
        if out.status in ("falsified", "timeout"):
            break
    if out.status != "falsified" and not bounded:
        return Answer(spec.TIMED_OUT if out.status == "timeout" else spec.UNKNOWN,
                      note=f"the query leaves inputs unbounded: no counterexample within "
                           f"{UNBOUNDED_SEARCH[-1]:g} of its bounds, and unsat cannot be proved by splitting")
    if out.status != "falsified":
        return Answer(RESULT_OF[out.status], note=out.message)
    x = np.asarray(out.x, dtype=np.float32).astype(np.float64)
    sess = session(original)
    feed = sess.get_inputs()[0]
    y = np.asarray(sess.run(None, {feed.name: x.astype(np.float32).reshape(feed.shape)})[0], dtype=np.float64)
    y = y.reshape(-1)
    if not prop.violated_by(x, y):
        return Answer(spec.UNKNOWN, note="a counterexample of the rewritten model is not one of the original model "
                                         "under onnxruntime")
    net = prop.declared
    if prop.version == VERSION_1:
        values = {v.name: np.array([val]) for v, val in zip(net.variables, np.concatenate([x, y]))}
    else:
        values = {net.inputs[0].name: x, net.outputs[0].name: y}
    return Answer(spec.SAT, assignment.render(net, values), out.message)


__all__ = ["Answer", "NO_TIMEOUT", "Request", "SolverError", "check_model", "onnx_type", "verify"]
