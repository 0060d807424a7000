"""The Open Inference Protocol (KServe v2) on the wire: requests in, responses out.

Tensors travel in JSON (``data``: a flat or nested list in row-major order)
or, with the *binary tensor data extension* Triton and ``tritonclient.http``
use, as raw little-endian bytes after the JSON header: the request's
``Inference-Header-Content-Length`` header says how many leading bytes are
JSON, and each binary input says its size in ``parameters.binary_data_size``,
in input order. Outputs come back the same way when asked for with
``binary_data`` (per output) or ``binary_data_output`` (per request).

numpy and the standard library only; every malformed request raises
:class:`ProtocolError` with a message that names the problem.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Open Inference Protocol datatype <-> numpy dtype (BYTES is not served: no model takes text)
DATATYPES = {"BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8),
             "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
             "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32),
             "FP64": np.dtype(np.float64)}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
HEADER_LENGTH = "inference-header-content-length"
#: the largest dimension and rank a request may declare (a tensor still has to fit the body)
MAX_DIMENSION, MAX_RANK = 2**31 - 1, 8


class ProtocolError(ValueError):
    """A request the protocol cannot read; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    """A parsed ``/infer`` request: named input arrays and what to send back."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[str] | None = None                 # None: every output
    binary_outputs: set[str] = field(default_factory=set)
    binary_default: bool = False

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))


def datatype_of(dtype) -> str:
    """The protocol's name for a numpy dtype (``float32`` -> "FP32")."""
    return DATATYPE_OF[np.dtype(dtype)]


def parse_infer(body: bytes, header_length: str | None,
                max_rows: int | None = None) -> InferRequest:
    """An ``/infer`` body (JSON, or JSON then binary tensors) -> :class:`InferRequest`.

    ``max_rows`` (the model's ``max_batch_size``) refuses a tensor that declares more
    rows before its data is converted, the costly part of a large request.
    """
    json_part, binary = _split(body, header_length)
    document = read_json(json_part)
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list.")
    if not document["inputs"]:
        raise ProtocolError("the request's 'inputs' list is empty.")
    inputs, offset = {}, 0
    for entry in document["inputs"]:
        name, array, offset = _read_input(entry, binary, offset, max_rows)
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice.")
        inputs[name] = array
    if offset != len(binary):
        raise ProtocolError(f"the request carries {len(binary)} bytes of binary tensor data, but "
                            f"its inputs' binary_data_size add up to {offset}.")
    request = InferRequest(inputs, _optional_str(document.get("id"), "id"))
    request.binary_default = _flag(_parameters(document, "request"), "binary_data_output", False)
    if document.get("outputs") is not None:
        request.outputs = []
        for entry in _list(document["outputs"], "outputs"):
            name = _name(entry, "output")
            request.outputs.append(name)
            if _flag(_parameters(entry, f"output {name!r}"), "binary_data",
                     request.binary_default):
                request.binary_outputs.add(name)
    return request


def read_json(text: bytes) -> Any:
    """JSON from a request body; ProtocolError for anything unreadable (bad UTF-8,
    syntax, nesting deeper than Python's recursion limit, integers of 4300+ digits).
    NaN and Infinity are read although JSON (RFC 8259) has neither: tritonclient
    writes them (Python's json does), e.g. for a table's missing entries; the
    model's checks then refuse what it cannot take."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"malformed JSON in the request: {str(err)[:200]}") from None


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter {name!r} must be true or false; got {value!r}.")
    return value


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer; got "
                            f"{header_length[:40]!r}.") from None
    if not 0 <= length <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length is {length}, but the body has "
                            f"{len(body)} bytes.")
    return body[:length], body[length:]


def _read_input(entry: Any, binary: bytes, offset: int,
                max_rows: int | None) -> tuple[str, np.ndarray, int]:
    name = _name(entry, "input")
    datatype = entry.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(f"input {name!r} has datatype {datatype!r}; this server takes "
                            f"{sorted(DATATYPES)}.")
    shape = entry.get("shape")
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_RANK
            or not all(type(d) is int and 0 <= d <= MAX_DIMENSION for d in shape)):
        raise ProtocolError(f"input {name!r} needs a shape: a list of 1 to {MAX_RANK} "
                            f"integers in [0, {MAX_DIMENSION}]; got {str(shape)[:80]}.")
    if max_rows is not None and shape[0] > max_rows:
        raise ProtocolError(f"input {name!r} has {shape[0]} rows; this model takes at most "
                            f"{max_rows} per request (max_batch_size).")
    dtype, count = DATATYPES[datatype], math.prod(shape)
    size = _parameters(entry, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r} of shape {shape} and datatype {datatype} has "
                                f"{count * dtype.itemsize} bytes; binary_data_size says {size!r}.")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r} needs {size} bytes of binary data at offset "
                                f"{offset}; the request has {len(binary)}.")
        array = np.frombuffer(binary, dtype.newbyteorder("<"), count, offset).astype(dtype)
        return name, array.reshape(shape), offset + size
    if "data" not in entry:
        raise ProtocolError(f"input {name!r} has neither 'data' nor binary_data_size.")
    return name, _from_json(entry["data"], dtype, shape, name), offset


def _from_json(data: Any, dtype: np.dtype, shape: list[int], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"input {name!r}: 'data' must be a list (flat or nested).")
    try:
        flat = np.asarray(data, dtype=object).reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError(f"input {name!r}: 'data' is a ragged list.") from None
    if flat.size != math.prod(shape):
        _refuse_ragged(flat, name)
        raise ProtocolError(f"input {name!r} has {flat.size} values for shape {shape} "
                            f"({math.prod(shape)} values).")
    if dtype.kind == "f":
        if not all(type(v) in (int, float) for v in flat):
            _refuse_ragged(flat, name)
            raise ProtocolError(f"input {name!r} is {datatype_of(dtype)}: its data must be "
                                "numbers.")
        try:
            wide = np.asarray(flat.tolist(), dtype=np.float64)
        except OverflowError:
            raise ProtocolError(f"input {name!r}: a value is too large for a float.") from None
        with np.errstate(over="ignore"):
            array = wide.astype(dtype)
        if (np.isinf(array) & np.isfinite(wide)).any():
            raise ProtocolError(f"input {name!r}: a value is too large for "
                                f"{datatype_of(dtype)} (at most {np.finfo(dtype).max:.4g}).")
        return array.reshape(shape)
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in flat):
            _refuse_ragged(flat, name)
            raise ProtocolError(f"input {name!r} is BOOL: its data must be true or false.")
    elif not all(type(v) is int for v in flat):
        _refuse_ragged(flat, name)
        raise ProtocolError(f"input {name!r} is an integer type: its data must be integers.")
    info = None if dtype.kind == "b" else np.iinfo(dtype)
    if info is not None and flat.size and not (info.min <= min(flat) and max(flat) <= info.max):
        raise ProtocolError(f"input {name!r}: values outside the range of {dtype}.")
    return np.asarray(flat.tolist(), dtype=dtype).reshape(shape)


def _refuse_ragged(flat: np.ndarray, name: str) -> None:
    """Name a ragged list (numpy 2 keeps its rows as list objects) before another check
    blames its values; called on the paths that already refuse the data."""
    if any(isinstance(v, list) for v in flat):
        raise ProtocolError(f"input {name!r}: 'data' is a ragged list; give every row the "
                            "same length, or send the values flat.")


def _name(entry: Any, what: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError(f"each {what} must be an object with a 'name' string.")
    return entry["name"]


def _parameters(entry: dict, what: str) -> dict:
    parameters = entry.get("parameters", {})
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ProtocolError(f"the {what}'s 'parameters' must be an object.")
    return parameters


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise ProtocolError(f"'{what}' must be a list.")
    return value


def _optional_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"'{what}' must be a string.")
    return value


def infer_response(model: str, version: str, request: InferRequest,
                   outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or JSON then the binary outputs asked for."""
    entries, blobs = [], []
    for name, array in outputs.items():
        array = np.ascontiguousarray(array)
        entry = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if name in request.binary_outputs or (request.binary_default
                                              and not request.outputs):
            blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = json_values(array)
        entries.append(entry)
    document = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        document["id"] = request.id
    header = json.dumps(document, allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {"content-type": "application/octet-stream",
                                      HEADER_LENGTH: str(len(header))}


def json_values(array: np.ndarray) -> list:
    """A tensor's values for JSON, row-major. JSON has no NaN or infinity, so those are
    null (a hole's contribution, a score past float range); binary outputs keep them."""
    values = array.reshape(-1).tolist()
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return values
    return [v if math.isfinite(v) else None for v in values]
