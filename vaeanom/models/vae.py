"""Gaussian-posterior VAE: q(z|x) = N(mu(x), diag(sigma(x)^2)), p(z) = N(0, I).

The module knows nothing of numpy or scikit-learn. Noise is always passed in
(``eps``), never drawn inside ``forward``: training draws it from the
estimator's generator, scoring uses a tensor fixed at fit time, and an ONNX
export bakes that tensor in as a constant.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .likelihoods import gaussian_kl_standard_normal


#: bound on the posterior log-variance: a standard deviation between e^-15 and e^15
LOG_VAR_LIMIT = 30.0


class ELBOTerms(NamedTuple):
    """Per-row ELBO pieces in nats: ``log_px`` = E_q[log p(x|z)], ``kl`` = KL(q || p)."""

    log_px: Tensor
    kl: Tensor

    def elbo(self, beta: float = 1.0) -> Tensor:
        return self.log_px - beta * self.kl


def with_context(inputs: Tensor, context: Tensor | None) -> Tensor:
    """``inputs`` as (b, features) with ``context`` (b, k) appended: what the networks of a
    conditional VAE see. Without a context, ``inputs`` as they are."""
    if context is None:
        return inputs
    return torch.cat([inputs.flatten(1), context.to(inputs.dtype)], dim=1)


class VAE(nn.Module):
    """Encoder, decoder and likelihood glued by the reparameterisation trick.

    Every method takes an optional ``context`` (b, k), e.g. a one-hot class
    label: a conditional VAE (Sohn et al. 2015) whose encoder sees [x, c] and
    whose decoder sees [z, c], with the prior p(z) = N(0, I) for every c. Its
    ELBO then bounds log p(x | c). The networks must be built with k more
    inputs (MLP bodies, which flatten what they get).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module,
                 latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim

    def encode(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each (b, latent_dim).

        The log-variance is clamped to [-LOG_VAR_LIMIT, LOG_VAR_LIMIT]: an input far
        outside the training data can push it past where exp() overflows
        float32, which would turn the score into NaN instead of a very low number.
        """
        mu, log_var = self.encoder(with_context(x, context))
        # float(): under bf16 autocast the networks run in bfloat16, the ELBO's sums do not
        return mu.float(), log_var.float().clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean of p(x|z) in the model's (preprocessed) units."""
        return self.likelihood.mean(self.decoder(with_context(z, context)))

    def _sample(self, x: Tensor, eps: Tensor, seen: Tensor | None = None,
                context: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Posterior parameters, z_l = mu + sigma * eps_l (L, b, d) and log p(x|z_l) (L, b).

        ``seen`` is what the encoder gets instead of x (x with entries hidden as NaN).
        """
        mu, log_var = self.encode(x if seen is None else seen, context)
        z = mu + torch.exp(0.5 * log_var) * eps                    # (L, b, d)
        n_samples, batch = z.shape[0], x.shape[0]
        z_flat = z.reshape(n_samples * batch, -1)                   # sample-major, as context tiles
        tiled = None if context is None else context.repeat(n_samples, 1)
        decoded = self.decoder(with_context(z_flat, tiled)).float()          # (L b, ...)
        x_rep = x.expand(n_samples, *x.shape).reshape(n_samples * batch, *x.shape[1:])
        log_px = self.likelihood.log_prob(x_rep, decoded).view(n_samples, batch)
        return mu, log_var, z, log_px

    def forward(self, x: Tensor, eps: Tensor, seen: Tensor | None = None,
                context: Tensor | None = None) -> ELBOTerms:
        """ELBO terms for x (b, ...) with reparameterisation noise eps (L, b|1, latent_dim).

        E_q[log p(x|z)] is the mean over the L samples z_l = mu + sigma * eps_l;
        the KL term is in closed form. With ``seen`` (x with some entries hidden
        as NaN), q is q(z | seen) while the likelihood still scores all of x:
        the model learns to predict entries it was not shown.
        """
        mu, log_var, _, log_px = self._sample(x, eps, seen, context)
        return ELBOTerms(log_px=log_px.mean(0), kl=gaussian_kl_standard_normal(mu, log_var))

    def feature_log_px(self, x: Tensor, eps: Tensor, seen: Tensor | None = None) -> Tensor:
        """E_q[log p(x_j | z)] per entry (b, ...): the reconstruction term feature by feature.

        The same Monte-Carlo mean over z_l = mu + sigma * eps_l as ``forward``;
        summed over features it is ``forward``'s ``log_px`` (up to float rounding)
        for a complete row. For a row with holes it is the observed entries'
        terms as they are, where ``log_px`` scales their sum by d / observed.
        ``seen`` as in ``forward``.
        """
        mu, log_var = self.encode(x if seen is None else seen)
        z = mu + torch.exp(0.5 * log_var) * eps                    # (L, b, d)
        n_samples, batch = z.shape[0], x.shape[0]
        decoded = self.decoder(z.reshape(n_samples * batch, -1)).float()
        x_rep = x.expand(n_samples, *x.shape).reshape(n_samples * batch, *x.shape[1:])
        per_entry = self.likelihood.log_prob_elementwise(x_rep, decoded)
        return per_entry.view(n_samples, batch, *x.shape[1:]).mean(0)

    def iwae(self, x: Tensor, eps: Tensor, context: Tensor | None = None) -> Tensor:
        """Importance-weighted bound log (1/L) sum_l p(x, z_l) / q(z_l|x), per row.

        Tighter than the ELBO in expectation, and tends to log p(x) as L grows
        (Burda et al. 2016). Not row by row: the ELBO's KL is in closed form, the
        bound's log p(z) - log q(z|x) is sampled, so with the noise fixed a row's
        bound can fall a little below its ELBO at small L.
        With z = mu + sigma * eps, log p(z) - log q(z|x) = sum(-z^2/2 + eps^2/2 + log sigma):
        the 2 pi terms cancel.
        """
        _, log_var, z, log_px = self._sample(x, eps, context=context)
        log_ratio = (-0.5 * z * z + 0.5 * eps * eps + 0.5 * log_var).sum(-1)   # (L, b)
        log_w = log_px + log_ratio
        return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
