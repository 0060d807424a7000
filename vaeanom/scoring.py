"""Anomaly scores of a fitted VAE, as torch modules (so they export to ONNX as is).

Every score is "higher = more normal", per row, in nats where it is a
likelihood bound. The Monte-Carlo noise is a buffer drawn once at fit time
and shared by all rows (common random numbers): a row's score depends on that
row alone, never on its batch, its position or the time of the call.

Which score to use:

- ``"elbo"``: the evidence lower bound log p(x|z) - KL(q(z|x) || p(z))
  with KL weight 1 whatever ``beta`` the model was trained with, so it is a bound
  on log p(x) in nats of the preprocessed data (with a Gaussian likelihood, or a
  Bernoulli one on binary data). Uses every part of the model,
  including the learned per-feature variance.
- ``"iwae"``: the importance-weighted bound with K = ``n_score_samples``
  samples: ELBO <= IWAE_K <= log p(x) in expectation, tightening as K grows. The
  better estimate of log p(x) when the posterior is not Gaussian enough for the
  ELBO; costs the same decoder passes as the ELBO.
- ``"recon_prob"``: An & Cho's reconstruction probability, the Monte-Carlo mean
  of log p(x|z_l) over posterior samples z_l ~ q(z|x), with the decoder's
  mean and (learned) variance. The ELBO without its KL term: use it when how
  well x is explained matters more than how typical its code is.
- ``"reconstruction"``: minus the mean squared error between x and the decoding of
  its posterior mean. Ignores the variance and the latent term; the classic
  autoencoder score, robust when the likelihood model is poor.
- ``"kl"``: minus KL(q(z|x) || p(z)), how far the encoder puts x's code from
  the prior: the encoder's verdict alone, in closed form (no noise, no
  decoder pass). Robust where the decoder has learned to explain the
  anomalies in a contaminated training set too, as on tables.
- ``"elbo_kl"``: two detectors voting. The ELBO says
  how well the whole model explains x, the KL how atypical x's code is; each
  is put on the scale of its own training distribution (median and
  interquartile range of the training rows, robust to the anomalies an
  unlabelled training set holds) and the two are summed. On the six ADBench
  tables the KL alone beat the ELBO where the training rows hold anomalies
  (the decoder learns to explain those too) and lost on clean one-class data;
  the vote kept most of both (benchmarks/anomaly_tabular.py). Not a bound:
  a sum of standardised terms, with no unit.
- ``"latent_knn"``: minus the mean Euclidean distance from x's posterior mean
  to its 5 nearest codes among (up to 2048) training rows, fixed at fit time
  (:class:`LatentNeighbours`): kNN detection in the space the encoder
  learned, where directions the decoder does not use have collapsed.
- ``"elbo_kl_knn"`` (the default for rows): the ELBO, the KL and the latent
  kNN distance voting, each in robust training units as in "elbo_kl". The
  kNN term answers "is x near rows seen in training?", which the two
  likelihood terms answer poorly on small or multi-modal tables; on the
  selection half of benchmarks/anomaly_tabular.py it lifted the mean
  ROC-AUC from 0.866 ("elbo_kl") to 0.875, and equal weights did as well as
  any weighting tried.
- ``"elbo_complexity"`` (images only; the default for the MLP's images): the ELBO plus
  ``COMPLEXITY_WEIGHT`` times the image's code length under a simple universal
  image code (:class:`ImageComplexity`), a likelihood ratio in the spirit of
  Serra et al. (ICLR 2020), "Input complexity and out-of-distribution
  detection with likelihood-based generative models". Likelihoods favour
  simple images of any class (few lit pixels, flat areas); the code length
  says how much of the ELBO is owed to the image being simple rather than
  typical of the training data.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.likelihoods import (GaussianLikelihood, gaussian_kl_standard_normal,
                                 observed_row_mean)
from .models.mlp import MLPDecoder
from .models.vae import ELBOTerms, LOG_VAR_LIMIT, VAE

SCORE_KINDS = ("elbo", "iwae", "recon_prob", "reconstruction", "kl", "elbo_kl",
               "latent_knn", "elbo_kl_knn", "elbo_complexity")
#: score kinds that sum terms in robust training units (:func:`robust_vote`)
VOTE_SCORE_KINDS = ("elbo_kl", "elbo_kl_knn")
#: score kinds that need the bank of training codes (:class:`LatentNeighbours`)
NEIGHBOUR_SCORE_KINDS = ("latent_knn", "elbo_kl_knn")
#: score kinds that need image inputs
IMAGE_SCORE_KINDS = ("elbo_complexity",)
#: score kinds a hierarchical VAE computes ("llr": Havtorn et al.'s likelihood ratio)
HIERARCHICAL_SCORE_KINDS = ("elbo", "iwae", "llr", "elbo_complexity")
#: score kinds a conditional VAE computes: bounds on log p(x | y), which marginalise over y
CONDITIONAL_SCORE_KINDS = ("elbo", "iwae", "elbo_complexity")
#: weight of the universal code length in "elbo_complexity". Picked once on the
#: Fashion-MNIST benchmark (benchmarks/anomaly_images.py), the same for every
#: image data set: 0.1-0.3 all beat the plain ELBO there; Serra et al.'s weight 1
#: (with a PNG code length) over-corrects on 28x28 images.
COMPLEXITY_WEIGHT = 0.2


def _check_kind(kind: str, kinds: tuple[str, ...], model: str,
                complexity: nn.Module | None) -> None:
    """Refuse a score kind ``model`` does not have, or an image kind without images."""
    if kind not in kinds:
        raise ValueError(f"{model} scores with one of {kinds}; got {kind!r}")
    if kind in IMAGE_SCORE_KINDS and complexity is None:
        raise ValueError(f"score kind {kind!r} needs images (an ImageComplexity module)")


class ScoreTerms(NamedTuple):
    """Everything ``score_frame`` reports, per row."""

    score: Tensor
    elbo: Tensor
    log_px: Tensor
    kl: Tensor
    reconstruction_error: Tensor


def reconstruction_error(model: VAE, x: Tensor) -> Tensor:
    """Mean squared error per row between x and the decoding of its posterior mean.

    Over the observed entries only; a categorical column counts 1 when the
    most likely category is not x's.
    """
    mu, _ = model.encode(x)
    return observed_row_mean(model.likelihood.squared_error(x, model.decode(mu)), x)


class ImageComplexity(nn.Module):
    """Code length in nats of each image under a fixed universal image code.

    Each pixel (in grey levels 0-255) is predicted by the mean of its left and
    upper neighbours (zero outside the image), as PNG's "average" filter does,
    and the residual r is charged an Elias-gamma-like 2 log(1 + |r|) + log 2
    nats. Nothing is learned, so the code is the same for every data set; it
    tracks PNG file sizes (correlation 0.94 on Fashion-MNIST) but is a few
    tensor operations, so it exports to ONNX with the rest of the scorer.

    Takes images in model units: ``center`` and ``scale`` (the detector's
    standardisation, shape (C, H, W)) map them back to pixels in [0, 1].
    """

    def __init__(self, center: Tensor, scale: Tensor) -> None:
        super().__init__()
        if center.dim() != 3:
            raise ValueError("ImageComplexity needs (C, H, W) statistics; "
                             f"got {tuple(center.shape)}")
        self.register_buffer("center", center.float())
        self.register_buffer("scale", scale.float())

    def forward(self, x: Tensor) -> Tensor:
        pixels = 255.0 * (x.reshape(-1, *self.center.shape) * self.scale + self.center)
        left = F.pad(pixels[..., :, :-1], (1, 0, 0, 0))
        up = F.pad(pixels[..., :-1, :], (0, 0, 1, 0))
        residual = (pixels - 0.5 * (left + up)).abs()
        return (2.0 * torch.log1p(residual) + math.log(2.0)).flatten(1).sum(1)


class LatentNeighbours(nn.Module):
    """Mean Euclidean distance from a posterior mean to its k nearest codes in a bank.

    The bank holds the posterior means of (up to a few thousand) training
    rows, fixed at fit time, so a row's distance depends on that row alone. It
    is kNN detection in the VAE's latent space: the encoder has already
    whitened the data and dropped the directions the decoder does not use.
    ``exclude_self=True`` (for the training rows themselves) skips each row's
    nearest match, its own code.
    """

    def __init__(self, bank: Tensor, k: int = 5) -> None:
        super().__init__()
        self.k = int(min(k, len(bank) - 1))
        self.register_buffer("bank", bank.float())

    def forward(self, mu: Tensor, exclude_self: bool = False) -> Tensor:
        # differences, not |a|^2 - 2ab + |b|^2: that form cancels in float32 for near
        # neighbours, and the runtimes' matmuls would then disagree in the last digits
        squared = (mu[:, None, :] - self.bank[None]).pow(2).sum(-1)        # (b, bank)
        k = self.k + int(exclude_self)
        nearest = torch.topk(squared, k, dim=1, largest=False).values
        return nearest[:, int(exclude_self):].sqrt().mean(1)


class Scorer(nn.Module):
    """x (preprocessed) -> score per row, with the fixed noise as a buffer.

    ``complexity`` (an :class:`ImageComplexity`) is needed by "elbo_complexity"
    only, ``reference`` (see :func:`robust_vote`) by the votes, ``neighbours``
    (a :class:`LatentNeighbours`) by the latent kNN kinds.
    """

    def __init__(self, model: VAE, eps: Tensor, kind: str = "elbo",
                 complexity: nn.Module | None = None, reference: Tensor | None = None,
                 neighbours: nn.Module | None = None) -> None:
        super().__init__()
        _check_kind(kind, SCORE_KINDS, "a VAE", complexity)
        if kind in VOTE_SCORE_KINDS and reference is None:
            raise ValueError(f"score kind {kind!r} needs the training reference of its terms")
        if kind in NEIGHBOUR_SCORE_KINDS and neighbours is None:
            raise ValueError(f"score kind {kind!r} needs the bank of training codes")
        self.model = model
        self.kind = kind
        self.complexity = complexity
        self.neighbours = neighbours
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))  # (L, 1, d)
        self.register_buffer("reference", reference)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "reconstruction":
            return -reconstruction_error(self.model, x)
        if self.kind == "kl":  # closed form from the encoder: no decoder pass
            return -gaussian_kl_standard_normal(*self.model.encode(x))
        if self.kind == "iwae":
            return self.model.iwae(x, self.eps)
        if self.kind == "latent_knn":
            return -self.neighbours(self.model.encode(x)[0])
        return self._from_elbo_terms(self.model(x, self.eps), x)

    def terms(self, x: Tensor) -> ScoreTerms:
        elbo_terms = self.model(x, self.eps)
        recon = reconstruction_error(self.model, x)
        if self.kind == "reconstruction":
            score = -recon
        elif self.kind == "iwae":
            score = self.model.iwae(x, self.eps)
        else:
            score = self._from_elbo_terms(elbo_terms, x)
        return ScoreTerms(score=score, elbo=elbo_terms.elbo(), log_px=elbo_terms.log_px,
                          kl=elbo_terms.kl, reconstruction_error=recon)

    def _from_elbo_terms(self, terms: ELBOTerms, x: Tensor) -> Tensor:
        """The score of every kind that is a function of the ELBO's two terms."""
        if self.kind == "kl":
            return -terms.kl
        if self.kind == "recon_prob":
            return terms.log_px
        if self.kind == "elbo_complexity":
            return complexity_corrected(terms.elbo(), self.complexity, x)
        if self.kind == "elbo_kl":
            return robust_vote((-terms.elbo(), terms.kl), self.reference)
        if self.kind == "latent_knn":
            return -self.neighbours(self.model.encode(x)[0])
        if self.kind == "elbo_kl_knn":
            distance = self.neighbours(self.model.encode(x)[0])
            return robust_vote((-terms.elbo(), terms.kl, distance), self.reference)
        return terms.elbo()


class HierarchicalScorer(nn.Module):
    """A hierarchical VAE's score (:class:`vaeanom.models.hierarchical.HierarchicalVAE`).

    "elbo" and "iwae" as for one layer; "llr" is minus Havtorn et al.'s
    (ICML 2021) LLR^{>1} = L - L^{>1}, the importance-weighted bound minus the
    same bound with the bottom layer drawn from its prior given the layers above:
    how much of the likelihood only low-level detail explains. Likelihoods of
    simple inputs of any kind are high because their low-level statistics are
    easy; the ratio cancels that and keeps what the top (semantic) latents say.
    "elbo_complexity" adds the image's code length to the ELBO.
    """

    def __init__(self, model: nn.Module, eps: Tensor, kind: str,
                 complexity: nn.Module | None = None) -> None:
        super().__init__()
        _check_kind(kind, HIERARCHICAL_SCORE_KINDS, "a hierarchical VAE", complexity)
        self.model, self.kind, self.complexity = model, kind, complexity
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))   # (L, 1, noise)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "iwae":
            return self.model.iwae(x, self.eps)
        if self.kind == "llr":
            return self.model.llr(x, self.eps)
        elbo = self.model(x, self.eps).elbo()
        if self.kind == "elbo_complexity":
            return complexity_corrected(elbo, self.complexity, x)
        return elbo


class ConditionalBound(nn.Module):
    """A conditional VAE's bound on log p(x | y) for rows x and label codes y (int64, (b,)).

    ``kind`` is "elbo", "iwae" or "elbo_complexity" (the ELBO plus the image's
    code length, which does not depend on y). A code outside 0..n_classes-1,
    a label the model never saw, scores -inf: the model knows nothing of it.
    """

    def __init__(self, model: VAE, eps: Tensor, kind: str, n_classes: int,
                 complexity: nn.Module | None = None) -> None:
        super().__init__()
        _check_kind(kind, CONDITIONAL_SCORE_KINDS, "a conditional VAE", complexity)
        self.model, self.kind = model, kind
        # only "elbo_complexity" adds the code length; "elbo" and "iwae" stay plain bounds
        self.complexity = complexity if kind in IMAGE_SCORE_KINDS else None
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))   # (L, 1, d)
        self.register_buffer("classes", torch.arange(n_classes))

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        context = (labels[:, None] == self.classes).to(torch.float32)    # one-hot; 0s if unknown
        bound = self.bound(x, context)
        if self.complexity is not None:
            bound = complexity_corrected(bound, self.complexity, x)
        known = (labels >= 0) & (labels < len(self.classes))
        return torch.where(known, bound, torch.full_like(bound, -torch.inf))

    def bound(self, x: Tensor, context: Tensor) -> Tensor:
        """The ELBO or IWAE bound on log p(x | c) for one-hot (or any) contexts c (b, k)."""
        if self.kind == "iwae":
            return self.model.iwae(x, self.eps, context)
        return self.model(x, self.eps, context=context).elbo()


class LabelMarginal(nn.Module):
    """A conditional VAE's score without labels: log p(x) = log sum_y p(y) p(x | y).

    Each class's bound on log p(x | y) plus log p(y) (the training frequencies),
    log-sum-exp'ed over the classes: a lower bound on log p(x) (a log-sum of
    lower bounds), which charges x for being unlike *every* class, so it needs
    no label at scoring time. One encoder and decoder pass per class.
    """

    def __init__(self, conditional: ConditionalBound, log_prior: Tensor) -> None:
        super().__init__()
        self.conditional = conditional
        self.register_buffer("log_prior", log_prior.float())

    def forward(self, x: Tensor) -> Tensor:
        eye = torch.eye(len(self.log_prior), device=x.device)
        per_class = torch.stack([
            self.conditional.bound(x, eye[c].expand(x.shape[0], -1)) + self.log_prior[c]
            for c in range(len(self.log_prior))], dim=1)
        score = torch.logsumexp(per_class, dim=1)
        if self.conditional.complexity is not None:
            score = complexity_corrected(score, self.conditional.complexity, x)
        return score


class ComplexityCorrected(nn.Module):
    """score(x) + COMPLEXITY_WEIGHT * complexity(x): "elbo_complexity" from a fast ELBO module."""

    def __init__(self, scorer: nn.Module, complexity: nn.Module) -> None:
        super().__init__()
        self.scorer = scorer
        self.complexity = complexity

    def forward(self, x: Tensor) -> Tensor:
        return complexity_corrected(self.scorer(x), self.complexity, x)


def complexity_corrected(elbo: Tensor, complexity: nn.Module, x: Tensor) -> Tensor:
    """The "elbo_complexity" score: ELBO + COMPLEXITY_WEIGHT * code length of x."""
    return elbo + COMPLEXITY_WEIGHT * complexity(x)


def robust_vote(terms: tuple[Tensor, ...], reference: Tensor) -> Tensor:
    """Minus the sum of anomaly terms (higher = more anomalous), each in robust standard units.

    ``reference[i]`` is ``[median, iqr]`` of term i over the training rows
    (:func:`term_reference`; row 0 is -ELBO, row 1 the KL, row 2 the latent
    kNN distance). "elbo_kl" votes with the first two, "elbo_kl_knn" with all three.
    """
    total = 0.0
    for i, term in enumerate(terms):
        total = total + (term - reference[i, 0]) / reference[i, 1]
    return -total


def term_reference(*terms: np.ndarray) -> np.ndarray:
    """Median and interquartile range of each vote term on the training rows, (n_terms, 2).

    A term whose IQR is zero (more than half the rows tie) falls back to its
    standard deviation, then to 1, so the division stays finite.
    """
    rows = []
    for term in terms:
        q1, median, q3 = np.percentile(term, [25, 50, 75])
        scale = q3 - q1 if q3 > q1 else (np.std(term) or 1.0)
        rows.append((median, scale))
    return np.asarray(rows, dtype=np.float32)


class LinearGaussianELBO(nn.Module):
    """The ELBO of an MLP-decoder Gaussian VAE with the last layer run once per row.

    Same number as ``Scorer(model, eps, "elbo")`` (or ``"recon_prob"`` with
    ``with_kl=False``, ``"elbo_kl"`` with a ``reference``, ``"elbo_kl_knn"``
    with ``neighbours`` too) for about half the work; the exported scorer runs it.
    With the decoder's last layer m = W h + b, scale s and L samples
    h_l = h_bar + delta_l (h_bar their mean):

        mean_l ||(x - m_l) / s||^2 = ||(x - W h_bar - b) / s||^2 + mean_l delta_l' G delta_l,

    where G = A'A, A = W / s: the cross term sums to zero over l. The big
    (hidden x features) product then runs once per row instead of L times, and
    the per-sample term costs hidden^2 instead of hidden x features. Every
    term is a squared residual or a variance, so nothing cancels in float32.
    """

    def __init__(self, model: VAE, eps: Tensor, with_kl: bool = True,
                 reference: Tensor | None = None, neighbours: nn.Module | None = None) -> None:
        super().__init__()
        self.with_kl = with_kl
        self.register_buffer("reference", reference)  # given: the "elbo_kl" vote
        self.neighbours = neighbours                  # given too: the "elbo_kl_knn" vote
        if not supports_linear_gaussian(model):
            raise ValueError("LinearGaussianELBO needs an MLP decoder and a Gaussian likelihood.")
        layers = list(model.decoder.net)
        self.encoder = model.encoder
        self.body = nn.Sequential(*layers[:-1])
        self.last = layers[-1]
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))
        with torch.no_grad():
            log_scale = model.likelihood.log_scale().flatten().double()
            a = self.last.weight.double() * torch.exp(-log_scale)[:, None]   # (F, H)
            self.register_buffer("inv_scale", torch.exp(-log_scale).float())
            self.register_buffer("gram", (a.T @ a).float())                   # (H, H)
            constant = -log_scale.sum() - 0.5 * log_scale.numel() * math.log(2 * math.pi)
            self.register_buffer("constant", constant.float())

    def forward(self, x: Tensor) -> Tensor:
        mu, log_var = self.encoder(x)
        log_var = log_var.clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)  # as VAE.encode does
        z = mu + torch.exp(0.5 * log_var) * self.eps                       # (L, b, d)
        n_samples, batch = z.shape[0], z.shape[1]
        hidden = self.body(z.reshape(n_samples * batch, -1)).view(n_samples, batch, -1)
        mean_hidden = hidden.mean(0)
        delta = hidden - mean_hidden
        spread = ((delta @ self.gram) * delta).sum(-1).mean(0)            # (b,)
        residual = (x.flatten(1) - self.last(mean_hidden)) * self.inv_scale
        log_px = -0.5 * (residual.pow(2).sum(1) + spread) + self.constant
        if not self.with_kl:
            return log_px
        kl = gaussian_kl_standard_normal(mu, log_var)
        if self.reference is None:
            return log_px - kl
        terms = (kl - log_px, kl) if self.neighbours is None else (
            kl - log_px, kl, self.neighbours(mu))
        return robust_vote(terms, self.reference)


class FeatureContributions(nn.Module):
    """Each feature's part in a row's anomaly, in nats: what ``explain`` returns.

    A feature's contribution is its negative log-likelihood under the model,
    E_q[-log p(x_j | z)] with the same fixed Monte-Carlo noise as the ELBO,
    minus its median over the training rows (``reference``): about 0 for a
    typical value, large and positive for a feature the model finds unlikely
    for this row. Summed over features (without the reference) it is minus
    the ELBO's reconstruction term for a complete row (for a row with holes,
    that term scales the observed entries' sum by d / observed; the
    contributions do not), so the explanation adds up to the part of
    the score the likelihood accounts for (the KL and kNN terms belong to the
    code, not to any one feature).

    ``leave_one_out=True`` (the table model, whose encoder takes masks) asks
    instead how unlikely x_j is given the *other* features: z comes from
    q(z | x with x_j hidden). An anomalous entry then cannot pull the code
    towards itself and shift the blame onto the features it disagrees with (a
    wrong category would otherwise move the code and be charged to the
    numbers). One encoder and decoder pass per feature.

    ``bound`` (rows; per feature, in model units) caps what the *encoder* sees
    of each entry at +-bound; the likelihood still charges the entry as it is.
    An MLP encoder extrapolates without limit, so one entry thousands of
    standard deviations out (a sentinel such as 99999) would throw the code far
    from anything the decoder knows, and every other column's likelihood, hence
    its blame, with it. Capped, the code stays where the model has been, and
    the blame stays with the entry. (Categorical codes get an infinite bound.)
    """

    def __init__(self, model: VAE, eps: Tensor, reference: Tensor,
                 leave_one_out: bool = False, bound: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.leave_one_out = leave_one_out
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))  # (L, 1, d)
        self.register_buffer("reference", reference)
        self.register_buffer("bound", bound)

    def forward(self, x: Tensor) -> Tensor:
        """(b, ...) contributions; NaN where x is missing (a hole contributes nothing)."""
        seen = self._capped(x)
        if self.leave_one_out:
            nll = torch.stack([self._hidden_nll(x, seen, j) for j in range(x.shape[1])], dim=1)
        else:
            nll = -self.model.feature_log_px(x, self.eps, seen)
        return torch.where(torch.isnan(x), x, nll - self.reference)

    def _capped(self, x: Tensor) -> Tensor:
        """x as the encoder sees it: each entry within +-bound (NaN stays NaN)."""
        if self.bound is None:
            return x
        return torch.where(x.abs() > self.bound, torch.sign(x) * self.bound, x)

    def _hidden_nll(self, x: Tensor, seen: Tensor, j: int) -> Tensor:
        """-log p(x_j | z), z ~ q(z | ``seen`` with column j hidden), for rows x (b, d)."""
        seen = seen.clone()
        seen[:, j] = float("nan")
        return -self.model.feature_log_px(x, self.eps, seen)[:, j]


def supports_linear_gaussian(model: VAE) -> bool:
    """True when ``LinearGaussianELBO`` applies: MLP decoder ending in Linear, Gaussian p(x|z)."""
    return (isinstance(model.decoder, MLPDecoder) and isinstance(model.likelihood,
                                                                  GaussianLikelihood)
            and isinstance(list(model.decoder.net)[-1], nn.Linear))


def inference_scorer(model: VAE, eps: Tensor, kind: str, complexity: nn.Module | None = None,
                     reference: Tensor | None = None,
                     neighbours: nn.Module | None = None) -> nn.Module:
    """The cheapest module that computes score ``kind`` (what the ONNX export runs)."""
    if kind == "elbo_complexity" and complexity is not None:
        return ComplexityCorrected(inference_scorer(model, eps, "elbo"), complexity)
    linear_gaussian = supports_linear_gaussian(model)
    if kind in ("elbo", "recon_prob", *VOTE_SCORE_KINDS) and linear_gaussian:
        return LinearGaussianELBO(model, eps, with_kl=kind != "recon_prob",
                                  reference=reference if kind in VOTE_SCORE_KINDS else None,
                                  neighbours=neighbours if kind == "elbo_kl_knn" else None)
    return Scorer(model, eps, kind, complexity, reference, neighbours)
