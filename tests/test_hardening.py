"""Hardening: silent inliers, unit traps, untrusted files, argument checks, threads.

Each test is one case from the hardening issue, reproduced on real (small)
models fitted to embedded data.
"""

import json
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vaeanom import OnnxModel, VAEDetector, VQVAEDetector, digest
from vaeanom.checks import are_bytes, is_outlier, outlier_labels
from vaeanom.fileio import atomic_write

SMALL = dict(hidden_dims=(8,), latent_dim=2, epochs=3, random_state=0)


@pytest.fixture(scope="module")
def cancer_model(cancer):
    X, _ = cancer
    return VAEDetector(**SMALL).fit(X), X


@pytest.fixture(scope="module")
def cancer_onnx(cancer_model, tmp_path_factory):
    det, _ = cancer_model
    folder = tmp_path_factory.mktemp("onnx")
    return det.export_onnx(folder / "s.onnx"), det.export_onnx(folder / "h.onnx", fp16=True)


@pytest.fixture(scope="module")
def uint8_images(digit_images):
    X, _ = digit_images
    return VAEDetector(**SMALL).fit(X), X


# ------------------------------------------------------- silent inliers
@pytest.mark.parametrize("value", [1e300, -1e300, 1e39])
def test_a_huge_finite_value_is_refused_with_its_column(cancer_model, cancer_onnx, value):
    det, X = cancer_model
    rows = X.iloc[:3].copy()
    rows.iloc[1, 3] = value
    column = rows.columns[3]
    with pytest.raises(ValueError, match=f"too large.*{column}.*missing"):
        det.score_samples(rows)
    with pytest.raises(ValueError, match=f"too large.*{column}"):
        det.predict(rows)
    with pytest.raises(ValueError, match=f"too large.*{column}"):
        OnnxModel(cancer_onnx[0]).predict(rows)


def test_a_huge_value_in_the_training_table_is_refused(cancer):
    X, _ = cancer
    X = X.copy()
    X.iloc[0, 0] = 1e300
    with pytest.raises(ValueError, match=r"too large to standardise"):
        VAEDetector(**SMALL).fit(X)


@pytest.mark.parametrize("value", [5.0, 1234.56, 98765.4321, -0.1])
def test_a_constant_column_gets_scale_1_whatever_its_value(value):
    """The mean of equal floats can be an ulp off them; that ulp must not become the
    column's spread (it made a change in the 5th digit of 1234.56 score -1e20)."""
    rows = np.random.default_rng(0).normal(size=(40, 3))
    rows[:, 1] = value
    det = VAEDetector(**SMALL).fit(rows)
    assert det.center_[1] == value and det.scale_[1] == 1.0
    nudged = rows[:5].copy()
    nudged[:, 1] += 0.01
    np.testing.assert_allclose(det.score_samples(nudged), det.score_samples(rows[:5]),
                               atol=0.1)


def test_a_score_that_cannot_be_computed_is_an_outlier(cancer_model, monkeypatch):
    det, X = cancer_model
    scores = det.score_samples(X.iloc[:4])
    scores[[1, 2]] = [np.nan, np.inf]
    monkeypatch.setattr(type(det), "_score_model_units", lambda self, x: scores)
    assert np.array_equal(det.score_samples(X.iloc[:4])[[1, 2]], [-np.inf, -np.inf])
    assert list(det.predict(X.iloc[:4])[[1, 2]]) == [-1, -1]
    assert np.all(det.decision_function(X.iloc[:4])[[1, 2]] == -np.inf)


def test_the_outlier_rule_puts_nan_on_the_outlier_side():
    scores = np.array([0.5, -0.5, np.nan, np.inf, -np.inf])
    assert list(outlier_labels(scores, 0.0)) == [1, -1, -1, 1, -1]
    assert list(is_outlier(scores, 0.0)) == [False, True, True, False, True]


def test_fp16_export_refuses_what_float16_cannot_hold(cancer_model, cancer_onnx):
    det, X = cancer_model
    rows = X.iloc[:2].copy()
    rows.iloc[0, 5] = det.center_[5] + 70000 * det.scale_[5]  # fine in float32, not in fp16
    assert np.isfinite(det.score_samples(rows)).all()
    np.testing.assert_allclose(OnnxModel(cancer_onnx[0]).score_samples(rows),
                               det.score_samples(rows), rtol=1e-4)
    with pytest.raises(ValueError, match="too large"):
        OnnxModel(cancer_onnx[1]).score_samples(rows)
    session = ort.InferenceSession(cancer_onnx[1], providers=["CPUExecutionProvider"])
    (score,) = session.run(None, {"input": rows.to_numpy(np.float32)})
    assert not np.isnan(score).any() and score[0] < det.offset_  # a bare session: an outlier


def test_float_pixels_outside_the_unit_range_are_refused(uint8_images, tmp_path):
    det, X = uint8_images
    as_floats = X[:5].astype(np.float64)                 # the same pixels, 0..255 as floats
    with pytest.raises(ValueError, match="divide float pixels by 255"):
        det.score_samples(as_floats)
    with pytest.raises(ValueError, match="divide float pixels by 255"):
        VAEDetector(**SMALL).fit(X.astype(np.float32))
    model = OnnxModel(det.export_onnx(tmp_path / "f.onnx", input_dtype="float32"))
    with pytest.raises(ValueError, match="divide float pixels by 255"):
        model.score_samples(as_floats)
    expected = det.score_samples(X[:5])
    np.testing.assert_allclose(det.score_samples(as_floats / 255), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def test_text_columns_are_named_with_the_fix(cancer):
    """VQ-VAE rows take numbers only; a numeric VAE model is given text it never saw."""
    X, _ = cancer
    X = X.iloc[:20].copy()
    det = VAEDetector(**SMALL).fit(X)
    X["grade"] = ["a", "b"] * 10
    with pytest.raises(ValueError, match=r"non-numeric column.*'grade'.*get_dummies"):
        VQVAEDetector(epochs=1).fit(X)
    with pytest.raises(ValueError, match=r"'grade'.*fitted on numbers only.*refit"):
        det.score_samples(X.drop(columns=X.columns[0]))


@pytest.mark.parametrize("params, who", [
    ({"conditional": True}, "A VAEDetector with conditional=True"),
    ({"latent_dim": (4, 2)}, r"A hierarchical VAEDetector \(a tuple latent_dim\)"),
])
def test_families_without_the_table_model_say_which_setting_refuses_tables(cancer, params, who):
    """Not "VAEDetector models them as categories" from a VAEDetector: the setting that
    keeps it from the table model, and the setting that gets it."""
    X, _ = cancer
    X = X.iloc[:40].copy()
    labels = np.arange(40) % 2 if params.get("conditional") else None
    text, holes = X.assign(grade=["a", "b"] * 20), X.copy()
    holes.iloc[0, 0] = np.nan
    for data, said in ((text, "non-numeric column.*takes numbers only"),
                       (holes, r"contains NaN \(missing values\)")):
        with pytest.raises(ValueError, match=f"{said}.*conditional=False\\) with an int latent_dim"):
            VAEDetector(**params, epochs=1).fit(data, labels)
        with pytest.raises(ValueError, match=who):
            VAEDetector(**params, epochs=1).fit(data, labels)


# ------------------------------------------------------ argument checks
@pytest.mark.parametrize("make", ["vae", "vq"])
def test_sample_takes_a_non_negative_int(make, cancer_model):
    det, X = cancer_model
    if make == "vq":
        det = VQVAEDetector(codebook_size=8, code_dim=4, hidden_dims=(8,), epochs=2,
                            random_state=0).fit(X)
    assert det.sample(0).shape == (0, X.shape[1])
    assert det.sample(np.int64(3), random_state=0).shape == (3, X.shape[1])
    with pytest.raises(ValueError, match="non-negative int"):
        det.sample(-1)
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match="non-negative int"):
            det.sample(bad)


# ------------------------------------------------------ untrusted files
def _flip_each_byte(data: bytes):
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0xFF
        yield i, bytes(flipped)


def test_every_flipped_byte_of_a_model_file_is_detected(cancer, tmp_path):
    X, _ = cancer
    det = VAEDetector(hidden_dims=(2,), latent_dim=1, epochs=1, random_state=0).fit(X.iloc[:, :3])
    path = tmp_path / "m.safetensors"
    det.save(path)
    data = path.read_bytes()
    target = tmp_path / "f.safetensors"
    undetected = []
    for i, flipped in _flip_each_byte(data):
        target.write_bytes(flipped)
        try:
            VAEDetector.load(target)
            undetected.append(i)
        except ValueError:
            pass
    assert undetected == [] and len(data) > 1000


def test_every_flipped_byte_of_an_onnx_file_is_detected(cancer, tmp_path):
    X, _ = cancer
    det = VAEDetector(hidden_dims=(2,), latent_dim=1, epochs=1, random_state=0).fit(X.iloc[:, :3])
    data = det.export_onnx(tmp_path / "m.onnx").read_bytes()
    target = tmp_path / "f.onnx"
    undetected = []
    for i, flipped in _flip_each_byte(data):
        target.write_bytes(flipped)
        try:
            OnnxModel(target)
            undetected.append(i)
        except ValueError:
            pass
    assert undetected == [] and len(data) > 1000


def _reseal(path, out, *, params=None, fitted=None, drop=()):
    """Rewrite a model file with edited JSON and a valid seal, as an attacker can."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    if params is not None:
        metadata["params"] = json.dumps({**json.loads(metadata["params"]), **params})
    if fitted is not None:
        metadata["fitted"] = json.dumps({**json.loads(metadata["fitted"]), **fitted})
    for key in drop:
        metadata.pop(key)
    metadata["sha256"] = digest.PLACEHOLDER.decode()
    out.write_bytes(digest.seal(save(tensors, metadata=metadata), b'"sha256":"'))
    return out


@pytest.mark.parametrize("edit, message", [
    (dict(params={"hidden_dims": [10**9]}), "does not fit the architecture|needs"),
    (dict(params={"latent_dim": -3}), "invalid parameter.*latent_dim"),
    (dict(params={"no_such_param": 1}), "does not have.*no_such_param"),
    (dict(fitted={"_chunk_rows": 10**9}), "unknown fitted names.*_chunk_rows"),
    (dict(fitted={"__dict__": {}}), "unknown fitted names.*__dict__"),
    (dict(fitted={"input_shape_": [10**9]}), "input_shape_"),
    (dict(fitted={"offset_": "NaN"}), "offset_"),
    (dict(drop=("estimator",)), "lacks estimator"),
])
def test_crafted_model_files_fail_fast_with_a_clear_error(cancer_model, tmp_path, edit, message):
    det, _ = cancer_model
    det.save(tmp_path / "m.safetensors")
    crafted = _reseal(tmp_path / "m.safetensors", tmp_path / "c.safetensors", **edit)
    with pytest.raises(ValueError, match=message):
        VAEDetector.load(crafted)


def test_a_crafted_huge_architecture_allocates_nothing(cancer_model, tmp_path):
    """hidden_dims=[10**9] (gigabytes of weights) is refused before any weight is made."""
    det, _ = cancer_model
    det.save(tmp_path / "m.safetensors")
    crafted = _reseal(tmp_path / "m.safetensors", tmp_path / "c.safetensors",
                      params={"hidden_dims": [10**9, 10**9]})
    script = (
        "import resource, sys\nfrom vaeanom import VAEDetector\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"try:\n    VAEDetector.load({str(crafted)!r})\nexcept ValueError as err:\n"
        "    print('refused', err)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("refused"), out.stderr[-2000:]
    assert int(lines[-1]) < 8, f"peak memory grew by {lines[-1]} MiB"


def test_load_refuses_an_edit_that_keeps_the_old_seal(cancer_model, tmp_path):
    det, _ = cancer_model
    path = tmp_path / "m.safetensors"
    det.save(path)
    data = path.read_bytes()
    offset = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]["fitted"]
    edited = data.replace(b"offset_", b"offsetX", 1)
    assert edited != data and "offset_" in offset
    path.write_bytes(edited)
    with pytest.raises(ValueError, match="does not match its SHA-256"):
        VAEDetector.load(path)


def test_an_onnx_file_without_its_seal_is_refused(cancer_onnx, tmp_path):
    import onnx

    proto = onnx.load(cancer_onnx[0])
    kept = [p for p in proto.metadata_props if p.key != "vaeanom.sha256"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, tmp_path / "unsealed.onnx")
    with pytest.raises(ValueError, match="lost its SHA-256"):
        OnnxModel(tmp_path / "unsealed.onnx")


# ------------------------------------------------------- batch and threads
def test_onnx_scores_are_bit_identical_for_batches_of_1_7_and_512(cancer, tmp_path):
    X, _ = cancer
    X = X.to_numpy()
    det = VAEDetector(hidden_dims=(16,), latent_dim=3, epochs=3, random_state=0).fit(X)
    model = OnnxModel(det.export_onnx(tmp_path / "s.onnx"))
    full = model.score_samples(X[:512])
    ones = np.concatenate([model.score_samples(X[i:i + 1]) for i in range(64)])
    sevens = np.concatenate([model.score_samples(X[i:i + 7]) for i in range(0, 511, 7)])
    assert np.array_equal(ones, full[:64])
    assert np.array_equal(sevens, full[:len(sevens)])


def test_scoring_from_8_threads_gives_the_serial_results(cancer_model, cancer_onnx):
    det, X = cancer_model
    model = OnnxModel(cancer_onnx[0])
    chunks = [X.iloc[i::8] for i in range(8)]
    serial = [(det.score_samples(c), model.score_samples(c)) for c in chunks]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: (det.score_samples(c), model.score_samples(c)),
                                 chunks * 3))
    for (torch_scores, onnx_scores), expected in zip(threaded, serial * 3):
        assert np.array_equal(torch_scores, expected[0])
        assert np.array_equal(onnx_scores, expected[1])


def test_atomic_write_never_touches_the_umask(tmp_path, monkeypatch):
    def forbidden(*args):
        raise AssertionError("os.umask called: it races with other threads")

    mask = os.umask(0o027)
    os.umask(mask)
    monkeypatch.setattr(os, "umask", forbidden)
    done = []
    threads = [threading.Thread(target=lambda i=i: (atomic_write(
        tmp_path / f"f{i}", lambda tmp: open(tmp, "w").write("x")), done.append(i)))
        for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(done) == list(range(8))
    mode = stat.S_IMODE((tmp_path / "f0").stat().st_mode)
    assert mode == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{i}" for i in range(8)]


@pytest.mark.parametrize("under", ["afile/out.png", "afile/deeper/out.png"])
def test_a_file_where_a_folder_should_be_is_named(tmp_path, under):
    """mkdir said only "[Errno 17] File exists", of a path the user never typed."""
    from vaeanom.fileio import atomic_write_dir

    (tmp_path / "afile").write_text("mine")
    for write in (atomic_write, atomic_write_dir):
        with pytest.raises(NotADirectoryError, match=r"'.*afile' is not a folder"):
            write(tmp_path / under, lambda tmp: open(tmp, "w").write("x"))
    assert (tmp_path / "afile").read_text() == "mine"


def test_export_takes_no_private_hook_and_imports_nothing_from_estimators():
    """The one upward arrow of the layering (export.py -> estimators/) is gone."""
    import ast
    from pathlib import Path

    import vaeanom.export as export

    source = Path(export.__file__).read_text()
    imported = [n.module or "" for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if "estimators" in m]
    assert "detector._" not in source


def _score_in_child(path, rows, queue):
    queue.put(OnnxModel(path).score_samples(rows))


def test_a_server_that_forks_after_loading_keeps_working(cancer_model, cancer_onnx):
    """The default provider probe (NVML, not cuInit) leaves the process safe to fork."""
    import multiprocessing

    det, X = cancer_model
    model = OnnxModel(cancer_onnx[0])              # providers=None: the probe runs here
    rows = X.iloc[:10].to_numpy()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_score_in_child, args=(cancer_onnx[0], rows, queue))
    child.start()
    scores = queue.get(timeout=60)
    child.join(60)
    assert child.exitcode == 0
    assert np.array_equal(scores, model.score_samples(rows))


@settings(max_examples=200)
@given(st.one_of(
    hnp.arrays(st.sampled_from([np.float64, np.float32]), hnp.array_shapes(max_side=6),
               elements=st.one_of(st.integers(-3, 260).map(float), st.floats(-2.0, 300.0),
                                  st.sampled_from([np.nan, np.inf, 0.5, 255.0]))),
    hnp.arrays(st.sampled_from([np.int64, np.int16]), hnp.array_shapes(max_side=6),
               elements=st.integers(-3, 260))))
def test_are_bytes_holds_exactly_what_uint8_keeps(values):
    """The CLI's pixel CSVs and the server's pixel records share this predicate: true
    just when every value survives the cast to uint8 unchanged."""
    with np.errstate(invalid="ignore"):
        kept = (np.isfinite(values).all() and (values >= 0).all() and (values <= 255).all()
                and (values.astype(np.uint8).astype(values.dtype) == values).all())
    assert are_bytes(values) == bool(kept)
