"""Latent-space tools: interpolation between two inputs and posterior samples of one."""

import numpy as np
import pandas as pd
import pytest

from vaeanom import VAEDetector

from .conftest import FAST


@pytest.fixture(scope="module")
def digits_model(digit_images):
    images, _ = digit_images
    return VAEDetector(**{**FAST, "latent_dim": 8, "epochs": 10}).fit(images), images


@pytest.mark.parametrize("method", ["linear", "spherical"])
def test_interpolation_ends_exactly_at_the_two_reconstructions(digits_model, method):
    det, images = digits_model
    a, b = images[:1], images[7:8]
    path = det.interpolate(a, b, n_steps=6, method=method)
    assert path.shape == (6, 8, 8)
    np.testing.assert_array_equal(path[0], det.reconstruct(a)[0])
    np.testing.assert_array_equal(path[-1], det.reconstruct(b)[0])
    steps = np.abs(np.diff(path.reshape(6, -1), axis=0)).sum(axis=1)
    assert (steps > 0).all()                              # it moves at every step


def test_one_image_may_come_without_its_batch_axis(digits_model):
    det, images = digits_model
    np.testing.assert_array_equal(det.interpolate(images[0], images[7], n_steps=3),
                                  det.interpolate(images[:1], images[7:8], n_steps=3))
    assert det.sample_posterior(images[0], n_samples=2).shape == (2, 8, 8)


def test_a_table_row_may_be_a_series_or_a_one_row_frame(cancer):
    X, y = cancer
    det = VAEDetector(**FAST).fit(X[y == 1])
    path = det.interpolate(X.iloc[0], X.iloc[[5]], n_steps=3)
    assert np.shape(path) == (3, X.shape[1])
    np.testing.assert_array_equal(path[0], det.reconstruct(X.iloc[[0]])[0])
    np.testing.assert_array_equal(path[-1], det.reconstruct(X.iloc[[5]])[0])


def test_posterior_samples_spread_around_the_reconstruction(digits_model):
    det, images = digits_model
    x, other = images[3:4], images[100:101]
    draws = det.sample_posterior(x, n_samples=200, random_state=0)
    assert draws.shape == (200, 8, 8) and len(np.unique(draws.reshape(200, -1), axis=0)) == 200
    centre = draws.mean(axis=0)
    assert np.abs(centre - det.reconstruct(x)[0]).mean() < np.abs(
        centre - det.reconstruct(other)[0]).mean()
    np.testing.assert_array_equal(det.sample_posterior(x, 5, random_state=1),
                                  det.sample_posterior(x, 5, random_state=1))


def test_latent_tools_name_what_is_wrong(digits_model):
    det, images = digits_model
    with pytest.raises(ValueError, match="x_a must be one row or one image; got 2"):
        det.interpolate(images[:2], images[2:3])
    with pytest.raises(ValueError, match="method must be 'linear' or 'spherical'"):
        det.interpolate(images[:1], images[2:3], method="cubic")
    with pytest.raises(ValueError, match="x must be one row or one image; got 3"):
        det.sample_posterior(images[:3])
    with pytest.raises(ValueError, match="n_steps must be at least 2"):
        det.interpolate(images[:1], images[2:3], n_steps=1)


def test_no_rows_asked_for_is_an_empty_answer(digits_model):
    det, images = digits_model
    assert det.sample_posterior(images[:1], n_samples=0).shape == (0, 8, 8)
    assert det.decode(np.zeros((0, 8))).shape == (0, 8, 8)
    assert det.sample(0).shape == (0, 8, 8)


def test_a_tables_reconstruction_keeps_the_callers_index():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=90), "kind": rng.choice(["a", "b", "c"], 90)},
                         index=pd.RangeIndex(100, 190, name="id"))
    det = VAEDetector(**FAST).fit(frame)
    part = frame.iloc[5:8]
    back = det.reconstruct(part)
    assert back.index.equals(part.index) and list(back.columns) == ["x", "kind"]
    codes = pd.DataFrame(det.encode(part), index=part.index)
    assert det.decode(codes).index.equals(part.index)
