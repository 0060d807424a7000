"""vaeanom.plotting: figures drawn from real inputs, edge cases included."""

import numpy as np
import pytest
from PIL import Image

from vaeanom.plotting import (save_explanation, save_image_grid, save_roc_curve,
                              save_score_histograms, save_training_curves)


def _bar_pixels(path) -> int:
    """Pixels in matplotlib's blue and orange at alpha 0.6 on white: the histogram bars."""
    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = (np.abs(image - [120, 172, 209]).sum(-1) < 30).sum()
    orange = (np.abs(image - [255, 172, 102]).sum(-1) < 40).sum()
    return int(blue + orange)


@pytest.mark.parametrize("bad", [-np.inf, np.nan, np.inf])
def test_a_row_that_could_not_be_scored_leaves_the_histograms_drawn(tmp_path, bad):
    """score_samples gives -inf for a row it cannot score; one such row emptied the plot."""
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=50), (rng.random(50) < 0.2).astype(int)
    save_score_histograms(scores, labels, 0.0, tmp_path / "finite.png")
    scores[3] = bad
    save_score_histograms(scores, labels, 0.0, tmp_path / "one_bad.png")
    assert _bar_pixels(tmp_path / "one_bad.png") > 0.5 * _bar_pixels(tmp_path / "finite.png")
    save_roc_curve(labels, -scores, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_uint8_images_are_drawn_in_their_grey_levels(tmp_path):
    """uint8 means 0..255 here as everywhere: it was clipped to [0, 1], leaving 2 levels."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[:16] * 16).clip(0, 255).astype(np.uint8)
    save_image_grid(pixels, tmp_path / "uint8.png")
    save_image_grid(pixels / 255.0, tmp_path / "float.png")
    drawn = np.asarray(Image.open(tmp_path / "uint8.png"))
    np.testing.assert_array_equal(drawn, np.asarray(Image.open(tmp_path / "float.png")))
    assert len(np.unique(drawn)) > 10
    with pytest.raises(ValueError, match="n >= 1"):
        save_image_grid(pixels[:0], tmp_path / "none.png")


def test_training_curves_take_a_history_whose_terms_come_and_go(tmp_path):
    """fit(validation_fraction) then partial_fit: later epochs have no val_loss (KeyError),
    and a history that gains one later kept it off the plot."""
    history = [{"epoch": 1, "loss": 3.0, "val_loss": 3.5}, {"epoch": 2, "loss": 2.0},
               {"epoch": 3, "loss": 1.5}]
    save_training_curves(history, tmp_path / "curves.png")
    save_training_curves(history[::-1], tmp_path / "reversed.png")
    wide = Image.open(tmp_path / "reversed.png").size[0]
    save_training_curves([{"epoch": 1, "loss": 1.0}], tmp_path / "loss_only.png")
    assert wide > 1.5 * Image.open(tmp_path / "loss_only.png").size[0]   # a val_loss panel
    with pytest.raises(ValueError, match="empty"):
        save_training_curves([], tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_latent_maps_of_any_width_and_their_mistakes(tmp_path):
    from vaeanom.plotting import save_latent_map

    rng = np.random.default_rng(0)
    for codes in (rng.normal(size=(30, 1)), rng.normal(size=(30, 2)), rng.normal(size=(30, 5)),
                  rng.normal(size=(1, 5))):
        save_latent_map(codes, np.arange(len(codes)) % 2, tmp_path / "map.png")
        assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"
    for codes, labels, message in [(rng.normal(size=30), np.zeros(30), "latent_dim"),
                                   (rng.normal(size=(30, 2)), np.zeros(29), "one per code"),
                                   (np.full((30, 2), np.nan), np.zeros(30), "NaN")]:
        with pytest.raises(ValueError, match=message):
            save_latent_map(codes, labels, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_image_grids_take_one_image_and_name_their_mistakes(tmp_path):
    image = np.linspace(0, 1, 64).reshape(8, 8)
    save_image_grid(image, tmp_path / "one.png")
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG"
    for images, nrow, message in [(image[None], 0, "nrow"),
                                  (np.zeros((2, 8, 8, 3)), 8, "channels-last"),
                                  (np.zeros(5), 8, r"\(n, H, W\)")]:
        with pytest.raises(ValueError, match=message):
            save_image_grid(images, tmp_path / "bad.png", nrow=nrow)


def test_predicts_minus_one_labels_are_drawn_as_anomalies(tmp_path):
    """-1 marks an outlier (predict, evaluate); the plots drew -1/+1 labels upside down:
    the normal rows as "anomaly" and the anomalies not at all."""
    rng = np.random.default_rng(0)
    scores, anomalies = rng.normal(size=80), rng.random(80) < 0.3
    scores[anomalies] -= 3.0
    for labels, name in ((anomalies.astype(int), "01"), (np.where(anomalies, -1, 1), "pm")):
        save_score_histograms(scores, labels, 0.0, tmp_path / f"h_{name}.png")
        save_roc_curve(labels, -scores, tmp_path / f"r_{name}.png")
    for kind in ("h", "r"):
        assert (Image.open(tmp_path / f"{kind}_01.png").tobytes()
                == Image.open(tmp_path / f"{kind}_pm.png").tobytes())
    with pytest.raises(ValueError, match="mark anomalies"):
        save_roc_curve(np.arange(80) % 3, -scores, tmp_path / "bad.png")


def test_an_image_map_is_drawn_as_a_heat_map(tmp_path):
    """Red above the training median, blue below: the same colour bar (symmetric about
    0) in both drawings, so only the corner cells can differ, by their colour."""
    def colours(sign: float) -> tuple[int, int]:
        pixels = np.zeros((8, 8))
        pixels[0:2, 0:2] = sign * 40.0           # nats: far outside an image's [0, 1]
        save_explanation(pixels.tolist(), tmp_path / "map.png")       # a nested list too
        image = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(int)
        red = (image[..., 0] - image[..., 2] > 60).sum()
        blue = (image[..., 2] - image[..., 0] > 60).sum()
        return int(red), int(blue)

    (red_up, blue_up), (red_down, blue_down) = colours(1.0), colours(-1.0)
    assert red_up > red_down + 100 and blue_down > blue_up + 100
    with pytest.raises(ValueError, match=r"det.explain\(images\)\[i\]"):
        save_explanation(np.zeros((2, 8, 8)), tmp_path / "maps.png")


def test_one_class_of_labels_is_drawn_when_it_says_which(tmp_path):
    scores = np.random.default_rng(0).normal(size=20)
    save_score_histograms(scores, np.zeros(20), 0.0, tmp_path / "normal.png")
    save_score_histograms(scores, -np.ones(20), 0.0, tmp_path / "anomalies.png")
    save_score_histograms(scores, np.ones(20, dtype=bool), 0.0, tmp_path / "true.png")
    with pytest.raises(ValueError, match="all 1"):      # anomalies as 0/1, inliers as -1/+1
        save_score_histograms(scores, np.ones(20), 0.0, tmp_path / "ones.png")
