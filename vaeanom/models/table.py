"""A heterogeneous likelihood for tables with categorical columns and holes (HI-VAE style).

Rows come in as (b, d) floats in the table's column order: standardised
numbers, category codes 0..K (K: a category unseen in fit), NaN where a value
is missing (Nazabal et al. 2020, "Handling incomplete heterogeneous data
using VAEs"):

- :class:`TableEncoder` feeds the MLP each number (0 where missing), each
  category one-hot (all zeros where missing or unseen) and the mask of observed
  entries, so holes are never imputed;
- :class:`MixedLikelihood` gives a numeric column a Gaussian with a learned
  scale and a categorical column a softmax over its K seen categories plus the
  reserved "unknown" slot; missing entries add nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .likelihoods import gaussian_log_prob_elementwise, holes_zeroed, observed_row_sum
from .mlp import mlp


def _observed(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mask of observed entries, x with its holes set to 0): NaN never reaches a gradient."""
    return ~torch.isnan(x), holes_zeroed(x)


class TableEncoder(nn.Module):
    """Rows (b, d) with codes and NaN holes -> posterior mean and log-variance.

    ``cardinalities[j]`` is 0 for a numeric column and K for a categorical one.
    """

    def __init__(self, cardinalities: Sequence[int], hidden_dims: Sequence[int],
                 latent_dim: int) -> None:
        super().__init__()
        self.cardinalities = tuple(int(k) for k in cardinalities)
        self.numeric = [j for j, k in enumerate(self.cardinalities) if k == 0]
        n_inputs = len(self.numeric) + sum(self.cardinalities) + len(self.cardinalities)
        self.net = mlp([n_inputs, *hidden_dims, 2 * latent_dim])

    def features(self, x: Tensor) -> Tensor:
        """What the MLP sees: numbers, one-hot categories and the mask, (b, inputs)."""
        observed, values = _observed(x)
        parts = [values[:, self.numeric]]
        for j, k in enumerate(self.cardinalities):
            if k:  # an unseen category (code K) and a hole (0, masked) are all zeros
                slots = torch.arange(k, device=x.device, dtype=x.dtype)
                parts.append((values[:, j:j + 1] == slots).to(x.dtype)
                             * observed[:, j:j + 1].to(x.dtype))
        parts.append(observed.to(x.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.net(self.features(x)).chunk(2, dim=1)
        return mu, log_var


def n_decoder_outputs(cardinalities: Sequence[int]) -> int:
    """Decoder outputs a table needs: a mean per numeric column, K + 1 logits per categorical."""
    return sum(1 if k == 0 else k + 1 for k in cardinalities)


class MixedLikelihood(nn.Module):
    """p(x | z) of a table: Gaussian numeric columns, categorical (softmax) ones, holes skipped.

    The decoder's output (b, ``n_decoder_outputs``) holds, column by column,
    one mean (numeric) or K + 1 logits (categorical: K seen categories, then
    the "unknown" slot, which training never observes and so pushes down).
    """

    def __init__(self, cardinalities: Sequence[int], sigma: float | None = None,
                 min_sigma: float = 1e-2) -> None:
        super().__init__()
        self.cardinalities = tuple(int(k) for k in cardinalities)
        self.min_sigma = float(min_sigma)
        n_numeric = sum(1 for k in self.cardinalities if k == 0)
        self.numeric = [j for j, k in enumerate(self.cardinalities) if k == 0]
        starts, at = [], 0
        for k in self.cardinalities:
            starts.append(at)
            at += 1 if k == 0 else k + 1
        self.starts = starts
        self.numeric_outputs = [starts[j] for j in self.numeric]
        if sigma is None:
            start = math.log(math.expm1(1.0 - self.min_sigma))
            self.raw_sigma = nn.Parameter(torch.full((n_numeric,), start))
        else:
            self.register_buffer("log_sigma_fixed", torch.full((n_numeric,), math.log(sigma)))

    def log_scale(self) -> Tensor:
        if hasattr(self, "raw_sigma"):
            return torch.log(F.softplus(self.raw_sigma) + self.min_sigma)
        return self.log_sigma_fixed

    def log_prob_elementwise(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p(x_j | z) per entry (b, d); 0 where x_j is missing."""
        observed, values = _observed(x)
        out = torch.zeros_like(values)
        if self.numeric:
            out[:, self.numeric] = gaussian_log_prob_elementwise(
                values[:, self.numeric], decoded[:, self.numeric_outputs], self.log_scale())
        for j, k in enumerate(self.cardinalities):
            if k:
                logits = decoded[:, self.starts[j]:self.starts[j] + k + 1]
                code = values[:, j:j + 1].long().clamp(0, k)
                out[:, j] = torch.log_softmax(logits, dim=1).gather(1, code)[:, 0]
        return torch.where(observed, out, torch.zeros_like(out))

    def log_prob(self, x: Tensor, decoded: Tensor) -> Tensor:
        """log p(x | z) per row over the observed entries, scaled to all d (see
        :func:`vaeanom.models.likelihoods.observed_row_sum`)."""
        return observed_row_sum(self.log_prob_elementwise(x, decoded), x)

    def mean(self, decoded: Tensor) -> Tensor:
        """Per column: the numeric mean, or the most likely seen category's code (b, d)."""
        columns = []
        for j, k in enumerate(self.cardinalities):
            start = self.starts[j]
            if k == 0:
                columns.append(decoded[:, start])
            else:
                columns.append(decoded[:, start:start + k].argmax(dim=1).to(decoded.dtype))
        return torch.stack(columns, dim=1)

    def squared_error(self, x: Tensor, mean: Tensor) -> Tensor:
        """Per entry: squared error of a number, 1 for a wrong category, 0 where missing."""
        observed, values = _observed(x)
        categorical = torch.tensor([k > 0 for k in self.cardinalities], device=x.device)
        error = torch.where(categorical, (values != mean).to(x.dtype), (values - mean) ** 2)
        return torch.where(observed, error, torch.zeros_like(error))
