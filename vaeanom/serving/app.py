"""The ASGI application behind ``vaeanom serve``: the Open Inference Protocol over Starlette.

Endpoints (KServe v2 / Triton HTTP):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (503 until every model is
  loaded and has run once), ``GET /v2`` (server metadata);
- ``GET /v2/models/{name}[/versions/{v}]`` (inputs, outputs, and vaeanom's own
  metadata in ``parameters``), ``GET .../ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer``: JSON tensors or the binary
  tensor data extension (:mod:`vaeanom.serving.protocol`);
- ``POST /v1/models/{name}/score``: JSON records (column -> value) in, scores
  and outlier flags out;
- ``GET /metrics``: Prometheus metrics.

Errors are ``{"error": "..."}`` with a 4xx status that names the problem; only
a fault of the server itself is a 500. Runs over :class:`vaeanom.OnnxModel`;
never imports torch.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, get_route_path

from .. import __version__
from ..checks import are_bytes, finite_scores, is_outlier
from . import repository
from .batching import DynamicBatcher, ShuttingDown
from .metrics import Metrics
from .protocol import (InferRequest, ProtocolError, datatype_of, infer_response, json_values,
                       parse_infer, read_json)

access_log = logging.getLogger("vaeanom.serving.access")
logger = logging.getLogger("vaeanom.serving")


@dataclass
class Settings:
    """What ``vaeanom serve`` is asked to serve, and its limits."""

    path: str
    max_body_bytes: int = 64 * 2**20
    request_timeout_s: float = 30.0
    intra_op_num_threads: int | None = None
    #: rows per onnxruntime call, the last zero-padded (OnnxModel's batch_size): a
    #: 1-row request pays for this many rows, so serving keeps it small
    chunk_rows: int = 8
    #: gc.freeze() once the models are warm (``vaeanom serve``'s own processes): the
    #: collector then skips what loading made, which removed 30-60 ms pauses
    freeze_gc: bool = False
    #: the level configure_logging sets; worker processes (``--workers N``) set it anew
    log_level: str = "info"
    #: load the models before accepting connections (``--workers N``): the workers
    #: share one socket, so a worker still loading would take requests and answer 503
    #: while another one answered ready. One process loads after it listens, so that
    #: /v2/health/live answers meanwhile.
    load_before_listening: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return cls(**json.loads(text))


class ServerError(Exception):
    """A request the server refuses: ``status`` and a message for ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _State:
    settings: Settings
    metrics: Metrics
    models: dict[str, dict[str, repository.ServedModel]] = field(default_factory=dict)
    batchers: dict[tuple[str, str], DynamicBatcher] = field(default_factory=dict)
    ready: bool = False
    failure: str | None = None


def create_app(settings: Settings) -> InferFirst:
    """The application; models load and warm up in the background after start-up, or
    during it when ``settings.load_before_listening``."""
    state = _State(settings, Metrics())

    @asynccontextmanager
    async def lifespan(app):
        loading = asyncio.get_running_loop().create_task(_load(state))
        if settings.load_before_listening:
            await loading
        yield
        loading.cancel()
        for batcher in state.batchers.values():
            await batcher.stop()
        if settings.freeze_gc:
            gc.unfreeze()

    infer = _handler(state, _infer)
    routes = [  # InferFirst answers POST .infer before Starlette; other methods get 405 here
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", _handler(state, _live)),
        Route("/v2/health/ready", _handler(state, _ready)),
        Route("/v2", _handler(state, _server_metadata)),
        Route("/v2/models/{name}", _handler(state, _model_metadata)),
        Route("/v2/models/{name}/versions/{version}", _handler(state, _model_metadata)),
        Route("/v2/models/{name}/ready", _handler(state, _model_ready)),
        Route("/v2/models/{name}/versions/{version}/ready", _handler(state, _model_ready)),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}/score", _handler(state, _score), methods=["POST"]),
        Route("/metrics", _handler(state, _metrics)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.vaeanom = state
    return InferFirst(app, infer)


class InferFirst:
    """ASGI front of the app: ``POST .../infer`` goes straight to its endpoint.

    The hot path skips Starlette's middleware stack and route matching, which
    cost about a quarter of a 1-row request's CPU time; the endpoint is the
    same one the router holds, so answers do not change. Everything else
    (other routes, lifespan) goes to the Starlette app, ``.app``: middleware
    added there does not see infer calls, so wrap this object instead.
    """

    def __init__(self, app: Starlette, infer: Callable[[Request], Awaitable[Response]]) -> None:
        self.app, self.state, self._infer = app, app.state, infer

    async def __call__(self, scope, receive, send) -> None:
        params = (_infer_path_params(get_route_path(scope))
                  if scope["type"] == "http" and scope["method"] == "POST" else None)
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = params
        response = await self._infer(Request(scope, receive))
        await response(scope, receive, send)


def _infer_path_params(path: str) -> dict[str, str] | None:
    """{name[, version]} of /v2/models/{name}[/versions/{version}]/infer; else None."""
    parts = path.split("/")
    if parts[:3] != ["", "v2", "models"] or parts[-1] != "infer" or not all(parts[3:-1]):
        return None
    if len(parts) == 5:
        return {"name": parts[3]}
    if len(parts) == 7 and parts[4] == "versions":
        return {"name": parts[3], "version": parts[5]}
    return None


def app_from_environment() -> InferFirst:
    """The app for ``uvicorn --factory`` worker processes: settings from VAEANOM_SERVE.

    A worker is a new process: its logging is set up here, as the parent's was, or it
    would write no access lines and no formatted errors."""
    import os

    settings = Settings.from_json(os.environ["VAEANOM_SERVE"])
    configure_logging(settings.log_level)
    return create_app(settings)


def configure_logging(level: str) -> None:
    """One line per event on stderr; access lines are JSON objects."""
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("vaeanom.serving").setLevel(level.upper())


# ------------------------------------------------------------- lifecycle
async def _load(state: _State) -> None:
    """Load every model, run each once (warm-up), start the batchers, then be ready."""
    settings = state.settings
    try:
        options = {"batch_size": settings.chunk_rows}
        if settings.intra_op_num_threads is not None:
            options["intra_op_num_threads"] = settings.intra_op_num_threads
        state.models = await asyncio.to_thread(repository.load, settings.path, **options)
        for versions in state.models.values():
            for served in versions.values():
                await asyncio.to_thread(_warm_up, served.model)
                if served.dynamic_batching:
                    batcher = DynamicBatcher(served.model.run_feeds, served.max_batch_size,
                                             served.max_queue_delay_us,
                                             state.metrics.batch_observer(served.name))
                    batcher.start()
                    state.batchers[served.name, served.version] = batcher
        if settings.freeze_gc:
            gc.collect()
            gc.freeze()   # what loading made lives on: later collections need not walk it
        state.ready = True
        logger.info("ready: %s", {n: sorted(v) for n, v in state.models.items()})
    except Exception as err:    # not ready, and says why
        state.failure = f"{type(err).__name__}: {err}"
        logger.error("loading the models failed: %s", state.failure)


def _warm_up(model) -> None:
    """One row of zeros (every entry observed) through the graph: sessions allocate now."""
    feeds = {}
    for spec in model.graph_inputs:
        value = True if spec["dtype"] == "bool" else 0
        feeds[spec["name"]] = np.full((1, *spec["shape"]), value, dtype=spec["dtype"])
    model.run_feeds(feeds)


# ------------------------------------------------------------ plumbing
Handler = Callable[[_State, Request], Awaitable[Response]]


def _handler(state: _State, handle: Handler) -> Callable[[Request], Awaitable[Response]]:
    """``handle`` with errors as protocol bodies, metrics and one access-log line."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            with state.metrics.in_progress(request.scope["path"], _model_label(state, request)):
                response = await handle(state, request)
        except (ServerError, ProtocolError) as err:
            response = _error(err.status, str(err))
        except ClientDisconnect:     # nginx's 499: the client left; no fault of ours
            response = _error(CLIENT_CLOSED, "the client closed the connection before its "
                                             "request was read.")
        except asyncio.CancelledError:   # uvicorn's --graceful-timeout ran out: answer, go
            response = _error(503, SHUTTING_DOWN)
        except Exception as err:
            logger.exception("internal error on %s", request.scope["path"])
            response = _error(500, f"internal server error: {type(err).__name__}: {err}")
        _record(state, request, response.status_code, time.perf_counter() - started)
        return response

    return endpoint


def _record(state: _State, request: Request, status: int, seconds: float,
            endpoint: str | None = None) -> None:
    """A request's metrics and its access-log line."""
    name = _model_label(state, request)
    state.metrics.request(request.scope["path"], name, status, seconds, endpoint)
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps({
            "method": request.method, "path": request.scope["path"], "status": status,
            "ms": round(seconds * 1e3, 3), "model": name,
            "client": request.client.host if request.client else None}))


def _model_label(state: _State, request: Request) -> str:
    """The request's model name, or "" for a model we do not serve (bounded labels)."""
    name = request.path_params.get("name", "")
    return name if name in state.models else ""


#: the status a request gets (in metrics and the access log) when its client hangs up
CLIENT_CLOSED = 499
SHUTTING_DOWN = "the server is shutting down; send the request again (to another replica)."


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """The router's own refusals (no such route, wrong method), counted and logged; a 405
    keeps the router's Allow header (RFC 9110 15.5.6: it must name the methods)."""
    response = _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                      exc.headers)
    _record(request.app.state.vaeanom, request, response.status_code, 0.0,
            "unrouted" if exc.status_code == 404 else None)    # a 405's path is ours
    return response


#: Content-Encoding -> zlib's wbits for it (what tritonclient's request compression sends)
_COMPRESSED = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def _body(state: _State, request: Request) -> bytes:
    """The request body, refused with 413 past ``max_body_bytes`` (before it is all read);
    a gzip or deflate body is inflated, and held to the same limit once inflated."""
    limit = state.settings.max_body_bytes
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity" and encoding not in _COMPRESSED:
        raise ServerError(415, f"Content-Encoding {encoding!r} is not supported; send the body "
                               "uncompressed, gzip or deflate.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServerError(413, f"the request body has {declared} bytes; this server takes at "
                               f"most {limit} (--max-body-bytes).")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServerError(413, f"the request body is over {limit} bytes "
                                   "(--max-body-bytes).")
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding == "identity":
        return body
    return await asyncio.to_thread(_inflate, body, encoding, limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A gzip or deflate body, inflated; 413 past ``limit`` bytes (a small body may
    inflate to gigabytes: no more than limit + 1 bytes are ever made). A gzip body may
    hold several members (RFC 1952), inflated one after the other; bytes after the end
    of the data are refused, not dropped."""
    parts, rest, total = [], body, 0
    while True:
        inflater = zlib.decompressobj(_COMPRESSED[encoding])
        try:
            part = inflater.decompress(rest, limit + 1 - total)
        except zlib.error as err:
            raise ServerError(400, f"the body is not valid {encoding} data ({err}).") from None
        parts.append(part)
        total += len(part)
        if total > limit or inflater.unconsumed_tail:
            raise ServerError(413, f"the request body inflates to over {limit} bytes "
                                   "(--max-body-bytes).")
        if not inflater.eof:
            raise ServerError(400, f"the {encoding} body is cut short.")
        rest = inflater.unused_data
        if not rest:
            return b"".join(parts)
        if encoding != "gzip":
            raise ServerError(400, f"the {encoding} body has {len(rest)} bytes after its end.")


def _served(state: _State, request: Request) -> repository.ServedModel:
    if not state.ready:
        raise ServerError(503, "the server is still loading its models"
                          + (f" (loading failed: {state.failure})" if state.failure else "")
                          + "; see /v2/health/ready.")
    name = request.path_params["name"]
    versions = state.models.get(name)
    if versions is None:
        raise ServerError(404, f"unknown model {name!r}; this server has {sorted(state.models)}.")
    version = request.path_params.get("version")
    if version is None:
        return versions[max(versions, key=int)]
    if version not in versions:
        raise ServerError(404, f"model {name!r} has no version {version!r}; it has "
                               f"{sorted(versions, key=int)}.")
    return versions[version]


async def _run(state: _State, served: repository.ServedModel, feeds) -> dict[str, np.ndarray]:
    """The model's outputs for checked feeds: through the batcher, within the timeout."""
    rows = len(next(iter(feeds.values())))
    if rows > served.max_batch_size:
        raise ServerError(400, f"the request has {rows} rows; model {served.name!r} takes at "
                               f"most {served.max_batch_size} per request (max_batch_size).")
    batcher = state.batchers.get((served.name, served.version))
    work = (batcher.submit(feeds) if batcher is not None
            else asyncio.to_thread(served.model.run_feeds, feeds))
    try:
        return await asyncio.wait_for(work, state.settings.request_timeout_s)
    except (TimeoutError, asyncio.TimeoutError):   # distinct classes before Python 3.11
        raise ServerError(503, f"the request timed out after {state.settings.request_timeout_s}"
                               " s (--request-timeout); the server is overloaded.") from None
    except ShuttingDown:
        raise ServerError(503, SHUTTING_DOWN) from None


# ------------------------------------------------------------ endpoints
async def _live(state: _State, request: Request) -> Response:
    return JSONResponse({"live": True})


async def _ready(state: _State, request: Request) -> Response:
    if not state.ready:
        return _error(503, "not ready: " + (state.failure or "models are loading"))
    return JSONResponse({"ready": True})


async def _server_metadata(state: _State, request: Request) -> Response:
    return JSONResponse({"name": "vaeanom", "version": __version__,
                         "extensions": ["binary_tensor_data"]})


async def _model_metadata(state: _State, request: Request) -> Response:
    served = _served(state, request)
    model = served.model
    session_outputs = model._session.get_outputs()
    meta = model.metadata
    return JSONResponse({
        "name": served.name,
        "versions": sorted(state.models[served.name], key=int),
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": spec["name"], "datatype": datatype_of(spec["dtype"]),
                    "shape": [-1, *spec["shape"]]} for spec in model.graph_inputs],
        "outputs": [{"name": out.name, "datatype": datatype_of(_output_dtype(out)),
                     "shape": [-1, *out.shape[1:]]} for out in session_outputs],
        "parameters": {
            "estimator": meta["estimator"], "part": meta["part"],
            "score_kind": meta["score_kind"], "threshold": meta["offset"],
            "feature_names": meta["feature_names"], "max_batch_size": served.max_batch_size,
            "categories": (None if model.table_schema is None
                           else model.table_schema.to_json()),
            "classes": meta.get("classes"),   # a 'label' input's codes index these
        },
    })


def _output_dtype(output) -> np.dtype:
    from ..runtime import _dtype_of

    return _dtype_of(output)


async def _model_ready(state: _State, request: Request) -> Response:
    _served(state, request)
    return JSONResponse({"ready": True})


async def _infer(state: _State, request: Request) -> Response:
    served = _served(state, request)
    body = await _body(state, request)
    header = request.headers.get("inference-header-content-length")
    parsed, feeds, wanted = await _off_loop(len(body), _read_infer, served, body, header)
    outputs = await _run(state, served, feeds)
    outputs = outputs if wanted is None else {name: outputs[name] for name in wanted}
    body, headers = infer_response(served.name, served.version, parsed, outputs)
    return Response(body, headers=headers)


#: bodies past this many bytes are parsed and checked in a worker thread: a 50 MB
#: JSON body held the event loop (health checks, other requests, the batchers) for 1 s
OFF_LOOP_BYTES = 1 << 20


async def _off_loop(size: int, work: Callable, *args):
    """``work(*args)``, in a worker thread when the body is large, else right here (the
    thread hop costs more than a small body's parsing)."""
    return await asyncio.to_thread(work, *args) if size > OFF_LOOP_BYTES else work(*args)


def _read_infer(served: repository.ServedModel, body: bytes, header: str | None):
    """An /infer body -> (the parsed request, checked feeds, the outputs it wants)."""
    parsed = parse_infer(body, header, served.max_batch_size)
    wanted = _requested(served.model, parsed)
    try:
        feeds = served.model.check_feeds(parsed.inputs)
    except (ValueError, TypeError, OverflowError) as err:
        raise ServerError(400, str(err)) from None
    return parsed, feeds, wanted


def _requested(model, request: InferRequest) -> list[str] | None:
    """The outputs a request names, checked before the model runs; None: all of them
    (no "outputs", or an empty list, as Triton reads it)."""
    if not request.outputs:
        return None
    given = list(model.output_names)
    unknown = [name for name in request.outputs if name not in given]
    if unknown:
        raise ServerError(400, f"unknown output(s) {unknown}; the model gives {given}.")
    return list(request.outputs)


async def _score(state: _State, request: Request) -> Response:
    """JSON records -> {"score": [...], "is_outlier": [...], "threshold": offset}, and
    "explanations" (one {column: contribution} per record) when the scorer has them."""
    served = _served(state, request)
    model = served.model
    if model.part != "scorer":
        raise ServerError(400, f"model {served.name!r} is the {model.part}; /score needs a scorer.")
    body = await _body(state, request)
    feeds = await _off_loop(len(body), _read_records, model, body)
    outputs = await _run(state, served, feeds)
    score = finite_scores(outputs["score"])
    answer = {"score": [float(s) if np.isfinite(s) else None for s in score],
              "is_outlier": is_outlier(score, model.offset_).tolist(),
              "threshold": model.offset_}
    if model.explains and not model.is_image:
        answer["explanations"] = _by_column(outputs["contributions"], model.feature_columns)
    return JSONResponse(answer)


def _read_records(model, body: bytes) -> dict[str, np.ndarray]:
    """A /score body (JSON records, and a conditional scorer's "labels") -> checked feeds."""
    records, labels = read_json(body), None
    if isinstance(records, dict):
        labels = records.get("labels")
        records = records.get("records", records.get("instances"))
    if not isinstance(records, list) or not records or not all(isinstance(r, dict)
                                                                for r in records):
        raise ServerError(400, "the body must be a non-empty list of records (objects mapping "
                               "column names to values), or {\"records\": [...]}.")
    if labels is not None and not all(map(_is_label, labels if isinstance(labels, list)
                                          else [labels])):
        raise ServerError(400, "\"labels\" must be one label (a string, number or boolean) "
                               "for every record, or a list of them, one per record.")
    try:
        return model._with_labels(model._feeds(_frame(model, records)), labels)
    except (ValueError, TypeError, OverflowError) as err:
        raise ServerError(400, str(err)) from None


def _is_label(value) -> bool:
    return isinstance(value, (str, int, float, bool))


def _by_column(contributions: np.ndarray, columns: list[str]) -> list[dict]:
    """(n, d) contributions -> one {column: value} per row; a missing entry is null."""
    values, width = json_values(contributions), len(columns)
    return [dict(zip(columns, values[start:start + width]))
            for start in range(0, len(values), width)]


def _frame(model, records: list[dict]):
    """Records -> a DataFrame in the fitted column order. Missing keys are missing values
    for a table model (fitted on categories or holes), which takes them; for others
    the first record that lacks a column is named."""
    import pandas as pd

    from ..tables import shown_columns

    names = getattr(model, "feature_names_in_", None)
    columns = model.feature_columns
    unknown = sorted({key for record in records for key in record} - set(columns))
    if unknown:
        raise ValueError(f"unknown column(s) {shown_columns(unknown, 5)}; the model takes "
                         f"{shown_columns(columns, 10)}.")
    frame = pd.DataFrame.from_records(records, columns=columns)
    rows = frame if names is not None else _numbers(frame)   # text in numbers is named first
    if model.table_schema is None:
        _refuse_missing_keys(records, columns)
    return _pixels(rows) if names is None and model.input_dtype == np.uint8 else rows


def _numbers(frame) -> np.ndarray:
    """A records frame of a model fitted on an array as float64 (n, d), NaN where missing;
    a value that is not a number is named by its column."""
    values = np.empty(frame.shape)
    for i, column in enumerate(frame.columns):
        try:
            values[:, i] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        except (ValueError, TypeError, OverflowError) as err:
            raise ValueError(f"column {column!r}: {err}; this model takes numbers.") from None
    return values


def _refuse_missing_keys(records: list[dict], columns: list[str]) -> None:
    """Name the first record without every column, for a model that takes no holes."""
    from ..tables import shown_columns

    for i, record in enumerate(records):
        if len(record) == len(columns):   # unknown keys were refused: this one has them all
            continue
        missing = [column for column in columns if column not in record]
        if missing:
            raise ValueError(f"record {i} lacks {shown_columns(missing, 5)}: this model was "
                             "fitted on complete rows and takes every column in every record.")


def _pixels(values: np.ndarray) -> np.ndarray:
    """Records for a model exported with ``input_dtype="uint8"``: whole numbers in
    0..255, as uint8 (JSON has one number type, so the dtype cannot come with them)."""
    if not are_bytes(values):
        raise ValueError("this model takes 8-bit pixels: every value must be a whole number "
                         "in 0..255, none missing (send the pixels as they are, not / 255).")
    return values.astype(np.uint8)


async def _metrics(state: _State, request: Request) -> Response:
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)
