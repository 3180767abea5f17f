"""An ONNX file read so that its large weights are held once, by the verifier and onnxruntime.

``onnx.load`` holds a weight three times on the way in (the file's bytes, the parsed
proto, the numpy copy), and an onnxruntime session built from the file keeps a fourth. So
the file is read in two parts instead:

* every top-level initializer whose ``raw_data`` is at least ``MIN_BYTES`` is read straight
  from the file into a numpy array (its bytes are the tensor, little-endian, as ONNX
  stores them: no conversion, the same numbers);
* the rest of the protobuf -- graph, small initializers -- is parsed as a model in which
  each of those tensors is declared as ONNX *external data* pointing at its own bytes in
  the original file (``location`` = the file's name, ``offset``, ``length``): a valid model
  of exactly the same network, a few hundred KB.

:func:`session` hands the arrays to onnxruntime with ``SessionOptions.add_initializer``,
which uses the caller's buffer instead of copying it. The protobuf is scanned by hand (only
the wire format's framing: field keys, varints, lengths), since protobuf's own parser would
copy every byte it is given.
"""

from __future__ import annotations

import dataclasses
import mmap
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

MIN_BYTES = 1 << 20  # smaller initializers stay in the proto: their copies do not matter

_GRAPH = 7  # ModelProto.graph
_INITIALIZER = 5  # GraphProto.initializer
_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 9, 13, 14  # TensorProto fields


@dataclasses.dataclass
class ModelParts:
    """``model`` with its large initializers external, their values in ``arrays``."""

    model: onnx.ModelProto
    arrays: dict[str, np.ndarray]
    path: Path


def _varint(b, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _encode(n: int) -> bytes:
    out = bytearray()
    while True:
        c, n = n & 0x7F, n >> 7
        out.append(c | 0x80 if n else c)
        if not n:
            return bytes(out)


def _fields(b, i: int, end: int):
    """(field number, wire type, start of the key, start of a length-delimited payload, end)."""
    while i < end:
        start = i
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        payload = None
        if wire == 0:
            _, i = _varint(b, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, payload = _varint(b, i)
            i = payload + n
        else:  # groups (3, 4) are not used by ONNX
            raise ValueError(f"unexpected protobuf wire type {wire}")
        if i > end:
            raise ValueError("truncated protobuf field")
        yield field, wire, start, payload, i


class _External(Exception):
    """The file already uses external data: read it the ordinary way."""


def _split(b, name: str) -> tuple[bytes, list[tuple[str, int, tuple[int, ...], int, int]]]:
    big: list[tuple[str, int, tuple[int, ...], int, int]] = []

    def tensor(s: int, e: int) -> bytes | None:
        rest, raw = bytearray(), None
        for field, wire, start, payload, end in _fields(b, s, e):
            if field in (_EXTERNAL_DATA, _DATA_LOCATION):
                raise _External
            if field == _RAW_DATA and wire == 2:
                raw = (payload, end - payload)  # the last occurrence wins, as in protobuf
            else:
                rest += b[start:end]
        if raw is None or raw[1] < MIN_BYTES:
            return None  # kept as it is
        t = TensorProto.FromString(bytes(rest))
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", name), ("offset", str(raw[0])), ("length", str(raw[1]))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        big.append((t.name, t.data_type, tuple(t.dims), raw[0], raw[1]))
        return t.SerializeToString()

    def message(s: int, e: int, wanted: int, inner) -> bytearray:
        out = bytearray()
        for field, wire, start, payload, end in _fields(b, s, e):
            new = inner(payload, end) if field == wanted and wire == 2 else None
            if new is None:
                out += b[start:end]
            else:
                out += _encode(field << 3 | 2) + _encode(len(new)) + new
        return out

    stripped = message(0, len(b), _GRAPH, lambda s, e: bytes(message(s, e, _INITIALIZER, tensor)))
    return bytes(stripped), big


def read_parts(path) -> ModelParts:
    """Read ``path`` as described above. A file that already keeps its weights in external
    data (or a big-endian machine) is read with ``onnx.load`` and gives no arrays. A file
    that is not an ONNX model raises ValueError (or protobuf's DecodeError)."""
    path = Path(path)
    with open(path, "rb", buffering=0) as fh:
        try:
            if sys.byteorder != "little":
                raise _External
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as b:
                stripped, big = _split(b, path.resolve().name)  # a link's target: see session()
        except (_External, ValueError):  # ValueError: not a protobuf; onnx.load says so
            return ModelParts(onnx.load(str(path)), {}, path)
        model = onnx.ModelProto.FromString(stripped)
        arrays = {}
        for name, dtype, dims, offset, length in big:
            a = np.empty(dims, dtype=helper.tensor_dtype_to_np_dtype(dtype))
            if a.nbytes != length:
                raise ValueError(f"initializer '{name}' has {length} bytes of data for shape {list(dims)}")
            fh.seek(offset)
            if fh.readinto(memoryview(a.reshape(-1)).cast("B")) != length:
                raise ValueError(f"the file ends inside initializer '{name}'")
            arrays[name] = a
    return ModelParts(model, arrays, path)


def session(parts: ModelParts, opts):
    """An onnxruntime session of ``parts`` that uses ``parts.arrays`` in place (``opts``:
    its ``SessionOptions``; the arrays must outlive the session)."""
    import onnxruntime as ort

    if not parts.arrays:
        return ort.InferenceSession(str(parts.path), opts, providers=["CPUExecutionProvider"])
    # the model's external references are resolved against the file's folder (onnxruntime
    # checks that they exist even though every one of them is overridden here)
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                  str(parts.path.resolve().parent))
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in parts.arrays.values()]
    for name, value in zip(parts.arrays, values):
        opts.add_initializer(name, value)
    sess = ort.InferenceSession(parts.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess.usnprune_initializers = (values, parts.arrays)  # onnxruntime keeps only pointers to them
    return sess


__all__ = ["MIN_BYTES", "ModelParts", "read_parts", "session"]
