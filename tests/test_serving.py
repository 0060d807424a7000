"""`vaeanom serve` as it runs: a subprocess on 127.0.0.1 driven by Triton's own client.

The repository is what `vaeanom export --triton` writes (plus a queue delay in
one copy's config, as a user would set it), so the same folder would serve on
Triton unchanged.
"""

import gzip
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

tritonclient_http = pytest.importorskip("tritonclient.http")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException, triton_to_np_dtype  # noqa: E402

from vaeanom import OnnxModel, VAEDetector  # noqa: E402
from vaeanom.serving.app import _infer_path_params  # noqa: E402
from vaeanom.serving.protocol import ProtocolError, parse_infer  # noqa: E402

QUICK = dict(random_state=0, hidden_dims=(32, 16), latent_dim=4, n_score_samples=8, epochs=5)


def _vaeanom_command() -> list[str]:
    installed = Path(sys.executable).parent / "vaeanom"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "vaeanom.cli"]


def _not_json(token: str):
    raise AssertionError(f"the server sent {token}, which is not JSON (RFC 8259)")


class Server:
    """`vaeanom serve REPO` in a subprocess on a port the kernel picks (--port 0, read
    back from uvicorn's log: a port found free and then released could be taken by
    another test's listener meanwhile); stopped with SIGTERM."""

    def __init__(self, repo: Path, *extra: str, workers: int = 1) -> None:
        self.log = repo.parent / f"serve-{time.time_ns()}.log"
        self.process = subprocess.Popen(
            [*_vaeanom_command(), "serve", str(repo), "--port", "0", "--threads", "1",
             "--workers", str(workers), *extra], stdout=self.log.open("w"),
            stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            text = self.log.read_text()
            port = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", text)
            if port and text.count("vaeanom.serving INFO ready:") >= workers:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the server did not get ready:\n{self.log.read_text()}")
        self.port = int(port.group(1))
        self.url = f"127.0.0.1:{self.port}"
        self.client = tritonclient_http.InferenceServerClient(self.url, concurrency=16)
        assert self.client.is_server_ready()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict | str]:
        request = urllib.request.Request(f"http://{self.url}{path}", data=body, method=method,
                                         headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text, parse_constant=_not_json)
        except json.JSONDecodeError:
            return status, text

    def stop(self) -> bool:
        """SIGTERM; True when the server shut down gracefully (uvicorn then re-raises the
        signal, so the exit status is -SIGTERM, or 0 on older uvicorn)."""
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        return self.exited_cleanly()

    def exited_cleanly(self) -> bool:
        code = self.process.wait(timeout=60)
        return (code in (0, -signal.SIGTERM)
                and "Application shutdown complete" in self.log.read_text())


def table_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                          "color": rng.choice(["red", "green", "blue"], n)})
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    return frame


@pytest.fixture(scope="module")
def repo(cancer, tmp_path_factory):
    """A repository with a rows scorer, the same scorer with a queue delay, and a table
    model; exported by the CLI's code path (export_triton)."""
    X, y = cancer
    folder = tmp_path_factory.mktemp("serve") / "repo"
    rows = VAEDetector(**QUICK).fit(X[y == 1])
    rows.export_triton(folder, "cancer")
    rows.export_triton(folder, "cancer_batched")
    config = folder / "cancer_batched" / "config.pbtxt"
    config.write_text(config.read_text().replace(
        "dynamic_batching { }", "dynamic_batching { max_queue_delay_microseconds: 300000 }"))
    VAEDetector(**QUICK).fit(table_frame(300, 0)).export_triton(folder, "table", explain=True)
    VAEDetector(**QUICK).fit(digit_images()).export_triton(folder, "digits")   # uint8 input
    VAEDetector(**QUICK, conditional=True).fit(X, np.where(y == 1, "benign", "malignant")
                                               ).export_triton(folder, "given", with_label=True)
    return folder


def digit_images() -> np.ndarray:
    """load_digits as 8-bit images (n, 8, 8): what a uint8 image model is fitted on."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:300] * 16).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def server(repo):
    running = Server(repo)
    yield running
    assert running.stop()


def _infer(client, model, array, binary, name="input", datatype="FP32", **kwargs):
    tensor = tritonclient_http.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    output = tritonclient_http.InferRequestedOutput("score", binary_data=binary)
    return client.infer(model, [tensor], outputs=[output], **kwargs).as_numpy("score")


# ------------------------------------------------------------ the protocol
def test_tritonclient_drives_the_server_and_scores_equal_onnx_model(server, repo, cancer):
    client = server.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cancer")
    meta = client.get_model_metadata("cancer")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["parameters"]["score_kind"] == "elbo_kl_knn"
    assert len(meta["parameters"]["feature_names"]) == 30
    X = cancer[0].to_numpy(np.float32)
    expected = OnnxModel(repo / "cancer" / "1" / "model.onnx").score_samples(X)
    assert meta["parameters"]["threshold"] == OnnxModel(repo / "cancer" / "1" /
                                                        "model.onnx").offset_
    for binary in (False, True):
        scores = _infer(client, "cancer", X, binary)
        np.testing.assert_array_equal(scores.astype(np.float64), expected)   # bit for bit


def test_a_table_model_is_served_with_numbers_codes_and_mask(server, repo):
    frame = table_frame(50, 1)
    model = OnnxModel(repo / "table" / "1" / "model.onnx")
    categories = model.table_schema.categories[2]
    codes = frame[["color"]].apply(lambda c: c.map(dict(zip(categories, range(3)))))
    tensors = {"numbers": frame[["a", "b"]].to_numpy(np.float32),
               "codes": codes.to_numpy(np.int64), "observed": frame.notna().to_numpy()}
    datatypes = {"numbers": "FP32", "codes": "INT64", "observed": "BOOL"}
    for binary in (False, True):
        inputs = []
        for name, array in tensors.items():
            tensor = tritonclient_http.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        scores = server.client.infer("table", inputs).as_numpy("score")
        np.testing.assert_array_equal(scores.astype(np.float64), model.score_samples(frame))


def test_json_outputs_are_strict_json_with_null_for_a_holes_contribution(server, repo):
    frame = table_frame(20, 3)
    frame.loc[0, "a"] = np.nan
    model = OnnxModel(repo / "table" / "1" / "model.onnx")
    feeds = model._feeds(frame)
    body = {"inputs": [{"name": name, "shape": list(array.shape),
                        "datatype": {"f": "FP32", "i": "INT64", "b": "BOOL"}[array.dtype.kind],
                        "data": array.reshape(-1).tolist()} for name, array in feeds.items()]}
    status, answer = server.request("POST", "/v2/models/table/infer", json.dumps(body).encode())
    assert status == 200, answer      # Server.request parses strictly: NaN would fail here
    outputs = {out["name"]: out for out in answer["outputs"]}
    shape = outputs["contributions"]["shape"]
    sent = np.array(outputs["contributions"]["data"], dtype=float).reshape(shape)  # null -> nan
    np.testing.assert_array_equal(sent, model.explain(frame).to_numpy(np.float32))
    assert np.isnan(sent[0, 0]) and np.isfinite(outputs["score"]["data"]).all()


def test_records_endpoint_scores_a_table_by_column_name(server, repo, cancer):
    frame = table_frame(20, 2)
    records = json.loads(frame.to_json(orient="records"))   # NaN -> null: a missing value
    records[0]["color"] = "never seen"
    status, body = server.request("POST", "/v1/models/table/score", json.dumps(records).encode())
    assert status == 200, body
    model = OnnxModel(repo / "table" / "1" / "model.onnx")
    frame.loc[0, "color"] = "never seen"
    np.testing.assert_array_equal(body["score"], model.score_samples(frame))
    assert body["is_outlier"] == list(model.score_samples(frame) < model.offset_)
    status, plain = server.request("POST", "/v1/models/cancer/score", json.dumps(
        [dict(zip(cancer[0].columns, cancer[0].iloc[0].tolist()))]).encode())
    assert status == 200 and "explanations" not in plain     # a scorer exported without them
    explained = pd.DataFrame(body["explanations"], dtype=float)   # null: a missing entry
    pd.testing.assert_frame_equal(explained, model.explain(frame), check_dtype=False)
    assert np.isnan(explained.loc[frame["a"].isna(), "a"]).all()


def test_records_endpoint_scores_an_8_bit_image_model(server, repo):
    images = digit_images()[:4]
    model = OnnxModel(repo / "digits" / "1" / "model.onnx")
    assert model.input_dtype == np.uint8
    records = [dict(zip(model.feature_columns, image.reshape(-1).tolist())) for image in images]
    status, body = server.request("POST", "/v1/models/digits/score", json.dumps(records).encode())
    assert status == 200, body
    np.testing.assert_array_equal(body["score"], model.score_samples(images))
    for bad in ({**records[0], model.feature_columns[0]: 0.5},
                {**records[0], model.feature_columns[0]: 256}):
        status, body = server.request("POST", "/v1/models/digits/score",
                                      json.dumps([bad]).encode())
        assert status == 400 and "8-bit pixels" in body["error"], body


def test_a_conditional_scorer_is_served_with_each_rows_label(server, repo, cancer):
    """A scorer exported with_label=True takes 'label' codes over the protocol, and
    label names beside the records on /score, scoring as OnnxModel does."""
    model = OnnxModel(repo / "given" / "1" / "model.onnx")
    assert model.classes_.tolist() == ["benign", "malignant"]
    X = cancer[0].iloc[:40]
    labels = np.where(cancer[1].iloc[:40] == 1, "benign", "malignant")
    expected = model.score_samples(X, labels)
    meta = server.client.get_model_metadata("given")
    assert meta["inputs"][1] == {"name": "label", "datatype": "INT64", "shape": [-1]}
    assert meta["parameters"]["classes"] == ["benign", "malignant"]   # what the codes index
    codes = (labels == "malignant").astype(np.int64)
    for shape in ([40], [40, 1]):          # ours, and Triton's (dims [1], reshaped to [])
        tensors = [tritonclient_http.InferInput("input", [40, 30], "FP32"),
                   tritonclient_http.InferInput("label", shape, "INT64")]
        tensors[0].set_data_from_numpy(X.to_numpy(np.float32))
        tensors[1].set_data_from_numpy(codes.reshape(shape))
        scores = server.client.infer("given", tensors).as_numpy("score")
        np.testing.assert_array_equal(scores.astype(np.float64), expected)
    records = json.loads(X.to_json(orient="records"))
    status, body = server.request("POST", "/v1/models/given/score", json.dumps(
        {"records": records, "labels": labels.tolist()}).encode())
    assert status == 200, body
    np.testing.assert_array_equal(body["score"], expected)
    assert body["threshold"] == model.offset_
    status, body = server.request("POST", "/v1/models/given/score", json.dumps(records).encode())
    assert status == 400 and '"labels": [...] beside "records"' in body["error"], body
    status, body = server.request("POST", "/v1/models/cancer/score", json.dumps(
        {"records": records[:1], "labels": ["benign"]}).encode())
    assert status == 400 and "takes none" in body["error"], body
    for labels in ({"a": 1}, [["benign"]] * 40):     # were 'unhashable type' and accepted
        status, body = server.request("POST", "/v1/models/given/score", json.dumps(
            {"records": records, "labels": labels}).encode())
        assert status == 400 and '"labels" must be one label' in body["error"], body


def test_the_exported_repository_parses_with_tritons_own_model_config(repo):
    for name in ("cancer", "table", "given"):
        config = text_format.Parse((repo / name / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 4096 and config.HasField("dynamic_batching")
    table = text_format.Parse((repo / "table" / "config.pbtxt").read_text(),
                              model_config_pb2.ModelConfig())
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type)) for i in table.input] == [
        ("numbers", "TYPE_FP32"), ("codes", "TYPE_INT64"), ("observed", "TYPE_BOOL")]
    given = text_format.Parse((repo / "given" / "config.pbtxt").read_text(),
                              model_config_pb2.ModelConfig())
    label = given.input[1]   # Triton's clients send it as (n, 1); it reaches the graph as (n,)
    assert (label.name, list(label.dims), list(label.reshape.shape)) == ("label", [1], [])


def test_concurrent_requests_share_batches_without_changing_results(server, repo, cancer):
    """With a 300 ms queue delay, 12 concurrent requests of 1..12 rows are coalesced into
    fewer onnxruntime calls; every request still gets exactly its solo scores."""
    X = cancer[0].to_numpy(np.float32)
    model = OnnxModel(repo / "cancer_batched" / "1" / "model.onnx")
    before = _batch_count(server, "cancer_batched")
    pieces = [X[10 * i:10 * i + i + 1] for i in range(12)]
    results = [None] * len(pieces)

    def send(i):
        client = tritonclient_http.InferenceServerClient(server.url)
        results[i] = _infer(client, "cancer_batched", pieces[i], binary=True)
        client.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(pieces))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batches = _batch_count(server, "cancer_batched") - before
    assert batches < len(pieces), f"{batches} batches for {len(pieces)} requests"
    for piece, scores in zip(pieces, results):
        np.testing.assert_array_equal(scores.astype(np.float64), model.score_samples(piece))


def _batch_count(server, model: str) -> float:
    _, text = server.request("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(f'vaeanom_batch_rows_count{{model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------- errors
def _json_body(inputs, **extra) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


ROW = {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.0] * 30}
BAD_REQUESTS = {
    "wrong shape": ("/v2/models/cancer/infer", _json_body([{**ROW, "shape": [1, 29],
                                                            "data": [1.0] * 29}]),
                    {}, 400, "shape"),
    "wrong datatype": ("/v2/models/cancer/infer", _json_body([{**ROW, "datatype": "INT64",
                                                               "data": [1] * 30}]),
                       {}, 400, "must be float32"),
    "unknown input name": ("/v2/models/cancer/infer", _json_body([{**ROW, "name": "x"}]),
                           {}, 400, "unknown input"),
    "NaN": ("/v2/models/cancer/infer",
            b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ['
            + b"NaN, " * 29 + b"1.0]}]}", {}, 400, "NaN"),
    "Infinity": ("/v2/models/cancer/infer",         # tritonclient writes it; the model refuses
                 b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ['
                 + b"1.0, " * 29 + b"-Infinity]}]}", {}, 400, "infinit"),
    "unknown model": ("/v2/models/nope/infer", _json_body([ROW]), {}, 404, "unknown model"),
    "unknown version": ("/v2/models/cancer/versions/7/infer", _json_body([ROW]), {}, 404,
                        "no version '7'"),
    "malformed JSON": ("/v2/models/cancer/infer", b'{"inputs": [', {}, 400, "malformed JSON"),
    "binary length": ("/v2/models/cancer/infer",
                      _json_body([{k: v for k, v in ROW.items() if k != "data"}
                                  | {"parameters": {"binary_data_size": 120}}])
                      + b"\0" * 100, {"Inference-Header-Content-Length": "x"}, 400,
                      "must be an integer"),
    "binary too short": ("/v2/models/cancer/infer", None, {}, 400, "needs 120 bytes"),
    "too many rows": ("/v2/models/cancer/infer",
                      _json_body([{**ROW, "shape": [4097, 30], "data": [1.0] * 30 * 4097}]),
                      {}, 400, "at most 4096"),
    "unknown output": ("/v2/models/cancer/infer",
                       _json_body([ROW], outputs=[{"name": "nope"}]), {}, 400,
                       "unknown output"),
    "unknown path": ("/v2/nothing/here", b"{}", {}, 404, "Not Found"),
    "deep nesting": ("/v2/models/cancer/infer", b"[" * 100_000, {}, 400, "malformed JSON"),
    "a 5000-digit number": ("/v2/models/cancer/infer",
                            _json_body([{**ROW, "shape": [1], "data": [0]}]).replace(
                                b"[0]", b"[" + b"1" * 5000 + b"]"), {}, 400, "malformed JSON"),
    "a number past float": ("/v2/models/cancer/infer",
                            _json_body([{**ROW, "shape": [1], "data": [10 ** 400]}]), {}, 400,
                            "too large"),
    "a number past FP32": ("/v2/models/cancer/infer",
                           _json_body([{**ROW, "data": [1e39] + [1.0] * 29}]), {}, 400,
                           "too large for FP32"),
    "datatype not a string": ("/v2/models/cancer/infer", _json_body([{**ROW, "datatype": []}]),
                              {}, 400, "datatype"),
    "huge zero-size shape": ("/v2/models/cancer/infer",
                             _json_body([{**ROW, "shape": [0, 10 ** 20], "data": []}]), {}, 400,
                             "shape"),
    "data not a list": ("/v2/models/cancer/infer", _json_body([{**ROW, "data": None}]), {}, 400,
                        "must be a list"),
    "binary_data not a bool": ("/v2/models/cancer/infer",
                               _json_body([ROW], outputs=[{"name": "score", "parameters":
                                                           {"binary_data": "false"}}]),
                               {}, 400, "true or false"),
    "parameters not an object": ("/v2/models/cancer/infer", _json_body([{**ROW,
                                                                       "parameters": 0}]),
                                 {}, 400, "parameters"),
    "brotli body": ("/v2/models/cancer/infer", _json_body([ROW]),
                    {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    "not gzip": ("/v2/models/cancer/infer", _json_body([ROW]),
                 {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    "gzip cut short": ("/v2/models/cancer/infer", gzip.compress(_json_body([ROW]))[:-12],
                       {"Content-Encoding": "gzip"}, 400, "cut short"),
    "gzip bomb": ("/v2/models/cancer/infer", gzip.compress(b" " * (65 * 2**20), 9),
                  {"Content-Encoding": "gzip"}, 413, "inflates to over"),
    "zero rows": ("/v2/models/cancer/infer",
                  _json_body([{**ROW, "shape": [0, 30], "data": []}]), {}, 400, "0 rows"),
    "unknown record column": ("/v1/models/table/score", b'[{"a": 1, "zzz": 2}]', {}, 400,
                              "unknown column"),
    "ragged data": ("/v2/models/cancer/infer", _json_body([{**ROW, "shape": [2, 30],
                                                             "data": [[1.0] * 30, [1.0]]}]),
                    {}, 400, "ragged list"),
    "text in a numbers record": ("/v1/models/digits/score", b'[{"x0": "a"}]', {}, 400,
                                 "column 'x0'"),
    "a record without a column": ("/v1/models/cancer/score", b'[{"mean radius": 12.0}]', {},
                                  400, "record 0 lacks 'mean texture'"),
}


def _binary_too_short() -> tuple[bytes, dict]:
    header = _json_body([{k: v for k, v in ROW.items() if k != "data"}
                         | {"parameters": {"binary_data_size": 120}}])
    return header + b"\0" * 100, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_every_bad_request_gets_a_named_4xx_and_the_server_lives_on(server, case):
    path, body, headers, status, message = BAD_REQUESTS[case]
    if case == "binary too short":
        body, headers = _binary_too_short()
    got, answer = server.request("POST", path, body, {"Content-Type": "application/json",
                                                      **headers})
    assert got == status and message in answer["error"], (got, answer)
    assert server.client.is_server_live() and server.client.is_server_ready()


def test_infer_paths_are_matched_like_the_routes_they_bypass(server):
    """InferFirst answers POST .../infer before Starlette: other methods, empty names and
    extra path segments must still get the router's answers."""
    assert _infer_path_params("/v2/models/cancer/infer") == {"name": "cancer"}
    assert _infer_path_params("/v2/models/cancer/versions/1/infer") == {
        "name": "cancer", "version": "1"}
    for path in ("/v2/models//infer", "/v2/models/a/b/infer", "/v2/models/a/infer/",
                 "/v1/models/a/infer", "/v2/models/a/versions//infer"):
        assert _infer_path_params(path) is None, path
    assert server.request("POST", "/v2/models/cancer/versions/1/infer",
                          _json_body([ROW]))[0] == 200
    assert server.request("GET", "/v2/models/cancer/infer")[0] == 405
    assert server.request("POST", "/v2/models/cancer/x/infer", _json_body([ROW]))[0] == 404
    for method, path in (("GET", "/v2/models/cancer/infer"), ("POST", "/v2/health/live")):
        request = urllib.request.Request(f"http://{server.url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 405              # RFC 9110 15.5.6: Allow must be there
        assert method not in refused.value.headers["Allow"] and refused.value.headers["Allow"]


@pytest.mark.parametrize("limit, flag", [
    ({"chunk_rows": 0}, "--chunk-rows"), ({"max_body_bytes": -1}, "--max-body-bytes"),
    ({"request_timeout_s": 0}, "--request-timeout"), ({"workers": 0}, "--workers"),
    ({"request_timeout_s": float("nan")}, "--request-timeout"),
    ({"graceful_timeout_s": -1.0}, "--graceful-timeout"),
    ({"intra_op_num_threads": 0}, "--threads"), ({"chunk_rows": 2.5}, "--chunk-rows"),
    ({"port": 70000}, "--port"), ({"port": 65536}, "--port"), ({"port": -1}, "--port")])
def test_serve_refuses_a_limit_that_would_refuse_every_request_before_starting(repo, limit,
                                                                                flag):
    from vaeanom.serving import serve

    with pytest.raises(ValueError, match=flag):
        serve(repo, **limit)


@pytest.mark.parametrize("policy, served", [
    ("", ["3"]),                                              # Triton's default: the latest
    ("version_policy: { latest: { num_versions: 2 } }", ["2", "3"]),
    ("version_policy: { all: { } }", ["1", "2", "3"]),
    ("version_policy: { specific: { versions: [1, 3] } }", ["1", "3"]),
])
def test_the_config_s_version_policy_chooses_the_versions_served(repo, tmp_path, policy,
                                                                 served):
    from vaeanom.serving import repository

    folder = tmp_path / "versions" / "cancer"
    shutil.copytree(repo / "cancer", folder)
    for version in ("2", "3"):
        shutil.copytree(folder / "1", folder / version)
    config = folder / "config.pbtxt"
    config.write_text(config.read_text() + policy + "\n")
    assert list(repository.load(folder.parent)["cancer"]) == served


def test_a_version_policy_is_read_as_triton_reads_it(repo, tmp_path, caplog):
    """A listed version without its folder is left out with a warning, a folder with a
    leading zero is no version, and a policy that leaves none is refused."""
    from vaeanom.serving import repository

    folder = tmp_path / "versions" / "cancer"
    shutil.copytree(repo / "cancer", folder)
    shutil.copytree(folder / "1", folder / "01")
    config, text = folder / "config.pbtxt", (folder / "config.pbtxt").read_text()
    config.write_text(text + "version_policy: { specific: { versions: [1, 2] } }\n")
    assert list(repository.load(folder.parent)["cancer"]) == ["1"]
    assert "names version(s) [2], which have no folder" in caplog.text
    for policy in ("specific: { }", "specific: { versions: [2] }", "latest: { num_versions: 0 }"):
        config.write_text(text + f"version_policy: {{ {policy} }}\n")
        with pytest.raises(ValueError, match="its version_policy leaves no version to serve"):
            repository.load(folder.parent)


def test_a_model_that_does_not_load_stops_serve_before_it_listens(repo, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(repo / "cancer", broken / "cancer")
    model = broken / "cancer" / "1" / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])                 # a truncated copy
    done = subprocess.run([*_vaeanom_command(), "serve", str(broken), "--port", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "model.onnx" in done.stderr, done.stderr


def test_a_body_over_the_limit_is_refused_with_413(repo):
    running = Server(repo, "--max-body-bytes", "1000")
    try:
        status, answer = running.request("POST", "/v2/models/cancer/infer",
                                         _json_body([ROW] * 10))
        assert status == 413 and "max-body-bytes" in answer["error"]
        status, _ = running.request("POST", "/v2/models/cancer/infer", _json_body([ROW]))
        assert status == 200
    finally:
        assert running.stop()


def test_tritonclient_sees_errors_as_exceptions_and_metrics_count_them(server):
    with pytest.raises(InferenceServerException, match="must be float32"):
        _infer(server.client, "cancer", np.zeros((1, 30), np.float64), True, datatype="FP64")
    _, text = server.request("GET", "/metrics")
    assert 'vaeanom_request_errors_total{endpoint="infer",model="cancer",status="400"}' in text
    assert "vaeanom_request_seconds_bucket" in text and "vaeanom_queue_seconds" in text
    # in flight: the scrape counts itself; the answered request is no longer there
    assert 'vaeanom_requests_in_flight{endpoint="metrics",model=""} 1.0' in text
    assert 'vaeanom_requests_in_flight{endpoint="infer",model="cancer"} 0.0' in text


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclients_request_compression_is_inflated(server, cancer, algorithm):
    """Triton takes gzip and deflate request bodies; tritonclient sends them on request."""
    X = cancer[0].to_numpy(np.float32)[:5]
    plain = _infer(server.client, "cancer", X, True)
    squeezed = _infer(server.client, "cancer", X, True, request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(squeezed, plain)


def test_a_gzip_body_of_several_members_is_read_whole_and_trailing_bytes_refused(server,
                                                                                  cancer):
    """RFC 1952 lets a gzip body hold members one after another; only the first was read,
    and bytes after the end of the data were dropped without a word."""
    import gzip
    import zlib

    X = cancer[0].to_numpy(np.float32)[:2]
    body = _json_body([{**ROW, "shape": list(X.shape), "data": X.ravel().tolist()}])
    gzipped = {"Content-Encoding": "gzip"}
    status, whole = server.request("POST", "/v2/models/cancer/infer", gzip.compress(body),
                                   gzipped)
    assert status == 200, whole
    half = len(body) // 2
    status, answer = server.request("POST", "/v2/models/cancer/infer",
                                    gzip.compress(body[:half]) + gzip.compress(body[half:]),
                                    gzipped)
    assert status == 200 and answer["outputs"] == whole["outputs"], answer
    for encoding, data in (("gzip", gzip.compress(body) + b"GARBAGE"),
                           ("deflate", zlib.compress(body) + b"GARBAGE")):
        status, answer = server.request("POST", "/v2/models/cancer/infer", data,
                                        {"Content-Encoding": encoding})
        assert status == 400, (encoding, answer)


def test_binary_data_output_applies_to_every_output_when_none_is_named(server, cancer):
    """Triton reads "outputs": [] as every output, and the request-level
    binary_data_output flag then covers each; they came back as JSON."""
    X = cancer[0].to_numpy(np.float32)[:2]
    body = json.loads(_json_body([{**ROW, "shape": list(X.shape), "data": X.ravel().tolist()}],
                                 outputs=[]))
    body["parameters"] = {"binary_data_output": True}
    request = urllib.request.Request(f"http://{server.url}/v2/models/cancer/infer",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        header_length = int(response.headers["Inference-Header-Content-Length"])
        header = json.loads(response.read()[:header_length])
    assert header["outputs"] and all("data" not in out and out["parameters"]["binary_data_size"]
                                     for out in header["outputs"]), header


def test_a_large_body_is_parsed_off_the_loop_to_the_same_scores(server, repo, cancer):
    """Over 1 MiB, parsing and checks run in a worker thread; the answers are the same,
    and "outputs": [] asks for every output, as Triton reads it."""
    X = np.tile(cancer[0].to_numpy(np.float32), (8, 1))[:4096]
    body = _json_body([{**ROW, "shape": list(X.shape), "data": X.ravel().tolist()}],
                      outputs=[])
    assert len(body) > (1 << 20)
    status, answer = server.request("POST", "/v2/models/cancer/infer", body)
    assert status == 200, answer
    outputs = {out["name"]: out["data"] for out in answer["outputs"]}
    expected = OnnxModel(repo / "cancer" / "1" / "model.onnx").score_samples(X)
    assert set(outputs) == set(OnnxModel(repo / "cancer" / "1" / "model.onnx").output_names)
    np.testing.assert_array_equal(np.float32(outputs["score"]), expected)


def test_router_refusals_and_client_hang_ups_are_counted_but_not_as_faults(server):
    """A 404 from the router is counted (endpoint "unrouted"); a client that closes the
    connection mid-body is a 499, not a 500 and no traceback."""
    assert server.request("GET", "/v2/no/such/path")[0] == 404
    host, port = server.url.split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v2/models/cancer/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n{")
        time.sleep(0.2)
    deadline = time.time() + 60
    while time.time() < deadline:
        _, text = server.request("GET", "/metrics")
        if 'status="499"' in text:
            break
        time.sleep(0.1)
    assert ('vaeanom_request_errors_total{endpoint="unrouted",model="",status="404"}'
            in text)
    assert 'vaeanom_request_errors_total{endpoint="infer",model="cancer",status="499"}' in text
    assert 'status="500"' not in text
    assert "Traceback" not in server.log.read_text()


def test_worker_processes_log_like_the_parent(repo):
    """--workers 2: each worker sets up logging as the parent does (access lines, ready),
    and only a worker that has loaded its models takes requests: the first answer of
    ready is then true of every worker (a worker still loading answered 503 before)."""
    running = Server(repo, workers=2)
    try:
        statuses = [running.request("POST", "/v2/models/cancer/infer", _json_body([ROW]))[0]
                    for _ in range(8)]
        assert statuses == [200] * 8
    finally:
        assert running.stop()
    log = running.log.read_text()
    assert "vaeanom.serving INFO ready:" in log
    assert '"path": "/v2/models/cancer/infer", "status": 200' in log


def _in_flight(server, endpoint: str, model: str) -> float:
    _, text = server.request("GET", "/metrics")
    for line in text.splitlines():
        if line.startswith(f'vaeanom_requests_in_flight{{endpoint="{endpoint}",'
                           f'model="{model}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sigterm_finishes_the_request_in_flight_then_exits(repo, cancer):
    """The batched copy holds a request 300 ms in its queue: SIGTERM arrives meanwhile
    (once the in-flight gauge shows it there), the request is still answered, and the
    process exits cleanly."""
    running = Server(repo)
    X = cancer[0].to_numpy(np.float32)[:3]
    answer = {}

    def send():
        client = tritonclient_http.InferenceServerClient(running.url)
        answer["scores"] = _infer(client, "cancer_batched", X, binary=True)

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.time() + 30
    while (_in_flight(running, "infer", "cancer_batched") == 0 and "scores" not in answer
           and time.time() < deadline):
        time.sleep(0.01)
    running.process.send_signal(signal.SIGTERM)
    thread.join(timeout=30)
    assert running.exited_cleanly()
    assert answer["scores"].shape == (3,)
    with pytest.raises(Exception):
        tritonclient_http.InferenceServerClient(running.url).is_server_live()


# ----------------------------------------------------- protocol properties
ARRAYS = st.sampled_from(["FP32", "FP64", "INT64", "INT32", "UINT8", "BOOL", "FP16"]).flatmap(
    lambda datatype: st.tuples(st.just(datatype), hnp.arrays(
        triton_to_np_dtype(datatype) if datatype != "BOOL" else np.bool_,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
        elements=None if datatype[:2] != "FP" else {"allow_nan": False})))


@settings(max_examples=60)
@given(ARRAYS, st.booleans())
def test_requests_built_by_tritonclient_parse_to_the_same_arrays(case, binary):
    datatype, array = case
    tensor = tritonclient_http.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, header_length = tritonclient_http.InferenceServerClient.generate_request_body(
        [tensor])
    parsed = parse_infer(body, None if header_length is None else str(header_length))
    np.testing.assert_array_equal(parsed.inputs["x"], array)
    assert parsed.inputs["x"].dtype == array.dtype


def test_a_request_over_the_row_limit_is_refused_before_its_data_is_read():
    body = _json_body([{**ROW, "shape": [5000, 30], "data": [1.0]}])   # data never looked at
    with pytest.raises(ProtocolError, match="5000 rows; this model takes at most 4096"):
        parse_infer(body, None, max_rows=4096)
    with pytest.raises(ProtocolError, match="values for shape"):
        parse_infer(body, None)


@settings(max_examples=60)
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(-5, 300).map(str)))
def test_any_bytes_are_parsed_or_refused_with_a_protocol_error(body, header_length):
    try:
        parse_infer(body, header_length)
    except ProtocolError as err:
        assert err.status == 400 and str(err)


def test_workers_load_their_models_before_they_take_connections(repo):
    """load_before_listening (what --workers N sets): start-up ends once the models are
    loaded and warm, so uvicorn opens the shared socket to a ready worker only."""
    from starlette.testclient import TestClient

    from vaeanom.serving import Settings, create_app

    app = create_app(Settings(str(repo), load_before_listening=True))
    with TestClient(app) as client:
        assert app.app.state.vaeanom.ready
        assert client.get("/v2/health/ready").status_code == 200


def test_the_server_never_imports_torch(repo):
    """Loading, warming up and answering a request in the server's code: no torch."""
    code = (
        "import asyncio, sys\n"
        "from starlette.testclient import TestClient\n"
        "from vaeanom.serving import Settings, create_app\n"
        f"settings = Settings({str(repo)!r}, load_before_listening=True)\n"
        "with TestClient(create_app(settings)) as client:\n"
        "    assert client.get('/v2/health/ready').status_code == 200\n"
        "    body = {'inputs': [{'name': 'input', 'shape': [1, 30], 'datatype': 'FP32',\n"
        "                        'data': [1.0] * 30}]}\n"
        "    assert client.post('/v2/models/cancer/infer', json=body).status_code == 200\n"
        "    record = dict(zip(client.get('/v2/models/given').json()['parameters']\n"
        "                      ['feature_names'], [1.0] * 30))\n"
        "    labelled = {'records': [record], 'labels': 'benign'}\n"
        "    assert client.post('/v1/models/given/score', json=labelled).status_code == 200\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
