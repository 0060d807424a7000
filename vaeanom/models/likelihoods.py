"""Log-likelihoods of the decoder and the closed-form KL term of the ELBO.

Pure functions over tensors, summed over every non-batch dimension, so one row
(or one image) gets one number in nats. Kept free of module state so that they
can be unit-tested against ``torch.distributions`` and exported to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_rows(t: Tensor) -> Tensor:
    """Sum every dimension but the first: one value per row."""
    return t.flatten(1).sum(dim=1)


def observed_row_sum(per_entry: Tensor, x: Tensor) -> Tensor:
    """Sum of ``per_entry`` over each row's observed entries (x not NaN), times d / observed.

    The scaling keeps log-likelihoods of rows with different numbers of holes
    on one scale: a row is charged its mean log-likelihood per observed entry
    times the number of entries d. A complete row's sum is unchanged (the factor
    is exactly 1).
    """
    observed = ~torch.isnan(x)
    total = torch.where(observed, per_entry, torch.zeros_like(per_entry)).flatten(1).sum(1)
    n_observed = observed.flatten(1).sum(1).to(total.dtype)
    return total * (observed[0].numel() / n_observed)


def observed_row_mean(per_entry: Tensor, x: Tensor) -> Tensor:
    """Mean of ``per_entry`` over each row's observed entries (x not NaN)."""
    observed = ~torch.isnan(x)
    total = torch.where(observed, per_entry, torch.zeros_like(per_entry)).flatten(1).sum(1)
    return total / observed.flatten(1).sum(1).to(total.dtype)


def holes_zeroed(x: Tensor) -> Tensor:
    """x with missing entries (NaN) set to 0, so no NaN reaches a loss or its gradient."""
    return torch.where(torch.isnan(x), torch.zeros_like(x), x)


def gaussian_log_prob_elementwise(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x | mean, exp(log_scale)^2) per entry, x's shape. ``log_scale`` broadcasts."""
    z = (x - mean) * torch.exp(-log_scale)
    return -0.5 * z * z - log_scale - 0.5 * _LOG_2PI


def gaussian_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x | mean, exp(log_scale)^2), summed per row. ``log_scale`` broadcasts."""
    return _sum_rows(gaussian_log_prob_elementwise(x, mean, log_scale))


def bernoulli_log_prob_elementwise(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x | sigmoid(logits)) per entry, for x in [0, 1].

    A normalised log-probability only for binary x. Grey levels are allowed, as
    the usual cross-entropy surrogate, but over x in [0, 1] its exponential
    integrates to less than 1 (0.5 at p = 0.5, 0.21 at p = 0.99: the continuous
    Bernoulli's constant is missing, Loaiza-Ganem & Cunningham 2019), and by an
    amount that depends on the prediction: on grey levels it is a score, not a
    density in nats.
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x | sigmoid(logits)) per row (see the elementwise version on grey levels)."""
    return _sum_rows(bernoulli_log_prob_elementwise(x, logits))


def gaussian_kl_standard_normal(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) in closed form, per row.

    Never clamped: a KL of exactly zero means the posterior collapsed onto the
    prior, and hiding that (as PyOD's ``capacity`` does) trains an autoencoder.
    """
    return 0.5 * _sum_rows(mu * mu + torch.exp(log_var) - 1.0 - log_var)


class GaussianLikelihood(nn.Module):
    """p(x | z) = N(decoder(z), sigma^2) with sigma fixed or learned per feature.

    A learned per-feature sigma lets the model say "this feature never moves":
    values that were constant in training (pixels never lit) then cost many nats
    when they move at test time. ``min_sigma`` keeps that cost finite.
    """

    def __init__(self, feature_shape: tuple[int, ...], sigma: float | None = None,
                 min_sigma: float = 1e-2) -> None:
        super().__init__()
        self.min_sigma = float(min_sigma)
        if sigma is None:
            # softplus(raw) + min_sigma starts at sigma = 1 (standardised units).
            start = math.log(math.expm1(1.0 - self.min_sigma))
            self.raw_sigma = nn.Parameter(torch.full(feature_shape, start))
        else:
            self.register_buffer("log_sigma_fixed", torch.full(feature_shape, math.log(sigma)))

    def log_scale(self) -> Tensor:
        if hasattr(self, "raw_sigma"):
            return torch.log(F.softplus(self.raw_sigma) + self.min_sigma)
        return self.log_sigma_fixed

    def mean(self, decoded: Tensor) -> Tensor:
        return decoded

    def log_prob(self, x: Tensor, decoded: Tensor) -> Tensor:
        """Summed over the observed entries of each row (see :func:`observed_row_sum`)."""
        return observed_row_sum(self.log_prob_elementwise(x, decoded), x)

    def log_prob_elementwise(self, x: Tensor, decoded: Tensor) -> Tensor:
        """Per entry; 0 where x is missing (NaN)."""
        per_entry = gaussian_log_prob_elementwise(holes_zeroed(x), decoded, self.log_scale())
        return torch.where(torch.isnan(x), torch.zeros_like(per_entry), per_entry)

    def squared_error(self, x: Tensor, mean: Tensor) -> Tensor:
        return (holes_zeroed(x) - mean) ** 2


class BernoulliLikelihood(nn.Module):
    """p(x | z) = Bernoulli(sigmoid(decoder(z))), for data scaled to [0, 1]."""

    def mean(self, decoded: Tensor) -> Tensor:
        return torch.sigmoid(decoded)

    def log_prob(self, x: Tensor, decoded: Tensor) -> Tensor:
        """Summed over the observed entries of each row (see :func:`observed_row_sum`)."""
        return observed_row_sum(self.log_prob_elementwise(x, decoded), x)

    def log_prob_elementwise(self, x: Tensor, decoded: Tensor) -> Tensor:
        """Per entry; 0 where x is missing (NaN)."""
        per_entry = bernoulli_log_prob_elementwise(holes_zeroed(x), decoded)
        return torch.where(torch.isnan(x), torch.zeros_like(per_entry), per_entry)

    def squared_error(self, x: Tensor, mean: Tensor) -> Tensor:
        return (holes_zeroed(x) - mean) ** 2
