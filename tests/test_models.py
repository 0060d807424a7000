"""Shapes and invariants of the torch modules."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaeanom.models import (VAE, ConvDecoder, ConvEncoder, GaussianLikelihood, MLPDecoder,
                            MLPEncoder)
from vaeanom.scoring import Scorer


@settings(max_examples=25)
@given(c=st.integers(1, 3), h=st.integers(1, 33), w=st.integers(1, 33), stages=st.integers(1, 3))
def test_conv_decoder_lands_on_the_encoder_input_shape(c, h, w, stages):
    channels = (4, 8, 8)[:stages]
    enc, dec = ConvEncoder((c, h, w), channels, 3), ConvDecoder(3, channels, (c, h, w))
    mu, log_var = enc(torch.zeros(2, c, h, w))
    assert mu.shape == log_var.shape == (2, 3)
    assert dec(mu).shape == (2, c, h, w)


def test_vae_forward_averages_over_noise_samples():
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(5, (8,), 2), MLPDecoder(2, (8,), (5,)), GaussianLikelihood((5,)), 2)
    x = torch.randn(4, 5)
    eps = torch.randn(3, 1, 2)
    together = vae(x, eps)
    one_by_one = torch.stack([vae(x, eps[i:i + 1]).log_px for i in range(3)]).mean(0)
    torch.testing.assert_close(together.log_px, one_by_one)
    assert together.kl.shape == (4,) and (together.kl >= 0).all()


def test_scorer_row_does_not_depend_on_its_neighbours():
    torch.manual_seed(0)
    vae = VAE(MLPEncoder(5, (8,), 2), MLPDecoder(2, (8,), (5,)), GaussianLikelihood((5,)), 2)
    scorer = Scorer(vae, torch.randn(6, 2)).eval()
    x = torch.randn(64, 5)
    with torch.no_grad():
        full = scorer(x)
        swapped = scorer(torch.cat([x[32:], x[:32]]))
    torch.testing.assert_close(torch.cat([swapped[32:], swapped[:32]]), full, rtol=0, atol=0)


def test_scores_stay_finite_when_the_encoder_asks_for_a_huge_variance():
    # Inputs far outside the training data (a lit pixel that never moved in
    # training is thousands of standard units away) can drive log_var past
    # float32's exp range; unclamped, the ELBO then came out NaN (seen on
    # Fashion-MNIST with latent_dim=32).
    from vaeanom.scoring import inference_scorer

    torch.manual_seed(0)
    vae = VAE(MLPEncoder(5, (8,), 2), MLPDecoder(2, (8,), (5,)), GaussianLikelihood((5,)), 2)
    with torch.no_grad():
        vae.encoder.net[-1].bias[2:] = 500.0      # log-variance half of the output
    x, eps = torch.randn(4, 5), torch.randn(6, 2)
    with torch.no_grad():
        for kind in ("elbo", "iwae", "recon_prob", "reconstruction"):
            for scorer in (Scorer(vae, eps, kind), inference_scorer(vae, eps, kind)):
                assert torch.isfinite(scorer(x)).all(), (kind, type(scorer).__name__)
