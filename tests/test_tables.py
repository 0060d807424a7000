"""Real-world tables: categorical columns, missing values and explanations (issue 15).

The planted-anomaly table is generated with known structure: two latent
factors drive four numeric columns and two categorical ones, so a category
that contradicts a row's numbers is as detectable as a shifted number.
"""

import decimal
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from vaeanom import OnnxModel, VAEDetector, cli
from vaeanom.export import read_metadata, triton_config
from vaeanom.tables import TableSchema

#: the defaults, as a user gets them (the explanation floor is a promise about those)
TABLE = dict(random_state=0)
#: a smaller model for the tests that only need a working fit
QUICK = dict(random_state=0, hidden_dims=(32, 16), latent_dim=4, n_score_samples=8)
LEVELS = np.array(["low", "mid", "high"])


def generated_table(n: int, seed: int) -> pd.DataFrame:
    """Four numeric columns and two categorical ones, all driven by two latent factors."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    weights = np.array([[1.0, 0.5], [-0.7, 1.0], [0.3, -1.0], [1.0, 1.0]])
    numbers = z @ weights.T + 0.15 * rng.normal(size=(n, 4))
    frame = pd.DataFrame(numbers, columns=["n0", "n1", "n2", "n3"])
    frame["level"] = LEVELS[np.digitize(z[:, 0], [-0.5, 0.5])]
    frame["side"] = pd.Categorical(np.where(z[:, 1] > 0, "right", "left"))
    return frame


def planted(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, list[str]]:
    """One anomaly per row in a known column: a 5-sd shift, or a contradicting category."""
    rng = np.random.default_rng(seed)
    out, columns = frame.copy(), []
    for i, row in enumerate(out.index):
        column = rng.choice(["n0", "n1", "n2", "n3", "level", "side"])
        if column == "level":
            out.loc[row, column] = "high" if out.loc[row, column] == "low" else "low"
        elif column == "side":
            out.loc[row, column] = "left" if out.loc[row, column] == "right" else "right"
        else:
            out.loc[row, column] += 5.0 * frame[column].std() * rng.choice([-1, 1])
        columns.append(column)
    return out, columns


@pytest.fixture(scope="module")
def table_model():
    train = generated_table(600, seed=0)
    return VAEDetector(**TABLE).fit(train), train


def test_planted_anomalies_are_explained_by_their_column(table_model):
    det, _ = table_model
    test, columns = planted(generated_table(120, seed=1), seed=2)
    top = det.explain(test).idxmax(axis=1)
    hit = (top.to_numpy() == np.asarray(columns)).mean()
    categorical = np.isin(columns, ["level", "side"])
    assert categorical.sum() >= 30  # both kinds are tested, not just numeric shifts
    assert hit >= 0.95, f"top-1 is the planted column for {hit:.1%} of rows"


def test_mixed_table_detects_shifts_and_contradicting_categories(table_model):
    det, _ = table_model
    clean = generated_table(200, seed=3)
    bad, columns = planted(clean, seed=4)
    numeric = ~np.isin(columns, ["level", "side"])
    normal, anomalous = det.score_samples(clean), det.score_samples(bad)
    y = np.r_[np.zeros(len(clean)), np.ones(numeric.sum())]
    assert roc_auc_score(y, -np.r_[normal, anomalous[numeric]]) > 0.99
    lowered = (anomalous < normal)[~numeric].mean()   # the same row, one category swapped
    assert lowered > 0.9, f"a swapped category lowered the score of {lowered:.0%} of rows"


def test_an_unseen_category_is_an_answer_and_makes_the_row_unusual(table_model):
    det, train = table_model
    rows = train.iloc[:20].copy()
    seen = det.score_samples(rows)
    rows["level"] = "never seen"
    unseen = det.score_samples(rows)
    assert np.isfinite(unseen).all() and (unseen < seen).all()
    assert (det.explain(rows).idxmax(axis=1) == "level").all()
    np.testing.assert_array_equal(unseen, det.score_samples(rows))   # deterministic


def test_integer_codes_keep_their_categories_when_a_hole_turns_them_float():
    """Fitted on codes 1, 2, 3 as objects, scored on the same codes as floats (what a
    column of integers becomes in pandas once it holds a NaN): the same categories."""
    train = generated_table(60, seed=2)
    train["code"] = pd.Series(np.digitize(train["n3"], [-1, 1]) + 1, dtype=object)
    det = VAEDetector(**QUICK).fit(train)
    rows = train.iloc[:10]
    as_float = rows.assign(code=rows["code"].astype(float))
    np.testing.assert_array_equal(det.score_samples(as_float), det.score_samples(rows))
    floats = train.assign(code=train["code"].astype(float).astype(object))   # fit saw 1.0 ...
    det = VAEDetector(**QUICK).fit(floats)
    np.testing.assert_array_equal(det.score_samples(rows.assign(code=rows["code"].astype(int))),
                                  det.score_samples(floats.iloc[:10]))    # ... scored as 1


def test_an_identifier_column_is_named_in_a_warning_at_fit():
    """A text column of IDs would make every new row an outlier (each ID is unseen):
    fit says so, and a column of a few categories stays quiet."""
    train = generated_table(60, seed=3)
    with pytest.warns(UserWarning, match=r"'customer' has 60 distinct values in 60 rows.*drop"):
        VAEDetector(**QUICK).fit(train.assign(customer=[f"c{i}" for i in range(60)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VAEDetector(**QUICK).fit(train)


def test_mixed_tables_keep_the_estimator_contract(table_model, tmp_path):
    det, train = table_model
    assert det.categories_[4] == ["high", "low", "mid"]
    assert det.categories_[5] == ["left", "right"] and det.categories_[0] is None
    assert list(det.feature_names_in_) == list(train.columns)
    frame = det.score_frame(train.iloc[:5], explain=2)
    assert list(frame.index) == list(train.index[:5]) and "feature_2" in frame
    det.save(tmp_path / "m.safetensors")
    loaded = VAEDetector.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.score_samples(train), det.score_samples(train))
    with pytest.raises(ValueError, match="Feature names|order"):
        det.score_samples(train[train.columns[::-1]])
    with pytest.raises(ValueError, match="pass a DataFrame"):
        det.score_samples(train.select_dtypes("number").to_numpy())
    again = clone(det).fit(train)
    np.testing.assert_array_equal(again.score_samples(train), det.score_samples(train))


def test_decode_and_sample_give_tables_with_categories(table_model):
    det, train = table_model
    rebuilt = det.reconstruct(train.iloc[:50])
    assert isinstance(rebuilt, pd.DataFrame) and list(rebuilt.columns) == list(train.columns)
    assert set(rebuilt["level"]) <= set(LEVELS)
    assert (rebuilt["side"] == train["side"].iloc[:50].to_numpy()).mean() > 0.8
    drawn = det.sample(5, random_state=0)
    assert drawn.shape == (5, 6) and set(drawn["side"]) <= {"left", "right"}


def typed_table(n: int = 120) -> pd.DataFrame:
    """Categorical columns whose categories are not plain sorted text."""
    frame = generated_table(n, seed=4)
    band = np.digitize(frame["n0"], [-0.5, 0.5])
    frame["level"] = pd.Categorical(LEVELS[band], categories=["low", "mid", "high"], ordered=True)
    frame["code"] = pd.Categorical(np.array([1, 2, 10])[band])
    frame["mixed"] = pd.Series(np.array(["none", 2, 10], dtype=object)[band], dtype=object)
    return frame


def test_decoded_categories_come_back_as_fit_saw_them(tmp_path):
    """Numbers stay numbers and a category column keeps its order (1, 2, 10, not "1",
    "10", "2"; low < mid < high), through save/load and ONNX. (An object column of
    numbers only is a numeric column: see test_an_object_column_of_numbers...)"""
    train = typed_table()
    det = VAEDetector(**QUICK, epochs=5).fit(train)
    rebuilt = det.reconstruct(train.iloc[:30])
    dtypes = {name: rebuilt[name].dtype for name in ("level", "code", "mixed", "side")}
    assert dtypes["level"] == pd.CategoricalDtype(["low", "mid", "high"], ordered=True)
    assert dtypes["code"] == pd.CategoricalDtype([1, 2, 10])
    assert list(dtypes["mixed"].categories) == [10, 2, "none"]     # as text: "10" < "2"
    assert dtypes["side"] == pd.CategoricalDtype(["left", "right"])
    schema = TableSchema.learn(train)     # codes and back: the very values, in their dtype
    again = schema.decode(schema.encode(train), train.columns, train.index)
    for name in ("level", "code", "side"):
        pd.testing.assert_series_equal(again[name], train[name])
    assert list(again["mixed"]) == list(train["mixed"])
    # decoded rows are rows the model reads with the categories it knows
    np.testing.assert_array_equal(det.score_samples(rebuilt),
                                  det.score_samples(rebuilt.astype(object)))
    det.save(tmp_path / "m.safetensors")
    loaded = VAEDetector.load(tmp_path / "m.safetensors")
    pd.testing.assert_frame_equal(loaded.reconstruct(train.iloc[:30]), rebuilt)
    codes = det.encode(train.iloc[:30])
    decoded = OnnxModel(det.export_onnx(tmp_path / "decoder.onnx", "decoder")).decode(codes)
    for name in dtypes:
        assert decoded[name].dtype == dtypes[name]
    drawn = det.sample(20, random_state=0)
    assert drawn["code"].dtype == dtypes["code"] and drawn["level"].cat.ordered


def _saved_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}


def test_a_model_saved_without_levels_decodes_categories_as_text(tmp_path):
    """Files written before the levels were kept (format 2) still load, and decode as
    they did; a file with levels is format 3, which older vaeanom refuses as newer."""
    train = typed_table()
    det = VAEDetector(**QUICK, epochs=2).fit(train)
    det.save(tmp_path / "new.safetensors")
    assert _saved_metadata(tmp_path / "new.safetensors")[0]["format_version"] == "3"
    del det.category_levels_
    det.save(tmp_path / "old.safetensors")
    assert _saved_metadata(tmp_path / "old.safetensors")[0]["format_version"] == "2"
    rebuilt = VAEDetector.load(tmp_path / "old.safetensors").reconstruct(train.iloc[:5])
    assert list(rebuilt["code"].cat.categories) == ["1", "10", "2"]
    assert list(rebuilt["level"].cat.categories) == ["high", "low", "mid"]


def test_levels_that_do_not_match_a_files_categories_are_refused_on_load(tmp_path):
    import json

    from safetensors.torch import save_file

    det = VAEDetector(**QUICK, epochs=2).fit(typed_table())
    det.save(tmp_path / "m.safetensors")
    metadata, tensors = _saved_metadata(tmp_path / "m.safetensors")
    fitted = json.loads(metadata["fitted"])
    fitted["category_levels_"][-1]["values"] = ["left", "middle"]
    metadata = {**metadata, "fitted": json.dumps(fitted), "format_version": "1"}
    del metadata["sha256"]        # unsealed, as version 1 was: the contents are checked
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match="category_levels_ does not match categories_"):
        VAEDetector.load(tmp_path / "bad.safetensors")


def test_categories_that_are_equal_but_spelled_apart_decode_as_text():
    """True, 1 and 1.0 are one value to pandas but three categories to fit (by their
    text): they come back as their texts. numpy's scalars come back as numbers."""
    frame = pd.DataFrame({"a": pd.Series([True, 1, 1.0, "x"] * 5, dtype=object),
                          "b": pd.Series([np.int64(3), np.int64(40), "y", "y"] * 5,
                                         dtype=object)})
    schema = TableSchema.learn(frame)
    assert schema.levels[0] == {"values": ["1", "1.0", "True", "x"], "ordered": False}
    assert schema.levels[1]["values"] == [3, 40, "y"]
    decoded = schema.decode(schema.encode(frame), frame.columns)
    assert list(decoded["a"]) == ["True", "1", "1.0", "x"] * 5
    assert list(decoded["b"]) == [3, 40, "y", "y"] * 5
    with pytest.raises(ValueError, match="levels"):
        TableSchema.from_json([["1", "True"]], [{"values": [1, True], "ordered": False}])


@pytest.mark.parametrize("levels", [
    [None, {"values": ["b", "a"], "ordered": False}],       # a numeric column with levels
    [None],                                                 # one entry short
    [{"values": ["a"], "ordered": False}, None],            # not the categories fit saw
    [{"values": ["a", "b"], "ordered": "yes"}, None],
    [{"values": ["a", ["b"]], "ordered": False}, None],     # not a JSON scalar
    [{"values": ["a", "b"], "ordered": False, "code": 1}, None],
])
def test_levels_that_do_not_match_the_categories_are_refused(levels):
    assert TableSchema.from_json([["a", "b"], None],
                                 [{"values": ["b", "a"], "ordered": True}, None]).levels
    with pytest.raises(ValueError, match="levels"):
        TableSchema.from_json([["a", "b"], None], levels)


def test_holes_of_every_kind_are_scored_without_imputation(table_model):
    det, train = table_model
    rows = train.iloc[:6].copy().astype({"level": object})
    rows.loc[rows.index[0], "n0"] = np.nan
    rows.loc[rows.index[1], "level"] = None
    rows.loc[rows.index[2], "side"] = np.nan
    rows["n1"] = rows["n1"].astype("Float64")
    rows.loc[rows.index[3], "n1"] = pd.NA
    scores = det.score_samples(rows)
    assert np.isfinite(scores).all()
    explained = det.explain(rows)
    assert np.isnan(explained.iloc[0]["n0"]) and np.isnan(explained.iloc[1]["level"])
    assert explained.iloc[4].notna().all()
    rows.loc[rows.index[5], :] = None
    with pytest.raises(ValueError, match=r"row\(s\) labelled \[5\].*every entry missing"):
        det.score_samples(rows)
    with pytest.raises(ValueError, match=r"row\(s\) labelled \['p5'\].*every entry missing"):
        det.score_samples(rows.set_axis([f"p{i}" for i in range(len(rows))]))   # by label
    rows = train.iloc[:2].copy()
    rows.loc[rows.index[0], "n2"] = np.inf
    with pytest.raises(ValueError, match="infinity in column.*'n2'"):
        det.score_samples(rows)


@pytest.mark.parametrize("column, message", [
    (pd.Series(pd.date_range("2020-01-01", periods=40)), r"'t' holds datetime64.*dt.day_of_week"),
    (pd.Series(pd.to_timedelta(np.arange(40), unit="s")),
     r"'t' holds timedelta64.*dt.total_seconds\(\)"),
    (pd.Series(np.ones(40) * 1j), r"'t' holds complex numbers"),
    (pd.Series(np.full(40, np.nan)), r"no observed value in column 't'.*drop it before fit"),
    (pd.Series(pd.period_range("2020-01", periods=40, freq="M")), r"'t' holds period\[M\]"),
    (pd.Series(pd.date_range("2020-01-01", periods=40)).dt.date,
     r"'t' holds date values.*t = pd.to_datetime\(X\['t'\]\)"),
    (pd.Series(pd.date_range("2020-01-01", periods=40, freq="h")).dt.time,
     r"'t' holds time values.*3600 \* t.hour \+ 60 \* t.minute \+ t.second"),
    (pd.Series(np.ones(40) * 1j, dtype=object), r"'t' holds complex numbers"),
])
def test_columns_it_cannot_model_are_refused_by_name_at_fit(column, message):
    """Dates, durations, complex numbers and empty columns would otherwise be cast,
    silently truncated or fail deep in pandas; each gets a named error and a fix."""
    train = generated_table(40, seed=1)
    for frame in (train.assign(t=column.to_numpy()),                       # mixed table
                  train[["n0", "n1"]].assign(t=column.to_numpy())):       # numbers only
        with pytest.raises(ValueError, match=message):
            VAEDetector(**QUICK).fit(frame)


def test_a_pyarrow_duration_column_is_refused_as_a_duration():
    pytest.importorskip("pyarrow")
    train = generated_table(40, seed=1)
    seconds = pd.Series(pd.to_timedelta(np.arange(40), unit="s")).astype("duration[ns][pyarrow]")
    with pytest.raises(ValueError, match=r"'t' holds duration.*dt.total_seconds"):
        VAEDetector(**QUICK).fit(train.assign(t=seconds))


def test_the_fixes_the_time_errors_suggest_run():
    """Each refusal's example turns the column into numbers as written (for dates held as
    objects, .dt needs pd.to_datetime first; a time of day has no day of the week)."""
    import datetime
    import re

    pa = pytest.importorskip("pyarrow")
    days = pd.Series(pd.date_range("2020-01-01", periods=40)).dt.date
    columns = {"dates": days, "times": pd.Series([datetime.time(h % 24, 30) for h in range(40)]),
               "arrow dates": days.astype(pd.ArrowDtype(pa.date32())),
               "arrow times": pd.Series([datetime.time(h % 24, 30) for h in range(40)],
                                        dtype=pd.ArrowDtype(pa.time64("us")))}
    for name, column in columns.items():
        X = pd.DataFrame({"n0": np.arange(40.0), "t": column})
        with pytest.raises(ValueError) as refused:
            VAEDetector(**QUICK).fit(X)
        example = re.search(r"e\.g\. (.*?)(?: \(seconds since midnight\))?, or drop",
                            str(refused.value)).group(1)
        namespace = {"X": X, "pd": pd}
        for statement in example.replace("; then ", "\n").split(" or "):
            statement = statement if statement.startswith("t = ") else f"out = {statement}"
            exec(statement, namespace)                                   # noqa: S102
        assert pd.api.types.is_numeric_dtype(namespace["out"]), name


def test_pyarrow_decimals_with_holes_are_numbers():
    """What read_parquet or read_sql give with dtype_backend="pyarrow" for a SQL NUMERIC
    column with NULLs: its holes were pd.NA, which no float() takes."""
    pa = pytest.importorskip("pyarrow")
    train = generated_table(60, seed=1)[["n0", "n1"]]
    train.loc[train.index[::7], "n1"] = np.nan
    decimals = train.assign(n1=train["n1"].round(2).map(
        lambda v: None if pd.isna(v) else decimal.Decimal(f"{v:.2f}")).astype(
        pd.ArrowDtype(pa.decimal128(9, 2))))
    floats = train.assign(n1=train["n1"].round(2))
    det = VAEDetector(**QUICK).fit(decimals)
    expected = VAEDetector(**QUICK).fit(floats).score_samples(floats)
    np.testing.assert_array_equal(det.score_samples(decimals), expected)
    np.testing.assert_array_equal(det.score_samples(floats), expected)


@pytest.mark.parametrize("convert", [
    lambda column: column.astype(object).where(column.notna(), None),     # NaN -> None
    lambda column: column.astype(object).where(column.notna(), pd.NA),    # NaN -> pd.NA
    lambda column: column.map(lambda v: None if pd.isna(v) else decimal.Decimal(str(v))),
])
def test_an_object_column_of_numbers_is_fitted_as_numbers(convert):
    """JSON, database loads and the NaN -> None idiom give object columns of numbers (SQL
    NUMERIC: Decimal); modelled as categories, 7 and 7.0 were two of them and 7.5 unseen."""
    train = generated_table(60, seed=1)
    as_objects = train.assign(n0=convert(train["n0"]))
    det = VAEDetector(**QUICK).fit(as_objects)
    assert det.categories_[list(train.columns).index("n0")] is None
    expected = VAEDetector(**QUICK).fit(train).score_samples(train)
    np.testing.assert_array_equal(det.score_samples(train), expected)
    np.testing.assert_array_equal(det.score_samples(as_objects), expected)


def test_a_row_passed_as_a_series_is_told_how_to_pass_it(table_model, tmp_path):
    """The estimator and its export say the same, and so for an empty frame."""
    det, train = table_model
    exported = OnnxModel(det.export_onnx(tmp_path / "t.onnx"))
    for model in (det, exported):
        with pytest.raises(ValueError, match=r"Series.*df.loc\[\[i\]\]"):
            model.score_samples(train.loc[3])
        assert np.isfinite(model.score_samples(train.loc[[3]])).all()
    with pytest.raises(ValueError, match="0 rows"):
        exported.score_samples(train.iloc[:0])


def test_a_column_name_used_twice_is_refused():
    train = generated_table(40, seed=1)
    with pytest.raises(ValueError, match="more than one column named 'n0'"):
        VAEDetector(**QUICK).fit(pd.concat([train, train[["n0"]]], axis=1))


def test_scores_stay_comparable_between_rows_with_and_without_holes(table_model):
    """A hole removes evidence, not likelihood: scores keep their scale (log-likelihood
    per observed entry times d), so holed normal rows stay inside the normal range."""
    det, train = table_model
    clean = generated_table(300, seed=5)
    holed = clean.copy()
    rng = np.random.default_rng(6)
    for i, row in enumerate(holed.index):
        holed.loc[row, rng.choice(holed.columns)] = np.nan
    complete, missing = det.score_samples(clean), det.score_samples(holed)
    spread = np.subtract(*np.percentile(complete, [75, 25]))
    assert abs(np.median(missing) - np.median(complete)) < 0.5 * spread
    assert (det.predict(holed) == -1).mean() < 0.25


def test_numeric_holes_at_fit_and_at_score_time(cancer):
    X, y = cancer
    rng = np.random.default_rng(0)
    holed = X.mask(rng.random(X.shape) < 0.1)
    det = VAEDetector(**QUICK).fit(holed[y == 1].to_numpy())      # numpy with NaN
    assert det.categories_ == [None] * X.shape[1]
    scores = det.score_samples(holed.to_numpy())
    assert np.isfinite(scores).all() and roc_auc_score(y == 0, -scores) > 0.9
    plain = VAEDetector(**QUICK).fit(X[y == 1])                    # complete at fit
    assert not hasattr(plain, "categories_")
    complete = plain.score_samples(X)
    assert roc_auc_score(y == 0, -plain.score_samples(holed)) > roc_auc_score(y == 0, -complete) - 0.05


def test_the_cli_fits_and_explains_a_csv_with_strings_and_empty_fields(table_model, tmp_path):
    _, train = table_model
    data = train.iloc[:300].copy().astype({"level": object})
    data.loc[data.index[::10], "n0"] = np.nan
    data.loc[data.index[::7], "level"] = None
    data.to_csv(tmp_path / "t.csv", index=False)
    cli.main(["fit", str(tmp_path / "t.csv"), "--model", str(tmp_path / "m.safetensors"),
              "--set", "epochs=20", "--set", "random_state=0"])
    cli.main(["score", str(tmp_path / "t.csv"), "--model", str(tmp_path / "m.safetensors"),
              "--output", str(tmp_path / "s.csv"), "--explain", "3"])
    scored = pd.read_csv(tmp_path / "s.csv")
    assert len(scored) == 300 and {"feature_1", "feature_3", "contribution_3"} <= set(scored)
    assert set(scored["feature_1"]) <= set(train.columns)
    cli.main(["export", "--model", str(tmp_path / "m.safetensors"), str(tmp_path / "m.onnx")])
    cli.main(["score", str(tmp_path / "t.csv"), "--onnx", str(tmp_path / "m.onnx"),
              "--output", str(tmp_path / "o.csv")])
    np.testing.assert_allclose(pd.read_csv(tmp_path / "o.csv")["score"], scored["score"],
                               rtol=1e-5, atol=1e-5 * scored["score"].abs().max())


# ------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def table_exports(table_model, tmp_path_factory):
    det, _ = table_model
    folder = tmp_path_factory.mktemp("table-onnx")
    return {part: det.export_onnx(folder / f"{part}.onnx", part)
            for part in ("scorer", "encoder", "decoder")}


def awkward_rows(train: pd.DataFrame) -> pd.DataFrame:
    """Rows with a hole in each kind of column, an unseen category and a lone number."""
    rows = train.iloc[:40].copy().astype({"level": object})
    rows.loc[rows.index[0], "n0"] = np.nan
    rows.loc[rows.index[1], "level"] = None
    rows.loc[rows.index[2], "side"] = np.nan
    rows.loc[rows.index[3], "level"] = "never seen"
    rows.loc[rows.index[4], ["n0", "n1", "n2", "level", "side"]] = None
    return rows


def test_onnx_table_parts_match_the_estimator(table_model, table_exports):
    """Strings become codes in OnnxModel, holes become the mask: the scorer, encoder and
    decoder give what the estimator gives, whatever the batch size."""
    det, train = table_model
    rows = awkward_rows(train)
    expected = det.score_samples(rows)
    scores = OnnxModel(table_exports["scorer"]).score_samples(rows)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    one_by_one = OnnxModel(table_exports["scorer"], batch_size=1).score_samples(rows)
    np.testing.assert_array_equal(one_by_one, scores)
    codes = det.encode(rows)
    np.testing.assert_allclose(OnnxModel(table_exports["encoder"]).encode(rows), codes,
                               rtol=1e-5, atol=1e-5)
    decoded = OnnxModel(table_exports["decoder"]).decode(codes)
    expected_rows = det.decode(codes)
    assert isinstance(decoded, pd.DataFrame) and list(decoded.columns) == list(train.columns)
    pd.testing.assert_frame_equal(decoded, expected_rows, rtol=1e-4, atol=1e-4, check_dtype=False)
    latents = pd.DataFrame(codes, index=rows.index, columns=det.get_feature_names_out())
    assert OnnxModel(table_exports["decoder"]).decode(latents).index.equals(rows.index)
    assert det.decode(latents).index.equals(rows.index)


def test_an_explaining_table_scorer_gives_explain_with_its_holes(table_model, tmp_path):
    """Leave-one-out explanations in the graph: each entry equals the estimator's, a hole
    stays NaN, and the scores are those of the plain scorer."""
    det, train = table_model
    rows = awkward_rows(train)
    model = OnnxModel(det.export_onnx(tmp_path / "explaining.onnx", explain=True))
    expected = det.explain(rows)
    got = model.explain(rows)
    assert list(got.columns) == list(train.columns) and got.index.equals(rows.index)
    np.testing.assert_array_equal(np.isnan(got.to_numpy()), np.isnan(expected.to_numpy()))
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-4)
    scores = det.score_samples(rows)
    np.testing.assert_allclose(model.score_samples(rows), scores, rtol=1e-5,
                               atol=1e-5 * np.abs(scores).max())


def test_a_bare_onnxruntime_session_takes_numbers_codes_and_a_mask(table_model,
                                                                   table_exports):
    """The documented inputs: numeric columns as float32, categorical ones as int64 codes
    into the categories in the metadata (anything else: unseen), and the observed mask."""
    det, train = table_model
    rows = awkward_rows(train)
    categories = read_metadata(table_exports["scorer"])["preprocessing"]["categories"]
    numeric = [c for c, known in zip(rows.columns, categories) if known is None]
    codes = np.stack([rows[c].astype(object).map(dict(zip(known, range(len(known))))).fillna(-1)
                      for c, known in zip(rows.columns, categories) if known is not None], 1)
    session = ort.InferenceSession(table_exports["scorer"])
    assert [i.name for i in session.get_inputs()] == ["numbers", "codes", "observed"]
    score, = session.run(["score"], {
        "numbers": rows[numeric].to_numpy(np.float32),      # NaN where missing is fine
        "codes": codes.astype(np.int64),                      # -1: missing or unseen
        "observed": rows.notna().to_numpy()})
    expected = det.score_samples(rows)
    np.testing.assert_allclose(score, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    config = triton_config("t", onnx.load(table_exports["scorer"]), 64)
    assert 'name: "codes"' in config and "TYPE_BOOL" in config and "TYPE_INT64" in config


def test_a_nan_number_marked_observed_is_refused_not_taken_for_a_hole(table_model,
                                                                       table_exports):
    """The server's path: tensors as a client sends them. NaN where ``observed`` says
    present was scored as a hole, against what the client said."""
    det, train = table_model
    model = OnnxModel(table_exports["scorer"])
    feeds = model._table_feeds(train.iloc[:2])
    numbers = feeds["numbers"].copy()
    numbers[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"'numbers' holds NaN at row 1, column 0.*observed"):
        model.check_feeds({**feeds, "numbers": numbers})
    holed = feeds["observed"].copy()
    holed[1, model.table_schema.cardinalities.index(0)] = False   # the same entry, as a hole
    checked = model.check_feeds({**feeds, "numbers": numbers, "observed": holed})
    assert not checked["observed"][1].all()


def test_onnx_table_input_errors_are_named(table_model, table_exports):
    det, train = table_model
    model = OnnxModel(table_exports["scorer"])
    rows = train.iloc[:3].copy()
    rows.loc[rows.index[1], :] = None
    with pytest.raises(ValueError, match=r"row\(s\) labelled \[1\].*every entry missing"):
        model.score_samples(rows)
    with pytest.raises(ValueError, match=r"row\(s\) labelled \[1001\].*every entry missing"):
        model.score_samples(rows.set_axis([1000, 1001, 1002]))                  # by label
    with pytest.raises(ValueError, match="infinity in column 'n2'"):
        model.score_samples(train.iloc[:2].assign(n2=np.inf))
    with pytest.raises(ValueError, match="pass a DataFrame"):
        model.score_samples(train.select_dtypes("number").to_numpy())
    with pytest.raises(ValueError, match="another order"):
        model.score_samples(train[train.columns[::-1]])
    with pytest.raises(ValueError, match="numeric in fit"):
        model.score_samples(train.iloc[:2].assign(n0="text"))
    with pytest.raises(ValueError, match=r"'n0' holds datetime64.*dt.day_of_week"):
        model.score_samples(train.iloc[:2].assign(n0=pd.date_range("2020-01-01", periods=2)))


def test_numeric_tables_with_holes_export_and_complete_ones_say_so(cancer, tmp_path):
    """A model fitted with numeric holes takes numbers and a mask in its graph and scores
    holes as the estimator does; the export of one fitted on complete numbers takes
    complete rows (its fast ELBO has no mask) and says so."""
    X, y = cancer
    holed = X.mask(np.random.default_rng(0).random(X.shape) < 0.1)
    det = VAEDetector(**QUICK, epochs=5).fit(holed[y == 1])
    model = OnnxModel(det.export_onnx(tmp_path / "holed.onnx"))
    expected = det.score_samples(holed)
    for rows in (holed, holed.to_numpy()):
        np.testing.assert_allclose(model.score_samples(rows), expected, rtol=1e-5,
                                   atol=1e-5 * np.abs(expected).max())
    complete = VAEDetector(**QUICK, epochs=5).fit(X[y == 1])
    model = OnnxModel(complete.export_onnx(tmp_path / "complete.onnx"))
    with pytest.raises(ValueError, match="fitted on complete rows.*impute or drop"):
        model.score_samples(holed)


def test_bool_and_nullable_columns_among_numbers_score_alike_in_onnx(tmp_path):
    """A model fitted on numbers, bools and nullable integers: its export scores the very
    frame it was fitted on (to_numpy makes such a frame object), as the estimator does;
    and a bool column that a None turned object is a hole, not text."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "y": rng.normal(size=120)})
    frame["flag"] = frame["x"] > 0
    frame["count"] = pd.array(rng.integers(0, 3, 120), dtype="Int64")
    det = VAEDetector(**QUICK, epochs=5).fit(frame)
    model = OnnxModel(det.export_onnx(tmp_path / "flags.onnx"))
    expected = det.score_samples(frame)
    np.testing.assert_allclose(model.score_samples(frame), expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())
    holed = frame.head(4).astype({"flag": object})
    holed.loc[0, "flag"] = None
    assert np.isfinite(det.score_samples(holed)).all()
    np.testing.assert_array_equal(det.score_samples(holed.iloc[1:]), expected[1:4])
    text = frame.head(2).astype(object)          # every column object, one bad cell
    text.loc[0, "flag"] = "yes"
    for scorer in (det, model):
        with pytest.raises(ValueError, match="non-numeric column\\(s\\) 'flag', but.*fitted on "
                                             "numbers only.*refit.*conditional=False"):
            scorer.score_samples(text)
