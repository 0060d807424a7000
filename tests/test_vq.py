"""VQVAEDetector and its quantiser: codebook mechanics, fit quality, latent API, persistence."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vaeanom import VAEDetector, VQVAEDetector
from vaeanom.models import Codebook, VectorQuantizer

VQ_FAST = dict(codebook_size=16, code_dim=8, conv_channels=(16, 32), hidden_dims=(32,),
               epochs=30, batch_size=64, learning_rate=3e-3, random_state=0)


@pytest.fixture(scope="module")
def digits_vq(digit_images):
    images, labels = digit_images
    return VQVAEDetector(**VQ_FAST).fit(images[:1200]), images, labels


# ------------------------------------------------------------------ quantiser
def _codebook(size=8, dim=3, **kwargs) -> Codebook:
    book = Codebook(size, dim, **kwargs)
    book.embedding.data = torch.randn(size, dim, generator=torch.Generator().manual_seed(0))
    return book


def test_nearest_is_the_brute_force_argmin():
    book = _codebook()
    vectors = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    expected = torch.cdist(vectors, book.embedding).argmin(dim=1)
    assert torch.equal(book.nearest(vectors), expected)


def test_straight_through_passes_the_gradient_to_the_encoder_output():
    quantizer = VectorQuantizer(_codebook(dim=4)).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = quantizer(z_e)
    assert out.codes.shape == (2, 3, 3)
    torch.testing.assert_close(out.z_q, quantizer.embed(out.codes))
    out.z_q.sum().backward()
    torch.testing.assert_close(z_e.grad, torch.ones_like(z_e))


def test_kmeans_start_puts_one_code_on_each_cluster():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    data = (centres.repeat_interleave(100, 0)
            + 0.1 * torch.randn(400, 2, generator=generator))
    book = Codebook(4, 2)
    book.initialise(data, generator)
    assert torch.cdist(centres, book.embedding).min(dim=1).values.max() < 0.5
    assert torch.bincount(book.nearest(data), minlength=4).min() == 100


def test_ema_moves_codes_to_the_mean_of_their_vectors():
    generator = torch.Generator().manual_seed(0)
    book = Codebook(2, 2, decay=0.5, dead_threshold=0.0)
    book.initialise(torch.tensor([[0.0, 0.0], [5.0, 5.0]]), generator)
    data = torch.tensor([[1.0, 1.0], [1.2, 0.8]])        # both nearest to code 0
    for _ in range(20):
        book.train_step(data, book.nearest(data), generator)
    torch.testing.assert_close(book.embedding[0], data.mean(0), atol=1e-3, rtol=0)


def test_dead_codes_are_restarted_onto_the_data():
    generator = torch.Generator().manual_seed(0)
    book = Codebook(2, 2, decay=0.5, dead_threshold=1.0)
    book.initialise(torch.tensor([[0.0, 0.0], [5.0, 5.0]]), generator)
    data = torch.tensor([[1.0, 1.0], [1.2, 0.8]])
    for _ in range(20):
        book.train_step(data, book.nearest(data), generator)
    # code 1 starved at (5, 5), was restarted and now serves one of the two vectors
    assert torch.cdist(data, book.embedding).min(dim=1).values.max() < 1e-3
    assert torch.bincount(book.nearest(data), minlength=2).tolist() == [1, 1]


def test_loss_mode_trains_the_codebook_by_gradient():
    quantizer = VectorQuantizer(_codebook(dim=2, update="loss")).train()
    z_e = torch.randn(1, 2, 4, 4)
    out = quantizer(z_e, torch.Generator().manual_seed(0))
    out.codebook_loss.backward()
    assert quantizer.codebook.embedding.grad.abs().sum() > 0


# --------------------------------------------------------------- the detector
def test_fit_records_codebook_health_and_reconstructs(digits_vq):
    detector, images, _ = digits_vq
    assert {"loss", "reconstruction", "commitment", "perplexity", "used_codes"} <= set(
        detector.history_[-1])
    assert detector.history_[-1]["reconstruction"] < 0.5 * detector.history_[0]["reconstruction"]
    assert detector.used_codes_ > 0.5 and detector.perplexity_ > 4
    assert detector.code_grid_ == (2, 2)
    assert detector.code_counts_.shape == (4, 16) and detector.code_counts_.sum() == 4 * 1200
    test = images[1200:1400]
    mse = ((detector.reconstruct(test) - test / 255.0) ** 2).mean()
    baseline = ((test / 255.0 - images[:1200].mean(0) / 255.0) ** 2).mean()
    assert mse < 0.5 * baseline


def test_encode_gives_integer_grids_and_decode_validates_them(digits_vq):
    detector, images, _ = digits_vq
    codes = detector.encode(images[:5])
    assert codes.shape == (5, 2, 2) and codes.dtype == np.int64
    assert detector.decode(codes).shape == (5, 8, 8)
    np.testing.assert_array_equal(detector.decode(codes.reshape(5, -1)), detector.decode(codes))
    assert detector.transform(images[:5]).shape == (5, 4)
    assert list(detector.get_feature_names_out()) == ["z0", "z1", "z2", "z3"]
    with pytest.raises(ValueError, match="integers"):
        detector.decode(codes.astype(float))
    with pytest.raises(ValueError, match=r"in \[0, 16\)"):
        detector.decode(codes + 16)
    with pytest.raises(ValueError, match="shape"):
        detector.decode(codes.reshape(5, -1)[:, :3])
    with pytest.raises(ValueError, match="shape"):
        detector.decode(codes[:, :0])
    assert detector.decode(codes[:, :1]).shape == (5, 4, 8)    # a grid of other images


def test_scores_do_not_depend_on_batch(digits_vq):
    detector, images, _ = digits_vq
    full = detector.score_samples(images[:50])
    parts = np.concatenate([detector.score_samples(images[i:min(i + 7, 50)])
                            for i in range(0, 50, 7)])
    np.testing.assert_array_equal(full, parts)
    np.testing.assert_array_equal(detector.encode(images[:50])[::-1],
                                  detector.encode(images[:50][::-1]))


def test_transform_keeps_one_width_and_encode_takes_any_size(digit_images):
    """transform is the transformer API: its width is get_feature_names_out's, so images of
    another size (which a conv model encodes) are refused there, pointing at encode."""
    images, _ = digit_images
    det = VQVAEDetector(conv_channels=(4, 8), code_dim=4, codebook_size=8, epochs=1,
                        random_state=0).fit(images[:100])
    width = det.get_feature_names_out().size
    assert det.set_output(transform="pandas").transform(images[:3]).shape == (3, width)
    bigger = np.tile(images[:3], (1, 2, 2))
    with pytest.raises(ValueError, match=r"images of shape \(16, 16\)\. encode\(X\) takes"):
        det.transform(bigger)
    assert det.encode(bigger).shape == (3, *det.code_grid_for((16, 16)))


def test_sample_decodes_codes_drawn_from_their_frequencies(digits_vq):
    detector, _, _ = digits_vq
    first = detector.sample(3, random_state=1)
    assert first.shape == (3, 8, 8) and 0 <= first.min() and first.max() <= 1
    np.testing.assert_array_equal(first, detector.sample(3, random_state=1))


def test_rows_detect_malignant_tumours(cancer):
    X, y = cancer
    benign, rest = X[y == 1].iloc[:250], X.drop(X[y == 1].index[:250])
    detector = VQVAEDetector(codebook_size=16, epochs=30, random_state=0).fit(benign)
    assert detector.encode(rest).shape == (len(rest), 4)
    auc = roc_auc_score(y.loc[rest.index] == 0, -detector.score_samples(rest))
    assert auc > 0.9
    frame = detector.score_frame(rest)
    assert list(frame.index) == list(rest.index)
    assert frame.is_outlier.sum() > 0


def test_save_load_round_trip(digits_vq, tmp_path):
    detector, images, _ = digits_vq
    detector.save(tmp_path / "vq.safetensors")
    loaded = VQVAEDetector.load(tmp_path / "vq.safetensors", device="cpu")
    assert loaded.code_grid_ == (2, 2)
    np.testing.assert_array_equal(loaded.encode(images[:20]), detector.encode(images[:20]))
    np.testing.assert_array_equal(loaded.score_samples(images[:20]),
                                  detector.score_samples(images[:20]))
    np.testing.assert_array_equal(loaded.code_counts_, detector.code_counts_)
    with pytest.raises(ValueError, match="holds a VQVAEDetector"):
        VAEDetector.load(tmp_path / "vq.safetensors")


def test_same_seed_same_model(digit_images):
    images, _ = digit_images
    params = {**VQ_FAST, "epochs": 2}
    first = VQVAEDetector(**params).fit(images[:300])
    second = VQVAEDetector(**params).fit(images[:300])
    np.testing.assert_array_equal(first.score_samples(images[300:350]),
                                  second.score_samples(images[300:350]))
    assert first.history_ == second.history_


# --------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("input_dtype", ["float32", "uint8"])
def test_onnx_parts_match_torch(digits_vq, tmp_path, input_dtype):
    from vaeanom import OnnxModel

    detector, images, _ = digits_vq
    test = images[1200:1500]
    feed = test if input_dtype == "uint8" else test / np.float32(255.0)
    paths = {part: detector.export_onnx(tmp_path / f"{part}.onnx", part,
                                        input_dtype=input_dtype if part != "decoder"
                                        else "float32")
             for part in ("scorer", "encoder", "decoder")}
    scorer = OnnxModel(paths["scorer"])
    np.testing.assert_allclose(scorer.score_samples(feed), detector.score_samples(test),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(scorer.predict(feed), detector.predict(test))
    codes = detector.encode(test)
    onnx_codes = OnnxModel(paths["encoder"]).encode(feed)
    assert onnx_codes.dtype == np.int64 and (onnx_codes == codes).mean() > 0.99
    decoder = OnnxModel(paths["decoder"])
    np.testing.assert_allclose(decoder.decode(codes), detector.decode(codes), atol=1e-5)
    with pytest.raises(ValueError, match="integer codes"):
        decoder.decode(codes.astype(np.float32))
    with pytest.raises(ValueError, match=r"in \[0, 16\)"):
        decoder.decode(codes + 16)


def test_onnx_row_model_matches_torch(cancer, tmp_path):
    from vaeanom import OnnxModel

    X, _ = cancer
    detector = VQVAEDetector(codebook_size=8, epochs=3, random_state=0).fit(X)
    path = detector.export_onnx(tmp_path / "rows.onnx")
    np.testing.assert_allclose(OnnxModel(path).score_samples(X), detector.score_samples(X),
                               rtol=1e-5)


# ------------------------------------------------- training speed: bf16, cosine
def test_the_quantiser_works_in_float32_under_bf16_autocast():
    quantizer = VectorQuantizer(_codebook(size=64, dim=8))
    z_e = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))
    plain = quantizer(z_e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = quantizer(z_e.bfloat16())
    assert cast.z_q.dtype == torch.float32
    np.testing.assert_array_equal(cast.codes, quantizer(z_e.bfloat16().float()).codes)
    assert (cast.codes == plain.codes).float().mean() > 0.9   # only bf16 rounding of z_e


def test_cosine_schedule_decays_the_rate_to_zero_over_fit_only(digit_images, monkeypatch):
    images, _ = digit_images
    rates = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    params = {**VQ_FAST, "epochs": 4, "lr_schedule": "cosine"}
    VQVAEDetector(**params).fit(images[:256])
    assert rates[0] == params["learning_rate"] and rates[-1] < 0.05 * rates[0]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    rates.clear()
    VQVAEDetector(**params).partial_fit(images[:256])       # a stream has no planned end
    assert set(rates) == {params["learning_rate"]}


# bf16 keeps fp32's quality here. The cosine schedule does not: 0.042 against 0.027 mean
# squared error on these digits (30 epochs at 3e-3; the mean image: 0.075), so it is held
# to a looser floor. Without dead-code restarts it is still worse (0.036), so codes restarted
# when the rate is near 0 are not the whole story.
@pytest.mark.parametrize("params, floor, within", [({"precision": "bf16"}, 0.5, 1.15),
                                                   ({"lr_schedule": "cosine"}, 0.65, None)])
def test_fast_training_options_reconstruct(digits_vq, params, floor, within):
    reference, images, _ = digits_vq
    detector = VQVAEDetector(**{**VQ_FAST, **params}).fit(images[:1200])
    assert all(p.dtype == torch.float32 for p in detector.model_.parameters())
    test = images[1200:1400] / 255.0
    mse = {name: ((model.reconstruct(images[1200:1400]) - test) ** 2).mean()
           for name, model in (("reference", reference), ("fast", detector))}
    baseline = ((test - images[:1200].mean(0) / 255.0) ** 2).mean()
    assert mse["fast"] < floor * baseline, mse
    if within is not None:
        assert mse["fast"] < within * mse["reference"], mse
    np.testing.assert_array_equal(detector.encode(images[:50]),
                                  VQVAEDetector(**{**VQ_FAST, **params}).fit(
                                      images[:1200]).encode(images[:50]))   # deterministic


def test_an_ema_decay_of_one_is_refused(digit_images):
    """At decay 1 the moving averages never move, so the codebook never learns; it fitted
    without a word."""
    images, _ = digit_images
    with pytest.raises(ValueError, match=r"'ema_decay' must be a float in \[0.0, 1.0\); got 1.0"):
        VQVAEDetector(ema_decay=1.0, epochs=1).fit(images[:50])
