"""A Markovian hierarchical VAE: a chain of latents x -> z_1 -> ... -> z_T (section 3.8.3).

Generation runs top-down, p(z_T) = N(0, I), p(z_t | z_{t+1}) and p(x | z_1);
inference bottom-up, q(z_1 | x) and q(z_{t+1} | z_t), every conditional a
diagonal Gaussian computed by a small MLP. Each row's bound has one KL term
per layer: the top one in closed form, KL(q(z_T | z_{T-1}) || N(0, I)), the
lower ones as the single-sample estimate log q(z_t | .) - log p(z_t | z_{t+1})
(the two Gaussians are conditioned on different variables, so there is no
closed form).

Noise is passed in, as for :class:`vaeanom.models.VAE`: ``eps`` (L, b|1,
``noise_size``) holds the posterior's noise for every layer (bottom first),
then fresh noise for the bottom layer that :meth:`llr` draws from its prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .mlp import mlp
from .vae import LOG_VAR_LIMIT, ELBOTerms

_LOG_2PI = math.log(2.0 * math.pi)


def _log_normal(z: Tensor, mu: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mu, diag(exp(log_var))), summed over the last axis."""
    return (-0.5 * ((z - mu) ** 2 * torch.exp(-log_var) + log_var + _LOG_2PI)).sum(-1)


def _slices(t: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    """t cut along its last axis into pieces of ``sizes`` (slices: an ONNX Split with several
    outputs defeats the exporter's constant folding)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [t[..., start:start + size] for start, size in zip(starts, sizes)]


def _refuse_context(context: Tensor | None) -> None:
    if context is not None:
        raise ValueError("a hierarchical VAE takes no labels (context)")


def _log_mean_exp(log_w: Tensor) -> Tensor:
    """log (1/L) sum_l exp(log_w[l]): the importance-weighted bound from log-weights (L, b)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


class GaussianLayer(nn.Module):
    """z (..., n_in) -> mean and clamped log-variance of a Gaussian over n_out dims."""

    def __init__(self, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.net = mlp([n_in, hidden, 2 * n_out])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.net(z).float().chunk(2, dim=-1)
        return mu, log_var.clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)


class HierarchicalVAE(nn.Module):
    """Encoder x -> q(z_1 | x), decoder z_1 -> p(x | z_1), and the chain between latents.

    ``latent_dims`` are the layers' sizes, bottom (z_1) to top (z_T);
    ``up[t]`` computes q(z_{t+2} | z_{t+1}), ``down[t]`` p(z_{t+1} | z_{t+2}).
    A code (what ``encode`` and ``decode`` speak) is every layer side by side,
    bottom first, ``sum(latent_dims)`` wide; the decoder reads its bottom layer.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module,
                 latent_dims: Sequence[int], hidden: int) -> None:
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dims = tuple(int(d) for d in latent_dims)
        pairs = list(zip(self.latent_dims[:-1], self.latent_dims[1:]))
        self.up = nn.ModuleList(GaussianLayer(low, hidden, high) for low, high in pairs)
        self.down = nn.ModuleList(GaussianLayer(high, hidden, low) for low, high in pairs)
        self.latent_dim = sum(self.latent_dims)
        #: posterior noise for every layer, then prior noise for the bottom one (llr)
        self.noise_size = self.latent_dim + self.latent_dims[0]

    # ----------------------------------------------------------- inference
    def _bottom(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x)
        return mu.float(), log_var.float().clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)

    def encode(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Means and log-variances along the posterior's mean path, every layer side by side:
        q(z_1 | x), then q(z_{t+1} | z_t = its mean). Each (b, sum(latent_dims))."""
        mu, log_var = self._bottom(x)
        means, log_vars = [mu], [log_var]
        for layer in self.up:
            mu, log_var = layer(mu)
            means.append(mu)
            log_vars.append(log_var)
        return torch.cat(means, dim=-1), torch.cat(log_vars, dim=-1)

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean of p(x | z_1) for codes z (b, sum(latent_dims)): the bottom layer decides."""
        return self.likelihood.mean(self.decoder(z[:, :self.latent_dims[0]]))

    def _split(self, eps: Tensor) -> list[Tensor]:
        """Noise per layer, then the bottom layer's prior noise."""
        return _slices(eps, [*self.latent_dims, self.latent_dims[0]])

    def _posterior_chain(self, x: Tensor, eps: Tensor,
                         bottom: tuple[Tensor, Tensor] | None = None):
        """Samples z_t (L, b, d_t) bottom-up, with each layer's log q and the top layer's
        posterior parameters: ([z_1..z_T], [log q(z_t | .)] (L, b), (mu_T, log_var_T)).
        ``bottom`` is q(z_1 | x)'s (mean, log-variance) when the caller has them."""
        noise = self._split(eps)
        mu, log_var = self._bottom(x) if bottom is None else bottom
        z1 = mu + torch.exp(0.5 * log_var) * noise[0]
        upper, log_q, top = self._upper_chain(z1, noise[1:len(self.latent_dims)])
        return [z1, *upper], [_log_normal(z1, mu, log_var), *log_q], top

    def _upper_chain(self, z1: Tensor, noise: list[Tensor]):
        """z_2..z_T drawn from q(z_{t+1} | z_t) starting at z_1, with their log q and the
        top layer's (mean, log-variance)."""
        zs, log_q, z = [], [], z1
        for layer, layer_noise in zip(self.up, noise):
            mu, log_var = layer(z)
            z = mu + torch.exp(0.5 * log_var) * layer_noise
            zs.append(z)
            log_q.append(_log_normal(z, mu, log_var))
        return zs, log_q, (mu, log_var)

    def _log_px(self, x: Tensor, z1: Tensor) -> Tensor:
        """log p(x | z_1) for samples z_1 (L, b, d_1): (L, b)."""
        n_samples, batch = z1.shape[0], z1.shape[1]
        decoded = self.decoder(z1.reshape(n_samples * batch, -1)).float()
        x_rep = x.expand(n_samples, *x.shape).reshape(n_samples * batch, *x.shape[1:])
        return self.likelihood.log_prob(x_rep, decoded).view(n_samples, batch)

    def _log_prior_chain(self, zs: list[Tensor], start: int = 0) -> Tensor:
        """log p(z_T) + sum_{t >= start} log p(z_t | z_{t+1}) (0-based t): (L, b)."""
        total = _log_normal(zs[-1], torch.zeros_like(zs[-1]), torch.zeros_like(zs[-1]))
        for t in range(start, len(zs) - 1):
            total = total + _log_normal(zs[t], *self.down[t](zs[t + 1]))
        return total

    # --------------------------------------------------------------- bounds
    def forward(self, x: Tensor, eps: Tensor, seen: Tensor | None = None,
                context: Tensor | None = None) -> ELBOTerms:
        """ELBO terms per row: E_q[log p(x | z_1)] and the KL summed over the layers.

        ``seen`` (a table's observed entries) and ``context`` (a label) belong to
        models this one is not: refused rather than ignored."""
        if seen is not None:
            raise ValueError("a hierarchical VAE takes no missing-value masks")
        _refuse_context(context)
        log_px, kl = self.terms_by_layer(x, eps)
        return ELBOTerms(log_px=log_px, kl=kl.sum(0))

    def terms_by_layer(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """E_q[log p(x | z_1)] per row (b,) and each layer's KL term, bottom first (T, b)."""
        zs, log_q, top = self._posterior_chain(x, eps)
        return self._log_px(x, zs[0]).mean(0), self.layer_kl(zs, log_q, top).mean(1)

    def layer_kl(self, zs: list[Tensor], log_q: list[Tensor],
                 top: tuple[Tensor, Tensor]) -> Tensor:
        """One KL term per layer, bottom first: (T, L, b)."""
        terms = [log_q[t] - _log_normal(zs[t], *self.down[t](zs[t + 1]))
                 for t in range(len(zs) - 1)]
        mu, log_var = top
        terms.append(0.5 * (mu * mu + torch.exp(log_var) - 1.0 - log_var).sum(-1))
        return torch.stack(terms)

    def iwae(self, x: Tensor, eps: Tensor, context: Tensor | None = None, *,
             bottom: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Importance-weighted bound log (1/L) sum_l p(x, z_l) / q(z_l | x), per row."""
        _refuse_context(context)
        zs, log_q, _ = self._posterior_chain(x, eps, bottom)
        log_w = self._log_px(x, zs[0]) + self._log_prior_chain(zs) - torch.stack(log_q).sum(0)
        return _log_mean_exp(log_w)

    def iwae_above_bottom(self, x: Tensor, eps: Tensor,
                          bottom: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Havtorn et al.'s L^{>1}: an importance-weighted bound on log p(x) in which z_1
        is drawn from its prior p(z_1 | z_2), not from q(z_1 | x).

        The proposal for z_2..z_T is the posterior chain started at z_1 = the mean
        of q(z_1 | x): a density of x alone, so the weights
        p(x | z_1) p(z_{>1}) / q(z_{>1} | x) are a proper bound (the p(z_1 | z_2)
        terms cancel against the proposal).
        """
        mean, _ = self._bottom(x) if bottom is None else bottom
        noise = self._split(eps)
        upper, log_q, _ = self._upper_chain(mean, noise[1:len(self.latent_dims)])
        mu, log_var = self.down[0](upper[0])
        z1 = mu + torch.exp(0.5 * log_var) * noise[-1]
        log_w = (self._log_px(x, z1) + self._log_prior_chain([z1, *upper], start=1)
                 - torch.stack(log_q).sum(0))
        return _log_mean_exp(log_w)

    def llr(self, x: Tensor, eps: Tensor) -> Tensor:
        """Minus Havtorn et al.'s LLR^{>1} = -(L - L^{>1}), both importance-weighted: higher
        (closer to 0) when the top latents alone explain x nearly as well as the whole
        chain (a typical input); lower for an input only low-level detail explains."""
        bottom = self._bottom(x)
        return self.iwae_above_bottom(x, eps, bottom) - self.iwae(x, eps, bottom=bottom)

    # ------------------------------------------------------------ sampling
    def prior_codes(self, noise: Tensor) -> Tensor:
        """Codes drawn top-down from the prior, for noise (n, sum(latent_dims)) (top layer's
        noise last, as in a code): z_T = noise_T, z_t = mu_p + sigma_p * noise_t."""
        noise = _slices(noise, self.latent_dims)
        zs = [noise[-1]]
        for t in reversed(range(len(self.latent_dims) - 1)):
            mu, log_var = self.down[t](zs[0])
            zs.insert(0, mu + torch.exp(0.5 * log_var) * noise[t])
        return torch.cat(zs, dim=-1)
