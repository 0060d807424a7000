"""The scores are real estimates of log p(x): checked on a linear-Gaussian VAE.

With p(z) = N(0, I) and p(x|z) = N(W z + b, s^2 I), the marginal is exact:
p(x) = N(b, W W^T + s^2 I). The encoder is set to the diagonal part of the true
posterior, so q is close to but not exactly p(z|x): the ELBO is strictly below
log p(x) and the IWAE bound must climb towards it as K grows.
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaeanom.models import VAE, GaussianLikelihood, MLPDecoder
from vaeanom.scoring import Scorer

D, K_LATENT, SIGMA = 6, 2, 0.5


class LinearPosterior(torch.nn.Module):
    """mu = A x + c with a constant diagonal log-variance."""

    def __init__(self, A, c, log_var):
        super().__init__()
        self.A, self.c, self.log_var = A, c, log_var

    def forward(self, x):
        return x @ self.A.T + self.c, self.log_var.expand(len(x), -1)


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, K_LATENT, generator=g), torch.randn(D, generator=g)
    decoder = MLPDecoder(K_LATENT, (), (D,))          # one Linear layer: W z + b
    decoder.net[0].weight.data, decoder.net[0].bias.data = W.clone(), b.clone()
    cov_post = torch.linalg.inv(torch.eye(K_LATENT) + W.T @ W / SIGMA**2)
    A = cov_post @ W.T / SIGMA**2
    encoder = LinearPosterior(A, -A @ b, torch.log(torch.diagonal(cov_post)))
    vae = VAE(encoder, decoder, GaussianLikelihood((D,), sigma=SIGMA), K_LATENT).eval()
    marginal = MultivariateNormal(b, W @ W.T + SIGMA**2 * torch.eye(D))
    x = b + torch.randn(300, D, generator=g) @ torch.linalg.cholesky(marginal.covariance_matrix).T
    return vae, x, marginal.log_prob(x)


def _score(vae, x, kind, n_samples, seed=1):
    eps = torch.randn(n_samples, K_LATENT, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return Scorer(vae, eps, kind)(x)


def test_elbo_below_iwae_below_log_px_and_converging(problem):
    vae, x, log_px = problem
    elbo = _score(vae, x, "elbo", 4096)
    # The noise is shared by all rows, so one draw is one estimate: average over draws.
    gap = {k: sum((log_px - _score(vae, x, "iwae", k, seed)).mean().item() for seed in range(40))
           / 40 for k in (1, 8, 64)}
    iwae = {4096: _score(vae, x, "iwae", 4096)}
    gap[4096] = (log_px - iwae[4096]).mean().item()
    elbo_gap = (log_px - elbo).mean().item()
    assert elbo_gap > 0.01                                   # q is not the exact posterior
    assert gap[1] > gap[8] > gap[64] > gap[4096] >= -1e-3    # tighter with K, never above
    assert gap[4096] < 0.02 * elbo_gap + 1e-3                # and essentially exact
    assert (iwae[4096] - elbo > -1e-4).all()                 # ELBO <= IWAE row by row
    assert (iwae[4096] <= log_px + 1e-3).all()


def test_iwae_with_one_sample_is_the_single_sample_elbo(problem):
    vae, x, _ = problem
    eps = torch.randn(1, K_LATENT, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = vae.encoder(x)[0] + torch.exp(0.5 * vae.encoder(x)[1]) * eps
        log_joint = (vae.likelihood.log_prob(x, vae.decoder(z))
                     + torch.distributions.Normal(0, 1).log_prob(z).sum(1))
        log_q = torch.distributions.Normal(vae.encoder(x)[0],
                                           torch.exp(0.5 * vae.encoder(x)[1])).log_prob(z).sum(1)
        torch.testing.assert_close(Scorer(vae, eps, "iwae")(x), log_joint - log_q,
                                   rtol=1e-5, atol=1e-4)
    assert math.isfinite(log_q.sum().item())
