"""The context model of compress: integer probabilities, position-free, exact round trips."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vaeanom.code_model import CAP, LEVELS, SCALE_BITS, ContextModel, choose_codes
from vaeanom.compression import CorruptBlobError, decode_codes, encode_codes


def _model(seed: int, n_codes: int = 16, n_classes: int = 4) -> ContextModel:
    """A small model from fixed arithmetic (not an RNG, whose streams numpy may change)."""
    cells = np.arange(40 * 3 * 4).reshape(40, 3, 4)
    grids = (cells * (2 * seed + 7) + cells // 5) % n_codes * (cells % (seed + 3) > 0)
    return ContextModel.fit(grids, np.arange(n_codes) * (seed + 1) % n_classes, n_classes)


grids = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)).flatmap(
    lambda shape: arrays(np.int64, shape, elements=st.integers(0, 15)))


@settings(max_examples=60)
@given(codes=grids, seed=st.integers(0, 3))
def test_grids_of_any_size_round_trip_exactly(codes, seed):
    model = _model(seed)
    payload = encode_codes(codes, model)
    np.testing.assert_array_equal(decode_codes(payload, codes.shape, model), codes)
    assert 8 * len(payload) <= model.ideal_bits(codes) * 1.01 + 40


@settings(max_examples=40)
@given(codes=grids, seed=st.integers(0, 3))
def test_the_causal_context_is_the_grid_context(codes, seed):
    model = _model(seed)
    full = model.contexts(codes)
    for row in range(codes.shape[1]):
        for column in range(codes.shape[2]):
            np.testing.assert_array_equal(model.context_at(codes, row, column),
                                          full[:, row, column])


def test_a_code_depends_on_its_neighbours_only_not_its_position():
    model = _model(0)
    grid = np.zeros((1, 5, 6), dtype=np.int64)
    contexts = model.contexts(grid)[0]
    assert len(np.unique(contexts[1:, 1:-1])) == 1   # interior positions: one context
    assert len(np.unique(contexts)) == 5  # corner, top row, left and right columns, interior


def test_weights_are_whole_numbers_and_never_zero():
    model = _model(1)
    contexts = np.arange((model.n_classes + 1) ** len(LEVELS))
    weights = model.rows(contexts)
    assert (weights >= 1).all() and (weights == np.round(weights)).all()
    assert (weights.sum(axis=1) <= 2 ** (SCALE_BITS + 1)).all()
    p_max = (weights / weights.sum(axis=1, keepdims=True)).max()
    slack = 2 * len(LEVELS) * model.n_codes * 2.0 ** -SCALE_BITS
    assert p_max <= model.max_probability() + slack


def test_counts_follow_the_training_grids():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, (30, 4, 5))
    model = ContextModel.fit(codes, np.arange(8) % 3, 3)
    for level in range(len(LEVELS)):
        assert model.counts[model.counts[:, 0] == level, 3].sum() == codes.size
    overall = np.bincount(codes.ravel(), minlength=8)
    level0 = model.counts[model.counts[:, 0] == 0]
    np.testing.assert_array_equal(np.bincount(level0[:, 2], weights=level0[:, 3], minlength=8),
                                  overall)


def test_probabilities_follow_the_context():
    # After a code of class 0 comes code 1, after class 1 comes code 0: the model learns it.
    codes = np.tile(np.array([[0, 1, 0, 1, 0, 1]]), (200, 1))[:, None, :]
    model = ContextModel.fit(codes, np.array([0, 1, 0, 1]), 2)
    after_zero = model.rows(model.contexts(codes)[:1, 0, 1])[0]
    assert after_zero[1] / after_zero.sum() > 0.99
    assert model.ideal_bits(codes) < 0.05 * codes.size


def test_golden_bytes():
    """The payload of fixed codes under a fixed model: a coder or model change shows here."""
    model = _model(2)
    codes = np.arange(24).reshape(2, 3, 4) * 5 % 16
    assert encode_codes(codes, model).hex() == GOLDEN


GOLDEN = "2fbea9eb67f3d99dd2e18bf63c66781abf41133a11cb0c687178bec787a15d6f"


def test_invalid_models_are_refused():
    model = _model(0)
    with pytest.raises(ValueError, match="sorted"):
        ContextModel(model.classes, model.counts[::-1], model.n_classes)
    with pytest.raises(ValueError, match="classes"):
        ContextModel(model.classes + 10, model.counts, model.n_classes)
    bad = model.counts.copy()
    bad[0, 3] = 0
    with pytest.raises(ValueError, match="count >= 1"):
        ContextModel(model.classes, bad, model.n_classes)
    for n_classes in (0, 10**9):
        with pytest.raises(ValueError, match="n_classes"):
            ContextModel(model.classes, model.counts, n_classes)
    bad = model.counts.copy()
    bad[:, 3] = 2**37
    with pytest.raises(ValueError, match="exact"):
        ContextModel(model.classes, bad, model.n_classes)


def test_no_code_is_ever_free():
    """Even a model that has only seen one code leaves every other code some mass."""
    model = ContextModel.fit(np.zeros((1000, 4, 4), dtype=np.int64), np.arange(8) % 2, 2)
    weights = model.rows(np.arange(27))
    p = weights / weights.sum(axis=1, keepdims=True)
    assert p.max() <= 4096 / 4097 + 1e-12 and model.max_probability() <= 4096 / 4097


def test_a_garbage_payload_is_a_corrupt_blob_error_or_a_valid_code():
    model = _model(0)
    for seed in range(50):
        payload = np.random.default_rng(seed).bytes(seed % 9)
        try:
            codes = decode_codes(payload, (2, 3, 3), model)
        except CorruptBlobError:
            continue
        assert encode_codes(codes, model) == payload


# ------------------------------------------------------------- choosing codes
@settings(max_examples=40)
@given(seed=st.integers(0, 3), contexts=arrays(np.int64, 50, elements=st.integers(0, 124)),
       codes=arrays(np.int64, 50, elements=st.integers(0, 15)))
def test_code_bits_match_the_exact_rows_to_about_1e_4_bits(seed, contexts, codes):
    model = _model(seed)
    weights = model.rows(contexts)
    exact = np.log2(weights.sum(axis=1)) - np.log2(weights[np.arange(len(codes)), codes])
    priced = model.code_bits(contexts, codes)
    clipped = weights.max(axis=1) == CAP * (weights.sum(axis=1) - weights.max(axis=1))
    np.testing.assert_allclose(priced[~clipped], exact[~clipped], atol=2e-4)
    assert (priced[clipped] >= exact[clipped] - 2e-4).all()   # rows CAP shrank


def _candidates(seed: int, shape=(6, 3, 4), m: int = 5):
    rng = np.random.default_rng(seed)
    codes = np.argsort(rng.random((*shape, 16)), axis=-1)[..., :m]
    return np.sort(rng.random((*shape, m)), axis=-1), codes


def test_rate_weight_zero_takes_the_nearest_codes():
    distances, candidates = _candidates(0)
    np.testing.assert_array_equal(choose_codes(distances, candidates, _model(0), 0.0),
                                  candidates[..., 0])


def test_a_heavy_rate_weight_takes_the_cheapest_candidate_in_context():
    model = _model(2)
    distances, candidates = _candidates(1)
    chosen = choose_codes(distances, candidates, model, 1e6)
    contexts = model.contexts(chosen)           # the contexts the raster order saw
    bits = model.code_bits(contexts[..., None], candidates)
    np.testing.assert_array_equal(
        chosen, np.take_along_axis(candidates, bits.argmin(axis=-1)[..., None], -1)[..., 0])


@settings(max_examples=30)
@given(seed=st.integers(0, 50), weight=st.floats(0.0, 10.0))
def test_chosen_codes_cost_no_more_in_distance_plus_weighted_bits_than_the_nearest(seed, weight):
    """Greedy, but never worse than the nearest codes position by position given its past."""
    model = _model(seed % 4)
    distances, candidates = _candidates(seed)
    chosen = choose_codes(distances, candidates, model, weight)
    contexts = model.contexts(chosen)
    picked = (candidates == chosen[..., None]).argmax(axis=-1)
    cost = lambda rank: (np.take_along_axis(distances, rank[..., None], -1)[..., 0]  # noqa: E731
                         + weight * model.code_bits(contexts, np.take_along_axis(
                             candidates, rank[..., None], -1)[..., 0]))
    assert (cost(picked) <= cost(np.zeros_like(picked)) + 1e-12).all()
