"""ONNX export and the torch-free OnnxModel: parity with torch, metadata, errors, Triton."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from vaeanom import OnnxModel, VAEDetector
from vaeanom import runtime
from vaeanom.export import read_metadata
from vaeanom.scoring import IMAGE_SCORE_KINDS, SCORE_KINDS

#: the issue's bar: every exported part within 1e-5 relative of torch in float32
RTOL = 1e-5
FIT = dict(epochs=15, latent_dim=4, n_score_samples=8, random_state=0)


def _fit(X, **params):
    return VAEDetector(**{**FIT, **params}).fit(X)


#: (training rows, all rows, model parameters) of each kind of data
def _rows_case(cancer):
    X, y = cancer
    return X[y == 1], X, dict(hidden_dims=(32, 16))


def _images_case(digit_images, backbone="conv"):
    X, y = digit_images
    return X[y == 0], X, dict(conv_channels=(8, 16), hidden_dims=(32, 16), backbone=backbone)


@pytest.fixture(scope="module")
def rows(cancer):
    """An MLP model on breast-cancer rows (a DataFrame, so feature names are kept)."""
    train, X, params = _rows_case(cancer)
    return _fit(train, **params), X


@pytest.fixture(scope="module")
def images(digit_images):
    """A conv model on 8x8 uint8 digit images."""
    train, X, params = _images_case(digit_images)
    return _fit(train, **params), X


@pytest.fixture(scope="module")
def exported(rows, images, tmp_path_factory):
    """Every part of both models, exported once: {(model, part): path}."""
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for name, (det, _) in {"rows": rows, "images": images}.items():
        for part in ("scorer", "encoder", "decoder"):
            paths[name, part] = det.export_onnx(folder / f"{name}-{part}.onnx", part)
    return paths


def _close(actual, expected, rtol=RTOL):
    """Relative agreement, with the scale of the whole array for entries near zero."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# ----------------------------------------------------------------- parity
@pytest.mark.parametrize("kind, data", [
    *[(kind, "rows") for kind in SCORE_KINDS if kind not in IMAGE_SCORE_KINDS],
    *[(kind, "images") for kind in SCORE_KINDS],
    ("elbo_complexity", "images-mlp"), ("auto", "images-mlp")])
def test_scorer_matches_torch_for_every_score_kind(kind, data, cancer, digit_images, tmp_path):
    if data == "rows":
        train, X, params = _rows_case(cancer)
    else:
        train, X, params = _images_case(digit_images, "auto" if data == "images-mlp" else "conv")
    det = _fit(train, score_kind=kind, **params)
    model = OnnxModel(det.export_onnx(tmp_path / "s.onnx"))
    if kind == "kl":  # sums of terms near 1 that cancel to ~1e-3 for unused latents: compare
        # at float32's absolute resolution of those terms
        np.testing.assert_allclose(model.score_samples(X), det.score_samples(X), rtol=RTOL,
                                   atol=1e-6)
    elif kind in ("elbo_kl", "elbo_kl_knn"):  # -ELBO / its training IQR: the ELBO's float32
        # error, in IQRs
        reference = det.score_reference_.astype(np.float64)
        elbo = det.score_frame(X)["elbo"].abs().max()
        np.testing.assert_allclose(model.score_samples(X), det.score_samples(X),
                                   atol=RTOL * (elbo / reference[0, 1] + 1.0))
    else:
        _close(model.score_samples(X), det.score_samples(X))
        np.testing.assert_array_equal(model.predict(X), det.predict(X))
    assert model.score_kind == det._resolved_score_kind() and model.offset_ == det.offset_


def test_export_formula_equals_the_reference_elbo(rows, images):
    import torch

    from vaeanom.scoring import LinearGaussianELBO, Scorer, inference_scorer

    det, X = rows
    x = det._preprocess(X)
    noise = torch.from_numpy(det.noise_)
    fast = inference_scorer(det.model_, noise, "elbo")
    assert isinstance(fast, LinearGaussianELBO)
    with torch.no_grad():
        _close(fast(x).numpy(), Scorer(det.model_, noise, "elbo")(x).numpy())
    reference = torch.from_numpy(det.score_reference_)
    vote = inference_scorer(det.model_, noise, "elbo_kl", reference=reference)
    assert isinstance(vote, LinearGaussianELBO)
    with torch.no_grad():
        np.testing.assert_allclose(vote(x).numpy(),
                                   Scorer(det.model_, noise, "elbo_kl", reference=reference)(x),
                                   atol=1e-4)
    neighbours = det._neighbours()
    vote3 = inference_scorer(det.model_, noise, "elbo_kl_knn", reference=reference,
                             neighbours=neighbours)
    assert isinstance(vote3, LinearGaussianELBO) and vote3.neighbours is neighbours
    with torch.no_grad():
        np.testing.assert_allclose(
            vote3(x).numpy(), Scorer(det.model_, noise, "elbo_kl_knn", reference=reference,
                                     neighbours=neighbours)(x), atol=1e-4)
    assert isinstance(inference_scorer(det.model_, noise, "iwae"), Scorer)
    assert isinstance(inference_scorer(images[0].model_, noise, "elbo"), Scorer)  # conv


def test_bare_inference_session_gives_score_samples(rows, exported):
    det, X = rows
    session = ort.InferenceSession(exported["rows", "scorer"], providers=["CPUExecutionProvider"])
    (score,) = session.run(None, {"input": X.to_numpy(np.float32)})
    _close(score, det.score_samples(X))


def test_encoder_and_decoder_match_torch(rows, images, exported):
    for name, (det, X) in {"rows": rows, "images": images}.items():
        encoder = OnnxModel(exported[name, "encoder"])
        out = encoder.run(X)
        _close(out["mean"], det.encode(X))
        _close(encoder.encode(X), det.encode(X))
        z = det.encode(X)
        _close(OnnxModel(exported[name, "decoder"]).decode(z), det.decode(z))
        # the dtypes the detector gives, so a concat or a dtype check does not tell them apart
        assert encoder.encode(X).dtype == det.encode(X).dtype == np.float64
        assert OnnxModel(exported[name, "decoder"]).decode(z).dtype == np.float64
    det, X = rows     # a frame of latents, as transform gives under set_output, is not X
    latents = pd.DataFrame(det.encode(X), columns=det.get_feature_names_out())
    _close(OnnxModel(exported["rows", "decoder"]).decode(latents), det.decode(latents))


@pytest.mark.parametrize("data", ["rows", "images"])
def test_an_explaining_scorer_gives_explain_and_the_same_scores(data, rows, images, exported,
                                                                tmp_path):
    det, X = {"rows": rows, "images": images}[data]
    model = OnnxModel(det.export_onnx(tmp_path / "explaining.onnx", explain=True))
    assert model.explains and not OnnxModel(exported[data, "scorer"]).explains
    expected = det.explain(X[:64])
    got = model.explain(X[:64])
    if data == "rows":
        assert list(got.columns) == list(expected.columns) and got.index.equals(X.index[:64])
        got, expected = got.to_numpy(), expected.to_numpy()
    assert got.shape == expected.shape and got.dtype == expected.dtype == np.float64
    _close(got, expected, rtol=1e-4)
    np.testing.assert_array_equal(model.score_samples(X[:64]),
                                  OnnxModel(exported[data, "scorer"]).score_samples(X[:64]))


def test_explanations_are_refused_where_there_are_none(rows, exported, tmp_path):
    det, X = rows
    with pytest.raises(ValueError, match="export the scorer with"):
        OnnxModel(exported["rows", "scorer"]).explain(X[:2])
    with pytest.raises(ValueError, match="explain=True adds explanations to the scorer"):
        det.export_onnx(tmp_path / "e.onnx", "encoder", explain=True)
    from vaeanom import VQVAEDetector
    vq = VQVAEDetector(epochs=1, random_state=0).fit(np.random.default_rng(0).random((64, 8, 8)))
    with pytest.raises(ValueError, match="needs a VAEDetector"):
        vq.export_onnx(tmp_path / "v.onnx", explain=True)


def test_uint8_graph_scales_pixels_itself(images, tmp_path):
    det, X = images
    path = det.export_onnx(tmp_path / "u8.onnx", input_dtype="uint8")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (score,) = session.run(None, {"input": X})
    _close(score, det.score_samples(X))
    with pytest.raises(ValueError, match="uint8"):
        OnnxModel(path).score_samples(X / 255.0)


def test_image_model_takes_float_and_flattened_pixels_like_the_detector(images, tmp_path):
    det, X = images
    model = OnnxModel(det.export_onnx(tmp_path / "f.onnx", input_dtype="float32"))
    _close(model.score_samples(X.reshape(len(X), -1)), det.score_samples(X))
    floats = X.astype(np.float32) / 255
    _close(model.score_samples(floats), det.score_samples(floats))


@pytest.mark.parametrize("backbone", ["conv", "mlp"])
def test_default_export_of_a_uint8_model_takes_the_users_own_array(backbone, digit_images,
                                                                   tmp_path):
    """input_dtype="auto": a bare session fed the uint8 images gives score_samples."""
    train, X, params = _images_case(digit_images, backbone)
    det = _fit(train, **params)
    path = det.export_onnx(tmp_path / "auto.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    (score,) = session.run(None, {"input": X})
    expected = det.score_samples(X)
    np.testing.assert_allclose(score, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_scores_do_not_depend_on_batch_size(rows, exported):
    _, X = rows
    full = OnnxModel(exported["rows", "scorer"]).score_samples(X)
    small = OnnxModel(exported["rows", "scorer"], batch_size=7).score_samples(X)
    _close(small, full, rtol=1e-6)


def test_fp16_export_stays_close(images, tmp_path):
    det, X = images
    model = OnnxModel(det.export_onnx(tmp_path / "h.onnx", fp16=True))
    assert model.metadata["precision"] == "float16"
    _close(model.score_samples(X), det.score_samples(X), rtol=1e-2)


def test_fp16_rows_stay_close_in_the_scores_own_units(rows, tmp_path):
    """The rows' vote sits near 0, so its drift is measured against the spread of the
    scores (benchmarks/fp16_drift.py: a median 3e-4 IQR on breast_cancer)."""
    det, X = rows
    model = OnnxModel(det.export_onnx(tmp_path / "h.onnx", fp16=True))
    scores, half = det.score_samples(X), model.score_samples(X)
    q1, q3 = np.percentile(scores, [25, 75])
    assert np.abs(half - scores).max() / (q3 - q1) < 0.05
    np.testing.assert_array_equal(model.predict(X), det.predict(X))


# ------------------------------------------------------------ the file
def test_file_is_self_contained_checked_and_has_dynamic_batch(rows, exported):
    path = exported["rows", "scorer"]
    assert [p.name for p in path.parent.iterdir() if not p.suffix == ".onnx"] == []
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 30
    assert not any(node.op_type.startswith("Random") for node in proto.graph.node)


def test_metadata_describes_the_detector(rows, exported):
    det, X = rows
    meta = read_metadata(exported["rows", "scorer"])
    assert meta["estimator"] == "VAEDetector" and meta["part"] == "scorer"
    assert meta["feature_names"] == list(X.columns)
    assert meta["params"]["hidden_dims"] == [32, 16]
    assert meta["offset"] == det.offset_ and meta["input_shape"] == [30]


# ------------------------------------------------------------- no torch
def test_runtime_scores_without_importing_torch(rows, exported, tmp_path):
    _, X = rows
    np.save(tmp_path / "x.npy", X.to_numpy())
    code = (f"import sys, numpy as np, vaeanom\n"
            f"s = vaeanom.OnnxModel({str(exported['rows', 'scorer'])!r}).score_samples("
            f"np.load({str(tmp_path / 'x.npy')!r}))\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print(len(s))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(len(X))
    assert result.stderr == ""  # no onnxruntime CUDA load error on a machine without a GPU


def test_default_providers_use_cuda_only_when_a_gpu_answers(monkeypatch):
    if runtime.cuda_device_count() == 0:
        assert runtime.default_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: None, raising=False)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert runtime.default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: 0)
    assert runtime.default_providers() == ["CPUExecutionProvider"]


def test_explicit_providers_and_threads_are_used(exported):
    model = OnnxModel(exported["rows", "scorer"], providers=["CPUExecutionProvider"],
                      intra_op_num_threads=1)
    assert model.providers == ["CPUExecutionProvider"]


# ----------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, message", [
    (lambda X: X.to_numpy()[:, :5], "30 features"),
    (lambda X: X.to_numpy()[:0], "0 rows"),
    (lambda X: X.to_numpy()[0], "2-D"),
    (lambda X: np.where(np.eye(len(X), 30, dtype=bool), np.nan, X.to_numpy()), "NaN"),
    (lambda X: X.to_numpy().astype(str), "numeric"),
    (lambda X: X.iloc[:, ::-1], "another order"),
    (lambda X: X.rename(columns={X.columns[0]: "age"}), "missing"),
])
def test_bad_input_is_named(bad, message, rows, exported):
    _, X = rows
    with pytest.raises(ValueError, match=message):
        OnnxModel(exported["rows", "scorer"]).score_samples(bad(X))


def test_image_shape_mistakes_are_named_with_their_fix(images, exported):
    """One image without its batch axis, and channels-last RGB, get the fix, not only
    the shapes; a fractional batch_size is refused, not truncated."""
    _, X = images
    model = OnnxModel(exported["images", "scorer"])
    with pytest.raises(ValueError, match=r"one image .*pass X\[None\]"):
        model.score_samples(X[0])
    assert model.score_samples(X[:1]).shape == (1,)
    holed = X[:2].astype(np.float32) / 255
    holed[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="every pixel a finite number"):   # not "impute rows"
        model.score_samples(holed)
    with pytest.raises(ValueError, match="Latents must be finite"):
        decoder = OnnxModel(exported["images", "decoder"])
        decoder.decode(np.full((1, *decoder.input_shape), np.nan))
    with pytest.raises(TypeError, match="batch_size"):
        OnnxModel(exported["images", "scorer"], batch_size=1.5)


def test_channels_last_images_get_the_transpose(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8)
    det = VAEDetector(hidden_dims=(8,), latent_dim=2, epochs=1, random_state=0).fit(rgb)
    model = OnnxModel(det.export_onnx(tmp_path / "rgb.onnx"))
    with pytest.raises(ValueError, match=r"channels-last: pass X.transpose\(0, 3, 1, 2\)"):
        model.score_samples(rgb[:2].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("add_axis, fix", [(lambda X: X[:, None], lambda X: X[:, 0]),
                                           (lambda X: X[..., None], lambda X: X[..., 0])])
def test_a_channel_axis_the_model_lacks_gets_its_fix(tmp_path, add_axis, fix):
    """A model fitted on (n, H, W) given (n, 1, H, W) or (n, H, W, 1): the estimator and
    OnnxModel both name the fix (channels-last advice would lead to a second refusal),
    and the fixed input scores as the original."""
    gray = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    det = VAEDetector(hidden_dims=(8,), latent_dim=2, epochs=1, random_state=0).fit(gray)
    model = OnnxModel(det.export_onnx(tmp_path / "gray.onnx"))
    wrong = add_axis(gray[:3])
    fix_text = r"X\[:, 0\]" if wrong.shape[1] == 1 else r"X\[\.\.\., 0\]"
    for scorer in (det, model):
        with pytest.raises(ValueError, match="without a channel axis: pass " + fix_text):
            scorer.score_samples(wrong)
        np.testing.assert_array_equal(scorer.score_samples(fix(wrong)),
                                      scorer.score_samples(gray[:3]))


def test_wrong_part_and_wrong_latent_width_are_named(exported):
    with pytest.raises(ValueError, match="part='encoder'"):
        OnnxModel(exported["rows", "scorer"]).encode(np.zeros((2, 30)))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        OnnxModel(exported["rows", "decoder"]).decode(np.zeros((2, 3)))


def test_files_that_are_not_vaeanom_models_are_refused(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        OnnxModel(junk)
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)],
                                     ir_version=8), foreign)
    with pytest.raises(ValueError, match="not exported by vaeanom"):
        OnnxModel(foreign)


def test_newer_format_versions_are_refused(exported, tmp_path):
    proto = onnx.load(exported["rows", "scorer"])
    meta = read_metadata(proto)
    meta["format_version"] = 99
    onnx.helper.set_model_props(proto, {"vaeanom": json.dumps(meta)})
    onnx.save(proto, tmp_path / "future.onnx")
    with pytest.raises(ValueError, match="Upgrade vaeanom"):
        OnnxModel(tmp_path / "future.onnx")


def test_failed_export_keeps_the_old_file(rows, tmp_path, monkeypatch):
    """Bad arguments are refused before anything is written, and a write that fails half
    way (the disk fills after the bytes landed in the temporary file) leaves the old
    file as it was and no temporary file behind."""
    from vaeanom import export, fileio

    det, _ = rows
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="part"):
        det.export_onnx(path, part="everything")
    with pytest.raises(ValueError, match="image models"):
        det.export_onnx(path, input_dtype="uint8")
    written = []

    def write_then_fail(target, write):
        def half_write(tmp):
            write(tmp)
            written.append(tmp)
            raise OSError("disk full")
        fileio.atomic_write(target, half_write)

    monkeypatch.setattr(export, "atomic_write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        det.export_onnx(path)
    assert len(written) == 1 and written[0] != str(path)  # the export did reach its write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]


# ----------------------------------------------------------------- Triton
@pytest.mark.parametrize("name", ["", ".", "..", "../outside", "a/b", 'a"b', "a b", 7])
def test_a_triton_name_that_is_not_one_plain_folder_is_refused(images, tmp_path, name):
    """"" wrote into the repository's root, "../x" outside it, 'a"b' a config Triton
    cannot parse; all before any file is written."""
    det, _ = images
    with pytest.raises(ValueError, match="Triton model name"):
        det.export_triton(tmp_path / "repo", name)
    assert not (tmp_path / "repo").exists() and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("option, match", [
    ({"version": -1}, "version must be a non-negative int"),
    ({"version": "abc"}, "version must be a non-negative int"),
    ({"version": True}, "version must be a non-negative int"),
    ({"version": 0}, "version must be >= 1"),
    ({"max_batch_size": 2.5}, "max_batch_size must be a non-negative int"),
    ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
])
def test_triton_options_triton_cannot_read_are_refused_before_writing(images, tmp_path,
                                                                      option, match):
    """Version folder '-1' or 'abc', or 'max_batch_size: 2.5', were written after a whole
    export, for a repository neither Triton nor vaeanom serve then loads."""
    det, _ = images
    with pytest.raises((TypeError, ValueError), match=match):
        det.export_triton(tmp_path / "repo", "m", **option)
    assert not (tmp_path / "repo").exists()


def test_a_triton_config_path_that_is_a_folder_is_refused_before_the_model(images, tmp_path):
    det, _ = images
    (tmp_path / "repo" / "m" / "config.pbtxt").mkdir(parents=True)
    with pytest.raises(ValueError, match="is a folder"):
        det.export_triton(tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m" / "1").exists()     # no model without its config
    with pytest.raises(FileNotFoundError, match="is a folder, not an ONNX file"):
        OnnxModel(tmp_path / "repo" / "m")


def test_triton_repository_layout(images, tmp_path):
    det, X = images
    folder = det.export_triton(tmp_path / "repo", "digits", max_batch_size=256,
                               input_dtype="uint8")
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "digits"' in config and 'platform: "onnxruntime_onnx"' in config
    assert "max_batch_size: 256" in config and "dynamic_batching" in config
    assert "TYPE_UINT8" in config and "dims: [ 8, 8 ]" in config
    assert 'name: "score"' in config and "reshape: { shape: [ ] }" in config
    _close(OnnxModel(folder / "1" / "model.onnx").score_samples(X), det.score_samples(X))
