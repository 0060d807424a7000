"""The conditional VAE (``VAEDetector(conditional=True)``): p(x | y) for class labels.

One model is fitted on the digits with their labels (module scope) and checked for
what a CVAE promises: it generates the class it is asked for, its label-free score is
the label-marginal of its per-class scores, it saves, loads and exports, and it
refuses what it cannot do with errors that say so.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from scipy.special import logsumexp
from sklearn.datasets import load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaeanom import OnnxModel, VAEDetector, VQVAEDetector
from vaeanom.export import read_metadata
from vaeanom.scoring import COMPLEXITY_WEIGHT

NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                  "nine"], dtype=object)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x[::2], y[::2], x[1::2], y[1::2]          # 899 training rows, 898 held out


@pytest.fixture(scope="module")
def cvae(digits):
    x, y, _, _ = digits
    return VAEDetector(conditional=True, epochs=60, random_state=0).fit(x, NAMES[y])


def test_samples_are_read_as_the_class_asked_for(digits, cvae):
    """A classifier trained on real digits reads >= 90% of sample(n, y=c) as c."""
    x, y, _, _ = digits
    reader = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    rates = []
    for code, name in enumerate(NAMES):
        samples = cvae.sample(40, random_state=code, y=name)
        rates.append(np.mean(reader.predict(samples) == code))
    assert min(rates) >= 0.9, rates


def test_label_free_score_is_the_label_marginal(digits, cvae):
    """score_samples(X) = logsumexp_c [score_samples(X, y=c) + log p(c)]."""
    _, _, x_test, _ = digits
    per_class = np.stack([cvae.score_samples(x_test[:40], y=name) for name in cvae.classes_], 1)
    expected = logsumexp(per_class + cvae.class_log_prior_, axis=1)
    np.testing.assert_allclose(cvae.score_samples(x_test[:40]), expected, rtol=1e-5)
    assert np.allclose(np.exp(cvae.class_log_prior_).sum(), 1.0)


def test_the_true_label_explains_a_digit_best(digits, cvae):
    _, _, x_test, y_test = digits
    per_class = np.stack([cvae.score_samples(x_test, y=name) for name in cvae.classes_], 1)
    predicted = cvae.classes_[per_class.argmax(1)]
    assert np.mean(predicted == NAMES[y_test]) >= 0.9


def test_scores_depend_on_the_row_alone(digits, cvae):
    _, _, x_test, y_test = digits
    labels = NAMES[y_test]
    full = cvae.score_samples(x_test, labels)
    order = np.random.default_rng(0).permutation(len(x_test))[:77]
    np.testing.assert_array_equal(cvae.score_samples(x_test[order], labels[order]), full[order])
    np.testing.assert_array_equal(cvae.score_samples(x_test[:1], labels[:1]), full[:1])
    one_label = cvae.score_samples(x_test[:5], "three")
    np.testing.assert_array_equal(one_label, cvae.score_samples(x_test[:5], ["three"] * 5))


def test_same_seed_same_model(digits):
    x, y, x_test, _ = digits
    a, b = (VAEDetector(conditional=True, epochs=3, random_state=1).fit(x, y) for _ in range(2))
    np.testing.assert_array_equal(a.score_samples(x_test), b.score_samples(x_test))
    np.testing.assert_array_equal(a.sample(4, random_state=2), b.sample(4, random_state=2))


def test_latent_api_takes_labels(digits, cvae):
    _, _, x_test, y_test = digits
    labels = NAMES[y_test[:6]]
    codes = cvae.encode(x_test[:6], labels)
    assert codes.shape == (6, cvae.latent_dim)
    np.testing.assert_array_equal(cvae.decode(codes, labels), cvae.reconstruct(x_test[:6], labels))
    drawn = cvae.sample(30, random_state=0)          # labels drawn from the training shares
    assert drawn.shape == (30, 64) and cvae.sample(0).shape == (0, 64)


def test_save_load_keeps_classes_and_scores(tmp_path, digits, cvae):
    _, _, x_test, y_test = digits
    path = tmp_path / "cvae.safetensors"
    cvae.save(path)
    loaded = VAEDetector.load(path)
    assert loaded.classes_.tolist() == cvae.classes_.tolist()
    np.testing.assert_array_equal(loaded.score_samples(x_test), cvae.score_samples(x_test))
    np.testing.assert_array_equal(loaded.score_samples(x_test, NAMES[y_test]),
                                  cvae.score_samples(x_test, NAMES[y_test]))
    assert loaded.offset_ == cvae.offset_
    assert loaded.label_offset_ == cvae.label_offset_


def test_a_failed_fit_keeps_no_labels(digits):
    x, y, _, _ = digits
    detector = VAEDetector(conditional=True, latent_dim=(8, 4), epochs=1)
    with pytest.raises(ValueError, match="conditional=False"):
        detector.fit(x[:50], y[:50])
    assert not any(name.startswith("_fit") for name in vars(detector))


def test_continuous_labels_are_refused_at_fit(digits):
    """A measurement given as y would make each distinct value a class of one row."""
    x, _, _, _ = digits
    detector = VAEDetector(conditional=True, epochs=1)
    with pytest.raises(ValueError, match=r"continuous values \(e.g. 0.5\).*pd.qcut"):
        detector.fit(x[:50], np.arange(50) / 2)
    assert not hasattr(detector, "classes_")
    whole = VAEDetector(conditional=True, epochs=1, random_state=0).fit(x[:50], np.arange(50.) % 3)
    assert whole.classes_.tolist() == [0.0, 1.0, 2.0]       # whole floats are classes


def test_booleans_and_numbers_are_different_labels(digits):
    """numpy has True == 1, so a True scored as class 1 (and 1 as True) without a word,
    while '1' was refused: labels match by value and type."""
    x, y, _, _ = digits
    numbered = VAEDetector(conditional=True, epochs=1, random_state=0).fit(x[:60], y[:60] % 2)
    with pytest.raises(ValueError, match=r"never saw in fit: \[True\].*nor True"):
        numbered.score_samples(x[:3], [True] * 3)
    flags = VAEDetector(conditional=True, epochs=1, random_state=0).fit(x[:60], y[:60] % 2 == 1)
    with pytest.raises(ValueError, match=r"never saw in fit: \[1, 0\]"):
        flags.score_samples(x[:3], [1, 0, 1])
    np.testing.assert_array_equal(flags.score_samples(x[:3], [True, False, True]),
                                  numbered.score_samples(x[:3], [1, 0, 1]))


def test_files_without_label_offset_say_refit(digits, cvae):
    x, y, _, _ = digits
    old = copy.deepcopy(cvae)
    del old.label_offset_
    np.testing.assert_array_equal(old.predict(x[:5]), cvae.predict(x[:5]))
    with pytest.raises(ValueError, match="refit"):
        old.predict(x[:5], NAMES[y[:5]])


def test_boolean_labels_save_and_load(tmp_path, digits):
    x, y, _, _ = digits
    detector = VAEDetector(conditional=True, epochs=1, random_state=0).fit(x[:100], y[:100] >= 5)
    detector.save(tmp_path / "flags.safetensors")
    loaded = VAEDetector.load(tmp_path / "flags.safetensors")
    assert loaded.classes_.tolist() == [False, True]
    np.testing.assert_array_equal(loaded.score_samples(x[:5], True),
                                  detector.score_samples(x[:5], True))


def test_label_scores_have_their_own_threshold(digits, cvae):
    """score_samples(X, y) bounds log p(x | y), not log p(x): its threshold, label_offset_,
    is the contamination rule on the training rows given their own labels."""
    x, y, _, _ = digits
    own = cvae.score_samples(x, NAMES[y])
    assert np.isclose(cvae.label_offset_, np.percentile(own, 100 * cvae.contamination),
                      rtol=1e-6)
    assert cvae.label_offset_ != cvae.offset_
    np.testing.assert_array_equal(cvae.decision_function(x, NAMES[y]), own - cvae.label_offset_)
    np.testing.assert_array_equal(cvae.predict(x, NAMES[y]),
                                  np.where(own < cvae.label_offset_, -1, 1))
    np.testing.assert_array_equal(cvae.predict(x), np.where(
        cvae.score_samples(x) < cvae.offset_, -1, 1))


def test_sklearn_methods_pass_the_labels_on(digits, cvae):
    x, y, x_test, y_test = digits
    detector = VAEDetector(conditional=True, epochs=2, random_state=0)
    flags = detector.fit_predict(x[:200], y[:200])
    np.testing.assert_array_equal(flags, detector.predict(x[:200], y[:200]))
    codes = detector.fit_transform(x[:200], y[:200])
    np.testing.assert_array_equal(codes, detector.transform(x[:200], y[:200]))
    codes = cvae.transform(x_test[:5], NAMES[y_test[:5]])
    np.testing.assert_array_equal(codes, cvae.encode(x_test[:5], NAMES[y_test[:5]]))
    np.testing.assert_array_equal(cvae.inverse_transform(codes, NAMES[y_test[:5]]),
                                  cvae.decode(codes, NAMES[y_test[:5]]))


def test_image_bounds_add_the_code_length_only_when_asked(digits):
    """On images, "elbo" and "iwae" are plain bounds; "elbo_complexity" adds the code length."""
    x, y, _, _ = digits
    images = x[:200].reshape(-1, 8, 8) / 16
    detector = VAEDetector(conditional=True, backbone="mlp", score_kind="elbo", epochs=2,
                           random_state=0).fit(images, y[:200])
    plain = detector.score_samples(images[:20], y[:20])
    marginal = detector.score_samples(images[:20])
    detector.set_params(score_kind="elbo_complexity")
    length = detector._complexity()(detector._preprocess(images[:20])).double().numpy()
    assert np.all(np.abs(length) > 1)
    np.testing.assert_allclose(detector.score_samples(images[:20], y[:20]) - plain,
                               COMPLEXITY_WEIGHT * length, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(detector.score_samples(images[:20]) - marginal,
                               COMPLEXITY_WEIGHT * length, rtol=1e-4, atol=1e-3)


def test_onnx_scorers_match_score_samples(tmp_path, digits, cvae):
    """The label-marginal export runs in OnnxModel; with_label=True takes int64 codes."""
    _, _, x_test, y_test = digits
    cvae.export_onnx(tmp_path / "marginal.onnx")
    marginal = OnnxModel(tmp_path / "marginal.onnx")
    np.testing.assert_allclose(marginal.score_samples(x_test), cvae.score_samples(x_test),
                               rtol=1e-5, atol=1e-4)
    assert marginal.metadata["classes"] == cvae.classes_.tolist()
    holed = x_test[:2].copy()
    holed[0, 3] = np.nan        # the estimator that takes holes is named, not this one
    with pytest.raises(ValueError, match=r"VAEDetector\(conditional=False\) with an int"):
        marginal.score_samples(holed)

    cvae.export_onnx(tmp_path / "labelled.onnx", with_label=True)
    session = ort.InferenceSession(str(tmp_path / "labelled.onnx"))
    codes = np.searchsorted(cvae.classes_, NAMES[y_test]).astype(np.int64)
    got = session.run(None, {"input": x_test.astype(np.float32), "label": codes})[0]
    np.testing.assert_allclose(got, cvae.score_samples(x_test, NAMES[y_test]),
                               rtol=1e-5, atol=1e-4)
    unknown = session.run(None, {"input": x_test[:2].astype(np.float32),
                                 "label": np.array([-1, 10], dtype=np.int64)})[0]
    assert np.all(unknown == -np.inf)
    assert read_metadata(tmp_path / "labelled.onnx")["offset"] == pytest.approx(
        cvae.label_offset_)
    assert read_metadata(tmp_path / "marginal.onnx")["offset"] == pytest.approx(cvae.offset_)

    labelled = OnnxModel(tmp_path / "labelled.onnx")   # the labels' names, mapped torch-free
    assert labelled.takes_labels and not marginal.takes_labels
    assert labelled.classes_.tolist() == cvae.classes_.tolist()
    names = NAMES[y_test]
    np.testing.assert_allclose(labelled.score_samples(x_test, names),
                               cvae.score_samples(x_test, names), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(labelled.predict(x_test, names), cvae.predict(x_test, names))
    frame = labelled.score_frame(x_test[:5], y="three")          # one label for every row
    np.testing.assert_array_equal(frame["score"], labelled.score_samples(x_test[:5],
                                                                         ["three"] * 5))
    with pytest.raises(ValueError, match=r"give the labels, one per row .* among \['eight'"):
        labelled.score_samples(x_test[:2])
    with pytest.raises(ValueError, match=r"never saw in fit: \['ten'\]"):
        labelled.score_samples(x_test[:2], ["one", "ten"])
    with pytest.raises(ValueError, match="takes none. Leave them out"):
        marginal.score_samples(x_test[:2], names[:2])
    with pytest.raises(ValueError, match=r"input 'label' holds 10: .* 0\.\.9"):
        labelled.check_feeds({"input": x_test[:2].astype(np.float32),
                              "label": np.array([1, 10], dtype=np.int64)})


def test_the_cli_exports_a_scorer_given_labels(tmp_path, digits, cvae, capsys):
    from vaeanom.cli import main

    _, _, x_test, y_test = digits
    cvae.save(tmp_path / "cvae.safetensors")
    assert main(["export", str(tmp_path / "given.onnx"), "--model",
                 str(tmp_path / "cvae.safetensors"), "--with-label"]) == 0
    given = OnnxModel(tmp_path / "given.onnx")
    np.testing.assert_allclose(given.score_samples(x_test[:20], NAMES[y_test[:20]]),
                               cvae.score_samples(x_test[:20], NAMES[y_test[:20]]),
                               rtol=1e-5, atol=1e-4)
    VAEDetector(epochs=1, random_state=0).fit(x_test[:50]).save(tmp_path / "plain.st")
    assert main(["export", str(tmp_path / "x.onnx"), "--model", str(tmp_path / "plain.st"),
                 "--with-label"]) == 1
    assert "conditional" in capsys.readouterr().err


def test_the_cli_fits_and_scores_given_a_label_column(tmp_path, capsys):
    """vaeanom fit --label COLUMN fits p(x | label); score --label scores given it,
    with the saved model and with a scorer exported --with-label alike."""
    from vaeanom.cli import main

    x, y = load_wine(return_X_y=True, as_frame=True)
    table = x.assign(cultivar=y.map({0: "barolo", 1: "grignolino", 2: "barbera"}))
    table.to_csv(tmp_path / "wine.csv", index=False)
    model, data = str(tmp_path / "w.st"), str(tmp_path / "wine.csv")
    assert main(["fit", data, "--model", model, "--label", "cultivar",
                 "--set", "epochs=20", "--set", "random_state=0"]) == 0
    detector = VAEDetector.load(model)
    assert detector.conditional and list(detector.feature_names_in_) == list(x.columns)
    assert main(["score", data, "--model", model, "--label", "cultivar",
                 "-o", str(tmp_path / "given.csv")]) == 0
    given = pd.read_csv(tmp_path / "given.csv")["score"]
    np.testing.assert_allclose(given, detector.score_samples(x, table["cultivar"]), rtol=1e-6)
    assert main(["export", str(tmp_path / "w.onnx"), "--model", model, "--with-label"]) == 0
    assert main(["score", data, "--onnx", str(tmp_path / "w.onnx"), "--label", "cultivar",
                 "-o", str(tmp_path / "onnx.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "onnx.csv")["score"], given,
                               rtol=1e-5, atol=1e-4)
    capsys.readouterr()
    assert main(["score", data, "--onnx", str(tmp_path / "w.onnx")]) == 1
    assert "--label COLUMN in vaeanom score" in capsys.readouterr().err
    VAEDetector(epochs=1, random_state=0).fit(x).save(tmp_path / "plain.st")
    assert main(["score", data, "--model", str(tmp_path / "plain.st"), "--label",
                 "cultivar"]) == 1
    assert "this one takes no labels. Drop --label" in capsys.readouterr().err
    assert main(["fit", data, "--model", str(tmp_path / "d.st"), "--label", "cultivar",
                 "--drop", "cultivar,alcohol", "--set", "epochs=1"]) == 0   # never a feature
    assert VAEDetector.load(tmp_path / "d.st").n_features_in_ == 12
    assert main(["fit", data, "--model", model, "--label", "grape"]) == 1
    assert "--label: the data has no column 'grape'" in capsys.readouterr().err
    assert main(["fit", data, "--model", model, "--label", "cultivar",
                 "--set", "conditional=False"]) == 1
    assert "--label fits a conditional VAEDetector" in capsys.readouterr().err


def test_contextual_anomaly_on_a_table():
    """"Unusual for this type": a wine of one cultivar labelled as another scores lower
    given the wrong label than given its own."""
    x, y = load_wine(return_X_y=True)
    kinds = np.array(["barolo", "grignolino", "barbera"], dtype=object)[y]
    detector = VAEDetector(conditional=True, epochs=200, random_state=0).fit(x, kinds)
    own = detector.score_samples(x, kinds)
    swapped = detector.score_samples(x, np.roll(kinds, 60))      # other cultivars' labels
    wrong = np.roll(kinds, 60) != kinds
    assert np.mean(own[wrong] > swapped[wrong]) >= 0.9


@pytest.mark.parametrize("call, match", [
    (lambda x, y: VAEDetector(conditional=True, epochs=1).fit(x), r"fit\(X, y\)"),
    (lambda x, y: VAEDetector(conditional=True, epochs=1).fit(x, y[:-1]), "labels for"),
    (lambda x, y: VAEDetector(conditional=True, epochs=1).fit(
        x, np.where(np.arange(len(y)) == 3, None, y.astype(object))), "missing labels"),
    (lambda x, y: VAEDetector(conditional=True, backbone="conv", epochs=1).fit(
        x.reshape(-1, 8, 8) / 16, y), "backbone='mlp'"),
    (lambda x, y: VAEDetector(conditional=True, score_kind="elbo_kl_knn", epochs=1).fit(x, y),
     "not defined for conditional=True"),
    (lambda x, y: VAEDetector(conditional="yes").fit(x, y), "True or False"),
    (lambda x, y: VAEDetector(conditional=True, epochs=1).fit(   # it could not be saved
        x, pd.to_datetime(y, unit="D")), "datetime64 labels.*astype\\(str\\)"),
    (lambda x, y: VAEDetector(conditional=True, epochs=1).fit(x, y.astype(bytes)),
     "bytes_ labels"),
])
def test_bad_conditional_fits_say_what_to_do(digits, call, match):
    x, y, _, _ = digits
    with pytest.raises(ValueError, match=match):
        call(x[:100], y[:100])


def test_table_with_holes_is_refused(digits):
    """The table model (holes, categories) has no conditional form yet."""
    x, y, _, _ = digits
    x = x[:100].copy()
    x[0, 5] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        VAEDetector(conditional=True, epochs=1).fit(x, y[:100])


def test_labels_the_model_never_saw_are_named(digits, cvae):
    _, _, x_test, _ = digits
    with pytest.raises(ValueError, match="never saw in fit: \\['eleven'\\]"):
        cvae.score_samples(x_test[:2], ["one", "eleven"])
    with pytest.raises(ValueError, match="never saw"):
        cvae.sample(2, y=3)                          # the classes are names, not digits
    with pytest.raises(ValueError, match="give the labels"):
        cvae.encode(x_test[:2])


def test_unconditional_models_refuse_labels(digits):
    x, y, _, _ = digits
    detector = VAEDetector(epochs=1, random_state=0).fit(x[:100], y[:100])   # y ignored
    assert not hasattr(detector, "classes_")
    with pytest.raises(ValueError, match="conditional=False"):
        detector.score_samples(x[:2], y[:2])
    with pytest.raises(ValueError, match="conditional=False"):
        detector.export_onnx("never.onnx", with_label=True)
    vq = VQVAEDetector(epochs=1, random_state=0).fit(x[:50].reshape(-1, 8, 8) / 16)
    with pytest.raises(ValueError, match="conditional=False"):
        vq.export_onnx("never.onnx", with_label=True)


@pytest.mark.parametrize("method", ["explain", "partial_fit"])
def test_what_is_not_there_yet_is_refused(digits, cvae, method):
    _, _, x_test, _ = digits
    with pytest.raises(ValueError, match="conditional"):
        getattr(cvae, method)(x_test[:3])


def test_score_frame_gives_the_bound_with_or_without_labels(digits, cvae):
    """score and is_outlier: the label-marginal score against offset_, or given y against
    label_offset_, as predict(X) and predict(X, y) flag them."""
    _, _, x_test, y_test = digits
    for y in (None, NAMES[y_test[:20]]):
        frame = cvae.score_frame(x_test[:20], y=y)
        assert list(frame.columns) == ["score", "is_outlier"]
        np.testing.assert_array_equal(frame["score"], cvae.score_samples(x_test[:20], y))
        np.testing.assert_array_equal(frame["is_outlier"], cvae.predict(x_test[:20], y) == -1)
    with pytest.raises(ValueError, match="conditional"):
        cvae.score_frame(x_test[:3], explain=1)


def test_a_nan_among_string_labels_is_missing_not_a_class(digits):
    """numpy turns a list's NaN among strings into the string 'nan'; it is a missing label."""
    x, _, _, _ = digits
    names = ["even", "odd"] * 30
    names[3] = float("nan")
    with pytest.raises(ValueError, match="1 missing labels.*row 3"):
        VAEDetector(conditional=True, epochs=1).fit(x[:60], names)
