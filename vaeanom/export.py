"""ONNX export of a fitted detector: encoder, decoder or the whole scorer.

Each part is one self-contained ``.onnx`` file (weights inside, no side
``.data`` file) that takes what the user has, not what the model sees:

- ``"scorer"``: raw rows or images -> ``score`` (what ``score_samples`` returns),
  with the fitted standardisation, the uint8 pixel scaling and the Monte-Carlo
  noise fixed at fit time all inside the graph. A bare
  ``onnxruntime.InferenceSession`` gives the numbers ``score_samples`` gives.
- ``"encoder"``: raw input -> the model's latent representation (the posterior
  mean and log-variance for a VAE).
- ``"decoder"``: latents -> reconstructions in the user's units.

A table model (fitted on categorical columns or holes) takes, instead of one
``input``, the numeric columns as float32 ``numbers``, the categorical ones as
int64 ``codes`` and the bool ``observed`` mask
(:func:`vaeanom.onnx_format.table_inputs`); the categories behind the codes are
in the metadata's ``preprocessing``.

The batch dimension is dynamic. Everything :class:`vaeanom.OnnxModel` needs
(version, estimator and parameters, input shape and feature names, score kind,
the threshold ``offset_``, or ``label_offset_`` for a scorer given labels) is
written to the model's ``metadata_props``; see ``read_metadata``.

The graphs are deterministic: no random op is exported, the scorer's noise is
a constant. ``fp16=True`` runs the encoder and decoder networks in half
precision (for GPUs) while preprocessing, the likelihood and the sums over
features stay in float32. float16 holds at most 65504: ``OnnxModel`` refuses
rows whose standardised values pass it (as the estimator refuses float32
overflow), and inside the graph a score that still overflows comes out as
-inf, never NaN, so even a bare session ranks it as the least normal row. That
includes rows whose posterior spreads past float16 (a standard deviation up to
3.3e6 under the log-variance clamp), which float32 scores finitely. On CPU
onnxruntime the fp16 scores moved by a median 3e-6 relative on images
(benchmarks/inference.py), and by a median 3e-4 to 0.05 of the training
scores' IQR on rows (benchmarks/fp16_drift.py); test_fp16_export_stays_close
holds them within 1e-2 relative on images.

The file is sealed: its metadata holds the SHA-256 of its bytes
(:mod:`vaeanom.digest`), which ``OnnxModel`` checks before opening it.

The exporter takes from the detector only public descriptions:
``onnx_part`` (a :class:`PartSpec`), ``preprocessing_`` (a
:class:`vaeanom.preprocessing.Preprocessing`, which the torch-side
preprocessing here and the runtime's input checks are both built from),
``get_params``, ``offset_`` and ``n_features_in_``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import __version__, digest
from .checks import check_count
from .fileio import atomic_write
from .onnx_rewrite import stable_reductions
from .onnx_format import (DIGEST_KEY, DIGEST_MARKER, FORMAT, FORMAT_VERSION, METADATA_KEY, PARTS,
                          table_inputs)
from .preprocessing import Preprocessing, jsonable_params

INPUT_DTYPES = ("auto", "float32", "uint8")
OPSET = 18


class PartSpec(NamedTuple):
    """What a detector hands the exporter for one part, all in model units.

    ``module`` maps a model-unit batch (``input`` is "data") or a latent batch
    (``input`` is "latent", of per-row shape ``latent_shape`` and dtype
    ``latent_dtype``) to ``outputs`` (a tensor or a tuple, named in order).
    ``score_kind`` is what the detector's ``score_samples`` computes;
    ``codebook_size`` is K when latents are integer codes in [0, K).
    ``extra_inputs`` are graph inputs (name, dtype, per-row shape) that
    ``module`` takes after the model-unit batch, as they come (a conditional
    scorer's label codes). ``offset`` is the threshold on that score when it
    is not the detector's ``offset_`` (a per-label score has its own).
    """

    module: nn.Module
    input: str
    outputs: tuple[str, ...]
    score_kind: str
    latent_shape: tuple[int, ...] = ()
    latent_dtype: torch.dtype = torch.float32
    codebook_size: int | None = None
    extra_inputs: tuple[dict[str, Any], ...] = ()
    offset: float | None = None


class _HalfPrecision(nn.Module):
    """Run ``inner`` in float16 between float32 inputs and float32 outputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: Tensor):
        out = self.inner(x.half() if x.is_floating_point() else x)
        if isinstance(out, tuple):
            return tuple(t.float() for t in out)
        return out.float()


def half_precision(model: nn.Module) -> nn.Module:
    """A copy of a VAE-like model whose encoder and decoder run in float16."""
    model = copy.deepcopy(model)
    model.encoder = _HalfPrecision(model.encoder)
    model.decoder = _HalfPrecision(model.decoder)
    return model


class _UserInput(nn.Module):
    """User's rows or images -> model units: :meth:`Preprocessing.to_model_units` as graph ops."""

    def __init__(self, pre: Preprocessing, input_dtype: str) -> None:
        super().__init__()
        self.model_shape = tuple(pre.center.shape)
        self.pixel_scale = 1.0 / 255.0 if input_dtype == "uint8" else None
        self.register_buffer("center", torch.tensor(pre.center, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=torch.float32))
        self.is_image = pre.is_image

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.model_shape)
        if self.is_image:
            x = x.float()
            x = x * self.pixel_scale if self.pixel_scale is not None else x
        return (x - self.center) / self.scale


class _UserOutput(nn.Module):
    """Model-unit reconstructions -> the user's units, as ``BaseDetector._to_user_units``."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.input_shape = tuple(pre.input_shape)
        self.register_buffer("center", torch.tensor(pre.center, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x * self.scale + self.center).reshape(x.shape[0], *self.input_shape)


class _WorstIfNotFinite(nn.Module):
    """Scores -> scores with NaN and infinities replaced by -inf (:mod:`vaeanom.checks`)."""

    def forward(self, score: Tensor) -> Tensor:
        return torch.where(torch.isfinite(score), score, torch.full_like(score, -torch.inf))


class ScoreAndExplain(nn.Module):
    """One model-unit batch -> (score, contributions): the scorer with ``explain=True``."""

    def __init__(self, scorer: nn.Module, contributions: nn.Module) -> None:
        super().__init__()
        self.scorer, self.contributions = scorer, contributions

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.scorer(x), self.contributions(x)


class _OnScore(nn.Module):
    """``post`` applied to the score of a (score, contributions) pair only."""

    def __init__(self, post: nn.Module) -> None:
        super().__init__()
        self.post = post

    def forward(self, outputs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        score, contributions = outputs
        return self.post(score), contributions


class _TableInput(nn.Module):
    """A table model's inputs (:func:`vaeanom.onnx_format.table_inputs`) -> model units.

    Numbers are standardised, codes outside 0..K-1 become K (unseen), and
    every entry ``observed`` marks False becomes NaN: the rows the estimator
    builds with :meth:`vaeanom.tables.TableSchema.encode`.
    """

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        cardinalities = pre.schema.cardinalities
        numeric = [j for j, k in enumerate(cardinalities) if k == 0]
        categorical = [j for j, k in enumerate(cardinalities) if k > 0]
        self.has_numbers, self.has_codes = bool(numeric), bool(categorical)
        self.register_buffer("center", torch.tensor(pre.center[numeric], dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(pre.scale[numeric], dtype=torch.float32))
        self.register_buffer("unseen", torch.tensor([cardinalities[j] for j in categorical]))
        # inputs come grouped (numbers, then codes); column j of the table is at order[j]
        grouped = numeric + categorical
        self.register_buffer("order", torch.tensor([grouped.index(j)
                                                    for j in range(len(cardinalities))]))

    def forward(self, *inputs: Tensor) -> Tensor:
        *values, observed = inputs
        parts = []
        if self.has_numbers:
            parts.append((values.pop(0) - self.center) / self.scale)
        if self.has_codes:
            codes = values.pop(0)
            known = (codes >= 0) & (codes < self.unseen)
            parts.append(torch.where(known, codes, self.unseen).float())
        rows = torch.cat(parts, dim=1).index_select(1, self.order)
        return torch.where(observed, rows, torch.full_like(rows, torch.nan))


class _Graph(nn.Module):
    """pre -> part -> post, with tuple outputs kept as tuples; the last ``n_extra`` inputs
    skip ``pre`` and go to ``part`` as they are."""

    def __init__(self, pre: nn.Module, part: nn.Module, post: nn.Module, n_extra: int = 0) -> None:
        super().__init__()
        self.pre, self.part, self.post, self.n_extra = pre, part, post, n_extra

    def forward(self, *inputs: Tensor):
        split = len(inputs) - self.n_extra
        return self.post(self.part(self.pre(*inputs[:split]), *inputs[split:]))


_TORCH_DTYPES = {"float32": torch.float32, "uint8": torch.uint8, "int64": torch.int64,
                 "bool": torch.bool}


def graph_inputs(pre: Preprocessing, spec: PartSpec, input_dtype: str) -> list[dict[str, Any]]:
    """The graph's inputs, per row: name, dtype and shape (what the metadata lists)."""
    if spec.input == "latent":
        dtype = str(spec.latent_dtype).removeprefix("torch.")
        return [{"name": "latent", "dtype": dtype, "shape": list(spec.latent_shape)}]
    extra = [dict(i) for i in spec.extra_inputs]
    if pre.schema is not None:
        return table_inputs(pre.schema.cardinalities) + extra
    return [{"name": "input", "dtype": input_dtype, "shape": list(pre.input_shape)}] + extra


def _example_inputs(inputs: list[dict[str, Any]]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros((2, *spec["shape"]), dtype=_TORCH_DTYPES[spec["dtype"]])
                 for spec in inputs)


def _first_stage(pre: Preprocessing, spec: PartSpec, input_dtype: str) -> nn.Module:
    if spec.input == "latent":
        return nn.Identity()
    if pre.schema is not None:
        return _TableInput(pre)
    return _UserInput(pre, input_dtype)


def resolve_input_dtype(pre: Preprocessing, input_dtype: str) -> str:
    """"auto" follows the training input: uint8 for models fitted on uint8 images."""
    _check_choice("input_dtype", input_dtype, INPUT_DTYPES)
    if input_dtype == "auto":
        return "uint8" if pre.is_image and pre.pixel_dtype == "uint8" else "float32"
    if input_dtype == "uint8" and not pre.is_image:
        raise ValueError("input_dtype='uint8' is for image models; rows are float32.")
    return input_dtype


class Graph(NamedTuple):
    """What ``export_onnx`` traces: the module, its inputs (name, dtype, per-row shape),
    example inputs of two rows, and the part's spec."""

    module: nn.Module
    inputs: list[dict[str, Any]]
    examples: tuple[Tensor, ...]
    spec: PartSpec


def build_graph(detector, part: str = "scorer", *, fp16: bool = False,
                input_dtype: str = "auto", explain: bool = False,
                with_label: bool = False) -> Graph:
    """The torch module that is exported for ``part``, with its inputs and spec."""
    _check_choice("part", part, PARTS)
    pre = detector.preprocessing_
    input_dtype = resolve_input_dtype(pre, input_dtype)
    last = {"decoder": _UserOutput(pre), "scorer": _WorstIfNotFinite()}.get(part, nn.Identity())
    if with_label and not getattr(detector, "conditional", False):
        raise ValueError("with_label=True exports a conditional VAE's scorer (the label as a "
                         f"second input); this {type(detector).__name__} was not fitted with "
                         "labels (conditional=False). Leave it out, or fit "
                         "VAEDetector(conditional=True) with fit(X, y).")
    options = {"with_label": True} if with_label else {}   # conditional VAEs only take it
    if explain:
        _check_explains(detector, part)
        spec = detector.onnx_part(part, fp16=fp16, explain=True, **options)
        last = _OnScore(last)
    else:
        spec = detector.onnx_part(part, fp16=fp16, **options)
    module = _Graph(_first_stage(pre, spec, input_dtype), spec.module, last,
                    len(spec.extra_inputs)).cpu().eval()
    inputs = graph_inputs(pre, spec, input_dtype)
    return Graph(module, inputs, _example_inputs(inputs), spec)


def _check_explains(detector, part: str) -> None:
    """explain=True needs a VAEDetector's scorer; say so otherwise."""
    if part != "scorer":
        raise ValueError(f"explain=True adds explanations to the scorer; part={part!r} has "
                         "none. Export part='scorer'.")
    if not hasattr(detector, "onnx_contributions"):
        raise ValueError(f"{type(detector).__name__} has no explain(); explain=True needs a "
                         "VAEDetector.")


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}.")


def export_onnx(detector, path: str | os.PathLike, part: str = "scorer", *, fp16: bool = False,
                input_dtype: str = "auto", explain: bool = False,
                with_label: bool = False) -> Path:
    """Write ``part`` of a fitted detector to one self-contained, sealed ONNX file at ``path``.

    ``explain=True`` (a VAEDetector's scorer) adds the output ``contributions``,
    what ``explain`` returns: (n, n_features) for rows, NaN where an entry is
    missing; (n, H, W) for images. For a table model it costs one encoder and
    decoder pass per column.

    ``input_dtype="uint8"`` (image models only) makes the graph take 8-bit pixels
    and divide them by 255 itself, as ``score_samples`` does with uint8 images;
    "float32" takes rows, or pixels already in [0, 1]. "auto" follows what the
    model was fitted on, so a bare onnxruntime session fed the user's own array
    gives ``score_samples``. The write is atomic, and the file passes
    ``onnx.checker`` (full check).

    A conditional VAE's scorer marginalises the label (``score_samples(X)``);
    ``with_label=True`` makes it take a second input ``label``, int64 codes
    (each row's label's index in ``classes_``, which the metadata lists), and
    return ``score_samples(X, y)``; a code outside the classes scores -inf.
    ``OnnxModel`` runs it with the labels' names (``score_samples(X, y)``), and a bare
    onnxruntime session with the codes.
    """
    import onnx

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(detector)
    input_dtype = resolve_input_dtype(detector.preprocessing_, input_dtype)
    graph = build_graph(detector, part, fp16=fp16, input_dtype=input_dtype, explain=explain,
                        with_label=with_label)
    batch = torch.export.Dim("batch", min=1, max=2**31 - 1)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        # inputs share the batch axis: torch says it keeps one name for them, which is right
        warnings.filterwarnings("ignore", ".*The axis name: batch will not be used")
        program = torch.onnx.export(
            graph.module, graph.examples, input_names=[i["name"] for i in graph.inputs],
            output_names=list(graph.spec.outputs),
            dynamic_shapes=(tuple({0: batch} for _ in graph.inputs),), opset_version=OPSET,
            dynamo=True, external_data=False, verbose=False)
        program.save(os.path.join(tmp, "model.onnx"), external_data=False)
        proto = stable_reductions(onnx.load(os.path.join(tmp, "model.onnx")))
    meta = _metadata(detector, part, graph, fp16, input_dtype)
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta),
                                        DIGEST_KEY: digest.PLACEHOLDER.decode()})
    proto.doc_string = f"vaeanom {meta['estimator']} {part} (vaeanom {__version__})"
    onnx.checker.check_model(proto, full_check=True)
    data = digest.seal(proto.SerializeToString(), DIGEST_MARKER)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def _metadata(detector, part: str, graph: Graph, fp16: bool,
              input_dtype: str) -> dict[str, Any]:
    pre, spec = detector.preprocessing_, graph.spec
    latent = spec.input == "latent"
    input_name = graph.inputs[0]["name"]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vaeanom_version": __version__,
        "estimator": type(detector).__name__,
        "params": jsonable_params(detector.get_params()),
        "part": part,
        "precision": "float16" if fp16 else "float32",
        "input_name": input_name,
        "graph_inputs": graph.inputs,
        "input_shape": list(spec.latent_shape if latent else pre.input_shape),
        "input_dtype": str(spec.latent_dtype).removeprefix("torch.") if latent else input_dtype,
        "outputs": list(spec.outputs),
        "is_image": pre.is_image,
        "data_shape": list(pre.input_shape),
        "feature_names": None if pre.feature_names is None else list(pre.feature_names),
        "n_features_in": int(detector.n_features_in_),
        "score_kind": spec.score_kind,
        "offset": float(detector.offset_ if spec.offset is None else spec.offset),
        "codebook_size": spec.codebook_size,
        "preprocessing": pre.to_json(),
        "classes": (np.asarray(detector.classes_).tolist() if hasattr(detector, "classes_")
                    else None),
    }


def read_metadata(proto_or_path) -> dict[str, Any]:
    """The vaeanom metadata of an exported ONNX model (a path or a loaded ModelProto)."""
    import onnx

    proto = proto_or_path
    if not isinstance(proto, onnx.ModelProto):
        proto = onnx.load(os.fspath(proto_or_path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise ValueError("this ONNX model was not exported by vaeanom (no 'vaeanom' metadata).")
    return json.loads(props[METADATA_KEY])


# ------------------------------------------------------------------ Triton
_TRITON_TYPES = {"float": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8",
                 "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}


def _triton_tensor(value_info) -> str:
    """One Triton tensor entry from an ONNX graph input/output (batch dim left out)."""
    import onnx

    tensor_type = value_info.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_string(tensor_type.elem_type).removeprefix("TensorProto.")
    dims = [d.dim_value for d in tensor_type.shape.dim[1:]]
    return (f'  {{\n    name: "{value_info.name}"\n    data_type: {_TRITON_TYPES[dtype.lower()]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims) or "1"} ]'
            + ("\n    reshape: { shape: [ ] }" if not dims else "") + "\n  }")


def triton_config(name: str, proto, max_batch_size: int) -> str:
    """A Triton ``config.pbtxt`` for an exported model, read off its graph signature."""
    inputs = ",\n".join(_triton_tensor(v) for v in proto.graph.input)
    outputs = ",\n".join(_triton_tensor(v) for v in proto.graph.output)
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            "dynamic_batching { }\n"
            'instance_group [ { kind: KIND_AUTO } ]\n')


#: a Triton model name here: one folder of the repository, and a plain string in
#: config.pbtxt (letters, digits, "_", "-", "."; not "." or "..")
TRITON_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_triton_name(name) -> None:
    """Refuse a name that would put the model outside its repository, nest it a level
    deeper, or write a config.pbtxt Triton cannot parse."""
    if not isinstance(name, str) or not TRITON_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"Triton model name {name!r}: use letters, digits, '_', '-' and "
                         "'.' (one folder of the repository), e.g. 'fraud_scorer'.")


def export_triton(detector, repo_dir: str | os.PathLike, name: str = "vaeanom",
                  part: str = "scorer", *, max_batch_size: int = 4096, fp16: bool = False,
                  input_dtype: str = "auto", version: int = 1, explain: bool = False,
                  with_label: bool = False) -> Path:
    """Write a Triton model repository entry: ``repo/<name>/config.pbtxt`` and
    ``repo/<name>/<version>/model.onnx`` (options as :func:`export_onnx`). Returns the
    model folder."""
    import onnx

    if check_count(max_batch_size, "max_batch_size") < 1:
        raise ValueError(f"max_batch_size must be >= 1; got {max_batch_size}.")
    if check_count(version, "version") < 1:   # Triton ignores a folder named 0 (or 01)
        raise ValueError(f"version must be >= 1, Triton's version folders; got {version}.")
    check_triton_name(name)
    folder = Path(repo_dir) / name
    if (folder / "config.pbtxt").is_dir():   # found now, not after model.onnx is written
        raise ValueError(f"{str(folder / 'config.pbtxt')!r} is a folder; Triton's model "
                         "configuration is a file there. Remove it, or export under another name.")
    model_path = export_onnx(detector, folder / str(version) / "model.onnx", part, fp16=fp16,
                             input_dtype=input_dtype, explain=explain, with_label=with_label)
    config = triton_config(name, onnx.load(model_path), max_batch_size)
    atomic_write(folder / "config.pbtxt", lambda tmp: Path(tmp).write_text(config))
    return folder
