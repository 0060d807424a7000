"""The scikit-learn facade shared by every vaeanom detector.

A subclass supplies three hooks: ``_build_model`` (the torch module for an
input shape), ``_loss`` (one training step's loss) and ``_make_scorer`` (a
module mapping preprocessed rows to scores, with any Monte-Carlo noise fixed).
This class owns everything else: parameter and input validation, preprocessing,
the fit loop, the outlier threshold, batch-independent scoring, pandas output
and persistence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, OutlierMixin, TransformerMixin
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted
from torch import Tensor, nn

from .. import training
from ..checks import column_names, finite_scores, outlier_labels
from ..preprocessing import Preprocessing
from ..tables import TableSchema
from . import inputs, persistence
from .thresholds import folds_for, out_of_fold_thresholds
from .params import (AnyOf, InvalidParameterError, Number, OneOf, RandomState, Rule,
                     validate_params)

#: Rows are scored in chunks of exactly this many (the last one zero-padded), so
#: every row goes through identically shaped kernels: a row's score is then the
#: same bits whatever the batch it came in (BLAS picks other kernels for tiny M).
SCORE_CHUNK = 64


#: partial_fit keeps at most this many rows, drawn uniformly from every chunk, to compute
#: what scoring needs (score units, latent bank, threshold) once it has trained
RESERVOIR_ROWS = 4096


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream (Vitter's algorithm R)."""

    def __init__(self, size: int) -> None:
        self.size, self.seen, self.rows = size, 0, None

    def add(self, x: Tensor, generator: torch.Generator) -> None:
        """Offer each row of x in turn; row t (0-based, over the stream) replaces a random
        slot with probability size / (t + 1) once the reservoir is full."""
        x = x.detach().cpu()
        if self.rows is None:
            self.rows = x[:0].clone()
        room = max(0, self.size - len(self.rows))
        self.rows = torch.cat([self.rows, x[:room]])
        rest = x[room:]
        if len(rest):
            t = torch.arange(self.seen + room, self.seen + len(x), dtype=torch.float64)
            slots = (torch.rand(len(rest), generator=generator, dtype=torch.float64)
                     * (t + 1)).long()
            for row in torch.nonzero(slots < self.size).flatten().tolist():  # in stream order
                self.rows[slots[row]] = rest[row]
        self.seen += len(x)

    def distinct_rows(self) -> Tensor:
        """The rows kept, each once (in sorted order): a stream read in several passes
        offers every row several times, and a row next to its own copy would look
        closer to the training data than it is. A hole (NaN) equals a hole here, so a
        row with holes is kept once too (NaN != NaN kept every copy of it)."""
        flat = self.rows.reshape(len(self.rows), -1).cpu()
        holes = torch.isnan(flat)
        key = torch.cat([torch.nan_to_num(flat, nan=0.0), holes.to(flat.dtype)], dim=1)
        _, first = np.unique(key.numpy(), axis=0, return_index=True)
        return self.rows[torch.from_numpy(first).to(self.rows.device)]


@dataclass
class _Stream:
    """What partial_fit carries between calls (picklable: states, not objects)."""

    generator_state: Tensor
    optimiser_state: dict | None
    reservoir: Reservoir
    epochs: int                     # the passes planned (from the first chunk): a schedule's
    scoring_pending: bool = False   # trained since the scoring state was last computed


def _zero_padded(chunk: Tensor, size: int) -> Tensor:
    """``chunk`` with zero rows appended up to ``size`` rows (see SCORE_CHUNK)."""
    padded = torch.zeros((size, *chunk.shape[1:]), dtype=chunk.dtype)
    padded[:len(chunk)] = chunk
    return padded


def _on_device(data: training.Data, device: torch.device) -> training.Data:
    if isinstance(data, tuple):
        return tuple(t.to(device) for t in data)
    return data.to(device)


def _generator_at(state: Tensor) -> torch.Generator:
    """A CPU generator in the given state (a copy: drawing from it leaves ``state`` as is)."""
    generator = torch.Generator()
    generator.set_state(state)
    return generator


def _seed_from(random_state: Any) -> int:
    """A 63-bit seed from ``random_state`` without touching any global RNG."""
    if random_state is None:
        return int(np.random.SeedSequence().entropy % 2**63)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if not RandomState().accepts(random_state):  # sample() gets it unvalidated
        raise InvalidParameterError(f"random_state must be {RandomState().describe()}; "
                                    f"got {random_state!r}.")
    return int(random_state)


@contextmanager
def _unchanged_on_failure(estimator: BaseEstimator, in_place: tuple[str, ...] = ()
                          ) -> Iterator[None]:
    """A fit that raises leaves ``estimator`` as it was: fitted as before, or unfitted.

    ``fit`` sets the standardisation and the columns before the checks that need
    them; without this, a refused refit left new ``center_`` over the old network
    (scores silently off, or a shape error), and ``save`` wrote a file that
    ``load`` calls corrupt. ``fit`` replaces attributes rather than changing them,
    so the old ones are all it takes to go back; the attributes named in
    ``in_place`` (what ``partial_fit`` trains: the network, the stream's optimiser
    state, the history) are copied first, as a chunk that fails midway (a
    divergence, Ctrl-C) has already changed them.
    """
    before = dict(estimator.__dict__)
    for name in in_place:
        if name in before:
            before[name] = copy.deepcopy(before[name])
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(before)
        raise


def _comparable(value: Any) -> Any:
    """A parameter value for comparison: lists as tuples (hidden_dims=[32] is (32,))."""
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    return value


class BaseDetector(OutlierMixin, TransformerMixin, BaseEstimator):
    """Validation, preprocessing, training, thresholds and I/O for torch-backed detectors."""

    #: rules of the parameters every detector has (training, threshold, device)
    _common_rules: ClassVar[dict[str, Rule]] = {
        "contamination": AnyOf((OneOf(("auto",)), Number(0.0, 0.5, low_open=True))),
        "epochs": Number(1, integer=True),
        "batch_size": Number(1, integer=True),
        "learning_rate": Number(0.0, low_open=True),
        "weight_decay": Number(0.0),
        "clip_grad_norm": AnyOf((OneOf((None,)), Number(0.0, low_open=True))),
        "validation_fraction": AnyOf((OneOf((None,)), Number(0.0, 0.5, low_open=True))),
        "threshold_folds": AnyOf((OneOf((None,)), Number(2, integer=True))),
        "patience": Number(1, integer=True),
        "device": OneOf(("auto", "cpu", "cuda")),
        "verbose": Number(0, integer=True),
        "random_state": RandomState(),
    }
    _rules: ClassVar[dict[str, Rule]] = {}
    #: rows per zero-padded scoring chunk (see SCORE_CHUNK)
    _chunk_rows: ClassVar[int] = SCORE_CHUNK
    #: parameters that shape the fitted network and scoring state, and those the
    #: threshold ``offset_`` was computed under: set after fit, the model no longer
    #: matches them (see :meth:`_refuse_changes_since_fit`)
    _state_params: ClassVar[tuple[str, ...]] = ()
    _threshold_params: ClassVar[tuple[str, ...]] = ("contamination", "threshold_folds")
    #: what detectors pickled before the parameter existed read (get_params asks for it)
    threshold_folds = None

    def _set_params(self, params: dict[str, Any]) -> None:
        """Store the constructor's arguments as they are (``__init__`` passes ``locals()``)."""
        for name, value in params.items():
            if name not in ("self", "__class__"):
                setattr(self, name, value)

    # ----------------------------------------------------------------- hooks
    def _build_model(self, shape: tuple[int, ...], images: bool) -> nn.Module:
        raise NotImplementedError

    def _loss(self, model: nn.Module, batch: Tensor, generator: torch.Generator,
              progress: float) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of one batch and its named terms (see ``training.LossFn``)."""
        raise NotImplementedError

    def _make_scorer(self) -> nn.Module:
        raise NotImplementedError

    def onnx_part(self, part: str, *, fp16: bool = False):
        """What ``export_onnx`` writes for ``part`` ("scorer", "encoder", "decoder"): a
        :class:`vaeanom.export.PartSpec` holding a CPU copy of the network in model units."""
        raise NotImplementedError

    def _latent_range(self) -> int | None:
        """K when latents are integer codes in [0, K); None for continuous latents."""
        return None

    def _model_for_export(self, fp16: bool) -> nn.Module:
        """A CPU copy of the fitted model in eval mode, its networks in float16 if asked."""
        from ..export import half_precision

        model = half_precision(self.model_) if fp16 else copy.deepcopy(self.model_)
        return model.cpu().eval()

    # ------------------------------------------------------------------- fit
    def fit(self, X, y=None):
        """Fit the model to X (rows or images). Returns self.

        ``y`` is ignored, except by a conditional model (``VAEDetector(conditional=True)``),
        which learns p(x | y) for the labels y. A fit that raises (bad data, a
        diverged training) leaves the detector as it was before the call.
        """
        with _unchanged_on_failure(self):
            return self._fit(X, y)

    def _fit(self, X, y):
        validate_params(self, self._rules)
        x = self._preprocess(X, fitting=True)
        data = self._training_data(x, y)
        self._fix_score_kind()  # refuses a score kind this data can't have, before training
        seed = _seed_from(self.random_state)
        folds = labels = None
        if self.threshold_folds is not None:   # refused here, before any training
            labels = self._fold_labels()
            folds = folds_for(self, x.cpu().numpy(), seed, labels)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # layer init uses the global RNG: fence it
            torch.manual_seed(seed)
            model = self._build_model(tuple(x.shape[1:]), self.is_image_)
        device = training.resolve_device(self.device)
        self.model_ = model.to(device)
        self.history_ = training.fit(self.model_, self._loss, _on_device(data, device),
                                     self._training_config(len(x)), generator,
                                     self._epoch_statistics)
        self._set_scoring_state(x, generator)
        self._remember_fitted_params()
        self.__dict__.pop("_stream_", None)   # a later partial_fit starts a new stream
        thresholds = self._thresholds()
        if not np.all(np.isfinite(thresholds)):  # the last steps broke weights the loss never saw
            raise training.TrainingDivergedError(
                "training diverged: the fitted model cannot score its training data (threshold "
                f"{', '.join(map(str, thresholds))}). Try a lower learning_rate (now "
                f"{self.learning_rate}) or set clip_grad_norm (e.g. 1.0).")
        if folds is not None:
            self.__dict__.update(out_of_fold_thresholds(self, X, y, folds, seed,
                                                        conditional=labels is not None))
        return self

    def partial_fit(self, X, y=None):
        """Train on one chunk of a stream: one pass over X, continuing earlier calls.

        The scikit-learn convention for data that does not fit in memory (loops
        over Parquet row groups, dask-ml's ``Incremental``). The first call
        learns what ``fit`` learns from the data, **from that chunk only**: the
        standardisation (``center_``, ``scale_``), the columns and their
        categories, the network's shape. Later chunks are standardised with
        those statistics, so make the first chunk representative (shuffle the
        row groups if the file is sorted). Adam's state carries over between
        calls. What scoring needs (a VAE's scoring noise, score units and latent
        bank, a VQ-VAE's code statistics, and the threshold ``offset_``) comes
        from a reservoir of up to ``RESERVOIR_ROWS`` rows drawn uniformly from
        every chunk so far; it is computed when first used after a call, under
        the parameters of that call, so a call costs its training
        steps only, and looking at the model mid-stream changes nothing later.
        ``validation_fraction`` is not used, and ``epochs`` only as the length
        of a schedule (a KL warm-up counts each call as one of the epochs the
        first chunk resolves to): call it once per chunk per pass. The same
        chunks in the same order give the same model, bit for bit; ``fit`` on
        all the rows stays the reference. A call on a model fitted by ``fit``
        (or loaded) goes on training it, with a fresh optimiser and reservoir.
        A call that raises (a refused chunk, a divergence, Ctrl-C) leaves the
        detector as it was before the call: its network and Adam's state too.
        """
        with _unchanged_on_failure(self, in_place=("model_", "_stream_", "history_")):
            return self._partial_fit(X, y)

    def _partial_fit(self, X, y):
        stream = getattr(self, "_stream_", None)
        validate_params(self, self._rules)
        if self.threshold_folds is not None:
            raise ValueError(f"partial_fit sets offset_ from the rows it trained on; "
                             f"threshold_folds={self.threshold_folds} needs every row in one "
                             "fit call. Set threshold_folds=None for a stream, and set offset_ "
                             "from normal rows the model did not see (README, 'Which score?').")
        if hasattr(self, "model_"):
            self._refuse_changes_since_fit("partial_fit", self._state_params)
        if stream is None:
            if hasattr(self, "model_"):         # fitted or loaded: its categories are fixed
                x = self._unseen_as_holes(self._preprocess(X))
            else:
                x = self._preprocess(X, fitting=True)
                self._fix_score_kind()
            stream = self._start_stream(x)
        else:
            x = self._unseen_as_holes(self._preprocess(X))
        self._fix_score_kind(fresh=False)     # the threshold follows this call's parameters
        generator = _generator_at(stream.generator_state)
        device = next(self.model_.parameters()).device
        config = replace(self._training_config(len(x)), epochs=stream.epochs)
        record, stream.optimiser_state = training.train_chunk(
            self.model_, self._loss, x.to(device), config, generator,
            stream.optimiser_state, len(self.history_))
        self.history_.append({**record, **self._epoch_statistics()})
        stream.reservoir.add(x, generator)
        stream.generator_state = generator.get_state()
        for name in self._scoring_state:      # stale now: __getattr__ recomputes them on use
            self.__dict__.pop(name, None)
        stream.scoring_pending = True
        self._stream_ = stream
        self._remember_fitted_params()    # the threshold is recomputed under them on use
        return self

    def _unseen_as_holes(self, x: Tensor) -> Tensor:
        """A chunk's categories the model was not fitted on, as holes: trained as
        the "unknown" slot, they would teach it mass, and a category never seen at all
        would then score as typical. Scoring still gives them the unknown slot."""
        schema = self._table_schema()
        if schema is None or not schema.has_categories:
            return x
        unknown = torch.tensor([float(k) if k else float("nan") for k in schema.cardinalities])
        return x.masked_fill(x == unknown.to(x.device, x.dtype), float("nan"))

    def _check_fitted_state(self) -> None:
        """Fitted, and under the architecture it was fitted with (what scoring, encoding
        and decoding read: a changed one fails obscurely or scores garbage)."""
        check_is_fitted(self)
        self._refuse_changes_since_fit("this call", self._state_params)

    def _remember_fitted_params(self) -> None:
        self._fitted_params_ = copy.deepcopy(self._param_values(self._saved_params()))

    def _param_values(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The parameters ``names`` as the fitted model uses them ("auto" resolved where
        it matters)."""
        params = self.get_params(deep=False)
        return {name: params[name] for name in names}

    def _refuse_changes_since_fit(self, action: str, names: tuple[str, ...]) -> None:
        """Refuse ``action`` when a parameter in ``names`` was set to another value after
        fit: the network, its scoring state or its threshold would not match it (a saved
        file would not load; ``predict`` would apply another score's threshold)."""
        fitted = self.__dict__.get("_fitted_params_")
        if fitted is None:              # not fitted (callers check), or pickled before this
            return
        params = self._param_values(names)
        changed = [name for name in names
                   if name in fitted and _comparable(params[name]) != _comparable(fitted[name])]
        if changed:
            now = ", ".join(f"{name}={params[name]!r}" for name in changed)
            then = ", ".join(f"{name}={fitted[name]!r}" for name in changed)
            raise ValueError(f"{action}: {type(self).__name__} was fitted with {then}, and "
                             f"{now} was set after fit. Refit it (fit) under the new value, or "
                             f"set it back: set_params({then}).")

    def __getattr__(self, name: str):
        # Reached only when normal lookup fails: the scoring state a partial_fit made stale.
        # Computing it on first use keeps a call per chunk cheap, whatever the reservoir holds.
        stream = self.__dict__.get("_stream_")
        if stream is not None and stream.scoring_pending and name in type(self)._scoring_state:
            stream.scoring_pending = False
            try:
                with self._params_as_fitted():
                    self._set_scoring_state(stream.reservoir.distinct_rows(),
                                            _generator_at(stream.generator_state))
            except BaseException:
                stream.scoring_pending = True   # still owed: the next use tries again
                raise
            if name in self.__dict__:   # not every model keeps every piece (bounds-only ones)
                return self.__dict__[name]
        if isinstance(getattr(type(self), name, None), property):
            check_is_fitted(self)   # a fitted property raised NotFittedError: say that, not this
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @contextmanager
    def _params_as_fitted(self) -> Iterator[None]:
        """The parameters as the last fit or partial_fit call had them, for the duration.

        The scoring state a partial_fit left pending is computed on first use, which may
        come after ``set_params(score_kind=...)`` (to compare kinds) or a new
        ``contamination``: the threshold must still be the one of the fitted values, as
        ``predict`` checks them (:meth:`_threshold`).
        """
        now = self.get_params(deep=False)
        self._set_params(self.__dict__.get("_fitted_params_", {}))
        try:
            yield
        finally:
            self._set_params(now)

    def _set_scoring_state(self, x: Tensor, generator: torch.Generator) -> None:
        """What scoring needs from the training rows x (model units): the subclass's state
        (noise, references, latent bank) and the threshold ``offset_``."""
        x = x.to(next(self.model_.parameters()).device)
        self._on_fitted(x, generator)
        self.offset_ = self._offset_from(self._score_model_units(x))

    def _start_stream(self, x: Tensor) -> _Stream:
        """A new stream: the network built from the first chunk's shape (unless fitted)."""
        seed = _seed_from(self.random_state)
        if not hasattr(self, "model_"):
            with torch.random.fork_rng(devices=[]):   # layer init uses the global RNG
                torch.manual_seed(seed)
                model = self._build_model(tuple(x.shape[1:]), self.is_image_)
            self.model_ = model.to(training.resolve_device(self.device))
        self.history_ = list(getattr(self, "history_", []))
        generator = torch.Generator().manual_seed(seed)
        return _Stream(generator.get_state(), None, Reservoir(RESERVOIR_ROWS),
                       self._resolved_epochs(len(x)))

    def _training_config(self, n_rows: int) -> training.TrainingConfig:
        return training.TrainingConfig(
            epochs=self._resolved_epochs(n_rows), batch_size=self.batch_size,
            learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            clip_grad_norm=self.clip_grad_norm, validation_fraction=self.validation_fraction,
            patience=self.patience, verbose=self.verbose, precision=self._precision(),
            warmup=self._warmup(), schedule=self._schedule())

    def _schedule(self) -> str:
        """The learning-rate schedule of fit ("constant" unless a subclass offers another)."""
        return "constant"

    def _warmup(self) -> float:
        """Share of training during which the loss still changes (a subclass's KL warm-up)."""
        return 0.0

    def _precision(self) -> str:
        """The training precision ("fp32" unless a subclass offers "bf16")."""
        return "fp32"

    def _resolved_epochs(self, n_rows: int) -> int:
        """``epochs`` as a number (subclasses resolve "auto" from the data and its size)."""
        return self.epochs

    def _training_data(self, x: Tensor, y) -> training.Data:
        """What the fit loop batches: x (model units), with whatever a subclass takes from y."""
        return x

    def _on_fitted(self, x: Tensor, generator: torch.Generator) -> None:
        """Set whatever fixed state scoring needs (e.g. Monte-Carlo noise), given the data x."""

    #: the attributes _set_scoring_state sets: what partial_fit makes stale
    _scoring_state: ClassVar[tuple[str, ...]] = ("offset_",)

    def _epoch_statistics(self) -> dict[str, float]:
        """Extra per-epoch numbers for ``history_`` (called after each training epoch)."""
        return {}

    #: what backbone="auto" means for images
    _auto_image_backbone: ClassVar[str] = "conv"

    def _backbone(self, images: bool) -> str:
        """"conv" or "mlp": resolve backbone="auto" and refuse conv on rows."""
        backbone = self.backbone
        if backbone == "auto":
            backbone = self._auto_image_backbone if images else "mlp"
        if backbone == "conv" and not images:
            raise ValueError("backbone='conv' needs images (n, H, W) or (n, C, H, W); got rows. "
                             "Use backbone='mlp' or 'auto'.")
        return backbone

    def _resolved_score_kind(self) -> str:
        """The score kind ``score_samples`` computes (what an export records)."""
        return self.score_kind

    def _fix_score_kind(self, fresh: bool = True) -> None:
        """Resolve the score kind a fit (``fresh``) or a later ``partial_fit`` call sets
        the threshold under; refuses a kind this data can't have."""
        self._resolved_score_kind()

    def _saved_fitted_values(self) -> tuple[str, ...]:
        """The fitted values ``save`` writes (those the detector has)."""
        return self._fitted_values

    def _loaded_score_kind(self, what: str) -> None:
        """``load``'s hook for a detector that records the score kind it was fitted under."""

    def _thresholds(self) -> tuple[float, ...]:
        """The fitted thresholds on scores (``offset_``, and any a subclass adds)."""
        return (self.offset_,)

    def _fold_scores(self, member: BaseDetector, X, y) -> dict[str, np.ndarray]:
        """What a cross-fitted member scores of its held-out rows X, per threshold attribute
        (see :mod:`.thresholds`)."""
        return {"offset_": member.score_samples(X)}

    def _fold_labels(self) -> np.ndarray | None:
        """The training labels that stratify ``threshold_folds`` (conditional models)."""
        return None

    def _offset_from(self, train_scores: np.ndarray) -> float:
        """Threshold on score_samples: the contamination quantile, or Tukey's lower fence."""
        if self.contamination == "auto":
            q1, q3 = np.percentile(train_scores, [25, 75])
            return float(q1 - 1.5 * (q3 - q1))
        return float(np.percentile(train_scores, 100.0 * self.contamination))

    # ---------------------------------------------------------- preprocessing
    def _preprocess(self, X, *, fitting: bool = False) -> Tensor:
        """Validate X and map it to model units: a float32 tensor (n, *model shape)."""
        if fitting:
            return self._preprocess_fit(X)
        self._check_fitted_state()
        if self.is_image_:
            if not inputs.is_image_input(X):  # flattened pixels are fine too
                X = inputs.unflatten_images(self, X, self.input_shape_)
            images, _, _ = inputs.check_images(self, X, fitting=False,
                                               fitted_shape=self.input_shape_)
            if self._standardises_images():
                return self._standardise(images)
            return torch.from_numpy(images)
        rows, _ = inputs.check_rows(self, X, fitting=False, schema=self._table_schema(),
                                    allow_missing=self._allows_missing,
                                    refused_by=self._tables_refused_by())
        self._check_range(rows)  # a Bernoulli model scores values past 1 as *more* normal
        return self._standardise(rows)

    def _preprocess_fit(self, X) -> Tensor:
        self.is_image_ = inputs.is_image_input(X)
        if self.is_image_:
            images, shape, self.pixel_dtype_ = inputs.check_images(self, X, fitting=True)
            self.input_shape_ = tuple(int(s) for s in shape)
            self.n_features_in_ = int(np.prod(shape))
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self._check_range(images)
            if self._standardises_images():
                center, scale = inputs.standardisation(images.reshape(len(images), -1))
                self.center_ = center.reshape(images.shape[1:])
                self.scale_ = scale.reshape(images.shape[1:])
                return self._standardise(images)
            self.center_ = np.zeros(images.shape[1:])
            self.scale_ = np.ones(images.shape[1:])
            return torch.from_numpy(images)
        rows, schema = inputs.check_rows(self, X, fitting=True,
                                         allow_missing=self._allows_missing,
                                         refused_by=self._tables_refused_by())
        self.input_shape_ = (rows.shape[1],)
        for stale in ("pixel_dtype_", "categories_", "category_levels_"):
            if hasattr(self, stale):
                delattr(self, stale)
        if schema.has_categories or np.isnan(rows).any():
            self.categories_ = schema.to_json()   # the table model: see _table_schema
            if schema.has_categories:
                self.category_levels_ = schema.levels_json()
        if self._needs_unit_range():
            if hasattr(self, "categories_"):
                raise ValueError(
                    f"likelihood={self.likelihood!r} models numbers in [0, 1]; a table with "
                    "categorical columns or missing values is modelled column by column: use "
                    "likelihood='gaussian'.")
            self.center_, self.scale_ = np.zeros(rows.shape[1]), np.ones(rows.shape[1])
            self._check_range(rows)
        else:
            categorical = np.asarray(schema.cardinalities) > 0
            self.center_, self.scale_ = inputs.standardisation(rows, categorical)
        return self._standardise(rows)

    #: whether rows may hold missing values and categorical columns (the VAE's table model)
    _allows_missing: ClassVar[bool] = False

    def _tables_refused_by(self) -> str:
        """Who refuses holes and categorical columns, as the errors name it."""
        return f"A {type(self).__name__}"

    def _table_schema(self) -> TableSchema | None:
        """The fitted table's columns when fit saw categories or holes (the table model), else None."""
        categories = getattr(self, "categories_", None)
        return None if categories is None else TableSchema.from_json(
            categories, getattr(self, "category_levels_", None))

    def _as_table(self, values: np.ndarray, index: pd.Index | None = None):
        """Rows in user units as they should be returned: a DataFrame with the category
        names (and ``index``) for a table with categorical columns, else the array."""
        schema = self._table_schema()
        if schema is None or not schema.has_categories:
            return values
        return schema.decode(values, self._feature_columns(), index)

    def _feature_columns(self) -> list[str]:
        """Labels for per-feature output: the fitted feature names, else x0, x1, ..."""
        return column_names(getattr(self, "feature_names_in_", None), self.n_features_in_)

    def _standardise(self, data: np.ndarray) -> Tensor:
        """(data - center_) / scale_ as float32 (model units), refusing values that overflow."""
        return torch.from_numpy(self.preprocessing_.to_model_units(data))

    @property
    def preprocessing_(self) -> Preprocessing:
        """What fit learned about the input, as the public :class:`vaeanom.Preprocessing`."""
        check_is_fitted(self)
        names = getattr(self, "feature_names_in_", None)
        schema = None if self.is_image_ else self._table_schema()
        return Preprocessing(
            np.asarray(self.center_, dtype=np.float64), np.asarray(self.scale_, dtype=np.float64),
            tuple(self.input_shape_), bool(self.is_image_),
            getattr(self, "pixel_dtype_", "float") if self.is_image_ else None,
            None if names is None else tuple(str(n) for n in names),
            self._needs_unit_range() and not self.is_image_,
            None if schema is None else schema.categories,
            None if schema is None else schema.levels)

    def _needs_unit_range(self) -> bool:
        """True when the likelihood needs data in [0, 1] (no standardisation)."""
        return False

    def _standardises_images(self) -> bool:
        """True when images are standardised per pixel like rows (else kept in [0, 1])."""
        return False

    def _check_range(self, data: np.ndarray) -> None:
        if self._needs_unit_range() and data.size and (np.nanmin(data) < 0 or np.nanmax(data) > 1):
            raise ValueError(
                f"likelihood={self.likelihood!r} needs data in [0, 1]; got values in "
                f"[{np.nanmin(data):.4g}, {np.nanmax(data):.4g}]. Scale X to [0, 1] (uint8 images are "
                "scaled for you) or use likelihood='gaussian'.")

    def _to_user_units(self, x: np.ndarray) -> np.ndarray:
        """Undo the standardisation; images come back as floats in [0, 1]."""
        return (x * self.scale_ + self.center_).reshape(len(x), *self.input_shape_)

    # -------------------------------------------------------------- scoring
    @torch.no_grad()
    def _map_chunks(self, fn: Callable[..., Any], x: Tensor, *more: Tensor) -> Any:
        """Apply fn to fixed-size, zero-padded chunks of x; concatenate as float64 numpy.

        fn returns a tensor or a NamedTuple of tensors (one row each per input row).
        ``more`` are further inputs with one row per row of x (a conditional
        model's labels), chunked alike and passed after x.
        """
        self.model_.eval()
        device = next(self.model_.parameters()).device
        pieces = []
        size = self._chunk_rows
        for start in range(0, max(len(x), 1), size):  # an empty x still gives typed columns
            chunk = x[start:start + size]
            inputs = [_zero_padded(t[start:start + size], size).to(device) for t in (x, *more)]
            out = fn(*inputs)
            pieces.append([t[:len(chunk)].cpu() for t in (out if isinstance(out, tuple) else (out,))])
        columns = [torch.cat(col).double().numpy() for col in zip(*pieces)]
        return type(out)(*columns) if isinstance(out, tuple) else columns[0]

    def _score_model_units(self, x: Tensor) -> np.ndarray:
        return self._map_chunks(self._make_scorer(), x)

    def score_samples(self, X) -> np.ndarray:
        """Per-row score, higher = more normal (the class docstring says what it measures).

        A score that cannot be computed (NaN or infinite) is returned as -inf,
        the least normal score: such a row is always an outlier.
        """
        return finite_scores(self._score_model_units(self._preprocess(X)))

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        offset = self._threshold("decision_function")
        return self.score_samples(X) - offset

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers (scikit-learn's outlier convention)."""
        offset = self._threshold("predict")
        return outlier_labels(self.score_samples(X), offset)

    def _threshold(self, action: str) -> float:
        """``offset_``, refused when the score kind or contamination it was set under
        changed after fit (score_samples still computes the new kind)."""
        check_is_fitted(self)
        self._refuse_changes_since_fit(action, self._threshold_params)
        return self.offset_

    # ----------------------------------------------------- latent space API
    def encode(self, X) -> np.ndarray:
        raise NotImplementedError

    def decode(self, Z) -> np.ndarray:
        raise NotImplementedError

    def transform(self, X) -> np.ndarray:
        """:meth:`encode` as a 2-D array, one row per input (scikit-learn transformer API)."""
        codes = self.encode(X)
        return codes.reshape(len(codes), -1)

    def inverse_transform(self, Z) -> np.ndarray:
        """Alias of :meth:`decode`."""
        return self.decode(Z)

    def reconstruct(self, X) -> np.ndarray:
        """decode(encode(X)): what the model makes of X, in the user's units."""
        return self.decode(self.encode(X))

    # ------------------------------------------------------------ pandas out
    def _index_of(self, X) -> pd.Index:
        return X.index if isinstance(X, (pd.DataFrame, pd.Series)) else pd.RangeIndex(len(X))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Latent column names ``z0, z1, ...`` (what ``transform`` returns)."""
        self._check_fitted_state()   # a latent_dim set after fit is not the model's width
        if not self.is_image_:
            _check_feature_names_in(self, input_features)
        return np.asarray([f"z{i}" for i in range(self._n_latent_columns())], dtype=object)

    def _n_latent_columns(self) -> int:
        raise NotImplementedError

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = self._allows_missing
        return tags

    # ---------------------------------------------------------------- export
    def export_onnx(self, path, part: str = "scorer", *, fp16: bool = False,
                    input_dtype: str = "auto", explain: bool = False, with_label: bool = False):
        """Write ``part`` ("scorer", "encoder" or "decoder") to one ONNX file.

        The scorer takes raw rows or images and returns ``score_samples``;
        preprocessing (and a VAE's fixed Monte-Carlo noise) are inside the graph.
        Load it with :class:`vaeanom.OnnxModel` (no torch) or any ONNX runtime.
        See :func:`vaeanom.export.export_onnx` for ``fp16``, ``input_dtype``,
        ``explain`` (a VAEDetector's scorer also returns what ``explain`` gives)
        and ``with_label`` (a conditional VAE's scorer takes the label too).
        """
        from ..export import export_onnx
        check_is_fitted(self)
        self._refuse_changes_since_fit("export_onnx", self._saved_params())
        return export_onnx(self, path, part, fp16=fp16, input_dtype=input_dtype,
                           explain=explain, with_label=with_label)

    def export_triton(self, repo_dir, name: str = "vaeanom", part: str = "scorer", **kwargs):
        """Write ``repo_dir/<name>/config.pbtxt`` and ``<name>/1/model.onnx`` for Triton."""
        from ..export import export_triton
        check_is_fitted(self)
        self._refuse_changes_since_fit("export_triton", self._saved_params())
        return export_triton(self, repo_dir, name, part, **kwargs)

    def _saved_params(self) -> tuple[str, ...]:
        return (*self._state_params, *self._threshold_params)

    # ----------------------------------------------------------- persistence
    #: fitted numpy arrays and JSON-able values that ``save`` writes besides the weights
    _fitted_arrays: ClassVar[tuple[str, ...]] = ("center_", "scale_")
    #: fitted arrays that files from older versions may lack (the feature they serve says so)
    _optional_arrays: ClassVar[tuple[str, ...]] = ()
    _fitted_values: ClassVar[tuple[str, ...]] = (
        "offset_", "n_features_in_", "feature_names_in_", "input_shape_", "is_image_",
        "pixel_dtype_", "history_", "categories_", "category_levels_")

    def save(self, path) -> None:
        """Write the fitted detector to one .safetensors file (weights + JSON config).

        The write is atomic: on any error the previous file at ``path`` is untouched.
        """
        check_is_fitted(self)
        self._refuse_changes_since_fit("save", self._saved_params())
        persistence.save(self, path)

    @classmethod
    def load(cls, path, device: str = "auto"):
        """Read a detector written by ``save``, trusting nothing in the file.

        Executes no code from the file, checks its SHA-256 seal, validates the
        saved parameters with ``fit``'s rules and every shape against the
        architecture before building it (see :mod:`vaeanom.estimators.persistence`).
        """
        meta, tensors = persistence.read(path)
        what = repr(str(path))
        holds = meta["estimator"]
        if holds != cls.__name__:
            hint = (f"load it with vaeanom.{holds}.load" if holds in ("VAEDetector",
                                                                      "VQVAEDetector")
                    else "it was not written by a vaeanom detector")
            raise ValueError(f"{what} holds a {str(holds)[:40]}, not a {cls.__name__}; {hint}.")
        detector = cls(**persistence.checked_params(cls, meta["params"], what))
        if "transform_output" in meta:        # set_output(transform=...) when it was saved
            detector.set_output(transform=meta["transform_output"])
        for name, value in persistence.checked_fitted(cls, meta["fitted"], what).items():
            setattr(detector, name, value)
        arrays = {k.removeprefix("array."): v for k, v in tensors.items() if k.startswith("array.")}
        weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        if len(arrays) + len(weights) != len(tensors):
            raise ValueError(f"{what} holds tensors vaeanom never writes; the file is corrupt.")
        required = detector._required_arrays()
        for name in required:
            if name not in arrays:
                raise ValueError(f"{what} has no {name}: it was saved by an older vaeanom. "
                                 "Refit the model and save it again.")
        expected = {name: shape for name, shape in detector._array_shapes(arrays).items()
                    if name in arrays or name in required}
        persistence.check_shapes(arrays, expected, what)
        persistence.check_dtypes(arrays, what)
        persistence.check_values(arrays, what)
        for name, value in arrays.items():
            setattr(detector, name, value.numpy())
        detector._check_standardisation(what)
        skeleton = detector._skeleton(what)
        persistence.check_shapes(weights, {k: tuple(v.shape)
                                           for k, v in skeleton.state_dict().items()}, what)
        persistence.check_values(weights, what)  # a NaN weight makes every score NaN
        with torch.random.fork_rng(devices=[]):
            model = detector._build_model(detector._model_shape(), detector.is_image_)
        model.load_state_dict(weights, strict=True)
        detector.model_ = model.to(training.resolve_device(device)).eval()
        detector._loaded_score_kind(what)
        detector._remember_fitted_params()
        return detector

    def _skeleton(self, what: str):
        """The network the loaded parameters describe, shapes only (nothing is allocated);
        sizes no tensor can have (an edited ``code_dim`` of 2**70) are refused by name."""
        try:
            with torch.device("meta"):
                return self._build_model(self._model_shape(), self.is_image_)
        except (TypeError, ValueError, RuntimeError, OverflowError) as err:
            reason = str(err).splitlines()[0][:200]
            raise ValueError(f"{what}: its parameters describe a network that cannot be built "
                             f"({reason}); the file is corrupt or was edited.") from None

    def _required_arrays(self) -> tuple[str, ...]:
        """The saved arrays a file for this detector (parameters and fitted values set) must
        hold: ``_fitted_arrays`` but those older files may lack."""
        return tuple(n for n in self._fitted_arrays if n not in self._optional_arrays)

    def _model_shape(self) -> tuple[int, ...]:
        """The per-row shape the network takes: (d,) for rows, (C, H, W) for images."""
        shape = tuple(self.input_shape_)
        return (1, *shape) if self.is_image_ and len(shape) == 2 else shape

    def _array_shapes(self, found: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        """The shape each saved array must have (subclasses add theirs); ``found`` gives the
        sizes a file may choose, such as how many training codes it keeps."""
        return {"center_": self._model_shape(), "scale_": self._model_shape()}

    def _check_standardisation(self, what: str) -> None:
        center, scale = np.asarray(self.center_), np.asarray(self.scale_)
        if (center.dtype != np.float64 or scale.dtype != np.float64
                or not np.isfinite(center).all() or not (scale > 0).all()
                or not np.isfinite(scale).all()):
            raise ValueError(f"{what}: its standardisation (center_, scale_) is not finite "
                             "float64 with positive scales; the file is corrupt.")
        raw = self.is_image_ and not self._standardises_images() or (
            not self.is_image_ and self._needs_unit_range())
        if (raw and ((center != 0).any() or (scale != 1).any())) or (self.is_image_ and (
                (center < 0).any() or (center > 1).any() or (scale > 1).any())):
            raise ValueError(f"{what}: its standardisation (center_, scale_) is not one fit "
                             "makes for this model and data (pixel means in [0, 1], spreads at "
                             "most 1; zeros and ones where inputs are not standardised); the "
                             "file is corrupt.")
