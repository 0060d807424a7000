"""Loss terms against torch.distributions and Monte-Carlo estimates."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence

from vaeanom.models import (GaussianLikelihood, bernoulli_log_prob, gaussian_kl_standard_normal,
                            gaussian_log_prob)

finite = st.floats(-4, 4, allow_nan=False, width=32)


def test_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    log_scale = torch.randn(7, generator=g) * 0.5
    expected = Normal(mean, log_scale.exp()).log_prob(x).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_scale), expected)


def test_bernoulli_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 9, generator=g) > 0.5).float()
    logits = torch.randn(6, 9, generator=g) * 3
    expected = Bernoulli(logits=logits).log_prob(x).sum(1)
    torch.testing.assert_close(bernoulli_log_prob(x, logits), expected)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    mu, log_var = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    q = Normal(mu, (0.5 * log_var).exp())
    expected = kl_divergence(q, Normal(torch.zeros(4), torch.ones(4))).sum(1)
    torch.testing.assert_close(gaussian_kl_standard_normal(mu, log_var), expected)


def test_kl_matches_monte_carlo_estimate():
    """E_q[log q(z) - log p(z)] by sampling: the closed form must agree (and not be clamped)."""
    g = torch.Generator().manual_seed(3)
    mu, log_var = torch.tensor([[0.3, -1.2, 0.0]]), torch.tensor([[-0.5, 0.4, -2.0]])
    q, p = Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)
    z = mu + (0.5 * log_var).exp() * torch.randn(200_000, 3, generator=g)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(1).mean()
    closed = gaussian_kl_standard_normal(mu, log_var)[0]
    assert closed.item() > 0.5
    assert abs(mc.item() - closed.item()) < 0.02


@settings(max_examples=60)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=6))
def test_kl_is_non_negative_and_zero_only_at_the_prior(pairs):
    mu = torch.tensor([[p[0] for p in pairs]])
    log_var = torch.tensor([[p[1] for p in pairs]])
    kl = gaussian_kl_standard_normal(mu, log_var).item()
    assert kl >= -1e-6
    if kl < 1e-9:
        assert mu.abs().max() < 1e-3 and log_var.abs().max() < 1e-3
    assert gaussian_kl_standard_normal(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


def test_learned_sigma_starts_at_one_and_respects_floor():
    lik = GaussianLikelihood((3,))
    torch.testing.assert_close(lik.log_scale(), torch.zeros(3), atol=1e-6, rtol=0)
    with torch.no_grad():
        lik.raw_sigma.fill_(-1e4)
    assert torch.allclose(lik.log_scale(), torch.full((3,), math.log(lik.min_sigma)))


def test_fixed_sigma_has_no_parameters():
    lik = GaussianLikelihood((4,), sigma=0.1)
    assert not list(lik.parameters())
    assert torch.allclose(lik.log_scale(), torch.full((4,), math.log(0.1)))
