"""``vaeanom serve``: exported models over the Open Inference Protocol (KServe v2).

Starlette on uvicorn, over :class:`vaeanom.OnnxModel`; torch is never
imported. Needs the ``serve`` extra: ``pip install "vaeanom[serve]"``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from . import repository
from .app import Settings, configure_logging, create_app

__all__ = ["Settings", "create_app", "serve"]


def serve(path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, *,
          max_body_bytes: int = 64 * 2**20, request_timeout_s: float = 30.0,
          graceful_timeout_s: float = 30.0, intra_op_num_threads: int | None = None,
          chunk_rows: int = 8, log_level: str = "info") -> None:
    """Serve ``path`` (one .onnx file or a Triton repository) until SIGTERM or Ctrl-C.

    On SIGTERM uvicorn stops accepting connections, lets the requests in
    flight finish (up to ``graceful_timeout_s``), then exits. ``chunk_rows`` is
    the rows per onnxruntime call (see :class:`vaeanom.OnnxModel`'s ``batch_size``).
    With ``workers > 1`` each worker loads its models before it accepts connections
    (the workers share the socket); one process answers /v2/health/live while loading.
    A model that does not load stops this before it listens, with the reason (Triton
    exits on one by default): a server that is live but never ready would only say
    so to its health checks.
    """
    import uvicorn

    _check_port(port)
    _check_limits(workers=workers, max_body_bytes=max_body_bytes,
                  request_timeout_s=request_timeout_s, graceful_timeout_s=graceful_timeout_s,
                  intra_op_num_threads=intra_op_num_threads, chunk_rows=chunk_rows)
    settings = Settings(str(os.fspath(path)), max_body_bytes, request_timeout_s,
                        intra_op_num_threads, chunk_rows, freeze_gc=True, log_level=log_level,
                        load_before_listening=workers > 1)
    repository.load(settings.path, batch_size=chunk_rows, intra_op_num_threads=1,
                    providers=["CPUExecutionProvider"])  # or raise; no GPU context kept here
    configure_logging(log_level)
    options = dict(host=host, port=port, log_level=log_level, access_log=False,
                   timeout_graceful_shutdown=graceful_timeout_s, log_config=None)
    if workers > 1:
        os.environ["VAEANOM_SERVE"] = settings.to_json()
        uvicorn.run("vaeanom.serving.app:app_from_environment", factory=True,
                    workers=workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


#: serve()'s limits -> (the CLI flag, its type, whether 0 is allowed)
_LIMITS = {"workers": ("--workers", int, False),
           "max_body_bytes": ("--max-body-bytes", int, False),
           "request_timeout_s": ("--request-timeout", float, False),
           "graceful_timeout_s": ("--graceful-timeout", float, True),
           "intra_op_num_threads": ("--threads", int, False),
           "chunk_rows": ("--chunk-rows", int, False)}


def _check_port(port) -> None:
    """Refuse a port no socket can have: the system would bind another (70000 wraps to
    4464, 65536 becomes a random one) while the log names the one asked for."""
    if isinstance(port, bool) or not isinstance(port, (int, np.integer)) or not (
            0 <= port <= 65535):
        raise ValueError(f"port (--port) must be an integer in 0..65535 (0: one the system "
                         f"picks); got {port!r}.")


def _check_limits(**limits) -> None:
    """Refuse, at start-up and by its flag, a limit under which the server would
    refuse every request (a body limit of -1, a timeout of 0 s)."""
    for name, value in limits.items():
        flag, kind, zero_ok = _LIMITS[name]
        if value is None and name == "intra_op_num_threads":
            continue
        kinds = (int, float) if kind is float else (int, np.integer)
        if (isinstance(value, bool) or not isinstance(value, kinds)
                or not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok)):
            what = "a number" if kind is float else "an integer"
            raise ValueError(f"{name} ({flag}) must be {what} {'>= 0' if zero_ok else '> 0'}; "
                             f"got {value!r}.")


