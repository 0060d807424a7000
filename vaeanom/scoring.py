"""Anomaly scores of a fitted VAE, as torch modules (so they export to ONNX as is).

Every score is "higher = more normal", per row, in nats where it is a
likelihood bound. The Monte-Carlo noise is a buffer drawn once at fit time
and shared by all rows (common random numbers): a row's score depends on that
row alone, never on its batch, its position or the time of the call.

Which score to use:

- ``"elbo"`` (default): the evidence lower bound log p(x|z) - KL(q(z|x) || p(z))
  with KL weight 1 whatever ``beta`` the model was trained with, so it is a bound
  on log p(x) in nats of the preprocessed data. Uses every part of the model,
  including the learned per-feature variance.
- ``"iwae"``: the importance-weighted bound with K = ``n_score_samples``
  samples: ELBO <= IWAE_K <= log p(x) in expectation, tightening as K grows. The
  better estimate of log p(x) when the posterior is not Gaussian enough for the
  ELBO; costs the same decoder passes as the ELBO.
- ``"reconstruction"``: minus the mean squared error between x and the decoding of
  its posterior mean. Ignores the variance and the latent term; the classic
  autoencoder score, robust when the likelihood model is poor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .models.vae import VAE

SCORE_KINDS = ("elbo", "iwae", "reconstruction")


class ScoreTerms(NamedTuple):
    """Everything ``score_frame`` reports, per row."""

    score: Tensor
    elbo: Tensor
    log_px: Tensor
    kl: Tensor
    reconstruction_error: Tensor


def reconstruction_error(model: VAE, x: Tensor) -> Tensor:
    """Mean squared error per row between x and the decoding of its posterior mean."""
    mu, _ = model.encode(x)
    return (x - model.decode(mu)).flatten(1).pow(2).mean(dim=1)


class Scorer(nn.Module):
    """x (preprocessed) -> score per row, with the fixed noise as a buffer."""

    def __init__(self, model: VAE, eps: Tensor, kind: str = "elbo") -> None:
        super().__init__()
        if kind not in SCORE_KINDS:
            raise ValueError(f"unknown score kind {kind!r}; expected one of {SCORE_KINDS}")
        self.model = model
        self.kind = kind
        self.register_buffer("eps", eps.reshape(eps.shape[0], 1, -1))  # (L, 1, d)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "reconstruction":
            return -reconstruction_error(self.model, x)
        if self.kind == "iwae":
            return self.model.iwae(x, self.eps)
        return self.model(x, self.eps).elbo()

    def terms(self, x: Tensor) -> ScoreTerms:
        elbo_terms = self.model(x, self.eps)
        recon = reconstruction_error(self.model, x)
        score = {"elbo": elbo_terms.elbo, "reconstruction": lambda: -recon,
                 "iwae": lambda: self.model.iwae(x, self.eps)}[self.kind]()
        return ScoreTerms(score=score, elbo=elbo_terms.elbo(), log_px=elbo_terms.log_px,
                          kl=elbo_terms.kl, reconstruction_error=recon)
