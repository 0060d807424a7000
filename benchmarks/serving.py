"""Serving load test: `vaeanom serve` with and without dynamic batching, and a naive peer.

Every server runs as its own process on 127.0.0.1 with one onnxruntime thread
and serves the same exported scorer (breast-cancer rows, the default
architecture). The load generator (raw HTTP/1.1 on asyncio streams, in this process) keeps
``concurrency`` requests in flight until a fixed number have been answered, then
stops. Requests carry JSON tensors of 1 or 256 rows:

- ``vaeanom (dynamic batching)``: ``vaeanom serve`` on a repository whose
  config.pbtxt has ``dynamic_batching { }`` (as ``vaeanom export --triton`` writes);
- ``vaeanom (no batching)``: the same without ``dynamic_batching``: each request
  runs on its own in a worker thread;
- ``naive FastAPI``: what a user writes by hand, an endpoint that calls
  ``OnnxModel.score_samples`` on each request's rows.

- ``kserve ModelServer``: with ``--kserve-python PY``, kserve's own Python model
  server wrapping the same ``OnnxModel`` (a ``kserve.Model`` whose ``predict``
  calls ``score_samples``), fed the same Open Inference Protocol requests. kserve
  pins its own FastAPI, uvicorn and cloud SDKs, so it lives in a virtual
  environment of its own (with onnxruntime-gpu and pandas; vaeanom comes from
  this checkout through PYTHONPATH), not in vaeanom's.

    python benchmarks/serving.py            # about 5 minutes on 2 cores
    python3 -m venv /tmp/ksv && /tmp/ksv/bin/pip install kserve onnxruntime-gpu pandas scikit-learn
    python benchmarks/serving.py --kserve-python /tmp/ksv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import versions, write_results

CONCURRENCY = (1, 16, 64)
ROWS = (1, 256)

NAIVE_APP = '''
import os
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel
from vaeanom import OnnxModel

model = OnnxModel(os.environ["NAIVE_MODEL"], intra_op_num_threads=1)
app = FastAPI()


class Rows(BaseModel):
    rows: list[list[float]]


@app.post("/score")
def score(body: Rows):
    return {"score": model.score_samples(np.asarray(body.rows, dtype=np.float32)).tolist()}
'''


KSERVE_APP = '''
import os
import sys

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from vaeanom.runtime import OnnxModel


class VaeanomScorer(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path, self.model = path, None   # kserve pickles models into its workers
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        if self.model is None:
            self.model = OnnxModel(self.path, intra_op_num_threads=1)
        score = self.model.score_samples(payload.inputs[0].as_numpy()).astype(np.float32)
        output = InferOutput(name="score", shape=list(score.shape), datatype="FP32")
        output.set_data_from_numpy(score, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[output],
                             response_id=payload.id or "")


if __name__ == "__main__":
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    ModelServer(http_port=port, grpc_port=port + 1, workers=workers, enable_grpc=False,
                enable_latency_logging=False).start(
        [VaeanomScorer("cancer", os.environ["NAIVE_MODEL"])])
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def export_model(folder: Path) -> np.ndarray:
    """Fit the default VAEDetector on breast-cancer rows; write two repositories."""
    from sklearn.datasets import load_breast_cancer

    from vaeanom import VAEDetector

    X, y = load_breast_cancer(return_X_y=True)
    det = VAEDetector(epochs=20, random_state=0).fit(X[y == 1])
    det.export_triton(folder / "batched", "cancer")
    det.export_triton(folder / "unbatched", "cancer")
    config = folder / "unbatched" / "cancer" / "config.pbtxt"
    config.write_text(config.read_text().replace("dynamic_batching { }\n", ""))
    (folder / "naive_app.py").write_text(NAIVE_APP)
    (folder / "kserve_app.py").write_text(KSERVE_APP)
    return X.astype(np.float32)


def start(command: list[str], port: int, ready_path: str, env=None) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **(env or {})})
    deadline, ready = time.time() + 120, 0
    while time.time() < deadline:   # 20 answers in a row: every worker process is ready
        try:
            ok = httpx.get(f"http://127.0.0.1:{port}{ready_path}").status_code == 200
        except httpx.HTTPError:
            ok = False
        ready = ready + 1 if ok else 0
        if ready >= 20:
            return process
        time.sleep(0.05 if ok else 0.2)
    process.kill()
    raise RuntimeError(f"{command} did not get ready")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


async def load(port: int, path: str, bodies: list[bytes], concurrency: int,
               n_requests: int) -> dict:
    """Keep ``concurrency`` requests in flight until ``n_requests`` are answered.

    Raw HTTP/1.1 on keep-alive asyncio streams with the requests built in advance:
    a Python HTTP client (httpx) spent about 10 ms of CPU per request here, more
    than the servers it was measuring. Every connection is open before the clock
    starts, and the generator's own garbage collector is off while it runs, so
    that neither connecting nor its pauses count as server latency.
    """
    requests = [(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                 f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies]
    latencies, sent = [], 0

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        nonlocal sent
        while sent < n_requests:
            request = requests[sent % len(requests)]
            sent += 1
            t0 = time.perf_counter()
            writer.write(request)
            await _read_response(reader)
            latencies.append(time.perf_counter() - t0)

    connections = [await asyncio.open_connection("127.0.0.1", port)
                   for _ in range(concurrency)]
    gc.disable()
    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(*connection) for connection in connections))
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
        for _, writer in connections:
            writer.close()
    latencies = np.asarray(latencies)
    return {"requests": len(latencies), "seconds": seconds,
            "requests_per_s": len(latencies) / seconds,
            "p50_ms": float(np.percentile(latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(latencies, 99) * 1e3)}


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with a Content-Length body; anything but 200 raises."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
    return body


def bodies_for(X: np.ndarray, rows: int, kind: str) -> list[bytes]:
    out = []
    for start_row in range(0, 8 * rows, rows):
        chunk = np.resize(np.roll(X, -start_row, axis=0), (rows, X.shape[1]))
        if kind == "oip":
            out.append(json.dumps({"inputs": [{"name": "input", "shape": list(chunk.shape),
                                               "datatype": "FP32",
                                               "data": chunk.reshape(-1).tolist()}]}).encode())
        else:
            out.append(json.dumps({"rows": chunk.tolist()}).encode())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500,
                        help="requests per cell for 1-row requests (256-row: a fifth)")
    parser.add_argument("--kserve-python", default=None, metavar="PY",
                        help="a Python with kserve installed: adds kserve's ModelServer")
    parser.add_argument("--workers", type=int, default=2,
                        help="server processes, the same for every server (default: 2 cores)")
    args = parser.parse_args()
    workers = ["--workers", str(args.workers)]
    folder = Path(tempfile.mkdtemp(prefix="vaeanom-serving-"))
    X = export_model(folder)
    vaeanom = [sys.executable, "-m", "vaeanom.cli", "serve", "--threads", "1", *workers,
               "--port"]
    servers = {
        "vaeanom (dynamic batching)": (lambda p: vaeanom + [str(p), str(folder / "batched")],
                                       "/v2/health/ready", "/v2/models/cancer/infer", "oip"),
        "vaeanom (no batching)": (lambda p: vaeanom + [str(p), str(folder / "unbatched")],
                                  "/v2/health/ready", "/v2/models/cancer/infer", "oip"),
        "naive FastAPI": (lambda p: [sys.executable, "-m", "uvicorn", "--app-dir", str(folder),
                                     "naive_app:app", "--port", str(p), "--log-level",
                                     "warning", *workers], "/docs", "/score", "naive"),
    }
    if args.kserve_python:
        servers["kserve ModelServer"] = (
            lambda p: [args.kserve_python, str(folder / "kserve_app.py"), str(p),
                       str(args.workers)],
            "/v2/health/ready", "/v2/models/cancer/infer", "oip")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "NAIVE_MODEL": str(folder / "batched" / "cancer" / "1" / "model.onnx"),
           "OMP_NUM_THREADS": "1"}
    rows_out = []
    for server, (command, ready, path, kind) in servers.items():
        port = _free_port()
        process = start(command(port), port, ready, env)
        try:
            for rows in ROWS:
                bodies = bodies_for(X, rows, kind)
                n = args.requests if rows == 1 else max(args.requests // 5, 64)
                asyncio.run(load(port, path, bodies, 4, 32))  # warm-up
                for concurrency in CONCURRENCY:
                    result = asyncio.run(load(port, path, bodies, concurrency, n))
                    row = {"server": server, "rows_per_request": rows,
                           "concurrency": concurrency, **result,
                           "rows_per_s": result["requests_per_s"] * rows}
                    rows_out.append(row)
                    print(f"{server:28s} rows {rows:4d} c {concurrency:3d} "
                          f"{row['requests_per_s']:8.1f} req/s {row['rows_per_s']:9.1f} rows/s "
                          f"p50 {row['p50_ms']:7.2f} ms p99 {row['p99_ms']:7.2f} ms", flush=True)
        finally:
            stop(process)
    shutil.rmtree(folder, ignore_errors=True)
    frame = pd.DataFrame(rows_out)
    markdown = summarise(frame, args.workers)
    print("\n" + markdown)
    write_results("serving", {"rows": rows_out, "args": vars(args), "cores": os.cpu_count(),
                              "versions": versions("vaeanom", "onnxruntime-gpu", "starlette",
                                                   "uvicorn", "fastapi", "httpx")}, markdown)


def summarise(frame: pd.DataFrame, workers: int) -> str:
    table = frame.pivot_table(index=["rows_per_request", "concurrency"], columns="server",
                              values=["rows_per_s", "p50_ms", "p99_ms"])
    one = frame[(frame.rows_per_request == 1) & (frame.concurrency == 64)].set_index("server")
    ratio = (one.loc["vaeanom (dynamic batching)", "rows_per_s"]
             / one.loc["naive FastAPI", "rows_per_s"])
    p99 = one.loc["vaeanom (dynamic batching)", "p99_ms"]
    return "\n".join([
        "# Serving: vaeanom serve vs a naive FastAPI endpoint, same run", "",
        f"CPU, {os.cpu_count()} cores; every server runs {workers} worker process(es) with one "
        "onnxruntime thread each; the load generator shares the machine. JSON tensors in "
        "every request. `vaeanom serve` runs its default 8-row onnxruntime calls "
        "(`--chunk-rows`); the naive and kserve peers call `OnnxModel` with its default "
        "64-row chunks. Regenerate: `python benchmarks/serving.py`.", "",
        frame.pivot_table(index=["rows_per_request", "concurrency"], columns="server",
                          values="rows_per_s").to_markdown(floatfmt=".0f"), "",
        "Rows per second above; latency (ms) below.", "",
        table[["p50_ms", "p99_ms"]].to_markdown(floatfmt=".2f"), "",
        f"1-row requests at concurrency 64: dynamic batching gives {ratio:.2f}x the naive "
        f"server's rows/s, at a p99 of {p99:.1f} ms (target: >= 3x, p99 < 50 ms).", ""])


if __name__ == "__main__":
    main()
