"""The universal image code behind score_kind="elbo_complexity"."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vaeanom import VAEDetector
from vaeanom.scoring import COMPLEXITY_WEIGHT, ImageComplexity

LOG2 = math.log(2.0)


def _plain(shape):
    """Complexity of images given in [0, 1] (no standardisation)."""
    return ImageComplexity(torch.zeros(shape), torch.ones(shape))


def test_code_length_by_hand():
    # Grey levels [[0, 255], [255, 0]]; predictions (mean of left and upper
    # neighbour, 0 outside) [[0, 0], [0, 255]]; residuals [[0, 255], [255, 255]]:
    # every pixel costs ln 2, each residual of 255 another 2 ln 256.
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    expected = 4 * LOG2 + 3 * 2 * math.log(256.0)
    torch.testing.assert_close(_plain((1, 2, 2))(x), torch.tensor([expected]))


def test_undoes_the_detectors_standardisation():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(5, 3, 6, 7, generator=g)
    center, scale = torch.rand(3, 6, 7, generator=g), torch.rand(3, 6, 7, generator=g) + 0.1
    standardised = ImageComplexity(center, scale)((pixels - center) / scale)
    torch.testing.assert_close(standardised, _plain((3, 6, 7))(pixels), rtol=1e-5, atol=1e-3)


@settings(max_examples=40)
@given(arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))))
def test_bounded_per_pixel_and_per_image(images):
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    n_pixels = images.shape[1] * images.shape[2]
    code = _plain(x.shape[1:])(x)
    assert torch.all(code >= n_pixels * LOG2 - 1e-3)
    assert torch.all(code <= n_pixels * (LOG2 + 2 * math.log(256.0)) + 1e-3)
    alone = torch.cat([_plain(x.shape[1:])(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(alone, code)  # one image's code never depends on its batch


def test_flat_images_are_cheaper_than_noise(digit_images):
    images, _ = digit_images
    x = torch.from_numpy(images[:50].astype(np.float32) / 255.0)[:, None]
    noise = torch.rand(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flat = torch.full((1, 1, 8, 8), 0.5)
    code = _plain((1, 8, 8))
    assert code(flat).item() < code(x).min().item()
    assert code(x).mean().item() < code(noise).mean().item()


def test_score_is_elbo_plus_weighted_code_length(digit_images):
    images, y = digit_images
    det = VAEDetector(epochs=5, latent_dim=4, random_state=0).fit(images[y == 0])
    frame = det.score_frame(images[:30])
    x = torch.from_numpy(images[:30].astype(np.float32) / 255.0)[:, None]
    code = _plain((1, 8, 8))(x).double().numpy()
    np.testing.assert_allclose(frame["score"], frame["elbo"] + COMPLEXITY_WEIGHT * code,
                               rtol=1e-5, atol=1e-3)
