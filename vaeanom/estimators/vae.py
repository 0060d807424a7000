"""VAEDetector: a variational autoencoder as a scikit-learn outlier detector."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from sklearn.utils.validation import check_array, check_is_fitted
from torch import Tensor, nn

from ..checks import (check_count, feature_labels, finite_decoded, finite_scores, is_outlier,
                      outlier_labels)
from ..explanations import top_features
from ..models import (VAE, BernoulliLikelihood, ConvDecoder, ConvEncoder, GaussianLikelihood,
                      MixedLikelihood, MLPDecoder, MLPEncoder, TableEncoder, n_decoder_outputs)
from ..models.hierarchical import HierarchicalVAE
from ..scoring import (CONDITIONAL_SCORE_KINDS, HIERARCHICAL_SCORE_KINDS, IMAGE_SCORE_KINDS,
                       SCORE_KINDS, ConditionalBound, FeatureContributions, HierarchicalScorer,
                       ImageComplexity, LabelMarginal, LatentNeighbours, Scorer,
                       inference_scorer, term_reference)
from .. import labels
from .base import BaseDetector, _seed_from
from .params import AnyOf, Flag, IntTuple, Number, OneOf


#: epochs="auto" trains rows for about this many gradient steps, whatever the table's size;
#: chosen on the selection half of benchmarks/anomaly_tabular.py (see the ``epochs`` parameter)
ROW_STEPS = 1000
#: kl_warmup="auto" for a hierarchy: the KL weight rises over the first third of training.
#: On the Fashion-MNIST dev split (benchmarks/hierarchical.py) it lifted the hierarchy's IWAE
#: bound by 15 nats (seed 0), and with it the hierarchy beats a one-layer model of as many
#: parameters, trained the same way, by 2-7 nats (seeds 0-2); without it, it lost by 0.4.
#: The one-layer defaults were chosen without a warm-up and keep none
HIERARCHY_KL_WARMUP = 1 / 3
#: at most this many training codes are kept for the latent kNN score kinds
BANK_SIZE = 2048
#: neighbours averaged by the latent kNN score kinds
N_NEIGHBOURS = 5
#: explain(): the encoder sees each numeric entry within this many training standard
#: deviations (the likelihood charges it as it is), so that one wild entry cannot throw
#: the code, and the blame, onto the other columns (FeatureContributions' ``bound``)
EXPLAIN_ENCODER_BOUND = 10.0


class _Encode(nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode(x)


class _Decode(_Encode):
    def forward(self, z: Tensor) -> Tensor:
        return self.model.decode(z)


class _PixelMaps(nn.Module):
    """(n, C, H, W) contributions -> (n, H, W), summed over channels, as ``explain`` gives."""

    def __init__(self, contributions: nn.Module, height: int, width: int) -> None:
        super().__init__()
        self.contributions, self.height, self.width = contributions, height, width

    def forward(self, x: Tensor) -> Tensor:
        maps = self.contributions(x)
        return maps.reshape(maps.shape[0], -1, self.height, self.width).sum(dim=1)


class VAEDetector(BaseDetector):
    """Anomaly detector and encoder built on a Gaussian-posterior VAE (beta-VAE).

    Rows (2-D arrays or DataFrames) and, by default, images ``(n, H, W)`` /
    ``(n, C, H, W)`` are standardised per feature (pixel) and modelled by an
    MLP; ``backbone="conv"`` models images in [0, 1] with a convolutional
    network instead. Scores are per row, higher = more normal.

    Tables may hold categorical columns (object, string, ``category``) and
    missing values (NaN, None, pd.NA) in any column. A table with either at
    fit gets the *table model* (``categories_`` is set): a categorical
    likelihood over the categories seen in fit plus an "unknown" slot for
    those it never saw, a Gaussian for numbers, and an encoder that sees the
    mask of observed entries (:mod:`vaeanom.models.table`). Missing entries
    are left out of the likelihood, which charges a row its log-likelihood
    per observed entry times the number of columns, so scores of rows with
    and without holes are comparable. A model fitted on complete numbers
    takes holes at score time too: its encoder sees the training mean there.

    Parameters
    ----------
    latent_dim : int or tuple of int, default=16
        Size of the latent code z. A tuple, e.g. ``(32, 8)``, fits a Markovian
        hierarchical VAE with one latent layer per entry, bottom (next to x)
        to top (:mod:`vaeanom.models.hierarchical`): one KL term per layer,
        the "elbo", "iwae", "llr" (Havtorn et al. 2021) and (images)
        "elbo_complexity" scores ("auto": "elbo" for rows), and codes
        (``encode``, ``transform``) of ``sum(latent_dim)`` columns, every
        layer side by side. MLP backbone and complete numeric rows or images;
        ``score_frame`` gives score and is_outlier; no ``explain`` yet.
    hidden_dims : tuple of int, default=(256, 128)
        Widths of the MLP encoder's hidden layers (the decoder mirrors them).
    conv_channels : tuple of int, default=(32, 64)
        Channels of the convolutional stages; each stage halves height and width.
    backbone : {"auto", "mlp", "conv"}, default="auto"
        "auto" is "mlp" for rows and images alike: on Fashion-MNIST one-class
        detection an MLP on standardised pixels beat our conv model and fits
        about 10x faster on a CPU (benchmarks/anomaly_images.py). Pick "conv"
        for large images, where a dense first layer gets big.
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        p(x|z). "bernoulli" needs data in [0, 1] and is not standardised. It is
        a likelihood of binary data: on grey levels it is the cross-entropy
        surrogate, not a normalised density, so its ELBO ranks rows but is
        not a bound on log p(x) in nats.
    sigma : "learned" or float, default="learned"
        Standard deviation of the Gaussian likelihood in model units: learned per
        feature (or pixel), or fixed. Ignored for "bernoulli".
    beta : float or "auto", default="auto"
        Weight of the KL term in the training loss (beta-VAE). Scores always use
        the true ELBO (weight 1). "auto" is 2 for rows and 1 for images: on the
        selection half of the tabular benchmark beta=2 beat beta=1 (mean ROC-AUC
        0.875 vs 0.861 with the rows default), since a tighter code makes the
        codes of the training set's anomalies stand out; on Fashion-MNIST beta=1
        is what we measured.
    kl_warmup : float in [0, 1] or "auto", default="auto"
        Share of training over which the KL weight rises linearly from 0 to
        ``beta`` (Sonderby et al. 2016, "Ladder variational autoencoders"):
        the decoder learns to use the latents before the KL term pulls them
        to the prior, which a hierarchy's upper layers need. Counted in
        ``epochs`` (a ``partial_fit`` call is one). "auto" is 1/3 for a
        hierarchical VAE and 0 otherwise (the one-layer defaults were chosen
        without it). Validation losses and scores use the full weight.
    score_kind : {"auto", "elbo", "iwae", "recon_prob", "reconstruction", "kl", \
"elbo_kl", "latent_knn", "elbo_kl_knn", "elbo_complexity", "llr"}, default="auto"
        What ``score_samples`` returns: the ELBO or the importance-weighted
        bound (K = ``n_score_samples``) in nats of the preprocessed data, An &
        Cho's reconstruction probability (Monte-Carlo mean of log p(x|z)),
        minus the mean squared reconstruction error, minus the KL divergence of
        q(z|x) from the prior, the ELBO and KL voting in robust standard units
        of their training distributions, minus the mean distance from the
        row's code to its 5 nearest training codes, the three voting
        together, (images only) the ELBO corrected by the image's
        complexity, or (hierarchical VAEs only) the likelihood ratio of
        ``latent_dim``. "auto" is "elbo_kl_knn" for rows ("elbo" for the rows
        of a conditional or hierarchical VAE, which score by their bounds
        alone), "elbo_complexity" for images under the MLP backbone, and
        "elbo" under ``backbone="conv"``: the complexity weight was chosen
        for the MLP's standardised pixels, and under the conv model it
        ranked a small bright defect as more normal and scored a mean
        ROC-AUC of 0.764 on Fashion-MNIST against 0.935 for "elbo"
        (``benchmarks/image_defects.py``, ``results/anomaly_images_conv.md``).
        The kind a fit resolved is ``score_kind_``. See :mod:`vaeanom.scoring`.
        (Not called ``score``: scikit-learn reserves that name for the
        ``score(X, y)`` method that model selection calls.)
    n_score_samples : int, default=16
        Monte-Carlo samples of z per row for the ELBO and IWAE bounds; the noise
        is drawn once at fit time and shared by all rows, so scores are deterministic.
    conditional : bool, default=False
        Learn p(x | y) for the labels given to ``fit(X, y)`` (class labels, or
        any categorical context such as a machine type): a conditional VAE
        whose encoder sees [x, one-hot y] and whose decoder sees [z, one-hot
        y]. ``score_samples(X, y)`` scores given the labels ("unusual for
        this machine type"); ``score_samples(X)`` marginalises them, log p(x)
        = logsumexp_y [log p(x|y) + log p(y)] with p(y) the training shares;
        ``sample(n, y=c)`` generates class c. Scores with "elbo", "iwae" or
        (images) "elbo_complexity"; "auto" is "elbo" for rows. MLP backbone and
        complete numeric rows or images only; ``score_frame`` gives score and
        is_outlier (given labels with ``y=...``); no ``partial_fit``,
        ``explain``, latent interpolation or ``sample_posterior`` yet.
    contamination : float in (0, 0.5] or "auto", default=0.1
        Share of training rows flagged as outliers; sets ``offset_`` (and
        ``label_offset_``). "auto" uses
        Tukey's lower fence (Q1 - 1.5 IQR) of the training scores instead.
        New normal rows are flagged more often than training rows, on small
        tables far more (at 0.1, 16% of new Gaussian rows, 88% of new zeros on
        the digits demo; ``benchmarks/threshold_new_rows.py``): for a share of
        new rows, set ``threshold_folds``, or set ``offset_`` to that
        percentile of ``score_samples`` of normal rows not used in fit.
    threshold_folds : int >= 2 or None, default=None
        None: the ``contamination`` rule runs on the training rows' own scores,
        as scikit-learn's estimator checks require. K: it runs on out-of-fold
        scores instead, so that about ``contamination`` of *new* rows from the
        training distribution are flagged: K copies of the detector, each fitted
        on all folds but one with these parameters, score the rows they did not
        see (a cross-fitted heuristic with no coverage guarantee,
        :mod:`vaeanom.estimators.thresholds`). At 0.1
        and K=5, 9-11% of new normal rows are flagged on the three tables of
        ``benchmarks/threshold_new_rows.py`` (16-88% with None). The
        detector is still fitted on every row and its scores do not change;
        fit costs K more fits. Folds are stratified by label for a conditional
        model. Not for ``partial_fit``. The training rows are then flagged
        less often than ``contamination``, so scikit-learn's outlier checks
        hold for None only.
    epochs : int or "auto", default="auto"
        Passes over the training data. "auto" is 30 for images and, for rows,
        as many as make about ``ROW_STEPS`` = 1000 gradient steps whatever the
        table's size (90 rows: 1000 epochs; 100k rows: one, of 782 steps).
        Counting steps, not epochs, keeps small tables from being undertrained
        and big ones from being fitted to their own anomalies: on the selection
        half of the tabular benchmark 300 / 1000 / 2000 / 3000 steps gave a mean
        ROC-AUC of 0.872 / 0.875 / 0.859 / 0.849 (README: a square-root rule
        that did better there did worse on the held-out half). On Fashion-MNIST, 100
        epochs fit the training class so closely that detection got worse
        (0.9595 at 30).
    batch_size, learning_rate, weight_decay : training schedule (Adam).
    clip_grad_norm : float or None, default=10.0
        Clip the global gradient norm; None turns clipping off.
    validation_fraction : float in (0, 0.5] or None, default=None
        Hold this share of rows out for early stopping; None trains on all rows.
    patience : int, default=10
        Epochs without validation improvement before stopping.
    precision : {"fp32", "bf16"}, default="fp32"
        Training arithmetic. "bf16" runs the networks' forward and backward
        passes under ``torch.autocast`` in bfloat16 (CPUs with AVX512-BF16 or
        AMX, and CUDA GPUs, do several times more bf16 than fp32 FLOP/s);
        weights, Adam's state, the likelihood and the KL stay float32, and
        scoring is always float32, so scores stay deterministic and exportable.
    device : {"auto", "cpu", "cuda"}, default="auto"
    verbose : int, default=0
        A progress bar when > 0.
    random_state : int, RandomState or None, default=None
        Seeds weights, batches and the scoring noise. Same value, same numbers.

    Attributes
    ----------
    model_ : torch.nn.Module
    offset_ : float
        Threshold of ``decision_function`` and ``predict``: the
        ``contamination`` rule on the training rows' scores.
    label_offset_ : float
        Conditional models only: the same threshold for scores given labels,
        ``score_samples(X, y)``, on the training rows given their own.
    score_kind_ : str
        The score kind the model was fitted under ("auto" resolved), on whose
        scores ``offset_`` was set (a ``partial_fit`` call sets both again).
    history_ : list of dict
        Per-epoch means of loss, elbo, reconstruction (-log p(x|z)) and kl.
    n_features_in_, feature_names_in_, input_shape_, is_image_
    center_, scale_ : ndarray
        Standardisation learned in fit: per feature for rows, per pixel for
        images under the MLP backbone (the default), zeros and ones for conv
        and Bernoulli image models.
    noise_ : ndarray of shape (n_score_samples, latent_dim)
    score_reference_ : ndarray of shape (3, 2)
        Median and interquartile range of -ELBO, of KL and of the latent kNN
        distance on the training rows (each training row leaving its own code
        out): the units of the "elbo_kl" and "elbo_kl_knn" votes.
    categories_ : list of (list of str or None)
        Table models only: per column, None (numeric) or the categories seen in fit.
    classes_, class_log_prior_ : ndarray of shape (n_classes,)
        Conditional models only: the labels seen in fit (sorted) and the log of
        each one's share of the training rows. (The kNN bank, the vote's
        reference and the explanation reference are not kept for them.)
    latent_bank_ : ndarray of shape (min(n, BANK_SIZE), latent_dim)
        Posterior means of (a random subset of up to ``BANK_SIZE`` = 2048)
        training rows: the neighbours of the latent kNN score kinds.

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> det = VAEDetector(epochs=5, random_state=0).fit(X[y == 1])
    >>> det.predict(X[:3]).tolist()
    [-1, -1, -1]
    """

    _state_params: ClassVar = ("backbone", "hidden_dims", "conv_channels", "latent_dim",
                               "likelihood", "sigma", "conditional", "n_score_samples")
    _threshold_params: ClassVar = (*BaseDetector._threshold_params, "score_kind")
    _rules: ClassVar = {
        "latent_dim": AnyOf((Number(1, integer=True), IntTuple(min_length=2))),
        "hidden_dims": IntTuple(),
        "conv_channels": IntTuple(),
        "backbone": OneOf(("auto", "mlp", "conv")),
        "likelihood": OneOf(("gaussian", "bernoulli")),
        "sigma": AnyOf((OneOf(("learned",)), Number(0.0, low_open=True))),
        "beta": AnyOf((OneOf(("auto",)), Number(0.0))),
        "kl_warmup": AnyOf((OneOf(("auto",)), Number(0.0, 1.0))),
        "score_kind": OneOf(("auto", *SCORE_KINDS, "llr")),
        "n_score_samples": Number(1, integer=True),
        "conditional": Flag(),
        **BaseDetector._common_rules,
        "epochs": AnyOf((OneOf(("auto",)), Number(1, integer=True))),
        "precision": OneOf(("fp32", "bf16")),
    }
    _fitted_arrays: ClassVar = ("center_", "scale_", "noise_", "score_reference_",
                                "latent_bank_", "explain_reference_", "class_log_prior_")
    _fitted_values: ClassVar = (*BaseDetector._fitted_values, "classes_", "label_offset_",
                                "score_kind_")
    _optional_arrays: ClassVar = ("explain_reference_",)   # files from before explain()
    _scoring_state: ClassVar = ("offset_", "noise_", "score_reference_", "latent_bank_",
                                "explain_reference_")

    @property
    def _allows_missing(self) -> bool:
        """Holes and categorical columns go to the table model; conditional and hierarchical
        models have none, so they refuse them as the estimators of scikit-learn do."""
        return not self._bounds_only()

    def _tables_refused_by(self) -> str:
        if self.conditional:
            return "A VAEDetector with conditional=True"
        if self._hierarchical():
            return "A hierarchical VAEDetector (a tuple latent_dim)"
        return super()._tables_refused_by()

    def __init__(self, latent_dim=16, hidden_dims=(256, 128), conv_channels=(32, 64),
                 backbone="auto", likelihood="gaussian", sigma="learned", beta="auto",
                 kl_warmup="auto", score_kind="auto", n_score_samples=16, conditional=False,
                 contamination=0.1, threshold_folds=None, epochs="auto",
                 batch_size=128, learning_rate=1e-3, weight_decay=0.0, clip_grad_norm=10.0,
                 validation_fraction=None, patience=10, precision="fp32", device="auto",
                 verbose=0, random_state=None):
        self._set_params(locals())

    # ----------------------------------------------------------------- hooks
    _auto_image_backbone: ClassVar = "mlp"

    def _build_model(self, shape: tuple[int, ...], images: bool) -> VAE:
        schema = None if images else self._table_schema()
        if self.conditional and self._backbone(images) == "conv":
            raise ValueError("conditional=True needs backbone='mlp' (the conv networks do not "
                             "take a label yet).")
        if self._hierarchical():
            return self._build_hierarchy(shape, images)
        if schema is not None:
            return self._build_table_model(schema.cardinalities)
        if self._backbone(images) == "conv":
            encoder = ConvEncoder(shape, self.conv_channels, self.latent_dim)
            decoder = ConvDecoder(self.latent_dim, self.conv_channels, shape)
        else:
            n_context = self._n_classes()    # a conditional model's networks also see one-hot y
            encoder = MLPEncoder(int(np.prod(shape)) + n_context, self.hidden_dims,
                                 self.latent_dim)
            decoder = MLPDecoder(self.latent_dim + n_context, self.hidden_dims, shape)
        return VAE(encoder, decoder, self._likelihood(shape), self.latent_dim)

    def _build_table_model(self, cardinalities: tuple[int, ...]) -> VAE:
        """The table model: mask-aware encoder, a Gaussian or softmax likelihood per column."""
        self._backbone(False)  # refuses backbone="conv" on rows
        encoder = TableEncoder(cardinalities, self.hidden_dims, self.latent_dim)
        decoder = MLPDecoder(self.latent_dim, self.hidden_dims,
                             (n_decoder_outputs(cardinalities),))
        likelihood = MixedLikelihood(cardinalities,
                                     None if self.sigma == "learned" else self.sigma)
        return VAE(encoder, decoder, likelihood, self.latent_dim)

    def _likelihood(self, shape: tuple[int, ...]) -> nn.Module:
        """p(x|z) of the rows or images model (the table model has its own)."""
        if self.likelihood == "bernoulli":
            return BernoulliLikelihood()
        return GaussianLikelihood(shape, None if self.sigma == "learned" else self.sigma)

    def _hierarchical(self) -> bool:
        return isinstance(self.latent_dim, (tuple, list))

    def _code_size(self) -> int:
        """Columns of a code: ``latent_dim``, or every layer's size summed."""
        return sum(self.latent_dim) if self._hierarchical() else self.latent_dim

    def _noise_size(self) -> int:
        """Normal draws per Monte-Carlo sample (a hierarchy's llr draws its bottom layer twice)."""
        if self._hierarchical():
            return self._code_size() + self.latent_dim[0]
        return self.latent_dim

    def _build_hierarchy(self, shape: tuple[int, ...], images: bool) -> HierarchicalVAE:
        if self._backbone(images) == "conv" or self.conditional:
            raise ValueError("a hierarchical VAE (latent_dim as a tuple) needs backbone='mlp' "
                             "and conditional=False; use an int latent_dim for the rest.")
        bottom = self.latent_dim[0]
        encoder = MLPEncoder(int(np.prod(shape)), self.hidden_dims, bottom)
        decoder = MLPDecoder(bottom, self.hidden_dims, shape)
        return HierarchicalVAE(encoder, decoder, self._likelihood(shape), self.latent_dim,
                               hidden=self.hidden_dims[-1])

    def _bounds_only(self) -> bool:
        """Conditional and hierarchical models score by their bounds alone."""
        return self.conditional or self._hierarchical()

    def _n_classes(self) -> int:
        """K for a conditional model (its networks' extra inputs), 0 otherwise."""
        return len(self.classes_) if self.conditional else 0

    def _training_data(self, x: Tensor, y):
        for stale in ("classes_", "class_log_prior_"):
            self.__dict__.pop(stale, None)
        if not self.conditional:
            return x
        self.classes_, codes, self.class_log_prior_ = labels.fit_labels(y, len(x))
        self._fit_codes = torch.from_numpy(codes)   # for label_offset_, dropped once set
        return x, self._fit_codes

    def fit(self, X, y=None):
        try:
            return super().fit(X, y)
        finally:   # the training labels' codes are for label_offset_ only: never kept
            self.__dict__.pop("_fit_codes", None)

    fit.__doc__ = BaseDetector.fit.__doc__

    def _set_scoring_state(self, x: Tensor, generator: torch.Generator) -> None:
        super()._set_scoring_state(x, generator)
        self.__dict__.pop("label_offset_", None)
        if self.conditional:   # the threshold of score_samples(X, y), training rows given theirs
            codes = self._fit_codes.to(x.device)
            self.label_offset_ = self._offset_from(
                self._map_chunks(self._conditional_bound(), x, codes))

    def _thresholds(self) -> tuple[float, ...]:
        return (self.offset_, self.label_offset_) if self.conditional else (self.offset_,)

    def _fold_scores(self, member: VAEDetector, X, y) -> dict[str, np.ndarray]:
        scores = super()._fold_scores(member, X, y)
        if self.conditional:
            scores["label_offset_"] = member.score_samples(X, y)
        return scores

    def _fold_labels(self) -> np.ndarray | None:
        return self.classes_[self._fit_codes.numpy()] if self.conditional else None

    def _one_hot(self, codes: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(codes, self._n_classes()).float()

    def _loss(self, model: VAE, batch, generator: torch.Generator, progress: float):
        batch, context = batch if isinstance(batch, tuple) else (batch, None)
        if context is not None:
            context = self._one_hot(context)
        eps = torch.randn((1, len(batch), self._noise_size()), generator=generator)
        table_model = hasattr(self, "categories_")   # not _table_schema(): this runs every step
        seen = self._hide_entries(batch, generator) if table_model else None
        if isinstance(model, HierarchicalVAE):
            return self._hierarchy_loss(model, batch, eps.to(batch.device), progress)
        terms = model(batch, eps.to(batch.device), seen, context)
        loss = -terms.elbo(self._kl_weight(progress)).mean()
        return loss, {"elbo": terms.elbo().mean(), "reconstruction": -terms.log_px.mean(),
                      "kl": terms.kl.mean()}

    def _hierarchy_loss(self, model: HierarchicalVAE, batch: Tensor, eps: Tensor,
                        progress: float):
        """The beta-ELBO of a hierarchy, with each layer's KL in the history (kl_1 is the
        bottom): a layer whose KL stays near 0 has collapsed onto its prior."""
        log_px, layer_kl = model.terms_by_layer(batch, eps)
        kl = layer_kl.sum(0)
        loss = -(log_px - self._kl_weight(progress) * kl).mean()
        record = {"elbo": (log_px - kl).mean(), "reconstruction": -log_px.mean(), "kl": kl.mean()}
        record.update({f"kl_{t + 1}": term.mean() for t, term in enumerate(layer_kl)})
        return loss, record

    @staticmethod
    def _hide_entries(batch: Tensor, generator: torch.Generator) -> Tensor:
        """The batch with one random entry per row hidden (NaN) from the encoder.

        The likelihood still scores the hidden entry, so the table model learns
        to predict an entry from the others: what a row with holes needs, and
        exactly what a leave-one-out explanation asks. One entry per row, not a
        share of them, keeps wide numeric tables close to their complete-data
        fit (README, Benchmarks: "How the table model's training mask was chosen").
        """
        hidden = torch.randint(0, batch.shape[1], (batch.shape[0],), generator=generator)
        hide = torch.nn.functional.one_hot(hidden, batch.shape[1]).bool()
        return batch.masked_fill(hide.to(batch.device), float("nan"))

    def _on_fitted(self, x: Tensor, generator: torch.Generator) -> None:
        self.noise_ = torch.randn((self.n_score_samples, self._noise_size()),
                                  generator=generator).numpy()
        if self._bounds_only():   # no vote units, kNN bank or explanations
            for stale in ("latent_bank_", "score_reference_", "explain_reference_"):
                self.__dict__.pop(stale, None)
            return
        device = next(self.model_.parameters()).device
        scorer = Scorer(self.model_, torch.from_numpy(self.noise_).to(device), "elbo")
        terms = self._map_chunks(scorer.terms, x)
        codes = self._map_chunks(lambda rows: self.model_.encode(rows)[0], x)
        in_bank = torch.randperm(len(x), generator=generator)[:BANK_SIZE].sort().values.numpy()
        self.latent_bank_ = codes[in_bank].astype(np.float32)
        neighbours = self._neighbours()
        distance = self._map_chunks(neighbours, torch.from_numpy(codes).float())
        distance[in_bank] = self._map_chunks(lambda mu: neighbours(mu, exclude_self=True),
                                             torch.from_numpy(self.latent_bank_))
        self.score_reference_ = term_reference(-terms.elbo, terms.kl, distance)
        self.explain_reference_ = np.zeros(tuple(x.shape[1:]), dtype=np.float32)
        nll = self._map_chunks(self._contributions(), x)            # reference 0: the raw NLL
        self.explain_reference_ = _median_observed(nll).astype(np.float32)

    def _contributions(self) -> FeatureContributions:
        device = next(self.model_.parameters()).device
        return self._contributions_of(self.model_).to(device)

    def _contributions_of(self, model: VAE) -> FeatureContributions:
        """What ``explain`` computes with ``model`` (the fitted network, or an export's
        copy of it), in model units."""
        if not hasattr(self, "explain_reference_"):
            raise ValueError("this model was saved by a vaeanom without explanations; "
                             "refit it to use explain().")
        schema = None if self.is_image_ else self._table_schema()
        bound = None
        if not self.is_image_:   # categorical codes are not capped
            numeric = (np.ones(self.n_features_in_, dtype=bool) if schema is None
                       else np.asarray(schema.cardinalities) == 0)
            bound = torch.from_numpy(np.where(numeric, EXPLAIN_ENCODER_BOUND, np.inf)).float()
        return FeatureContributions(model, torch.from_numpy(self.noise_),
                                    torch.from_numpy(self.explain_reference_),
                                    leave_one_out=schema is not None, bound=bound)

    def _array_shapes(self, found):
        bank = found.get("latent_bank_")
        n_bank = (len(bank) if bank is not None and bank.ndim >= 1 and 1 <= len(bank) <= BANK_SIZE
                  else BANK_SIZE)
        return {**super()._array_shapes(found),
                "noise_": (self.n_score_samples, self._noise_size()),
                "score_reference_": (3, 2), "latent_bank_": (n_bank, self._code_size()),
                "explain_reference_": self._model_shape(),
                "class_log_prior_": (len(getattr(self, "classes_", ())),)}

    def _required_arrays(self) -> tuple[str, ...]:
        if self.conditional and not hasattr(self, "classes_"):
            raise ValueError("this file's parameters say conditional=True but it holds no "
                             "classes_; the file is corrupt.")
        if self.conditional:
            return ("center_", "scale_", "noise_", "class_log_prior_")
        if self._hierarchical():
            return ("center_", "scale_", "noise_")
        return tuple(n for n in super()._required_arrays() if n != "class_log_prior_")

    def _neighbours(self) -> LatentNeighbours:
        device = next(self.model_.parameters()).device
        return LatentNeighbours(torch.from_numpy(self.latent_bank_), N_NEIGHBOURS).to(device)

    def _precision(self) -> str:
        return self.precision

    def _resolved_beta(self) -> float:
        if self.beta == "auto":
            return 1.0 if self.is_image_ else 2.0
        return self.beta

    def _resolved_kl_warmup(self) -> float:
        if self.kl_warmup == "auto":
            return HIERARCHY_KL_WARMUP if self._hierarchical() else 0.0
        return self.kl_warmup

    def _warmup(self) -> float:
        return self._resolved_kl_warmup()

    def _kl_weight(self, progress: float) -> float:
        """The KL term's weight in the loss at ``progress`` (share of training done): beta,
        reached linearly from 0 over the first ``kl_warmup`` of training."""
        warmup = self._resolved_kl_warmup()
        ramp = 1.0 if warmup == 0 else min(1.0, progress / warmup)
        return self._resolved_beta() * ramp

    def _resolved_epochs(self, n_rows: int) -> int:
        if self.epochs != "auto":
            return self.epochs
        if self.is_image_:
            return 30
        steps_per_epoch = -(-n_rows // self.batch_size)
        return max(1, round(ROW_STEPS / steps_per_epoch))

    def _param_values(self, names: tuple[str, ...]) -> dict:
        values = super()._param_values(names)
        if "score_kind" in values:
            values["score_kind"] = self._resolved_score_kind()
        return values

    # Conv image models fitted before "auto" meant "elbo" for them (model format 4) have
    # their threshold on "elbo_complexity" scores, and keep scoring those: such a model,
    # loaded from a file or a pickle without score_kind_, is marked _legacy_conv_auto_
    # until it is refitted.
    def _fix_score_kind(self, fresh: bool = True) -> None:
        if fresh:
            self.__dict__.pop("_legacy_conv_auto_", None)
        self.score_kind_ = self._resolved_score_kind()

    def _saved_fitted_values(self) -> tuple[str, ...]:
        """A file records ``score_kind_`` only where "auto" needs it to load right (conv
        images fitted since "auto" became "elbo"), so other files stay readable by older
        vaeanom."""
        if self._records_conv_auto():
            return self._fitted_values
        return tuple(name for name in self._fitted_values if name != "score_kind_")

    def _records_conv_auto(self) -> bool:
        return (self.score_kind == "auto" and self._is_conv_images()
                and not self.__dict__.get("_legacy_conv_auto_"))

    def _loaded_score_kind(self, what: str) -> None:
        saved = self.__dict__.get("score_kind_")
        if saved is None:                       # written before the record, or not needed
            self._legacy_conv_auto_ = self.score_kind == "auto"   # only conv reads it
        elif not self._records_conv_auto() or saved != self._resolved_score_kind():
            raise ValueError(f"{what}: its fitted score kind {saved!r} is not one this model "
                             "is saved with; the file is corrupt.")
        self.score_kind_ = self._resolved_score_kind()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "model_" in state and "score_kind_" not in state:    # pickled before the record
            self._legacy_conv_auto_ = self.score_kind == "auto"
            self.score_kind_ = self._resolved_score_kind()

    def _is_conv_images(self) -> bool:
        return bool(self.is_image_) and self._backbone(True) == "conv"

    def _resolved_score_kind(self) -> str:
        """``score_kind`` with "auto" resolved; refuses image-only kinds on rows."""
        if self.conditional and self.score_kind not in ("auto", *CONDITIONAL_SCORE_KINDS):
            raise ValueError(f"score_kind={self.score_kind!r} is not defined for "
                             f"conditional=True; use one of {CONDITIONAL_SCORE_KINDS} or 'auto'.")
        if self._hierarchical() and self.score_kind not in ("auto", *HIERARCHICAL_SCORE_KINDS):
            raise ValueError(f"score_kind={self.score_kind!r} is not defined for a hierarchical "
                             f"VAE; use one of {HIERARCHICAL_SCORE_KINDS} or 'auto'.")
        if self.score_kind == "llr" and not self._hierarchical():
            raise ValueError("score_kind='llr' needs a hierarchical VAE: give latent_dim as a "
                             "tuple of layer sizes, e.g. latent_dim=(32, 8).")
        if self.score_kind == "auto":
            if not self.is_image_:
                return "elbo" if self._bounds_only() else "elbo_kl_knn"
            if not self._is_conv_images():
                return "elbo_complexity"
            return "elbo_complexity" if self.__dict__.get("_legacy_conv_auto_") else "elbo"
        if self.score_kind in IMAGE_SCORE_KINDS and not self.is_image_:
            rows_kind = "elbo" if self._bounds_only() else "elbo_kl_knn"
            raise ValueError(f"score_kind={self.score_kind!r} needs a model fitted on images; "
                             f"this one was fitted on rows. Use {rows_kind!r} or 'auto'.")
        return self.score_kind

    def _complexity(self) -> ImageComplexity | None:
        """The universal image code of "elbo_complexity" (None for rows)."""
        if not self.is_image_:
            return None
        return ImageComplexity(torch.from_numpy(self.center_), torch.from_numpy(self.scale_))

    def _make_scorer(self, kind: str | None = None) -> nn.Module:
        device = next(self.model_.parameters()).device
        if self.conditional:
            log_prior = torch.from_numpy(self.class_log_prior_)
            return LabelMarginal(self._conditional_bound(), log_prior).to(device)
        if self._hierarchical():
            return self._hierarchical_scorer(self.model_, kind).to(device)
        complexity = self._complexity()
        return Scorer(self.model_, torch.from_numpy(self.noise_).to(device),
                      kind or self._resolved_score_kind(),
                      None if complexity is None else complexity.to(device),
                      torch.from_numpy(self.score_reference_).to(device), self._neighbours())

    def _hierarchical_scorer(self, model: HierarchicalVAE,
                             kind: str | None = None) -> HierarchicalScorer:
        return HierarchicalScorer(model, torch.from_numpy(self.noise_),
                                  kind or self._resolved_score_kind(), self._complexity())

    def _conditional_bound(self, model: VAE | None = None) -> ConditionalBound:
        """The bound on log p(x | y) over ``model`` (default: the fitted one, on its device)."""
        model = self.model_ if model is None else model
        device = next(model.parameters()).device
        complexity = self._complexity()
        return ConditionalBound(model, torch.from_numpy(self.noise_), self._resolved_score_kind(),
                                self._n_classes(), complexity).to(device)

    def onnx_part(self, part: str, *, fp16: bool = False, explain: bool = False,
                  with_label: bool = False):
        from ..export import PartSpec, ScoreAndExplain

        model = self._model_for_export(fp16)
        kind = self._resolved_score_kind()
        if self.conditional or with_label:
            return self._conditional_part(part, model, kind, explain, with_label)
        if part == "scorer" and self._hierarchical():
            if explain:
                raise ValueError("a hierarchical VAE's scorer exports without explain (no "
                                 "explain() yet).")
            return PartSpec(self._hierarchical_scorer(model, kind), "data", ("score",), kind)
        if part == "scorer":
            scorer = inference_scorer(model, torch.from_numpy(self.noise_), kind,
                                      self._complexity(), torch.from_numpy(self.score_reference_),
                                      self._neighbours().cpu())
            if explain:   # one copy of the network serves both outputs: its weights once
                return PartSpec(ScoreAndExplain(scorer, self.onnx_contributions(model)), "data",
                                ("score", "contributions"), kind)
            return PartSpec(scorer, "data", ("score",), kind)
        if part == "encoder":
            return PartSpec(_Encode(model), "data", ("mean", "log_var"), kind)
        return PartSpec(_Decode(model), "latent", ("reconstruction",), kind,
                        latent_shape=(self._code_size(),))

    def _conditional_part(self, part: str, model: VAE, kind: str, explain: bool,
                          with_label: bool):
        """A conditional model's scorer: label-marginal, or with the label as a second input
        (``with_label``: int64 codes, the index of each row's label in ``classes_``)."""
        from ..export import PartSpec

        if not self.conditional:
            raise ValueError("with_label=True exports a conditional model's scorer; this "
                             "model was fitted with conditional=False.")
        if part != "scorer" or explain:
            raise ValueError("a conditional model exports part='scorer' only, without explain "
                             "(its encoder and decoder take labels: not exported yet).")
        bound = self._conditional_bound(model)
        if with_label:
            label = {"name": "label", "dtype": "int64", "shape": []}
            return PartSpec(bound, "data", ("score",), kind, extra_inputs=(label,),
                            offset=self._label_offset())
        return PartSpec(LabelMarginal(bound, torch.from_numpy(self.class_log_prior_)), "data",
                        ("score",), kind)

    def onnx_contributions(self, model: VAE) -> nn.Module:
        """What ``explain`` computes, over ``model`` (the export's CPU copy of the network,
        in model units): the scorer's ``contributions`` output with ``explain=True``."""
        contributions = self._contributions_of(model)
        if self.is_image_:
            return _PixelMaps(contributions, *self._model_shape()[-2:])
        return contributions

    def _needs_unit_range(self) -> bool:
        return self.likelihood == "bernoulli"

    def _standardises_images(self) -> bool:
        return self._backbone(True) == "mlp" and not self._needs_unit_range()

    def _n_latent_columns(self) -> int:
        return self._code_size()

    # ------------------------------------------------------- conditional API
    def partial_fit(self, X, y=None):
        if self.conditional:
            raise ValueError("partial_fit does not take labels yet: fit a conditional "
                             "VAEDetector with fit(X, y).")
        return super().partial_fit(X, y)

    partial_fit.__doc__ = BaseDetector.partial_fit.__doc__

    def score_samples(self, X, y=None) -> np.ndarray:
        """Per-row score, higher = more normal (see the ``score_kind`` parameter for its units).

        ``y`` (conditional models only): score each row given its label, a
        bound on log p(x | y); without it a conditional model scores the
        label-marginal log p(x). A score that cannot be computed (NaN or
        infinite) is returned as -inf, the least normal score: such a row is
        always an outlier.
        """
        if y is None:
            return super().score_samples(X)
        x = self._preprocess(X)
        codes = self._label_codes(y, len(x))
        return finite_scores(self._map_chunks(self._conditional_bound(), x, codes))

    def decision_function(self, X, y=None) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers. With labels ``y``
        (conditional models): ``score_samples(X, y) - label_offset_``, negative for
        rows unusual for their label."""
        offset = self._offset_for(y, "decision_function")
        return self.score_samples(X, y) - offset

    def predict(self, X, y=None) -> np.ndarray:
        """+1 for inliers, -1 for outliers; with labels ``y`` (conditional models),
        outliers for their label."""
        offset = self._offset_for(y, "predict")
        return outlier_labels(self.score_samples(X, y), offset)

    def fit_predict(self, X, y=None, **kwargs) -> np.ndarray:
        """fit(X, y) then predict: the training rows' +1/-1 labels. A conditional model
        learns p(x | y) and flags the rows unusual for their label, predict(X, y)."""
        return self.fit(X, y, **kwargs).predict(X, y if self.conditional else None)

    def _offset_for(self, y, action: str) -> float:
        """The threshold of the score ``score_samples(X, y)`` computes."""
        offset = self._threshold(action)
        return offset if y is None or not self.conditional else self._label_offset()

    def _label_offset(self) -> float:
        if not hasattr(self, "label_offset_"):
            raise ValueError("this conditional model was saved before per-label thresholds "
                             "(label_offset_) existed; refit it to threshold scores given y.")
        return self.label_offset_

    def fit_transform(self, X, y=None, **kwargs) -> np.ndarray:
        """fit(X, y) then transform(X) (with the labels y for a conditional model)."""
        return self.fit(X, y, **kwargs).transform(X, y if self.conditional else None)

    def transform(self, X, y=None) -> np.ndarray:
        """:meth:`encode` (with labels ``y`` for a conditional model), one row per input."""
        codes = self.encode(X, y)
        return codes.reshape(len(codes), -1)

    def inverse_transform(self, Z, y=None) -> np.ndarray:
        """Alias of :meth:`decode`."""
        return self.decode(Z, y)

    def _label_codes(self, y, n_rows: int, name: str = "y") -> Tensor | None:
        """Labels -> int64 codes for a conditional model; None when there are none to give."""
        check_is_fitted(self)
        if not self.conditional:
            if y is None:
                return None
            raise ValueError(f"{name} is for conditional models; this one was fitted with "
                             "conditional=False. Leave it out.")
        if y is None:
            raise ValueError(f"this model is conditional: give the labels, {name}=..., "
                             "one per row (or one for all).")
        rows = labels.one_label_per_row(y, n_rows)
        return torch.from_numpy(labels.label_codes(rows, self.classes_, n_rows, name))

    def _refuse_bounds_only(self, what: str) -> None:
        check_is_fitted(self)
        self._refuse_conditional(what)
        if self._hierarchical():
            raise ValueError(f"{what} is not available for a hierarchical VAE (latent_dim as a "
                             "tuple) yet; see the latent_dim parameter for what is.")

    def _refuse_conditional(self, what: str) -> None:
        check_is_fitted(self)
        if self.conditional:
            raise ValueError(f"{what} is not available for conditional=True yet; see the "
                             "conditional parameter for what is.")

    # ----------------------------------------------------- latent space API
    def encode(self, X, y=None) -> np.ndarray:
        """Posterior means E[z|x] (a conditional model: E[z|x, y]), shape (n, latent_dim)."""
        x = self._preprocess(X)
        codes = self._label_codes(y, len(x))
        if codes is None:
            return self._map_chunks(lambda x: self.model_.encode(x)[0], x)
        return self._map_chunks(lambda x, c: self.model_.encode(x, self._one_hot(c))[0],
                                x, codes)

    def decode(self, Z, y=None) -> np.ndarray:
        """Mean of p(x|z) (a conditional model: p(x|z, y)) in the user's units
        (standardisation undone; images about [0, 1]: a Gaussian decoder's mean
        is not clipped, so clip it to draw it, ``np.clip(images, 0, 1)``)."""
        self._check_fitted_state()
        index = Z.index if isinstance(Z, pd.DataFrame) else None
        Z = check_array(Z, dtype=np.float32, order="C", input_name="Z",  # torch: no neg. strides
                        ensure_min_samples=0)
        if Z.shape[1] != self._code_size():
            raise ValueError(f"Z has {Z.shape[1]} columns, but {type(self).__name__} has "
                             f"latent_dim={self.latent_dim} (codes of {self._code_size()}).")
        codes = self._label_codes(y, len(Z))
        decoded = self._decode_codes(torch.from_numpy(Z), codes)
        return self._as_table(finite_decoded(self._to_user_units(decoded)), index)

    def _decode_codes(self, z: Tensor, codes: Tensor | None) -> np.ndarray:
        if codes is None:
            return self._map_chunks(self.model_.decode, z)
        return self._map_chunks(lambda z, c: self.model_.decode(z, self._one_hot(c)), z, codes)

    def reconstruct(self, X, y=None) -> np.ndarray:
        """decode(encode(X)): what the model makes of X, in the user's units (a table
        with categorical columns: a DataFrame with X's index)."""
        decoded = self.decode(self.encode(X, y), y)
        if isinstance(decoded, pd.DataFrame):
            decoded.index = self._index_of(X)
            decoded.columns = self._feature_labels(X)
        return decoded

    def sample(self, n_samples: int = 1, random_state=None, y=None) -> np.ndarray:
        """Draw z ~ N(0, I) and decode it: n_samples synthetic rows or images.

        A conditional model decodes each z with a label: ``y`` (one label for
        all, or one per sample), or labels drawn from the training shares.
        """
        self._check_fitted_state()
        n_samples = check_count(n_samples)
        generator = torch.Generator().manual_seed(_seed_from(random_state))
        z = torch.randn((n_samples, self._code_size()), generator=generator)
        if self._hierarchical():   # top layer from N(0, I), each one below from p(z_t | z_t+1)
            z = torch.from_numpy(self._map_chunks(self.model_.prior_codes, z)).float()
        if self.conditional and y is None and n_samples == 0:
            codes = torch.zeros(0, dtype=torch.int64)
        elif self.conditional and y is None:
            shares = torch.from_numpy(np.exp(self.class_log_prior_))
            codes = torch.multinomial(shares, n_samples, replacement=True, generator=generator)
        else:
            codes = self._label_codes(y, n_samples)
        return self._as_table(self._to_user_units(self._decode_codes(z, codes)))

    def interpolate(self, x_a, x_b, n_steps: int = 8, method: str = "linear") -> np.ndarray:
        """Decode ``n_steps`` points on a path between two inputs' posterior means.

        ``x_a`` and ``x_b`` are one row or one image each (a batch of one, or a
        1-D row). The first output is ``reconstruct(x_a)`` and the last
        ``reconstruct(x_b)``, exactly. ``method="spherical"`` (slerp) follows the
        great circle instead of the chord: in many dimensions a Gaussian's mass
        lies near a shell, and the chord's midpoints fall inside it.
        """
        self._refuse_conditional("interpolate")
        if check_count(n_steps, "n_steps") < 2:
            raise ValueError(f"n_steps must be at least 2, the path's two ends; got {n_steps}.")
        if method not in ("linear", "spherical"):
            raise ValueError(f"method must be 'linear' or 'spherical'; got {method!r}.")
        z_a, z_b = (self._one_code(x, name) for x, name in ((x_a, "x_a"), (x_b, "x_b")))
        t = np.linspace(0.0, 1.0, int(n_steps))[:, None]
        if method == "linear":
            path = (1.0 - t) * z_a + t * z_b
        else:
            path = _slerp(z_a, z_b, t)
        return self.decode(path.astype(np.float32))

    def sample_posterior(self, x, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Decode ``n_samples`` draws of z ~ q(z|x) for one input ``x``: how much the
        model's reading of x varies (a wide spread: a row it is unsure about)."""
        self._refuse_conditional("sample_posterior")
        n_samples = check_count(n_samples)
        mean, log_var = self._posterior(x, "x")
        generator = torch.Generator().manual_seed(_seed_from(random_state))
        eps = torch.randn((n_samples, self._code_size()), generator=generator).numpy()
        z = mean + np.exp(0.5 * log_var) * eps
        return self.decode(z.astype(np.float32))

    def _posterior(self, x, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and log-variance of q(z|x) for one input ``x``, each (1, latent_dim),
        from one pass of the encoder (the mean's bits are those ``encode`` gives)."""
        check_is_fitted(self)
        if self.is_image_ and np.ndim(x) == len(self.input_shape_):   # one image, (H, W) ...
            x = np.asarray(x)[None]
        both = self._map_chunks(lambda r: torch.cat(self.model_.encode(r), dim=1),
                                self._preprocess(_as_batch(x)))
        if len(both) != 1:
            raise ValueError(f"{name} must be one row or one image; got {len(both)}.")
        return both[:, :self._code_size()], both[:, self._code_size():]

    def _one_code(self, x, name: str) -> np.ndarray:
        """The posterior mean of one input, as float64 (1, latent_dim)."""
        return self._posterior(x, name)[0]

    def score_frame(self, X, explain: int = 0, *, y=None) -> pd.DataFrame:
        """One row per input row, same index: score, reconstruction_error, kl, elbo, is_outlier.

        ``explain=k`` (rows only) adds the k features that contributed most to
        each row's anomaly (see :meth:`explain`): columns ``feature_1``,
        ``contribution_1``, ..., ``feature_k``, ``contribution_k``.
        Conditional and hierarchical models, which score by their bounds alone,
        give ``score`` and ``is_outlier`` (as their ONNX scorers do); ``y``, for a
        conditional model, scores each row given its label, as in :meth:`predict`.
        """
        check_is_fitted(self)
        k = check_count(explain, "explain")
        if self._bounds_only():
            return self._bound_frame(X, y, k)
        self._label_codes(y, 0)   # refuses y, which is for conditional models
        x = self._preprocess(X)
        offset = self._threshold("score_frame")
        terms = self._map_chunks(self._make_scorer().terms, x)
        score = finite_scores(terms.score)
        frame = pd.DataFrame({
            "score": score,
            "reconstruction_error": terms.reconstruction_error,
            "kl": terms.kl,
            "elbo": terms.elbo,
            "is_outlier": is_outlier(score, offset),
        }, index=self._index_of(X))
        if k:
            if self.is_image_:
                raise ValueError("score_frame(explain=k) is for rows; for images, "
                                 "explain(X) returns per-pixel maps.")
            top = top_features(self._explanation_frame(x, pd.RangeIndex(len(x)), X), k)
            frame = frame.assign(**{c: top[c].to_numpy() for c in top})  # X's index may repeat
        return frame

    def _bound_frame(self, X, y, k: int) -> pd.DataFrame:
        """score_frame of a conditional or hierarchical model: score and is_outlier."""
        if k:
            self._refuse_bounds_only("score_frame(explain=k)")
        offset = self._offset_for(y, "score_frame")
        score = self.score_samples(X, y)
        return pd.DataFrame({"score": score, "is_outlier": is_outlier(score, offset)},
                            index=self._index_of(X))

    def explain(self, X):
        """Each feature's contribution to each row's anomaly, in nats (higher = more unusual).

        A contribution is the feature's negative log-likelihood under the model
        (the ELBO's reconstruction term, feature by feature, with the fixed
        scoring noise) minus its median over the training rows, so about 0 is
        typical and the largest values name the features that made the row
        unusual. A table model takes each feature's code from the *other*
        features (leave-one-out), and for rows the encoder sees each numeric
        entry within ``EXPLAIN_ENCODER_BOUND`` (10) training standard deviations,
        so that one wild entry keeps its own blame (the likelihood charges it
        as it is; past the bound the row's contributions no longer sum to the
        ELBO's term). Rows: a DataFrame with X's index and one column per input
        feature. Images: an array (n, H, W), summed over channels.
        """
        self._refuse_bounds_only("explain")
        x = self._preprocess(X)
        if self.is_image_:
            maps = self._map_chunks(self._contributions(), x)
            return maps.reshape(len(maps), -1, *maps.shape[-2:]).sum(axis=1)
        return self._explanation_frame(x, self._index_of(X), X)

    def _explanation_frame(self, x: Tensor, index: pd.Index, X) -> pd.DataFrame:
        return pd.DataFrame(self._map_chunks(self._contributions(), x), index=index,
                            columns=self._feature_labels(X))

    def _feature_labels(self, X) -> list:
        return feature_labels(X, getattr(self, "feature_names_in_", None), self.n_features_in_)


def _as_batch(x):
    """One row given as a 1-D array or a Series, as a batch of one; anything else as is."""
    if isinstance(x, pd.Series):
        return x.to_frame().T
    if isinstance(x, (pd.DataFrame, torch.Tensor)) or np.ndim(x) != 1:
        return x
    return np.asarray(x)[None, :]


def _slerp(z_a: np.ndarray, z_b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation (Shoemake 1985) of two (1, d) codes at fractions t (k, 1);
    the chord where they are (anti)parallel. t=0 and t=1 give z_a and z_b exactly."""
    cosine = float((z_a @ z_b.T).item() / (np.linalg.norm(z_a) * np.linalg.norm(z_b) + 1e-300))
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return (1.0 - t) * z_a + t * z_b
    return (np.sin((1.0 - t) * omega) * z_a + np.sin(t * omega) * z_b) / np.sin(omega)


def _median_observed(values: np.ndarray) -> np.ndarray:
    """Per-column median over the non-NaN entries; 0 for a column with none."""
    observed = ~np.isnan(values)
    if observed.all():
        return np.median(values, axis=0)
    medians = np.zeros(values.shape[1:])
    for j in np.ndindex(values.shape[1:]):
        column = values[(slice(None), *j)]
        if (~np.isnan(column)).any():
            medians[j] = np.median(column[~np.isnan(column)])
    return medians
