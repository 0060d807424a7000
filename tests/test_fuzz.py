"""Fuzz test of the whole public surface (hypothesis, derandomized: a fixed seed).

Random shapes, dtypes (object, bool, float16, complex, text), NaN and infinities,
huge finite values, empty and 1-row inputs, wrong types, odd DataFrame columns,
crafted model files and ONNX files (random byte flips, and edits resealed with a
valid SHA-256 digest, as anyone can), crafted compressed blobs (byte flips, and
edited fields with a recomputed CRC) and garbage command lines go to every
public method of ``VAEDetector``, ``VQVAEDetector``, ``OnnxModel``,
``compress``/``decompress`` and the ``vaeanom`` command (in-process).

The contract checked on every call: it returns a valid, finite result (a score
may be -inf: a score that cannot be computed marks an outlier, and a
``score_frame`` row with a -inf score may hold non-finite terms), or it raises
a documented exception -- ValueError (CorruptBlobError, NotFittedError and
InvalidParameterError are ValueErrors), TypeError, FileNotFoundError, or fit's
TrainingDivergedError -- with a message that names the problem. Never a torch
or onnxruntime error passed through, an IndexError, KeyError, AttributeError,
UnboundLocalError, AssertionError, MemoryError, OverflowError,
ZeroDivisionError, struct.error, or a call that hangs. The CLI returns 0, or 1
with a one-line error for one of those exceptions (OSError allowed: it writes
files), or exits with argparse's status 2 (0 for --help).

Deliberate exceptions to "finite": ``OnnxModel.run`` gives the graph's raw
outputs (only its scores are checked); a VAE's decoded images are a Gaussian
mean, not clipped to [0, 1] (VQ-VAE images are); a file resealed with huge
finite weights may overflow the network (garbage in, garbage out), so only its
scores are checked. Each bug this fuzz found has a plain regression test at
the end of the file. Runs in about half a minute; ``VAEANOM_FUZZ_SCALE`` and
``VAEANOM_FUZZ_RANDOM`` (below) search deeper.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import struct
import tempfile
import traceback
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone

from vaeanom import OnnxModel, VAEDetector, VQVAEDetector, cli, compression, digest
from vaeanom.compression import compress, decompress, to_uint8
from vaeanom.compression import varint as _varint

from .blobs import v1_blob
from vaeanom.onnx_format import DIGEST_KEY, DIGEST_MARKER, METADATA_KEY
from vaeanom.training import TrainingDivergedError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")


#: a deeper local search: VAEANOM_FUZZ_SCALE=10 (10x the examples), VAEANOM_FUZZ_RANDOM=1 (seeds)
SCALE = float(os.environ.get("VAEANOM_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("VAEANOM_FUZZ_RANDOM", "") == "1"


def fuzz(max_examples: int):
    return settings(derandomize=not RANDOM, database=None, deadline=None,
                    max_examples=max(1, round(max_examples * SCALE)),
                    print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


# ================================================================= the contract
#: what a call may raise (NotFittedError, InvalidParameterError, CorruptBlobError are ValueErrors)
DOCUMENTED = (ValueError, TypeError, FileNotFoundError)
#: never, even where a class also derives from a documented one (numpy's AxisError is an IndexError)
FORBIDDEN = (AssertionError, MemoryError, OverflowError, ZeroDivisionError, LookupError,
             AttributeError, NameError, RuntimeError, NotImplementedError, struct.error,
             RecursionError)
#: messages that are torch's, onnxruntime's or numpy's internals, not a description of the problem
INTERNALS = re.compile("|".join([
    r"^Expected (all tensors|\d+D \(unbatched\)|\d+-dimensional input|object of scalar type|"
    r"input batch_size|tensor for argument)", r"^expected scalar type", r"mat1 and mat2",
    r"shape '\[", r"^Given groups", r"^Input type",
    r"size of tensor", r"^Sizes of tensors", r"^Trying to", r"^Calculated padded",
    r"can't convert np\.ndarray", r"At least one stride", r"^\[ONNXRuntimeError\]",
    r"^cannot reshape array", r"operands could not be broadcast", r"^index -?\d+ is out of bounds",
    r"Traceback \(most recent", r"^only integer scalar arrays", r"^unsupported operand type",
    r"not supported between instances of", r"object is not subscriptable",
    r"^'[A-Za-z_]+' object has no attribute", r"^string argument without an encoding",
    r"^cannot convert float (NaN|infinity) to integer"]))
#: packages whose own exceptions must not reach the user unexplained
FOREIGN = ("/torch/", "/onnxruntime/", "/constriction/")
#: a hang, not a slow call: a cold ONNX export on a loaded CI machine takes tens of seconds
CALL_SECONDS = 120


class Hang(BaseException):
    """A call ran past CALL_SECONDS (BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def time_limit(seconds: int = CALL_SECONDS):
    def expire(signum, frame):
        raise Hang(f"the call ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check_error(err: BaseException, what: str, allowed: tuple = DOCUMENTED) -> None:
    """Fail unless ``err`` is a documented exception whose message names the problem."""
    trace = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    frames = traceback.extract_tb(err.__traceback__)
    origin = frames[-1].filename if frames else ""
    message = str(err).strip()
    problem = None
    if not isinstance(err, allowed) or isinstance(err, FORBIDDEN):
        problem = f"raised {type(err).__module__}.{type(err).__name__}, not a documented exception"
    elif type(err).__module__.split(".")[0] in ("torch", "onnxruntime", "constriction"):
        problem = f"let {type(err).__module__}.{type(err).__name__} through"
    elif any(part in origin for part in FOREIGN):
        problem = f"let an error raised inside {origin} through"
    elif not message:
        problem = "raised an exception with an empty message"
    elif INTERNALS.search(message):
        problem = "raised an error whose message is a library's internals"
    if problem:
        raise AssertionError(f"{what} {problem}: {type(err).__name__}: {message[:500]}\n{trace}")


def attempt(fn, *args, what: str = "", allowed: tuple = DOCUMENTED, **kwargs):
    """``(fn(*args, **kwargs), None)``, or ``(None, err)`` for a documented error; else fails."""
    what = what or getattr(fn, "__qualname__", repr(fn))
    try:
        with time_limit():
            result = fn(*args, **kwargs)
        event("returned")
        return result, None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Hang as err:
        raise AssertionError(f"{what} hung: {err}") from None
    except BaseException as err:  # noqa: BLE001 -- judged here
        check_error(err, what, allowed)
        event(f"raised {type(err).__name__}: {re.sub(r'[^ ]*/tmp[^ ]*', '<path>', str(err))[:60]}")
        return None, err


# ---------------------------------------------------------------- results
def expected_rows(X) -> int | None:
    """How many rows a call on X must give back (None when X has no row count)."""
    if scipy.sparse.issparse(X):
        return X.shape[0]
    if isinstance(X, (str, bytes, dict)) or not hasattr(X, "__len__"):
        return None
    try:
        return X.shape[0] if hasattr(X, "shape") else len(X)
    except (TypeError, IndexError):
        return None


def check_numbers(value, n: int | None, what: str, *, scores: bool = False) -> np.ndarray:
    assert isinstance(value, np.ndarray), f"{what} returned {type(value).__name__}"
    assert value.dtype.kind in "biuf", f"{what} returned dtype {value.dtype}"
    if n is not None:
        assert value.ndim >= 1 and len(value) == n, f"{what}: {value.shape} for {n} rows"
    if scores:
        assert value.ndim == 1 and value.dtype.kind == "f", f"{what}: {value.dtype} {value.shape}"
        assert not np.isnan(value).any() and not np.isposinf(value).any(), \
            f"{what} returned NaN or +inf scores: {value}"
    else:
        assert np.isfinite(value).all(), f"{what} returned non-finite values: {value!r:.300}"
    return value


def check_labels(value, n, what):
    check_numbers(value, n, what)
    assert value.ndim == 1 and set(np.unique(value)) <= {-1, 1}, f"{what} returned {value}"


def check_frame(frame, n, what):
    assert isinstance(frame, pd.DataFrame), f"{what} returned {type(frame).__name__}"
    if n is not None:
        assert len(frame) == n, f"{what}: {len(frame)} rows for {n}"
    score = check_numbers(frame["score"].to_numpy(), None, what, scores=True)
    assert frame["is_outlier"].dtype == bool, f"{what}: is_outlier is {frame['is_outlier'].dtype}"
    named = [c for c in frame.columns if str(c).startswith("feature_")]
    for column in named:  # score_frame(explain=k): names of the model's features
        assert frame[column].map(lambda v: isinstance(v, str)).all(), f"{what}: {column}"
    others = frame.drop(columns=["score", "is_outlier", *named]).to_numpy(dtype=np.float64)
    scored = np.isfinite(score)
    assert np.isfinite(others[scored]).all(), \
        f"{what}: a row with a finite score has non-finite terms:\n{frame[scored]}"


def _holes(X, shape: tuple[int, int]) -> np.ndarray:
    """Where X's entries are missing, as an (n, features) mask (none for images)."""
    if isinstance(X, pd.DataFrame):
        return X.isna().to_numpy().reshape(shape)
    values = np.asarray(X)
    if values.dtype.kind != "f" or values.size != shape[0] * shape[1]:
        return np.zeros(shape, dtype=bool)
    return np.isnan(values).reshape(shape)


def check_output(name: str, value, n, owner, X=None) -> None:
    """Validate what ``owner.name(X)`` returned for an input of n rows."""
    what = f"{type(owner).__name__}.{name}"
    if name in ("score_samples", "decision_function"):
        check_numbers(value, n, what, scores=True)
        assert value.dtype == np.float64, f"{what} returned {value.dtype}"
    elif name == "predict" or name == "fit_predict":
        check_labels(value, n, what)
    elif name == "score_frame":
        check_frame(value, n, what)
    elif name == "explain":  # +inf (most unusual) only in rows that cannot be scored
        if isinstance(value, pd.DataFrame):
            assert list(value.columns) == [str(c) for c in owner.feature_names_in_]
            value = value.to_numpy()
        assert isinstance(value, np.ndarray) and value.dtype.kind == "f" and len(value) == n
        unscored = owner.score_samples(X) == -np.inf
        flat = value.reshape(len(value), -1)
        holes = _holes(X, flat.shape)          # a missing entry's contribution is NaN
        assert (np.isnan(flat) == holes).all(), f"{what}: NaN contributions are not the holes"
        assert np.isfinite(flat[~unscored][~holes[~unscored]]).all(), \
            f"{what}: non-finite contributions in a row with a finite score"
    elif name == "run":  # the graph's raw outputs: shapes and types; scores never NaN
        assert isinstance(value, dict) and value, f"{what} returned {value!r}"
        for key, array in value.items():
            assert isinstance(array, np.ndarray) and array.dtype.kind in "iuf" \
                and (n is None or len(array) == n), f"{what}[{key!r}]: {array!r:.200}"
            if key == "score":
                check_numbers(array, n, f"{what}[{key!r}]", scores=True)
    elif name in ("encode", "transform"):
        check_numbers(value, n, what)
        size = owner.metadata.get("codebook_size") if isinstance(owner, OnnxModel) else (
            owner._latent_range())
        if size is not None:
            assert value.dtype.kind in "iu" and value.min(initial=0) >= 0 \
                and value.max(initial=0) < size, f"{what} returned codes outside [0, {size})"
    elif name in ("decode", "inverse_transform", "reconstruct", "sample"):
        check_numbers(value, n, what)
        # VQ decoders clip pixels to [0, 1]; a VAE's Gaussian mean is not (module docstring)
        vq = (owner.metadata["estimator"] if isinstance(owner, OnnxModel)
              else type(owner).__name__) == "VQVAEDetector"
        images = owner.is_image if isinstance(owner, OnnxModel) else owner.is_image_
        if images and vq:
            assert value.min(initial=0) >= 0 and value.max(initial=1) <= 1, \
                f"{what} returned pixels outside [0, 1]"
    elif name == "compress":
        assert isinstance(value, bytes) and value[:1] in (bytes([compression.TAG_ONE]),
                                                     bytes([compression.TAG_MANY])), \
            f"{what} returned {value!r:.40}"
        images = owner.decompress(value)
        assert images.dtype == np.uint8 and len(images) == n
        np.testing.assert_array_equal(images, to_uint8(owner.reconstruct(X)))
    else:
        raise AssertionError(f"no check for {name}")


# ================================================================ the models
SMALL_VAE = dict(hidden_dims=(8,), latent_dim=2, epochs=2, n_score_samples=4, random_state=0)
SMALL_VQ = dict(codebook_size=16, code_dim=4, conv_channels=(4, 8), hidden_dims=(8,),
                n_codes=2, epochs=2, random_state=0)
X_METHODS = ("score_samples", "decision_function", "predict", "score_frame", "encode",
             "transform", "reconstruct")


class Files(dict):
    def __repr__(self) -> str:
        return f"<{len(self)} fixture entries>"


class Case(NamedTuple):
    det: Any
    data: np.ndarray          # valid inputs, rows or uint8 images
    latents: np.ndarray       # valid inputs of decode
    names: list | None        # the training DataFrame's columns
    path: Path                # the saved model

    def __repr__(self) -> str:
        return f"Case({self.path.stem})"


@pytest.fixture(scope="module")
def cases(cancer, digit_images, tmp_path_factory) -> dict[str, Case]:
    X, _ = cancer
    images = digit_images[0][:300]
    folder = tmp_path_factory.mktemp("fuzz-models")
    fitted = {"vae_rows": (VAEDetector(**SMALL_VAE).fit(X), X.to_numpy()[:60], list(X.columns)),
              "vae_images": (VAEDetector(**SMALL_VAE).fit(images), images[:60], None),
              "vq_images": (VQVAEDetector(**SMALL_VQ).fit(images), images[:60], None),
              "vq_rows": (VQVAEDetector(**SMALL_VQ).fit(X), X.to_numpy()[:60], list(X.columns))}
    out = Files()
    for key, (det, data, names) in fitted.items():
        det.save(folder / f"{key}.safetensors")
        frame = pd.DataFrame(data[:20], columns=names) if names else data[:20]
        out[key] = Case(det, data, det.encode(frame), names, folder / f"{key}.safetensors")
    return out


#: (model, part, export options) of every exported file the fuzz opens
EXPORTS = {"vae_rows-scorer": ("vae_rows", "scorer", {}),
           "vae_rows-scorer-fp16": ("vae_rows", "scorer", {"fp16": True}),
           "vae_rows-encoder": ("vae_rows", "encoder", {}),
           "vae_rows-decoder": ("vae_rows", "decoder", {}),
           "vae_images-scorer": ("vae_images", "scorer", {}),
           "vae_images-scorer-float": ("vae_images", "scorer", {"input_dtype": "float32"}),
           "vq_images-scorer": ("vq_images", "scorer", {}),
           "vq_images-encoder": ("vq_images", "encoder", {}),
           "vq_images-decoder": ("vq_images", "decoder", {}),
           "vq_rows-decoder": ("vq_rows", "decoder", {})}


@pytest.fixture(scope="module")
def onnx_files(cases, tmp_path_factory) -> dict[str, tuple[Path, OnnxModel, Case]]:
    folder = tmp_path_factory.mktemp("fuzz-onnx")
    out = {}
    for name, (key, part, options) in EXPORTS.items():
        path = cases[key].det.export_onnx(folder / f"{name}.onnx", part, **options)
        out[name] = (path, OnnxModel(path, intra_op_num_threads=1), cases[key])
    return Files(out)


# ================================================================ strategies
SPECIALS = (np.nan, np.inf, -np.inf, 1e300, -1e300, 3e38, -3e38, 1e30, 7e4, 1e-320, -0.0,
            255.0, 256.0, -1.0, 1.0 + 1e-7, 2.0 ** 63, 16.0, 1e15)
DTYPES = (None, None, None, None, None, "float32", "bool", "uint8", "int8", "int64", "uint64",
          "float16",
          "float32", "float64", "complex64", "complex128", "object", "U6")
SHAPES = ("keep", "keep", "keep", "flatten", "add_axis", "drop_axis", "drop_feature",
          "add_feature", "transpose", "row_1d", "scalar", "channels_last", "three_channels")
CONTAINERS = ("array", "array", "array", "array", "list", "frame", "frame", "series", "sparse")
LAYOUTS = ("plain", "plain", "plain", "reversed", "fortran", "readonly", "strided")
FRAME_EDITS = ("same", "same", "reorder", "int_names", "duplicate", "multiindex", "mixed_names",
               "object_column", "category_column", "string_column", "datetime_column",
               "bool_column", "nullable_na", "complex_column", "extra_column", "drop_column",
               "sparse_column", "bytes_names", "odd_index", "duplicate_index", "spike",
               "float32")
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.complex_numbers(),
    st.text(max_size=4), st.binary(max_size=4),
    st.lists(st.one_of(st.integers(-3, 300), st.floats(), st.text(max_size=2), st.none()),
             max_size=4),
    st.lists(st.lists(st.floats(-2, 2), max_size=3), max_size=4),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([object(), {1, 2}, range(3), np.float64, Ellipsis, slice(1), [[[]]], [[]],
                     np.empty((0, 0)), np.empty((3, 0)), np.zeros((2, 0, 8)), pd.DataFrame(),
                     pd.Series(dtype=float)]))
RANDOM_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.bool_, np.uint8, np.int64, np.float16, np.float32, np.float64,
                           np.complex128]),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if dtype == "object":
            return a.astype(object)
        if dtype.startswith("U"):
            return a.astype(dtype)
        return a.astype(dtype)


def _reshape(a: np.ndarray, how: str) -> np.ndarray:
    if how == "flatten":
        return a.reshape(len(a), int(np.prod(a.shape[1:])))
    if how == "add_axis":
        return a[:, None]
    if how == "drop_axis":
        return a.reshape(-1, *a.shape[2:]) if a.ndim >= 3 else a.ravel()
    if how == "drop_feature" and a.ndim >= 2:
        return a[..., :-1]
    if how == "add_feature" and a.ndim >= 2:
        return np.concatenate([a, a[..., :1]], axis=-1)
    if how == "transpose" and a.ndim >= 2:
        return a.T if a.ndim == 2 else np.swapaxes(a, 1, 2)
    if how == "row_1d":
        return a[0] if len(a) else a.ravel()
    if how == "scalar":
        return a.ravel()[0] if a.size else a.dtype.type(1)
    if how == "channels_last":
        return a[..., None]
    if how == "three_channels" and a.ndim >= 2:
        return np.stack([a] * 3, axis=1)
    return a


def _frame(a: np.ndarray, names, edit: str, draw):
    columns = names if names is not None and a.shape[1] == len(names) else [
        f"f{i}" for i in range(a.shape[1])]
    return _edit_frame(pd.DataFrame(a, columns=columns), edit, draw)


def _edit_frame(frame: pd.DataFrame, edit: str, draw) -> pd.DataFrame:
    frame = frame.copy()
    width = frame.shape[1]
    if width == 0 or edit == "same":
        return frame
    j = draw(st.integers(0, width - 1), label="column")
    n = len(frame)
    if edit == "reorder":
        return frame.iloc[:, ::-1]
    if edit == "int_names":
        frame.columns = range(width)
    elif edit == "duplicate":
        frame.columns = [frame.columns[0]] * width
    elif edit == "multiindex":
        frame.columns = pd.MultiIndex.from_tuples([(c, "x") for c in frame.columns])
    elif edit == "mixed_names":
        frame.columns = [c if i % 2 else i for i, c in enumerate(frame.columns)]
    elif edit == "bytes_names":
        frame.columns = [str(c).encode() for c in frame.columns]
    elif edit == "object_column":
        frame.isetitem(j, frame.iloc[:, j].astype(object))
    elif edit == "category_column":
        frame.isetitem(j, frame.iloc[:, j].astype("category"))
    elif edit == "string_column":
        frame.isetitem(j, frame.iloc[:, j].astype(str).astype("string"))
    elif edit == "datetime_column":
        frame.isetitem(j, pd.Timestamp("2024-01-01"))
    elif edit == "bool_column":
        frame.isetitem(j, np.arange(n) % 2 == 0)
    elif edit == "nullable_na":
        frame.isetitem(j, pd.array([pd.NA] + [1] * (n - 1), dtype="Int64")[:n])
    elif edit == "complex_column":
        frame.isetitem(j, frame.iloc[:, j].to_numpy() + 1j)
    elif edit == "extra_column" and not isinstance(frame.columns, pd.MultiIndex):
        frame["extra"] = 0.0
    elif edit == "drop_column":
        frame = frame.iloc[:, [i for i in range(width) if i != j]]
    elif edit == "sparse_column":
        frame.isetitem(j, pd.arrays.SparseArray(np.zeros(n)))
    elif edit == "odd_index":
        frame.index = [("a", i) for i in range(n)]
    elif edit == "duplicate_index":
        frame.index = [7] * n
    elif edit == "spike" and n and pd.api.types.is_float_dtype(frame.iloc[:, j]):
        frame.iloc[draw(st.integers(0, n - 1)), j] = draw(st.sampled_from(SPECIALS))
    elif edit == "float32":
        frame = frame.astype({c: np.float32 for c in frame.columns
                              if pd.api.types.is_float_dtype(frame[c])})
    return frame


@st.composite
def mutated(draw, base: np.ndarray, names=None, max_rows: int = 40):
    """Rows of ``base`` (a valid input), reshaped, spiked with special values, cast and wrapped."""
    n = draw(st.one_of(st.sampled_from([0, 1, 1, 2, 3]), st.integers(0, max_rows)), label="n")
    picks = draw(st.lists(st.integers(0, len(base) - 1), min_size=n, max_size=n))
    a = base[picks]
    if a.dtype == np.uint8 and draw(st.booleans(), label="float pixels"):
        a = a / 255.0
    if draw(st.sampled_from([False, False, True]), label="mutate"):  # else: valid values
        a = np.asarray(_reshape(a, draw(st.sampled_from(SHAPES), label="shape")))
        spikes = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(SPECIALS)),
                               max_size=3), label="spikes")
        if spikes and a.size:
            a = a.astype(np.float64)
            for where, value in spikes:
                a.flat[where % a.size] = value
        dtype = draw(st.sampled_from(DTYPES), label="dtype")
        if dtype is not None:
            a = _cast(a, dtype)
    layout = draw(st.sampled_from(LAYOUTS), label="layout")
    if a.ndim >= 1 and layout == "reversed":
        a = a[::-1]
    elif a.ndim >= 2 and layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
    elif a.ndim >= 1 and layout == "strided":
        a = np.repeat(a, 2, axis=0)[::2]
    container = draw(st.sampled_from(CONTAINERS), label="container")
    if a.ndim == 0 or container == "array":
        return a
    if container == "list":
        return a.tolist()
    try:  # pandas cannot hold every array (float16 Series): then the array itself
        if container == "frame" and a.ndim == 2:
            return _frame(a, names, draw(st.sampled_from(FRAME_EDITS), label="frame edit"), draw)
        if container == "series":
            return pd.Series(a.ravel()[:50])
    except (TypeError, ValueError, KeyError, NotImplementedError):
        return a
    if container == "sparse" and a.ndim == 2 and a.dtype.kind in "biuf" \
            and a.dtype != np.float16:
        return scipy.sparse.csr_matrix(a)
    return a


@st.composite
def inputs(draw, base, names=None, max_rows: int = 40):
    """Mostly valid inputs, often mutated, sometimes anything at all."""
    kind = draw(st.sampled_from(["valid"] * 6 + ["junk", "random arrays"]), label="input kind")
    if kind == "junk":
        return draw(JUNK, label="junk")
    if kind == "random arrays":
        return draw(RANDOM_ARRAYS, label="random array")
    return draw(mutated(base, names, max_rows))


COUNTS = st.one_of(st.integers(-3, 20), st.sampled_from([np.int64(3), np.uint8(2), 2.0, "3",
                                                          None, True, 1.5, float("nan")]))
SEEDS = st.one_of(st.none(), st.integers(-5, 2 ** 64),
                  st.sampled_from([1.5, "0", np.random.RandomState(0), np.int64(7), [1]]))


# ============================================================ detector methods
@fuzz(max_examples=200)
@given(data=st.data())
def test_detector_methods(cases, data):
    key = data.draw(st.sampled_from(sorted(cases)), label="model")
    case = cases[key]
    det = case.det
    methods = (*X_METHODS, "decode", "inverse_transform", "sample", "get_feature_names_out")
    if key == "vq_images":
        methods += ("compress", "compress")
    if key.startswith("vae"):
        methods += ("explain", "explain", "score_frame_explain", "score_frame_explain")
    method = data.draw(st.sampled_from(methods), label="method")
    if method == "score_frame_explain":
        k = data.draw(COUNTS, label="explain")
        X = data.draw(inputs(case.data, case.names), label="X")
        result, err = attempt(det.score_frame, X, explain=k, what=f"{key}.score_frame(explain)")
        if err is None:
            check_output("score_frame", result, expected_rows(X), det, X)
            named = [c for c in result.columns if str(c).startswith("feature_")]
            assert len(named) == min(int(k), det.n_features_in_), f"{k} -> {named}"
        return
    if method == "get_feature_names_out":
        names = data.draw(st.one_of(st.none(), st.just(case.names), JUNK,
                                    st.lists(st.text(max_size=3), max_size=31)), label="features")
        result, err = attempt(det.get_feature_names_out, names, what=f"{key}.{method}")
        if err is None:
            assert isinstance(result, np.ndarray) and len(result) == det._n_latent_columns()
            assert all(isinstance(v, str) for v in result)
        return
    if method == "sample":
        n, seed = data.draw(COUNTS, label="n_samples"), data.draw(SEEDS, label="random_state")
        result, err = attempt(det.sample, n, seed, what=f"{key}.sample")
        if err is None:
            check_output("sample", result, int(n), det)
        return
    base = case.latents if method in ("decode", "inverse_transform") else case.data
    X = data.draw(inputs(base, case.names), label="X")
    result, err = attempt(getattr(det, method), X, what=f"{key}.{method}")
    if err is None:
        check_output(method, result, expected_rows(X), det, X)


@fuzz(max_examples=80)
@given(data=st.data())
def test_dataframe_inputs(cases, onnx_files, data):
    """Tables with odd columns, dtypes, indexes and values, to row models and row exports."""
    target = data.draw(st.sampled_from(["vae_rows", "vae_rows", "vq_rows", "vae_rows-scorer",
                                        "vae_rows-scorer-fp16", "vae_rows-encoder"]),
                       label="model")
    case = cases[target] if target in cases else onnx_files[target][2]
    n = data.draw(st.sampled_from([0, 1, 2, 3, 7]), label="n")
    frame = pd.DataFrame(case.data[:n], columns=case.names)
    for edit in data.draw(st.lists(st.sampled_from(FRAME_EDITS), min_size=1, max_size=3),
                          label="edits"):
        try:
            frame = _edit_frame(frame, edit, data.draw)
        except (TypeError, ValueError):  # pandas cannot make that table: keep the last one
            pass
    if target in cases:
        owner = case.det
        methods = X_METHODS + (("explain", "score_frame") if target.startswith("vae") else ())
    else:
        owner = onnx_files[target][1]
        methods = PART_METHODS[owner.part]
    method = data.draw(st.sampled_from(methods), label="method")
    kwargs = {"explain": 3} if method == "score_frame" and target == "vae_rows" else {}
    result, err = attempt(getattr(owner, method), frame, what=f"{target}.{method}", **kwargs)
    if err is None:
        check_output(method, result, len(frame), owner, frame)
        if isinstance(result, pd.DataFrame):
            assert result.index.equals(frame.index), f"{target}.{method} lost X's index"


#: parameter -> (values fit accepts, values it must refuse)
FIT_PARAMS = {
    "common": {"contamination": ([0.1, 0.5, "auto"], [0, 0.6, -0.1, float("nan"), "x", None]),
               "batch_size": ([1, 2, 7, 10 ** 6], [0, -1, 1.0, None, "8"]),
               "learning_rate": ([1e-3, 1e3], [0, -1, float("inf"), float("nan")]),
               "weight_decay": ([0, 1.0], [-1]),
               "clip_grad_norm": ([None, 1.0], [0, -1]),
               "validation_fraction": ([None, 0.5, 0.2], [0, 0.6]),
               "threshold_folds": ([None, 2, 3], [0, 1, 2.5, "2", True]),
               "patience": ([1], [0]),
               "epochs": ([1, 2, np.int64(1)], [0, -1, 1.5, "1", None]),
               "device": (["cpu", "auto"], ["cuda", "tpu", None]),
               "verbose": ([0], [-1, 1.5]),
               "random_state": ([0, None, np.random.RandomState(1), np.int64(3), 2 ** 32 - 1],
                                [-1, 2 ** 32, 1.5, "0"])},
    "VAEDetector": {"latent_dim": ([1, 3], [0, -1, 2.5, "2", None, True]),
                    "hidden_dims": ([(4,), [4, 3], (np.int64(4),)],
                                    [(), (0,), (4.0,), "8", None, 8]),
                    "conv_channels": ([(2,), (2, 3), (2, 2, 2, 2)], [(), (0,)]),
                    "backbone": (["mlp", "conv", "auto"], ["x"]),
                    "likelihood": (["gaussian", "bernoulli"], ["poisson"]),
                    "sigma": (["learned", 0.1], [0, -1, "fixed", float("inf")]),
                    "beta": (["auto", 0, 1e6], [-1, float("nan")]),
                    "kl_warmup": (["auto", 0, 0.5, 1], [-0.1, 1.5, "half", float("nan")]),
                    "score_kind": (["auto", "elbo", "iwae", "recon_prob", "reconstruction", "kl",
                                    "elbo_kl", "latent_knn", "elbo_kl_knn", "elbo_complexity"],
                                   ["bogus", None]),
                    "n_score_samples": ([1, 2], [0, -3]),
                    "precision": (["fp32", "bf16"], ["fp16"])},
    "VQVAEDetector": {"codebook_size": ([2, 3, 16, "auto"], [1, 0, 2.0]),
                      "code_dim": ([1, 2], [0]),
                      "conv_channels": ([(2,), (2, 3), (2, 2, 2, 2)], [(), (0,)]),
                      "hidden_dims": ([(4,)], [(), (0,)]),
                      "n_codes": ([1, 3], [0]),
                      "backbone": (["mlp", "conv", "auto"], ["x"]),
                      "commitment_weight": ([0, 1.0], [-1]),
                      "codebook_update": (["ema", "loss"], ["x"]),
                      "ema_decay": ([0, 0.5], [1, 1.5]),
                      "dead_code_threshold": ([0, 1, 1e9], [-1]),
                      "lr_schedule": (["constant", "cosine"], ["linear", None]),
                      "precision": (["fp32", "bf16"], ["fp16"])},
}


@fuzz(max_examples=50)
@given(data=st.data())
def test_fit_and_fit_predict(cases, data):
    key = data.draw(st.sampled_from(sorted(cases)), label="model")
    case = cases[key]
    pool = {**FIT_PARAMS["common"], **FIT_PARAMS[type(case.det).__name__]}
    names = data.draw(st.lists(st.sampled_from(sorted(pool)), max_size=3, unique=True))
    params = {"epochs": 1}
    for name in names:
        good, bad = pool[name]
        params[name] = data.draw(st.sampled_from(good * 3 + bad), label=name)
    det = clone(case.det).set_params(**params)
    X = data.draw(inputs(case.data, case.names, max_rows=24), label="X")
    method = data.draw(st.sampled_from(["fit", "fit_predict"]), label="method")
    allowed = (*DOCUMENTED, TrainingDivergedError)
    result, err = attempt(getattr(det, method), X, what=f"{key}.{method}", allowed=allowed)
    if err is not None:
        return
    n = expected_rows(X)
    if method == "fit_predict":
        check_output("fit_predict", result, n, det)
    else:
        assert result is det
    scores, err = attempt(det.score_samples, X, what=f"{key} fitted: score_samples")
    assert err is None, f"a fitted model refuses its own training data: {err}"
    check_output("score_samples", scores, n, det)
    with tempfile.TemporaryDirectory() as tmp:
        det.save(Path(tmp) / "m.safetensors")
        loaded, err = attempt(type(det).load, Path(tmp) / "m.safetensors", device="cpu")
    assert err is None, f"a model fitted with {params} does not load back: {err}"
    np.testing.assert_array_equal(loaded.score_samples(X), scores)


@fuzz(max_examples=15)
@given(data=st.data())
def test_save_and_export_arguments(cases, data):
    """save and export_onnx with odd paths and options (a real export takes about a second)."""
    key = data.draw(st.sampled_from(["vae_rows", "vq_images"]), label="model")
    det = cases[key].det
    method = data.draw(st.sampled_from(["save", "save", "export_onnx"]), label="method")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a_folder").mkdir()
        (Path(tmp) / "a_file").write_text("x")
        path = data.draw(st.sampled_from(
            [Path(tmp) / "m.out", str(Path(tmp) / "m.out"), Path(tmp) / "new" / "dir" / "m.out",
             Path(tmp) / "a_folder", Path(tmp) / "a_file" / "m.out", None, 3,
             str(Path(tmp) / "m.out").encode()]),
            label="path")
        if method == "save":
            _, err = attempt(det.save, path, what=f"{key}.save", allowed=(*DOCUMENTED, OSError))
            if err is None:
                loaded = type(det).load(path)
                np.testing.assert_array_equal(loaded.score_samples(cases[key].data[:3]),
                                              det.score_samples(cases[key].data[:3]))
            return
        options = data.draw(st.fixed_dictionaries({
            "part": st.sampled_from(["scorer", "encoder", "decoder", "bogus", None, 1]),
            "input_dtype": st.sampled_from(["auto", "float32", "uint8", "float64", None]),
            "fp16": st.sampled_from([False, True])}), label="options")
        if options["part"] in ("scorer", "encoder", "decoder") and options["input_dtype"] in (
                "auto", "float32", "uint8") and data.draw(st.integers(0, 2), label="skip"):
            return  # a valid export takes a second: run only some of them
        out, err = attempt(det.export_onnx, path, what=f"{key}.export_onnx",
                           allowed=(*DOCUMENTED, OSError), **options)
        if err is None:
            model = OnnxModel(out)
            X = cases[key].latents[:3] if model.part == "decoder" else cases[key].data[:3]
            check_output("run", model.run(X), 3, model)


# ============================================================== OnnxModel
PART_METHODS = {"scorer": ("score_samples", "decision_function", "predict", "score_frame", "run"),
                "encoder": ("encode", "run"),
                "decoder": ("decode", "run")}
ALL_ONNX_METHODS = ("score_samples", "decision_function", "predict", "score_frame", "encode",
                    "decode", "run")


@fuzz(max_examples=150)
@given(data=st.data())
def test_onnx_model_methods(onnx_files, data):
    name = data.draw(st.sampled_from(sorted(onnx_files)), label="file")
    _, model, case = onnx_files[name]
    methods = PART_METHODS[model.part] * 3 + ALL_ONNX_METHODS
    method = data.draw(st.sampled_from(methods), label="method")
    base = case.latents if model.part == "decoder" else case.data
    X = data.draw(inputs(base, case.names), label="X")
    result, err = attempt(getattr(model, method), X, what=f"OnnxModel({name}).{method}")
    if err is None:
        check_output(method, result, expected_rows(X), model)


@fuzz(max_examples=25)
@given(data=st.data())
def test_onnx_model_options(onnx_files, data):
    name = data.draw(st.sampled_from(sorted(onnx_files)), label="file")
    path, _, case = onnx_files[name]
    options = data.draw(st.fixed_dictionaries({}, optional={
        "batch_size": st.sampled_from([1, 2, 3, 64, 0, -1, 1.5, "8", None, True]),
        "intra_op_num_threads": st.sampled_from([None, 1, 0, -1, "x", 1.5]),
        "providers": st.sampled_from([None, ["CPUExecutionProvider"], [], ["Bogus"],
                                      "CPUExecutionProvider", [("CPUExecutionProvider", {})]]),
    }), label="options")
    path_arg = data.draw(st.sampled_from([path, str(path), path.parent, path.with_suffix(".x"),
                                          None, 3]), label="path")
    model, err = attempt(OnnxModel, path_arg, what="OnnxModel()", **options)
    if err is not None:
        return
    X = case.latents[:5] if model.part == "decoder" else case.data[:5]
    result, err = attempt(model.run, X, what=f"OnnxModel({name}, {options}).run")
    assert err is None, f"OnnxModel({options}) accepted its options but cannot run: {err}"
    check_output("run", result, 5, model)


# ======================================================= crafted model files
MODEL_PARAM_VALUES = st.one_of(
    st.integers(-3, 40), st.sampled_from([10 ** 9, 2 ** 63, 10 ** 30, 10 ** 400]), st.floats(),
    st.text(max_size=6), st.none(), st.booleans(),
    st.lists(st.integers(-1, 20), max_size=3), st.sampled_from([[10 ** 9], {"a": 1}, [[1]]]),
    st.sampled_from(["auto", "conv", "mlp", "bernoulli", "iwae", "latent_knn", "elbo_complexity",
                     "ema", "loss", "learned", "cuda"]))
FITTED_VALUES = st.one_of(
    MODEL_PARAM_VALUES, st.sampled_from([[8, 8], [1, 8, 8], [30], [64], [2], [2, 2], [0], [],
                                         [[]], [{"loss": 1.0}], "uint8", "float", 1e308,
                                         True, False]))
TENSOR_EDITS = ("drop", "add", "float64", "float16", "int64", "bool", "shape", "nan", "inf",
                "huge", "empty", "scalar")


def _safetensors_parts(data: bytes):
    from safetensors.torch import load

    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + size])["__metadata__"]
    return dict(metadata), load(data)


def _sealed_safetensors(metadata: dict, tensors: dict) -> bytes:
    from safetensors.torch import save

    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    metadata["sha256"] = digest.PLACEHOLDER.decode()
    return digest.seal(save(tensors, metadata=metadata), b'"sha256":"')


def _edit_tensor(tensors: dict, draw) -> bool:
    """Edit one tensor at random; True when a huge finite value was written into it."""
    import torch

    name = draw(st.sampled_from(sorted(tensors)), label="tensor")
    edit = draw(st.sampled_from(TENSOR_EDITS), label="tensor edit")
    t = tensors[name]
    note(f"file: tensor {name} {edit}")
    if edit == "drop":
        del tensors[name]
    elif edit == "add":
        tensors[draw(st.sampled_from(["array.extra", "model.extra", "other", name + "x"]))] = \
            torch.zeros(2)
    elif edit in ("float64", "float16", "int64", "bool"):
        tensors[name] = t.to(getattr(torch, edit))
    elif edit == "shape":
        tensors[name] = torch.zeros((*t.shape, 2)) if t.ndim < 3 else t.flatten()
    elif edit in ("nan", "inf", "huge") and t.numel():
        value = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}[edit]
        t = t.clone() if t.is_floating_point() else t.double()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = value
        tensors[name] = t
        return edit == "huge"
    elif edit == "empty":
        tensors[name] = t.reshape(-1)[:0]
    elif edit == "scalar":
        tensors[name] = torch.tensor(1.0)
    return False


@st.composite
def crafted_model_file(draw, path: Path):
    """(bytes, resealed?, huge finite weights?) -- a model file damaged at random, or edited and
    sealed again."""
    original = path.read_bytes()
    kind = draw(st.sampled_from(["bytes", "sealed", "sealed", "sealed", "garbage"]), label="kind")
    if kind == "bytes":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 3))):
            op = draw(st.sampled_from(["flip", "truncate", "append", "insert", "delete"]))
            at = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[at] ^= draw(st.integers(1, 255))
            elif op == "truncate":
                del data[at:]
            elif op == "append":
                data += draw(st.binary(min_size=1, max_size=8))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[at:at + draw(st.integers(1, 8))]
            if not data:
                break
        return bytes(data), False, False
    if kind == "garbage":
        return draw(st.one_of(
            st.binary(max_size=64),
            st.sampled_from([b"", b"\x00" * 8, (10 ** 9).to_bytes(8, "little") + b"{}",
                             (2 ** 63).to_bytes(8, "little"), b"\x02\x00\x00\x00\x00\x00\x00\x00{}",
                             b'\x0e\x00\x00\x00\x00\x00\x00\x00{"a":"b"}   ',
                             _sealed_safetensors({"format": "vaeanom-model"}, {}),
                             b'{"__metadata__": {}}'])), label="garbage"), True, False
    metadata, tensors = _safetensors_parts(original)
    huge = False
    for _ in range(draw(st.integers(1, 3), label="edits")):
        target = draw(st.sampled_from(["params", "fitted", "fitted", "meta", "tensor",
                                       "tensor", "raw"]), label="target")
        if target in ("params", "fitted"):
            try:
                values = json.loads(metadata.get(target, ""))
            except ValueError:
                values = None
            values = values if isinstance(values, dict) else {}
            keys = sorted(values) + ["bogus", "__class__", "_chunk_rows"]
            name = draw(st.sampled_from(keys), label=f"{target} name")
            if draw(st.integers(0, 5)) == 0:
                values.pop(name, None)
                note(f"file: drop {target}[{name!r}]")
            else:
                values[name] = draw(MODEL_PARAM_VALUES if target == "params" else FITTED_VALUES,
                                    label=f"{target}[{name}]")
                note(f"file: {target}[{name!r}] = {values[name]!r}")
            metadata[target] = json.dumps(values)
        elif target == "meta":
            name = draw(st.sampled_from(["format", "format_version", "estimator",
                                         "vaeanom_version", "params", "fitted", "extra"]))
            if draw(st.booleans()):
                metadata.pop(name, None)
            else:
                metadata[name] = draw(st.sampled_from(
                    ["", "1", "2", "3", "-1", "x", "VAEDetector", "VQVAEDetector", "BaseDetector",
                     "vaeanom-model", "null", "[]", "{}", "1e400", '{"a": NaN}']))
            note(f"file: metadata[{name!r}] = {metadata.get(name)!r}")
        elif target == "tensor" and tensors:
            huge |= _edit_tensor(tensors, draw)
        elif target == "raw":
            name = draw(st.sampled_from(["params", "fitted"]))
            metadata[name] = draw(st.sampled_from(["", "[", "[]", "1", "null", '"x"', "NaN",
                                                   '{"a":' * 50 + "1" + "}" * 50]))
            note(f"file: raw {name} = {metadata[name][:20]!r}")
    return _sealed_safetensors(metadata, tensors), True, huge


@fuzz(max_examples=100)
@given(data=st.data())
def test_crafted_model_files(cases, data):
    key = data.draw(st.sampled_from(sorted(cases)), label="model")
    case = cases[key]
    original = case.path.read_bytes()
    crafted, sealed, huge = data.draw(crafted_model_file(case.path))
    loader = data.draw(st.sampled_from([type(case.det).load, type(case.det).load,
                                        VAEDetector.load, VQVAEDetector.load, cli.load_detector]),
                       label="loader")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crafted.safetensors"
        path.write_bytes(crafted)
        det, err = attempt(loader, path, what=f"{getattr(loader, '__qualname__', loader)}")
    if not sealed and crafted != original:
        assert err is not None, "a model file with changed bytes and no new seal was loaded"
    if err is not None:
        return
    rows = case.data[:5]
    for method in ("score_samples", "predict", "encode", "reconstruct"):
        result, err = attempt(getattr(det, method), rows, what=f"crafted model.{method}")
        # huge finite weights may overflow any network: outputs are then garbage in, garbage
        # out (scores stay NaN-free: -inf); everything else a loaded file gives must be valid
        if err is None and (not huge or method in ("score_samples", "predict")):
            check_output(method, result, 5, det)


ONNX_META_VALUES = st.one_of(
    st.integers(-2, 70), st.sampled_from([10 ** 9, 2 ** 63, 10 ** 400, 1e308, float("nan")]),
    st.text(max_size=5), st.none(), st.booleans(),
    st.lists(st.integers(-1, 70), max_size=4), st.sampled_from([[8, 8], [30], [2], [2, 2], [64],
                                                                  [1, 8, 8], {"a": 1}, [[1]]]),
    st.sampled_from(["scorer", "encoder", "decoder", "float16", "float32", "uint8", "int64",
                     "bool", "input", "latent", "reconstruction", "vaeanom-onnx"]))


def _sealed_onnx(proto, meta) -> bytes:
    import onnx

    kept = [(p.key, p.value) for p in proto.metadata_props
            if p.key not in (METADATA_KEY, DIGEST_KEY)]
    del proto.metadata_props[:]
    props = dict(kept)
    if meta is not None:
        props[METADATA_KEY] = meta if isinstance(meta, str) else json.dumps(meta)
    props[DIGEST_KEY] = digest.PLACEHOLDER.decode()
    onnx.helper.set_model_props(proto, props)
    return digest.seal(proto.SerializeToString(), DIGEST_MARKER)


@st.composite
def crafted_onnx_file(draw, path: Path):
    import onnx

    original = path.read_bytes()

    kind = draw(st.sampled_from(["bytes", "sealed", "sealed", "sealed", "sealed", "garbage"]),
                label="kind")
    if kind == "bytes":
        data = bytearray(original)
        at = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data[at] ^= draw(st.integers(1, 255))
        else:
            del data[at:]
        return bytes(data), False
    if kind == "garbage":
        return draw(st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x08\x07"])),
                    label="garbage"), True
    proto = onnx.load_from_string(original)
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    for _ in range(draw(st.integers(1, 3), label="edits")):
        target = draw(st.sampled_from(["meta", "meta", "meta", "preprocessing", "raw"]),
                      label="target")
        if target == "meta":
            name = draw(st.sampled_from(sorted(meta) + ["bogus"]), label="key")
            if draw(st.integers(0, 4)) == 0:
                meta.pop(name, None)
            else:
                meta[name] = draw(ONNX_META_VALUES, label=f"meta[{name}]")
            note(f"onnx: meta[{name!r}] = {meta.get(name, '<dropped>')!r}")
        elif target == "preprocessing" and isinstance(meta.get("preprocessing"), dict):
            pre = meta["preprocessing"]
            name = draw(st.sampled_from(sorted(pre)), label="preprocessing key")
            if draw(st.integers(0, 4)) == 0:
                pre.pop(name, None)
            else:
                pre[name] = draw(st.one_of(ONNX_META_VALUES, st.sampled_from(
                    [[0.0] * 3, [[0.0]], [float("nan")] * 30, [-1.0] * 30, [0.0] * 64])),
                    label=f"preprocessing[{name}]")
            note(f"onnx: preprocessing[{name!r}] = {str(pre.get(name, '<dropped>'))[:60]}")
        elif target == "raw":
            meta = draw(st.sampled_from(["", "[", "[]", "1", "null", '"x"', "NaN"]))
            note(f"onnx: raw metadata {meta!r}")
            break
    return _sealed_onnx(proto, meta), True


@fuzz(max_examples=100)
@given(data=st.data())
def test_crafted_onnx_files(onnx_files, data):
    name = data.draw(st.sampled_from(sorted(onnx_files)), label="file")
    path, _, case = onnx_files[name]
    crafted, sealed = data.draw(crafted_onnx_file(path))
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "crafted.onnx"
        target.write_bytes(crafted)
        model, err = attempt(OnnxModel, target, what="OnnxModel(crafted)",
                             intra_op_num_threads=1)
    if not sealed:
        assert err is not None, "an ONNX file with changed bytes and no new seal was opened"
    if err is not None:
        return
    for method in ("score_samples", "encode", "decode", "run", "score_frame"):
        X = case.latents[:5] if getattr(model, "part", None) == "decoder" else case.data[:5]
        result, err = attempt(getattr(model, method), X, what=f"OnnxModel(crafted).{method}")
        if err is None:
            check_output(method, result, 5, model)


# ================================================================ blobs
@pytest.fixture(scope="module")
def blobs(cases):
    det = cases["vq_images"].det
    return {n: v1_blob(det, cases["vq_images"].data[:n]) for n in (1, 3)}


def _fields(blob: bytes):
    """(version, fingerprint, [n, C, H, W, length], payload) of a real version-1 blob."""
    offset, fields = 7, []
    for _ in range(5):
        value = shift = 0
        while True:
            byte = blob[offset]
            value |= (byte & 0x7F) << shift
            offset, shift = offset + 1, shift + 7
            if not byte & 0x80:
                break
        fields.append(value)
    return blob[2], blob[3:7], fields, blob[offset:-4]


FIELD_VALUES = st.one_of(st.integers(0, 40), st.sampled_from([2 ** 20, 2 ** 31, 2 ** 40, 2 ** 63,
                                                             2 ** 64 + 1, 2 ** 80]))


@st.composite
def crafted_blob(draw, blobs):
    """(blob, changed?) -- a real blob with flipped bytes, or with edited fields and a good CRC."""
    blob = blobs[draw(st.sampled_from(sorted(blobs)), label="images")]
    kind = draw(st.sampled_from(["bytes", "fields", "fields", "fields", "junk"]), label="kind")
    if kind == "junk":
        return draw(st.one_of(
            st.none(), st.integers(-1, 64), st.just(2 ** 40), st.text(max_size=4),
            st.floats(), st.lists(st.integers(0, 255), max_size=8),
            st.sampled_from([blob.decode("latin-1"), bytearray(blob), memoryview(blob),
                             np.frombuffer(blob, np.uint8), list(blob), io.BytesIO(blob),
                             b"", b"VQ", b"VQ\x01"])), label="junk"), True
    if kind == "bytes":
        data = bytearray(blob)
        at = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "append"]))
        if op == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
        return bytes(data), True
    version, made_by, fields, payload = _fields(blob)
    for _ in range(draw(st.integers(1, 3), label="edits")):
        target = draw(st.sampled_from(["n", "shape", "length", "payload", "version",
                                       "fingerprint", "overlong"]), label="field")
        note(f"blob: edit {target}")
        if target == "n":
            fields[0] = draw(FIELD_VALUES, label="n")
        elif target == "shape":
            fields[draw(st.integers(1, 3))] = draw(FIELD_VALUES, label="shape")
        elif target == "length":
            fields[4] = draw(FIELD_VALUES, label="length")
        elif target == "payload":
            payload = draw(st.one_of(st.binary(max_size=24), st.just(payload[:-4]),
                                     st.just(payload + b"\x00" * 4),
                                     st.just(b"\xff" * len(payload))), label="payload")
            if draw(st.booleans()):
                fields[4] = len(payload)
        elif target == "version":
            version = draw(st.integers(0, 255), label="version")
        elif target == "fingerprint":
            made_by = draw(st.binary(min_size=4, max_size=4), label="fingerprint")
        elif target == "overlong":
            payload = b"\x80" * draw(st.integers(1, 20)) + payload
    note(f"blob: version {version}, fingerprint {made_by!r}, fields {fields}, "
         f"payload {len(payload)} bytes")
    header = b"VQ" + bytes([version]) + made_by + b"".join(_varint(v) for v in fields)
    body = header + payload
    return body + struct.pack(">I", zlib.crc32(body)), True


@fuzz(max_examples=100)
@given(data=st.data())
def test_crafted_blobs(cases, blobs, data):
    det = cases["vq_images"].det
    blob, _ = data.draw(crafted_blob(blobs), label="blob")
    owner = data.draw(st.sampled_from(["vq_images", "vq_images", "vq_rows", "vae_images"]),
                      label="detector")
    how = data.draw(st.sampled_from(["method", "function"]), label="call")
    target = cases[owner].det
    if how == "method" and hasattr(target, "decompress"):
        images, err = attempt(target.decompress, blob, what=f"{owner}.decompress")
    else:
        images, err = attempt(decompress, target, blob, what=f"compression.decompress({owner})")
    if err is not None:
        return
    assert owner == "vq_images", f"{owner} decompressed a blob"
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8
    assert images.shape[1:] == tuple(det.input_shape_) and len(images) >= 1
    real = {bytes(b) for b in blobs.values()}
    assert bytes(memoryview(blob)) in real, "an altered blob decompressed"  # bytes-like: fine


@fuzz(max_examples=25)
@given(data=st.data())
def test_compress_function_and_codec_errors(cases, data):
    owner = data.draw(st.sampled_from(sorted(cases)), label="detector")
    det = cases[owner].det
    X = data.draw(inputs(cases["vq_images"].data, max_rows=8), label="images")
    result, err = attempt(compress, det, X, what=f"compression.compress({owner})")
    if err is None:
        assert owner == "vq_images", f"{owner} compressed images"
        check_output("compress", result, expected_rows(X), det, X)


# ===================================================================== CLI
@pytest.fixture(scope="module")
def cli_files(cases, onnx_files, blobs, tmp_path_factory):
    """Real and garbage inputs for the command line, by name."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("fuzz-cli")
    rows = pd.DataFrame(cases["vae_rows"].data[:20], columns=cases["vae_rows"].names)
    rows.index = pd.Index([f"r{i}" for i in range(20)], name="patient")
    rows.to_csv(folder / "rows.csv")
    rows.to_parquet(folder / "rows.parquet")
    np.save(folder / "rows.npy", rows.to_numpy())
    images = cases["vq_images"].data[:6]
    np.save(folder / "images.npy", images)
    np.save(folder / "float_images.npy", images / 255.0)
    np.save(folder / "big_images.npy", images.astype(np.float64))
    np.save(folder / "vector.npy", np.arange(5.0))
    np.save(folder / "five_d.npy", np.zeros((2, 1, 1, 8, 8)))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "complex.npy", rows.to_numpy() + 1j)
    np.save(folder / "empty.npy", np.zeros((0, 30)))
    Image.fromarray(images[0]).save(folder / "digit.png")
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(folder / "rgb.png")
    (folder / "pngs").mkdir()
    for i in range(3):
        Image.fromarray(images[i]).save(folder / "pngs" / f"d{i}.png")
    (folder / "empty_dir").mkdir()
    (folder / "blob.vq").write_bytes(blobs[1])
    (folder / "blobs.vq").write_bytes(blobs[3])
    (folder / "vqs").mkdir()
    (folder / "vqs" / "a.vq").write_bytes(blobs[1])
    (folder / "vqs" / "b.vq").write_bytes(b"VQ\x01garbage")
    text = rows.copy()
    text["name"] = "x"
    text.to_csv(folder / "text.csv")
    spiked = rows.copy()
    spiked.iloc[0, 0] = 1e300
    spiked.iloc[1, 1] = np.nan
    spiked.to_csv(folder / "spiked.csv")
    (folder / "empty.csv").write_bytes(b"")
    (folder / "header.csv").write_text("a,b\n")
    garbage = bytes(range(256)) * 4
    for name in ("garbage.csv", "garbage.parquet", "garbage.npy", "garbage.png",
                 "garbage.safetensors", "garbage.onnx", "garbage.vq", "garbage.txt"):
        (folder / name).write_bytes(garbage)
    (folder / "one_row.csv").write_text(rows.iloc[:1].to_csv())
    for key in ("vae_rows", "vae_images", "vq_images", "vq_rows"):
        (folder / f"{key}.safetensors").write_bytes(cases[key].path.read_bytes())
    flipped = bytearray(cases["vae_rows"].path.read_bytes())
    flipped[100] ^= 1
    (folder / "flipped.safetensors").write_bytes(bytes(flipped))
    (folder / "scorer.onnx").write_bytes(onnx_files["vae_rows-scorer"][0].read_bytes())
    (folder / "encoder.onnx").write_bytes(onnx_files["vae_rows-encoder"][0].read_bytes())
    return folder


DATA = ["rows.csv", "rows.parquet", "rows.npy", "images.npy", "float_images.npy",
        "big_images.npy", "vector.npy", "five_d.npy", "objects.npy", "complex.npy", "empty.npy",
        "text.csv", "spiked.csv", "empty.csv", "header.csv", "garbage.csv", "garbage.parquet",
        "garbage.npy", "garbage.txt", "one_row.csv", "missing.csv", "pngs", "digit.png"]
MODELS = ["vae_rows.safetensors", "vae_images.safetensors", "vq_images.safetensors",
          "vq_rows.safetensors", "flipped.safetensors", "garbage.safetensors", "scorer.onnx",
          "missing.safetensors", "pngs"]
CODEC_IN = ["images.npy", "float_images.npy", "big_images.npy", "digit.png", "rgb.png", "pngs",
            "empty_dir", "blob.vq", "blobs.vq", "vqs", "garbage.vq", "garbage.png", "rows.npy",
            "five_d.npy", "objects.npy", "missing.png", "garbage.txt"]
OUTPUTS = ["out.csv", "out.parquet", "out.txt", "out.npy", "out.png", "out.vq", "outdir",
           "deep/er/out.png", "existing_dir", "existing_file.csv/out.csv", "out.onnx"]
SETS = ["epochs=1", "epochs=0", "epochs=1.5", "latent_dim=2", "latent_dim=0", "hidden_dims=(8,)",
        "hidden_dims=()", "bogus=1", "latent_dim", "=", "=1", "latent_dim=__import__('os')",
        "contamination=0.9", "random_state=-1", "codebook_size=1", "codebook_size=4",
        "backbone=conv", "n_score_samples=0", "score_kind=elbo_complexity", "likelihood=bernoulli",
        "device=cuda", "conv_channels=(2,)", "code_dim=2", "verbose=2"]
TOKENS = ["-v", "-vv", "--model", "--onnx", "-o", "--output", "--set", "--index-col",
          "--estimator", "--part", "--fp16", "--triton", "", "-", "--", "fit", "score", "--bogus",
          "\x00", "é", "x" * 300]


@st.composite
def command_lines(draw):
    """An argument list with {fix} (the fixture folder) and {tmp} (a fresh folder) placeholders."""
    fix = lambda names: st.sampled_from(names).map(lambda n: "{fix}/" + n)  # noqa: E731
    out = st.sampled_from(OUTPUTS).map(lambda n: "{tmp}/" + n)
    command = draw(st.sampled_from(["fit", "fit", "score", "score", "score", "export",
                                    "compress", "compress", "decompress", "decompress", "demo",
                                    "bogus", ""]), label="command")
    argv = [command] if command else []
    if command == "fit":
        argv += [draw(fix(DATA))]
        if draw(st.integers(0, 5)):
            argv += ["--model", draw(out)]
        argv += [draw(st.sampled_from(["--estimator", "--estimator", "--set"])),
                 draw(st.sampled_from(["VAEDetector", "VQVAEDetector"] * 3 + ["Bogus"]))]
        argv[-2:] = argv[-2:] if argv[-2] == "--estimator" else []
        argv += ["--set", "epochs=1", "--set", "hidden_dims=(8,)", "--set", "conv_channels=(2,)",
                 "--set", "codebook_size=4"]
        for value in draw(st.lists(st.sampled_from(SETS), max_size=3), label="sets"):
            argv += ["--set", value]
    elif command == "score":
        argv += [draw(fix(DATA))]
        which = draw(st.sampled_from(["--model", "--model", "--onnx", "both", "none"]))
        if which in ("--model", "both"):
            argv += ["--model", draw(fix(MODELS))]
        if which in ("--onnx", "both"):
            argv += ["--onnx", draw(fix(["scorer.onnx", "encoder.onnx", "garbage.onnx",
                                          "vae_rows.safetensors", "missing.onnx"]))]
        argv += draw(st.sampled_from([[], [], ["--explain", "3"], ["--explain", "0"],
                                      ["--explain", "-1"], ["--explain", "99"],
                                      ["--explain", "x"], ["--index-col", "patient"]]),
                     label="score options")
    elif command == "export":
        if draw(st.booleans()):
            argv += [draw(out)]
        argv += ["--model", draw(fix(MODELS))]
        argv += draw(st.sampled_from([[], ["--part", "encoder"], ["--part", "decoder"],
                                      ["--part", "bogus"], ["--input-dtype", "uint8"],
                                      ["--input-dtype", "float64"], ["--triton", "{tmp}/repo"],
                                      ["--max-batch-size", "0"], ["--fp16"]]), label="export")
    elif command in ("compress", "decompress"):
        argv += [draw(fix(CODEC_IN)), draw(out)]
        if draw(st.integers(0, 5)):
            argv += ["--model", draw(fix(MODELS))]
    elif command == "demo":
        argv += draw(st.sampled_from([["--epochs", "0"], ["--epochs", "x"], ["--epochs", "-3"],
                                      ["--help"], ["--epochs"]]))
    if command != "demo":
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]), label="extra tokens")):
            token = draw(st.one_of(st.sampled_from(TOKENS + ["--index-col", "-o"]),
                                   st.sampled_from(["patient", "0", "99", "-1", "nope"]),
                                   fix(DATA), out), label="token")
            argv.insert(draw(st.integers(min(1, len(argv)), len(argv))), token)
    if command == "demo" or (command != "" and draw(st.integers(0, 30)) == 0):
        argv.append("--help") if "--help" not in argv else None
    return argv


class _Errors(logging.Handler):
    """Keeps the exception of every record logged with exc_info (main logs its error so)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def run_cli(argv: list[str], cwd: str) -> tuple[int, str, list[BaseException]]:
    """main(argv) in-process, in folder ``cwd`` (relative names write there): (exit status,
    standard error, exceptions it caught)."""
    logger = logging.getLogger("vaeanom")
    handler, level = _Errors(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    stdout, stderr = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), time_limit():
            try:
                status = cli.main(argv)
            except SystemExit as exit_:
                status = exit_.code
    except Hang as err:
        raise AssertionError(f"vaeanom {argv} hung: {err}") from None
    finally:
        os.chdir(before)
        logger.removeHandler(handler)
        logger.setLevel(level)
    return status, stderr.getvalue(), handler.errors


@fuzz(max_examples=80)
@given(argv=command_lines())
def test_command_line(cli_files, argv):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "existing_dir").mkdir()
        (Path(tmp) / "existing_file.csv").write_text("a\n1\n")
        argv = [a.replace("{fix}", str(cli_files)).replace("{tmp}", tmp) for a in argv]
        status, err, caught = run_cli(argv, tmp)
    event(f"status {status}: {err.strip().splitlines()[-1][:70] if err.strip() else ''}")
    if status == 2 or (status == 0 and "--help" in argv):
        return  # argparse: usage error or help
    assert status in (0, 1), f"vaeanom {argv} exited with {status!r}"
    if status == 0:
        return
    lines = [line for line in err.splitlines() if line.startswith("vaeanom ")]
    assert lines and lines[-1].split(": error: ", 1)[-1].strip(), \
        f"vaeanom {argv} failed without a readable error line: {err!r}"
    assert caught, f"vaeanom {argv} failed without logging its exception: {err!r}"
    for exc in caught:
        check_error(exc, f"vaeanom {' '.join(argv)}",
                    allowed=(*DOCUMENTED, OSError, TrainingDivergedError))


# ============================================ regressions found by this fuzz
def _resealed(case: Case, tmp: Path, edit) -> Path:
    """``case``'s model file after ``edit(metadata, tensors)``, sealed again."""
    metadata, tensors = _safetensors_parts(case.path.read_bytes())
    edit(metadata, tensors)
    path = tmp / "edited.safetensors"
    path.write_bytes(_sealed_safetensors(metadata, tensors))
    return path


def _fitted(metadata: dict, **changes) -> None:
    metadata["fitted"] = json.dumps({**json.loads(metadata["fitted"]), **changes})


def test_regressions_in_detector_inputs(cases):
    rows, images = cases["vae_rows"], cases["vae_images"]
    with pytest.raises(ValueError, match="random_state"):
        rows.det.sample(2, random_state=[1])
    with pytest.raises(ValueError, match="random_state"):
        cases["vq_images"].det.sample(2, random_state=-1)
    with pytest.raises(ValueError, match="int64 pixels must be in"):  # were read as 255x bright
        cases["vq_images"].det.score_samples(cases["vq_images"].data[:2].astype(np.int64))
    with pytest.raises(ValueError, match="at least one pixel"):
        images.det.score_samples([[[]]])
    with pytest.raises((ValueError, TypeError)) as info:
        images.det.score_samples(np.float64)  # a class, whose ndim is a descriptor
    assert "getset_descriptor" not in str(info.value)
    Z = rows.latents.astype(np.float32)
    np.testing.assert_array_equal(rows.det.decode(Z[::-1]), rows.det.decode(Z[::-1].copy()))
    frame = pd.DataFrame(rows.data[:3], columns=rows.names, index=[7, 7, 7])
    explained = rows.det.score_frame(frame, explain=2)
    assert len(explained) == 3 and explained.index.equals(frame.index)
    np.testing.assert_array_equal(explained["feature_1"],
                                  rows.det.score_frame(frame.reset_index(drop=True),
                                                       explain=2)["feature_1"])


def test_regressions_in_fit_parameters(cases, tmp_path):
    X = cases["vae_rows"].data[:20]
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="learning_rate"):
            VAEDetector(learning_rate=value, epochs=1).fit(X)
    det = VAEDetector(hidden_dims=(np.int64(4),), epochs=np.int64(1), random_state=np.int64(0))
    det.fit(X).save(tmp_path / "m.safetensors")  # numpy ints were not JSON-able
    assert VAEDetector.load(tmp_path / "m.safetensors").get_params()["hidden_dims"] == (4,)
    with pytest.raises(TrainingDivergedError, match="cannot score its training data"):
        VQVAEDetector(**{**SMALL_VQ, "epochs": 1, "learning_rate": 1000.0}).fit(
            cases["vq_images"].data[[0, 0]])  # was fitted with offset_ NaN, saved, unloadable


@pytest.mark.parametrize("key, edit, message", [
    ("vae_images", lambda m, t: t.__setitem__("model.encoder.net.0.weight", torch_nan(t)),
     "non-finite"),
    ("vae_images", lambda m, t: t.__setitem__("array.noise_", t["array.noise_"].double()),
     "noise_ has dtype float64"),
    ("vq_images", lambda m, t: t.__setitem__("array.center_", t["array.center_"] + 1e30),
     "standardisation"),
    ("vq_images", lambda m, t: _fitted(m, code_grid_=None) or m.__setitem__(
        "fitted", json.dumps({k: v for k, v in json.loads(m["fitted"]).items()
                              if k != "code_grid_"})), "code_grid_"),
    ("vq_rows", lambda m, t: _fitted(m, is_image_=True), "input_shape_"),
    ("vq_rows", lambda m, t: _fitted(m, offset_=10 ** 400), "offset_"),
    ("vae_rows", lambda m, t: t.__setitem__("array.latent_bank_", t["array.latent_bank_"].sum()),
     "latent_bank_"),
    ("vq_images", lambda m, t: m.__setitem__("params", json.dumps(
        {**json.loads(m["params"]), "code_dim": 2 ** 70})), "cannot be built"),
])
def test_regressions_in_crafted_model_files(cases, tmp_path, key, edit, message):
    path = _resealed(cases[key], tmp_path, edit)
    with pytest.raises(ValueError, match=message):
        type(cases[key].det).load(path)


def torch_nan(tensors):
    weight = tensors["model.encoder.net.0.weight"].clone()
    weight[0, 0] = float("nan")
    return weight


@pytest.mark.parametrize("name, edit", [
    ("vae_images-scorer", lambda meta: meta.pop("part")),
    ("vae_images-scorer", lambda meta: meta.pop("input_name")),
    ("vae_images-scorer", lambda meta: meta.__setitem__("input_name", "")),
    ("vae_images-scorer", lambda meta: meta.__setitem__("part", "x")),
    ("vae_images-scorer", lambda meta: meta.__setitem__("input_dtype", "bool")),
    ("vae_images-scorer", lambda meta: meta.__setitem__("data_shape", [8, 9])),
    ("vae_images-scorer", lambda meta: meta["preprocessing"].__setitem__("center", [0.0] * 3)),
    ("vae_rows-encoder", lambda meta: meta.__setitem__("codebook_size", 1)),
    ("vq_images-decoder", lambda meta: meta.__setitem__("codebook_size", None)),
    ("vae_rows-scorer", lambda meta: meta.__setitem__("offset", 10 ** 400)),
    ("vae_rows-scorer", lambda meta: meta.__setitem__("data_shape", [2 ** 70])),
    ("vae_rows-scorer", lambda meta: meta["preprocessing"].__setitem__("scale", 10 ** 400)),
])
def test_regressions_in_crafted_onnx_metadata(onnx_files, tmp_path, name, edit):
    import onnx

    proto = onnx.load(onnx_files[name][0])
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    edit(meta)
    target = tmp_path / "edited.onnx"
    target.write_bytes(_sealed_onnx(proto, meta))
    with pytest.raises(ValueError, match="invalid vaeanom metadata"):
        OnnxModel(target)


def test_regressions_in_the_command_line(cli_files):
    status, err, caught = run_cli(["score", str(cli_files / "header.csv"), "--model",
                                   str(cli_files / "vae_rows.safetensors"), "--index-col",
                                   "patient"], str(cli_files))
    assert status == 1 and "no column 'patient' for the index" in err, err  # was pandas' TypeError


def test_regressions_in_codecs_and_decoders(cases, onnx_files):
    vae, vq = cases["vae_images"].det, cases["vq_images"].det
    with pytest.raises(ValueError, match="need a fitted VQVAEDetector"):
        compress(vae, cases["vae_images"].data[:2])
    with pytest.raises(ValueError, match="need a fitted VQVAEDetector"):
        decompress(vae, b"VQ")
    for junk in (2 ** 40, "VQ", None):  # bytes(2**40) allocated a terabyte
        with pytest.raises(TypeError, match="blob must be bytes"):
            vq.decompress(junk)
    with pytest.raises(ValueError, match="int16 pixels must be in"):
        onnx_files["vae_images-scorer-float"][1].score_samples(
            cases["vae_images"].data[:2].astype(np.int16))
    decoder = onnx_files["vae_rows-decoder"][1]
    with pytest.raises(ValueError, match=r"row\(s\) \[0\].*overflows"):
        decoder.decode(np.full((1, 2), 3e38, np.float32))
