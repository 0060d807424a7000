"""OnnxModel: score with an exported vaeanom model using numpy and onnxruntime only.

A scoring service needs no torch and no training code: the preprocessing, the
fixed Monte-Carlo noise and the network are in the graph, and the threshold
(``offset_``), input shape and feature names are in its metadata. This module
imports numpy and onnxruntime (and pandas when given a DataFrame or labels), never torch.

Execution providers: with ``providers=None`` the CUDA provider is used only
when an NVIDIA GPU really answers (asked through NVML, which, unlike the CUDA
driver API, creates no CUDA context, so a server that forks after loading keeps
working, as PyTorch's own NVML-based device count does); otherwise the CPU
provider is asked for alone, so machines without a GPU never see onnxruntime's
CUDA load error. Outputs are written by onnxruntime straight into the result
arrays through IOBinding, in fixed-size zero-padded chunks: memory stays
bounded, nothing is copied twice, and a row's score is the same bits whatever
the batch it came in.

Files are checked before onnxruntime parses them: the SHA-256 seal the
exporter wrote must match (:mod:`vaeanom.digest`). Inputs get the estimator's
checks, from the same :class:`vaeanom.preprocessing.Preprocessing` the file's
metadata describes, in the graph's precision (float16 graphs refuse
standardised values past 65504).

Thread safety: an ``OnnxModel`` may be shared by threads (each call binds its
own inputs and outputs; onnxruntime sessions are safe to run concurrently).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import digest
from .checks import (TABLE_MODEL, are_class_labels, check_count, check_missing_values,
                     check_no_infinity, column_names, feature_labels, finite_decoded,
                     finite_scores, image_shape_hint, is_one_image, is_outlier, outlier_labels)
from .codes import check_code_values
from .onnx_format import DIGEST_MARKER, FORMAT, FORMAT_VERSION, METADATA_KEY, table_inputs
from .preprocessing import Preprocessing

logger = logging.getLogger(__name__)

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8,
                 "int64": np.int64, "int32": np.int32}


def cuda_device_count() -> int:
    """Number of NVIDIA GPUs NVML reports; 0 when there is no driver or GPU.

    NVML, not the CUDA driver's ``cuInit``: initialising CUDA in a process that
    later forks (a pre-forking server) breaks CUDA in the children.
    """
    name = "nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1"
    try:
        nvml = ctypes.CDLL(name)
        count = ctypes.c_uint(0)
        if nvml.nvmlInit_v2() != 0:
            return 0
        try:
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
                return 0
        finally:
            nvml.nvmlShutdown()
        return count.value
    except (OSError, AttributeError):
        return 0


def default_providers() -> list[str]:
    """CUDA then CPU when a GPU is really present and onnxruntime can use it; else CPU."""
    if "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0:
        if hasattr(ort, "preload_dlls"):  # find the CUDA/cuDNN libraries pip installed
            try:
                ort.preload_dlls()
            except Exception as err:  # the CUDA provider then reports what is missing
                logger.debug("onnxruntime.preload_dlls failed: %s", err)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """A model exported by ``det.export_onnx``, with the detector's scoring API.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file.
    providers : list or None, default=None
        onnxruntime execution providers (names or (name, options) pairs);
        None picks CUDA when a GPU is present, else CPU.
    sess_options : onnxruntime.SessionOptions, optional
        Session options (threads, graph optimisation, logging).
    intra_op_num_threads : int, optional
        Shortcut for ``sess_options.intra_op_num_threads``.
    batch_size : int, default=64
        Rows per onnxruntime call, the last call zero-padded to it, so that
        every row goes through identically shaped kernels and its score does
        not depend on how many rows came with it (as the estimator does). It
        bounds memory too: a conv scorer with 16 Monte-Carlo samples holds
        about 1.6 MB per row in flight.

    Attributes
    ----------
    metadata : dict
        What the exporter wrote (version, estimator, params, part, shapes, ...).
    part, score_kind, offset_, input_shape, n_features_in_, feature_names_in_
    preprocessing : Preprocessing or None
        The exported model's preprocessing (None in files from before format 2).
    table_schema : vaeanom.tables.TableSchema or None
        A table model's columns: DataFrames are encoded with it (category
        names to the codes the graph takes, as the estimator does).
    precision : {"float32", "float16"}
    classes_ : ndarray
        A conditional model's classes (its labels, sorted); a scorer that
        :attr:`takes_labels` maps ``y`` to their indices.
    providers : list of str
        The providers the session actually uses.
    """

    def __init__(self, path, providers: Sequence | None = None, *,
                 sess_options: ort.SessionOptions | None = None,
                 intra_op_num_threads: int | None = None, batch_size: int = 64) -> None:
        self.path = Path(path)
        if check_count(batch_size, "batch_size") < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.batch_size = int(batch_size)
        options = sess_options or ort.SessionOptions()
        if sess_options is None:
            options.log_severity_level = 3  # errors only
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        data, sealed = _read_checked(self.path)
        self._session = _open_session(data, self.path, options, providers or default_providers())
        self.metadata = _read_metadata(self._session, self.path, sealed)
        meta = self.metadata
        self.part = meta["part"]
        self.score_kind = meta["score_kind"]
        self.offset_ = float(meta["offset"])
        self.is_image = bool(meta["is_image"])
        self.input_shape = tuple(meta["input_shape"])
        self.data_shape = tuple(meta["data_shape"])
        self.n_features_in_ = int(meta["n_features_in"])
        if meta["feature_names"] is not None:
            self.feature_names_in_ = np.asarray(meta["feature_names"], dtype=object)
        self.input_dtype = np.dtype(_NUMPY_DTYPES[meta["input_dtype"]])
        self._input_name = meta["input_name"]
        self.precision = meta.get("precision", "float32")
        pre = meta.get("preprocessing")
        self.preprocessing = None if pre is None else Preprocessing.from_json(pre)
        self.table_schema = None if self.preprocessing is None else self.preprocessing.schema
        self._graph_inputs = [i.name for i in self._session.get_inputs()]
        if meta.get("classes") is not None:
            self.classes_ = np.asarray(meta["classes"])
        self._outputs = {o.name: o for o in self._session.get_outputs()}

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, part={self.part!r}, "
                f"estimator={self.metadata['estimator']!r}, providers={self.providers})")

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    # ------------------------------------------------------------- scoring
    def score_samples(self, X, y=None) -> np.ndarray:
        """Per-row score, higher = more normal: what the detector's ``score_samples`` gives.

        ``y``: each row's label, for a conditional scorer exported with
        ``with_label=True`` (:attr:`takes_labels`), which scores a row given its
        label as ``det.score_samples(X, y)`` does; no other scorer takes one.
        """
        self._require("scorer", "score_samples")
        return finite_scores(self.run(X, y)["score"])

    def decision_function(self, X, y=None) -> np.ndarray:
        """``score_samples(X, y) - offset_``: negative for outliers (a scorer given labels
        was exported with the model's per-label threshold, ``label_offset_``)."""
        return self.score_samples(X, y) - self.offset_

    def predict(self, X, y=None) -> np.ndarray:
        """+1 for inliers, -1 for outliers."""
        return outlier_labels(self.score_samples(X, y), self.offset_)

    def score_frame(self, X, explain: int = 0, y=None):
        """A DataFrame with X's index: ``score`` and ``is_outlier``; ``explain=k`` adds
        each row's k most anomalous features, ranked as the detector's ``score_frame``
        ranks them (``feature_i``, ``contribution_i``; rows, explaining scorers only).
        ``y``: labels, as in :meth:`score_samples`."""
        import pandas as pd

        k = check_count(explain, "explain")
        if k:
            self.require_explanations()
            if self.is_image:
                raise ValueError("score_frame(explain=k) is for rows; for images, explain(X) "
                                 "returns per-pixel maps.")
        self._require("scorer", "score_frame")
        outputs = self.run(X, y)
        score = finite_scores(outputs["score"])
        index = X.index if isinstance(X, (pd.DataFrame, pd.Series)) else pd.RangeIndex(len(score))
        frame = pd.DataFrame({"score": score, "is_outlier": is_outlier(score, self.offset_)},
                             index=index)
        if k:
            from .explanations import top_features

            top = top_features(pd.DataFrame(_as_float64(outputs["contributions"]),
                                            columns=self._feature_labels(X)), k)
            frame = frame.assign(**{c: top[c].to_numpy() for c in top})  # X's index may repeat
        return frame

    def explain(self, X):
        """Each feature's contribution to each row's anomaly: what the detector's ``explain``
        gives. Rows: a DataFrame with X's index, one column per feature (NaN where an entry
        is missing); images: an array (n, H, W). Needs a scorer exported with explain=True.
        """
        self.require_explanations()
        contributions = _as_float64(self.run(X)["contributions"])   # as the detector's
        if self.is_image:
            return contributions
        import pandas as pd

        index = X.index if isinstance(X, pd.DataFrame) else pd.RangeIndex(len(contributions))
        return pd.DataFrame(contributions, index=index, columns=self._feature_labels(X))

    def _feature_labels(self, X) -> list:
        return feature_labels(X, getattr(self, "feature_names_in_", None), self.n_features_in_)

    def require_explanations(self) -> None:
        """Refuse, saying how to export one, unless this is a scorer with explanations."""
        self._require("scorer", "explain")
        if self.metadata["estimator"] == "VQVAEDetector":
            raise ValueError("a VQ-VAE scorer has no per-feature explanations.")
        if not self.explains:
            raise ValueError(f"{str(self.path)!r} has no explanations; export the scorer with "
                             "det.export_onnx(path, explain=True) (vaeanom export --explain).")

    @property
    def explains(self) -> bool:
        """True for a scorer exported with explain=True (it has a ``contributions`` output)."""
        return "contributions" in self._outputs

    @property
    def feature_columns(self) -> list[str]:
        """Column names: the fitted feature names, else x0, x1, ..."""
        return column_names(getattr(self, "feature_names_in_", None), self.n_features_in_)

    # ---------------------------------------------------------- latent API
    def encode(self, X) -> np.ndarray:
        """The encoder's first output: posterior means (VAE, float64 as the detector's) or
        code indices (VQ-VAE, int64)."""
        self._require("encoder", "encode")
        codes = next(iter(self.run(X).values()))
        return _as_float64(codes) if codes.dtype.kind == "f" else codes

    def decode(self, Z) -> np.ndarray:
        """Latents -> reconstructions in the user's units (float64, as the detector's)."""
        self._require("decoder", "decode")
        decoded = finite_decoded(_as_float64(self.run(Z)["reconstruction"]))
        schema = self.table_schema
        if schema is None or not schema.has_categories:
            return decoded
        return schema.decode(decoded, self.feature_columns, getattr(Z, "index", None))

    def _require(self, part: str, method: str) -> None:
        if self.part != part:
            raise ValueError(f"{method} needs a model exported with part={part!r}; "
                             f"{str(self.path)!r} holds the {self.part!r}. Export it with "
                             f"det.export_onnx(path, part={part!r}).")

    # ----------------------------------------------------------- execution
    def run(self, X, y=None) -> dict[str, np.ndarray]:
        """Every output of the graph for X (and labels ``y``, for a scorer that takes
        them), as a dict of numpy arrays, chunk by chunk."""
        return self.run_feeds(self._with_labels(self._feeds(X), y))

    @property
    def takes_labels(self) -> bool:
        """True for a conditional scorer exported with ``with_label=True``: it scores
        each row given its label, and its graph takes a second input ``label``, each
        row's index in :attr:`classes_` (int64): shape (n,), or (n, 1) as Triton sends it."""
        return "label" in self._graph_inputs

    def _with_labels(self, feeds: dict[str, np.ndarray], y) -> dict[str, np.ndarray]:
        """``feeds`` and, for a scorer that takes labels, ``label``: y's codes."""
        if not self.takes_labels:
            if y is not None:
                raise ValueError("labels (y) are for a conditional scorer exported with "
                                 "det.export_onnx(path, with_label=True); this one takes "
                                 "none. Leave them out.")
            return feeds
        if y is None:
            raise ValueError("this conditional scorer scores each row given its label "
                             "(exported with with_label=True): give the labels, one per row "
                             "(or one for all; y=... in Python, --label COLUMN in vaeanom "
                             "score, \"labels\": [...] beside \"records\" in a /score "
                             f"request), among {self.classes_.tolist()[:10]}.")
        from .labels import label_codes, one_label_per_row   # pandas: only with labels

        n_rows = len(next(iter(feeds.values())))
        codes = label_codes(one_label_per_row(y, n_rows), self.classes_, n_rows, "labels")
        return {**feeds, "label": codes}

    @property
    def graph_inputs(self) -> list[dict[str, Any]]:
        """The graph's inputs: name, dtype (numpy name) and per-row shape, in order."""
        return [{"name": i.name, "dtype": _GRAPH_DTYPES[i.type], "shape": list(i.shape[1:])}
                for i in self._session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        """The graph's output names, in order: what ``run`` returns."""
        return list(self._outputs)

    def check_feeds(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tensors named as the graph's inputs (what a server receives) -> checked feeds.

        Names, dtypes and shapes must be the graph's exactly; then the values get
        the checks ``run`` gives user input (NaN, overflow, holes), so a bad
        request is refused before it shares a batch with good ones.
        """
        expected = self.graph_inputs
        names = [spec["name"] for spec in expected]
        unknown = [name for name in tensors if name not in names]
        if unknown:
            raise ValueError(f"unknown input(s) {unknown}; the model takes {names}.")
        missing = [name for name in names if name not in tensors]
        if missing:
            raise ValueError(f"missing input(s) {missing}; the model takes {names}.")
        rows, tensors = None, dict(tensors)
        for spec in expected:
            array = np.asarray(tensors[spec["name"]])
            if not spec["shape"] and array.ndim == 2 and array.shape[1] == 1:
                array = tensors[spec["name"]] = array[:, 0]   # Triton's shape for it: (n, 1)
            if array.dtype != np.dtype(spec["dtype"]):
                raise TypeError(f"input {spec['name']!r} must be {spec['dtype']}; got "
                                f"{array.dtype}.")
            if array.ndim != 1 + len(spec["shape"]) or list(array.shape[1:]) != spec["shape"]:
                raise ValueError(f"input {spec['name']!r} must have shape (n, "
                                 f"{', '.join(map(str, spec['shape']))}); got {array.shape}.")
            if rows is not None and len(array) != rows:
                raise ValueError(f"inputs have different numbers of rows ({rows} and "
                                 f"{len(array)}); each row needs every input.")
            rows = len(array)
        if rows == 0:
            raise ValueError("the inputs have 0 rows; send at least one.")
        if self.part != "decoder" and self.table_schema is not None:
            feeds = self._checked_table_feeds(self._rows_from_table_feeds(tensors))
        else:
            feeds = self._feeds(tensors[names[0]])
        if self.takes_labels:
            feeds["label"] = self._checked_label_codes(tensors["label"])
        return feeds

    def _checked_label_codes(self, codes: np.ndarray) -> np.ndarray:
        """A ``label`` tensor, refused unless every code indexes :attr:`classes_`."""
        outside = (codes < 0) | (codes >= len(self.classes_))
        if outside.any():
            raise ValueError(f"input 'label' holds {int(codes[outside][0])}: a label is its "
                             f"index in the model's classes, 0..{len(self.classes_) - 1} "
                             f"({self.classes_.tolist()[:10]}).")
        return codes

    def _rows_from_table_feeds(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """numbers, codes and observed -> the float64 rows with NaN holes they stand for.

        A code outside 0..K-1 is a category ``fit`` never saw (as documented: -1
        included, so a missing entry must be marked by ``observed``). A NaN number
        in an entry ``observed`` marks present is refused: the two inputs disagree."""
        cardinalities = np.asarray(self.table_schema.cardinalities)
        observed = tensors["observed"]
        numeric = cardinalities == 0
        rows = np.empty(observed.shape, dtype=np.float64)
        if "numbers" in tensors:
            numbers = tensors["numbers"]
            _refuse_in_observed(np.isnan(numbers), observed[:, numeric], "numbers", "NaN")
            rows[:, numeric] = numbers
        if "codes" in tensors:
            codes = tensors["codes"]
            known = (codes >= 0) & (codes < cardinalities[~numeric])
            rows[:, ~numeric] = np.where(known, codes, cardinalities[~numeric])
        rows[~observed] = np.nan
        return rows

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph for checked feeds (see ``check_feeds``), chunk by chunk."""
        size, n_rows = self.batch_size, len(next(iter(feeds.values())))
        n_padded = -(-n_rows // size) * size
        results = {name: np.empty((n_padded, *self._row_shape(out)), _dtype_of(out))
                   for name, out in self._outputs.items()}
        binding = self._session.io_binding()
        for start in range(0, n_rows, size):
            for name, feed in feeds.items():
                binding.bind_cpu_input(name, _padded(feed[start:start + size], size))
            for name, result in results.items():
                target = result[start:start + size]
                binding.bind_output(name, "cpu", 0, target.dtype, list(target.shape),
                                    target.ctypes.data)
            self._session.run_with_iobinding(binding)
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
        return {name: result[:n_rows] for name, result in results.items()}

    def _row_shape(self, output) -> tuple[int, ...]:
        dims = output.shape[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ValueError(f"output {output.name!r} has symbolic dims {output.shape}; "
                             "only the batch dimension may be dynamic.")
        return tuple(dims)

    # ---------------------------------------------------------- validation
    def _feeds(self, X) -> dict[str, np.ndarray]:
        """Validated X as the graph's inputs, by name."""
        if self.part == "decoder":
            return {self._input_name: self._check_latents(X)}
        if self.table_schema is not None:
            return self._table_feeds(X)
        return {self._input_name: self._check_input(X)}

    def _table_feeds(self, X) -> dict[str, np.ndarray]:
        """A table's rows -> numbers, category codes and the mask of observed entries
        (:func:`vaeanom.onnx_format.table_inputs`), checked as the estimator checks them."""
        schema = self.table_schema
        if hasattr(X, "columns") and hasattr(X, "to_numpy"):
            self._check_columns(X)
            if len(X) == 0:
                raise ValueError("X has 0 rows; pass at least one.")
            return self._checked_table_feeds(schema.encode(X), index=X.index)
        if hasattr(X, "to_frame") and schema.has_categories:   # one row, df.loc[i]
            raise ValueError("X is a pandas Series; pass a DataFrame with the columns the "
                             "model was fitted on (for one row taken with df.loc[i], use "
                             "df.loc[[i]]).")
        if schema.has_categories:
            raise ValueError("this model was fitted on a DataFrame with categorical columns; "
                             "pass a DataFrame with the same columns (numpy arrays hold numbers "
                             "only).")
        rows = _numeric_array(X, "X", allow_nan=True).astype(np.float64)
        return self._checked_table_feeds(rows)

    def _checked_table_feeds(self, rows: np.ndarray, index=None) -> dict[str, np.ndarray]:
        """Encoded rows (numbers, codes, NaN holes) -> checked graph inputs (``index``: a
        DataFrame's, to name its rows)."""
        schema = self.table_schema
        _check_width(rows, self.n_features_in_, "X")
        names = getattr(self, "feature_names_in_", None)
        check_missing_values(rows, None if names is None else list(names), index=index)
        self.preprocessing.check(rows, self.precision)
        observed = ~np.isnan(rows)
        filled = np.where(observed, rows, 0.0)
        numeric = np.asarray(schema.cardinalities) == 0
        feeds = {"numbers": filled[:, numeric].astype(np.float32),
                 "codes": filled[:, ~numeric].astype(np.int64), "observed": observed}
        return {name: feeds[name] for name in self._graph_inputs}

    def _check_input(self, X) -> np.ndarray:
        """Validate X and convert it to the graph's input dtype and shape."""
        kind = "images" if self.is_image else "rows"
        array = _numeric_array(self._frame_values(X), "X", allow_nan=True)
        if not self.is_image:   # infinities named by column first, as the estimator does
            check_no_infinity(array, getattr(self, "feature_names_in_", None))
        _check_finite(array, "X", kind)
        expected = self.data_shape
        if self.is_image and is_one_image(array.shape, expected):
            raise ValueError(f"X is one image of shape {array.shape}; the model takes a batch "
                             f"(n, {', '.join(map(str, expected))}): pass X[None].")
        if self.is_image and array.ndim == 2:  # flattened pixels
            array = _reshape_rows(array, self.data_shape, "X")
        if self.is_image:
            if tuple(array.shape[1:]) != expected:
                hint = image_shape_hint(array.shape[1:], expected)
                raise ValueError(f"the model takes images of shape {expected}; got X of shape "
                                 f"{array.shape}{hint}.")
        else:
            _check_width(array, expected[0], "X")
        if self.preprocessing is not None:  # in the estimator's units: pixels in [0, 1]
            uint8_pixels = self.is_image and array.dtype == np.uint8
            self.preprocessing.check(array * np.float32(1 / 255) if uint8_pixels else array,
                                     self.precision)
        return self._to_input_dtype(array)

    def _frame_values(self, X):
        """A DataFrame's values (checked against the fitted columns; pd.NA and None are NaN
        where the model takes holes), or X itself."""
        if not (hasattr(X, "columns") and hasattr(X, "to_numpy")):
            return X
        self._check_columns(X)
        values = X.to_numpy()
        if values.dtype == object:   # bool, nullable or object columns among numbers
            from .tables import non_numeric_columns, numbers_of, numbers_only_error

            values = numbers_of(X)
            if values is None:
                raise numbers_only_error(non_numeric_columns(X))
        return values

    def _check_columns(self, X) -> None:
        from .tables import check_frame_columns   # pandas: imported only for DataFrames

        check_frame_columns(X)
        names = getattr(self, "feature_names_in_", None)
        columns = [str(c) for c in X.columns]
        if names is not None and columns != list(names):
            missing = [n for n in names if n not in columns]
            unexpected = [c for c in columns if c not in set(names)]
            raise ValueError(
                "X's columns differ from those the model was fitted on"
                + (f"; missing: {missing[:5]}" if missing else "")
                + (f"; unexpected: {unexpected[:5]}" if unexpected else "")
                + ("; same names in another order: reorder with X[model.feature_names_in_]"
                   if not missing and not unexpected else "") + ".")

    def _to_input_dtype(self, array: np.ndarray) -> np.ndarray:
        if self.input_dtype == np.uint8:
            if array.dtype != np.uint8:
                raise ValueError(f"this model was exported with input_dtype='uint8' and takes "
                                 f"8-bit pixels; got dtype {array.dtype}. Pass uint8 images or "
                                 "export with input_dtype='float32'.")
            return array
        if self.is_image and array.dtype == np.uint8:  # as the detector does: pixels / 255
            return array.astype(np.float32) * np.float32(1.0 / 255.0)
        return array.astype(self.input_dtype, copy=False)

    def _check_latents(self, Z) -> np.ndarray:
        # a frame of latents (transform's z0, z1, ... under set_output) is read by position:
        # its columns are not the input's, so they are not checked against them
        array = _numeric_array(Z.to_numpy() if hasattr(Z, "to_numpy") else Z, "Z",
                               kind="latents")
        if array.ndim == 2 and len(self.input_shape) > 1:
            array = _reshape_rows(array, self.input_shape, "Z")
        if tuple(array.shape[1:]) != self.input_shape:
            raise ValueError(f"Z must have shape (n, {', '.join(map(str, self.input_shape))}); "
                             f"got {array.shape}.")
        if self.metadata.get("codebook_size") is not None:
            check_code_values(array, self.metadata["codebook_size"])
        return array.astype(self.input_dtype, copy=False)


def _read_checked(path: Path) -> tuple[bytes, bool]:
    """The file's bytes and whether they carry a seal (a seal that does not match raises)."""
    if path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is a folder, not an ONNX file; give the .onnx "
                                "file (a Triton repository is served with vaeanom serve).")
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {str(path)!r}.")
    data = path.read_bytes()
    return data, digest.verify(data, DIGEST_MARKER, repr(str(path)))


def _padded(chunk: np.ndarray, size: int) -> np.ndarray:
    """``chunk`` as a contiguous array of exactly ``size`` rows (zeros after its own)."""
    if len(chunk) == size:
        return np.ascontiguousarray(chunk)
    padded = np.zeros((size, *chunk.shape[1:]), dtype=chunk.dtype)
    padded[:len(chunk)] = chunk
    return padded


def _open_session(data: bytes, path: Path, options: ort.SessionOptions,
                  providers) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(data, sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ValueError(f"{str(path)!r} is not a readable ONNX model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:200]}). Export one with "
                         "det.export_onnx(path).") from None


def _read_metadata(session: ort.InferenceSession, path: Path, sealed: bool) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"{str(path)!r} is an ONNX model but was not exported by vaeanom "
                         "(no 'vaeanom' metadata); use onnxruntime directly for it.")
    try:
        meta = json.loads(props[METADATA_KEY])
        version = int(meta.get("format_version", -1))
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"{str(path)!r} has unreadable vaeanom metadata; the file is "
                         "corrupt. Export it again.") from None
    if meta.get("format") != FORMAT or version > FORMAT_VERSION:
        raise ValueError(f"{str(path)!r} has vaeanom ONNX format {meta.get('format_version')!r}; "
                         f"this vaeanom reads up to version {FORMAT_VERSION}. Upgrade vaeanom.")
    if version >= 2 and not sealed:
        raise ValueError(f"{str(path)!r} has lost its SHA-256 digest: the file is corrupt or "
                         "was edited. Export it again.")
    problem = _metadata_problem(meta, session)
    if problem:  # a seal proves integrity, not authorship: check what the file claims
        raise ValueError(f"{str(path)!r} has invalid vaeanom metadata ({problem}); the file is "
                         "corrupt or was not written by vaeanom. Export it again.")
    return meta


_GRAPH_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)",
                "uint8": "tensor(uint8)", "int64": "tensor(int64)", "int32": "tensor(int32)",
                "bool": "tensor(bool)"}


def _is_input_list(value) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= 4   # a table's 3, and labels
            and all(isinstance(i, dict) and isinstance(i.get("name"), str)
                    and i.get("dtype") in _GRAPH_TYPES
                    and (i.get("shape") == [] or _is_shape(i.get("shape")))   # []: labels
                    for i in value))


def _is_shape(value) -> bool:
    return (isinstance(value, list) and 0 < len(value) <= 4
            and all(type(d) is int and d >= 1 for d in value))


def _metadata_problem(meta: dict[str, Any], session: ort.InferenceSession) -> str | None:
    """What is wrong with an exported file's metadata, or None: every field the runtime
    uses, and that the graph's input and outputs are what the metadata says."""
    checks = {
        "estimator": lambda v: isinstance(v, str),
        "part": lambda v: v in ("scorer", "encoder", "decoder"),
        "score_kind": lambda v: isinstance(v, str),
        "offset": lambda v: type(v) in (int, float) and abs(v) <= 1e308,  # NaN fails too
        "is_image": lambda v: isinstance(v, bool),
        "input_shape": _is_shape,
        "data_shape": _is_shape,
        "n_features_in": lambda v: type(v) is int and v >= 1,
        "feature_names": lambda v: v is None or (isinstance(v, list)
                                                 and all(isinstance(s, str) for s in v)),
        "input_dtype": lambda v: isinstance(v, str) and v in _NUMPY_DTYPES,
        "input_name": lambda v: isinstance(v, str),
    }
    optional = {"precision": lambda v: v in ("float32", "float16"),
                "codebook_size": lambda v: v is None or (type(v) is int and v >= 1),
                "preprocessing": lambda v: v is None or isinstance(v, dict)}
    for name, check in {**checks, **optional}.items():
        if (name in checks and name not in meta) or (name in meta and not check(meta[name])):
            return f"{name} = {str(meta.get(name, '<missing>'))[:40]!r}"
    data_shape = meta["data_shape"]
    if math.prod(data_shape) != meta["n_features_in"] or (
            len(data_shape) not in ((2, 3) if meta["is_image"] else (1,))):
        return f"data_shape {data_shape} does not match n_features_in {meta['n_features_in']}"
    names = meta["feature_names"]
    if names is not None and (len(names) != meta["n_features_in"] or meta["is_image"]):
        return f"{len(names)} feature names for {meta['n_features_in']} features"
    if meta["part"] != "decoder" and meta["input_shape"] != data_shape:
        return f"input_shape {meta['input_shape']} is not data_shape {data_shape}"
    inputs, outputs = session.get_inputs(), {o.name for o in session.get_outputs()}
    listed = meta.get("graph_inputs") or [  # files before format 3 had one input
        {"name": meta["input_name"], "dtype": meta["input_dtype"], "shape": meta["input_shape"]}]
    if not _is_input_list(listed):
        return f"graph_inputs = {str(listed)[:60]!r}"
    data_inputs = [i for i in listed if i["name"] != "label"]
    if len(data_inputs) < len(listed) and (
            meta["part"] != "scorer" or not are_class_labels(meta.get("classes"))
            or listed[-1] != {"name": "label", "dtype": "int64", "shape": []}):
        return "a 'label' input without a scorer's classes, or not int64 codes (n,)"
    first = listed[0]
    if first["name"] != meta["input_name"] or (len(data_inputs) == 1 and (
            first["dtype"] != meta["input_dtype"] or first["shape"] != meta["input_shape"])):
        return f"input {meta['input_name']!r} {meta['input_dtype']} is not the graph's {first}"
    graph = [(i.name, i.type, list(i.shape[1:])) for i in inputs]
    if graph != [(i["name"], _GRAPH_TYPES[i["dtype"]], i["shape"]) for i in listed]:
        return f"the graph takes {graph}, not the inputs its metadata lists ({listed})"
    for value in (*inputs, *session.get_outputs()):   # batch first and dynamic, the rest fixed
        if (not value.shape or isinstance(value.shape[0], int)
                or not all(isinstance(d, int) for d in value.shape[1:])):
            return f"{value.name!r} has shape {value.shape}; only its first axis may be dynamic"
    unknown = [o.name for o in session.get_outputs() if o.type not in _GRAPH_DTYPES]
    if unknown:
        return f"outputs {unknown} have types the runtime does not read"
    needed = {"scorer": "score", "decoder": "reconstruction"}.get(meta["part"])
    if needed is not None and needed not in outputs:
        return f"a {meta['part']} without a {needed!r} output"
    if "contributions" in outputs:
        shape = [o.shape[1:] for o in session.get_outputs() if o.name == "contributions"][0]
        if meta["part"] != "scorer" or shape != (
                data_shape[-2:] if meta["is_image"] else [meta["n_features_in"]]):
            return f"contributions of shape {shape} in a {meta['part']} of data {data_shape}"
    codes = {"encoder": session.get_outputs()[0].type, "decoder": inputs[0].type}.get(meta["part"])
    if codes is not None and (meta.get("codebook_size") is None) == (codes == "tensor(int64)"):
        return f"codebook_size {meta.get('codebook_size')!r} for latents of type {codes}"
    if meta.get("preprocessing") is not None:
        try:
            pre = Preprocessing.from_json(meta["preprocessing"])
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            return f"preprocessing: {type(err).__name__} {err}"
        if pre.categories is not None and len(pre.categories) != meta["n_features_in"]:
            return f"{len(pre.categories)} table columns for {meta['n_features_in']} features"
        table_data = pre.categories is not None and meta["part"] != "decoder"
        if table_data and len(data_inputs) < len(listed):
            return "a table model whose scorer takes labels (conditional models take no tables)"
        if table_data and data_inputs != table_inputs(pre.schema.cardinalities):
            return f"a table model whose graph takes {listed}"
        if not table_data and len(data_inputs) != 1:
            return f"a graph with {len(listed)} inputs for a model that takes one"
        if (list(pre.input_shape) != data_shape or pre.is_image != meta["is_image"]
                or pre.center.shape != pre.scale.shape
                or pre.center.size != meta["n_features_in"]
                or not np.isfinite(pre.center).all() or not np.isfinite(pre.scale).all()
                or not (pre.scale > 0).all()
                or (names is not None and list(pre.feature_names or ()) != names)):
            return "preprocessing does not match the input or is not finite with positive scales"
    return None


_GRAPH_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
                 "tensor(double)": "float64", "tensor(uint8)": "uint8",
                 "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}


def _dtype_of(output) -> np.dtype:
    return np.dtype(_GRAPH_DTYPES[output.type])


#: what a NaN or an infinity in each kind of input means, and what to do
_NOT_FINITE = {
    "rows": ("This model was fitted on complete rows and its export takes complete rows (a "
             f"{TABLE_MODEL} fitted on rows with holes takes them, and so does its export): "
             "impute or drop those rows first."),
    "images": "Images must be complete: every pixel a finite number.",
    "latents": "Latents must be finite: pass codes from encode, or draws of the prior's scale.",
}


def _as_float64(values: np.ndarray) -> np.ndarray:
    """A graph's float32 output in the dtype the detector returns it in (and scores have)."""
    return np.asarray(values, dtype=np.float64)


def _refuse_in_observed(bad: np.ndarray, observed: np.ndarray, name: str, what: str) -> None:
    """Refuse ``what`` where ``observed`` says the entry is there: the two inputs disagree."""
    clash = bad & observed
    if clash.any():
        row, column = (int(i[0]) for i in np.nonzero(clash))
        raise ValueError(f"input {name!r} holds {what} at row {row}, column {column}, an "
                         "entry input 'observed' marks present; a missing entry is "
                         "observed=false (its value is then ignored).")


def _numeric_array(values, name: str, allow_nan: bool = False,
                   kind: str = "rows") -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}. Convert text or "
                         "object columns to numbers first.")
    if array.ndim < 2:
        raise ValueError(f"{name} must be 2-D (n, features) or images; got shape {array.shape}. "
                         f"Use {name}.reshape(1, -1) for a single row.")
    if len(array) == 0:
        raise ValueError(f"{name} has 0 rows; pass at least one.")
    if not allow_nan:
        _check_finite(array, name, kind)
    return array


def _check_finite(array: np.ndarray, name: str, kind: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinity. {_NOT_FINITE[kind]}")


def _check_width(array: np.ndarray, width: int, name: str) -> None:
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name} has shape {array.shape}, but the model was fitted on "
                         f"{width} features.")


def _reshape_rows(array: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    size = int(np.prod(shape))
    if array.shape[1] != size:
        raise ValueError(f"{name} has {array.shape[1]} features, but the model takes "
                         f"{tuple(shape)} ({size} values) per row.")
    return array.reshape(len(array), *shape)
