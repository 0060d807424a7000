"""Scale-out scoring on real engines: a Dask LocalCluster of 2 worker processes and Spark
in local[2] mode. Scores must equal OnnxModel.score_samples bit for bit, row identity must
be kept, and no worker may import torch."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vaeanom import OnnxModel, VAEDetector
from vaeanom.distributed import score_dask, score_parquet, score_partition, score_spark

#: pyspark 4.3 warns that it does not yet "fully support" pandas 3; the tests below check
#: what it does with our frames
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas")

QUICK = dict(random_state=0, hidden_dims=(32, 16), latent_dim=4, n_score_samples=8, epochs=5)


@pytest.fixture(scope="module")
def scorer(cancer, tmp_path_factory):
    """A scorer fitted on a DataFrame (so it knows its column names; with explanations),
    and one on an array (without)."""
    X, y = cancer
    folder = tmp_path_factory.mktemp("distributed")
    named = VAEDetector(**QUICK).fit(X[y == 1]).export_onnx(folder / "named.onnx", explain=True)
    bare = VAEDetector(**QUICK).fit(X[y == 1].to_numpy()).export_onnx(folder / "bare.onnx")
    return named, bare


@pytest.fixture(scope="module")
def given(cancer, tmp_path_factory):
    """A conditional scorer that takes each row's label (exported with_label=True)."""
    X, y = cancer
    path = tmp_path_factory.mktemp("given") / "given.onnx"
    return VAEDetector(**QUICK, conditional=True).fit(X, DIAGNOSES[y]).export_onnx(
        path, with_label=True)


DIAGNOSES = np.array(["malignant", "benign"])


def _given_labels(out: pd.DataFrame, model_path, X: pd.DataFrame, labels) -> None:
    """``out``'s scores are OnnxModel's for X given ``labels``, bit for bit."""
    np.testing.assert_array_equal(out["score"], OnnxModel(model_path).score_samples(X, labels))


@pytest.fixture(scope="module")
def table(cancer):
    """The cancer rows with a key, a timestamp and a label column, on an index that is
    not 0..n-1."""
    X, y = cancer
    frame = X.assign(key=[f"id-{i}" for i in range(len(X))],
                     seen=pd.Timestamp("2026-11-28") + pd.to_timedelta(np.arange(len(X)), "min"),
                     diagnosis=DIAGNOSES[y])
    frame.index = pd.Index(np.arange(len(X)) * 3 + 100, name="row")
    return frame


def test_a_partition_keeps_its_rows_and_columns(scorer, table, cancer):
    named, bare = scorer
    out = score_partition(table, named)
    pd.testing.assert_frame_equal(out[table.columns], table)
    np.testing.assert_array_equal(out["score"], OnnxModel(named).score_samples(cancer[0]))
    model = OnnxModel(named)
    np.testing.assert_array_equal(out["is_outlier"], out["score"] < model.offset_)
    empty = score_partition(table.iloc[:0], named)
    assert list(empty.columns) == [*table.columns, "score", "is_outlier"] and len(empty) == 0
    columns = list(cancer[0].columns)
    np.testing.assert_array_equal(score_partition(table, bare, columns)["score"],
                                  OnnxModel(bare).score_samples(cancer[0].to_numpy()))


@pytest.mark.parametrize("dtype", ["Float64", "double[pyarrow]", "float32[pyarrow]"])
def test_nullable_and_pyarrow_columns_score_like_numpy_ones(scorer, cancer, dtype):
    """Such columns (``dtype_backend="pyarrow"``, Arrow batches) made to_numpy() an object
    array, which a scorer fitted on an array refused as not numeric."""
    named, bare = scorer
    X = cancer[0].iloc[:40]
    columns = list(X.columns)
    for model in (named, bare):
        np.testing.assert_array_equal(score_partition(X.astype(dtype), model, columns)["score"],
                                      score_partition(X.astype(dtype.split("[")[0].lower()),
                                                      model, columns)["score"])


def test_numpy_dtypes_are_taken_column_by_column():
    from vaeanom.tables import as_numpy_dtypes

    frame = pd.DataFrame([[0.5, 1, 2], [1.5, None, 3]], columns=["a", "a", "b"])
    frame = frame.astype({"b": "int64[pyarrow]"})
    frame.isetitem(1, frame.iloc[:, 1].astype("Int64"))
    out = as_numpy_dtypes(frame)
    assert [str(t) for t in out.dtypes] == ["float64", "float64", "int64"]
    np.testing.assert_array_equal(out.to_numpy(), [[0.5, 1, 2], [1.5, np.nan, 3]])


def test_an_image_scorer_takes_8_bit_pixels_in_any_integer_dtype(tmp_path):
    """uint8 pixels arrive as int64 (Parquet's default), int32 (Spark has no unsigned byte),
    Int64 or uint8[pyarrow]: all are bytes when every value is a whole number in 0..255."""
    from sklearn.datasets import load_digits

    images = (load_digits().images[:100] * 16).clip(0, 255).astype(np.uint8)
    path = VAEDetector(**QUICK).fit(images).export_onnx(tmp_path / "images.onnx")
    pixels, columns = pd.DataFrame(images[:8].reshape(8, -1)), list(range(64))
    expected = score_partition(pixels, path, columns)["score"]
    np.testing.assert_allclose(expected, OnnxModel(path).score_samples(images[:8]), rtol=1e-6)
    for dtype in ("int64", "int32", "Int64", "uint8[pyarrow]"):
        np.testing.assert_array_equal(score_partition(pixels.astype(dtype), path, columns)["score"],
                                      expected, err_msg=dtype)
    with pytest.raises(ValueError, match="pixels must be in"):
        score_partition(pixels.astype("int64") * 2, path, columns)


def _explained(frame: pd.DataFrame, model_path, X: pd.DataFrame, k: int) -> None:
    """``frame``'s appended columns are OnnxModel.score_frame(X, explain=k)'s, row for row."""
    expected = OnnxModel(model_path).score_frame(X, explain=k)
    appended = list(frame.columns[-len(expected.columns):])
    assert appended == list(expected.columns)
    for name in expected.columns:
        np.testing.assert_array_equal(frame[name].to_numpy(), expected[name].to_numpy())


def test_a_partition_carries_each_rows_top_features_when_asked(scorer, table, cancer):
    """explain=k appends feature_i and contribution_i as OnnxModel.score_frame ranks them;
    an empty partition has the same columns, a scorer without explanations is refused."""
    named, bare = scorer
    _explained(score_partition(table, named, explain=3), named, cancer[0], 3)
    empty = score_partition(table.iloc[:0], named, explain=2)
    assert list(empty.columns)[-4:] == ["feature_1", "contribution_1", "feature_2",
                                        "contribution_2"]
    full = score_partition(table, named, explain=2)      # an empty partition's dtypes too
    assert (empty.dtypes[-6:] == full.dtypes[-6:]).all(), (empty.dtypes, full.dtypes)
    assert len(score_partition(table, named, explain=99).columns) == len(table.columns) + 62
    with pytest.raises(ValueError, match="has no explanations; export the scorer with"):
        score_partition(table, bare, list(cancer[0].columns), explain=2)
    with pytest.raises(ValueError, match=r"already has column\(s\) \['feature_1'\]"):
        score_partition(table.assign(feature_1="x"), named, explain=1)


def test_a_partition_scores_each_row_given_its_label(scorer, given, table, cancer):
    """label= names the column of labels for a scorer exported with_label=True; it is
    required there and refused elsewhere, and cannot be one of the inputs."""
    named, _ = scorer
    _given_labels(score_partition(table, given, label="diagnosis"), given, cancer[0],
                  table["diagnosis"])
    assert len(score_partition(table.iloc[:0], given, label="diagnosis")) == 0
    with pytest.raises(ValueError, match="name the column of labels, label='COLUMN'"):
        score_partition(table, given)
    with pytest.raises(ValueError, match="takes none. Leave it out"):
        score_partition(table, named, label="diagnosis")
    with pytest.raises(ValueError, match="no label column 'kind'"):
        score_partition(table, given, label="kind")
    with pytest.raises(ValueError, match="'mean radius' is one of the model's inputs"):
        score_partition(table, given, label="mean radius")
    with pytest.raises(ValueError, match=r"never saw in fit: \['unknown'\]"):
        score_partition(table.assign(diagnosis="unknown"), given, label="diagnosis")


def test_integer_column_labels_are_found_by_label_or_as_strings(scorer, cancer):
    """pd.DataFrame(array) and dd.from_array label columns 0, 1, ...: an array model takes
    them as columns=[0, 1, ...] or ["0", "1", ...] (they were looked up as strings)."""
    _, bare = scorer
    numbered = pd.DataFrame(cancer[0].to_numpy())
    expected = OnnxModel(bare).score_samples(cancer[0].to_numpy())
    for columns in (list(range(30)), [str(i) for i in range(30)]):
        np.testing.assert_array_equal(score_partition(numbered, bare, columns)["score"], expected)


@pytest.mark.parametrize("case, message", [
    ("array model without columns", "pass columns="),
    ("a column missing", "has no column"),
    ("a score column already there", "already has column"),
    ("the encoder", "needs the scorer"),
    ("no model file", "no ONNX model at"),
    ("the model's names reordered", "own column names in another order"),
    ("a column named twice", "more than once"),
    ("a stream into a .csv name", "scores stream out as Parquet"),
])
def test_bad_calls_are_named(case, message, scorer, table, cancer, tmp_path):
    named, bare = scorer
    names = list(cancer[0].columns)
    calls = {
        "array model without columns": lambda: score_partition(table, bare),
        "a column missing": lambda: score_partition(table.drop(columns="mean radius"), named),
        "a score column already there": lambda: score_partition(table.assign(score=1.0), named),
        "the encoder": lambda: score_partition(table, VAEDetector(**QUICK).fit(
            cancer[0]).export_onnx(tmp_path / "encoder.onnx", "encoder")),
        "no model file": lambda: score_partition(table, tmp_path / "nope.onnx"),
        "the model's names reordered": lambda: score_partition(table, named, names[::-1]),
        "a column named twice": lambda: score_partition(table, named, [names[0], *names[:-1]]),
        "a stream into a .csv name": lambda: score_parquet(tmp_path / "in.parquet", named,
                                                           tmp_path / "scores.csv"),
    }
    error = FileNotFoundError if case == "no model file" else ValueError
    with pytest.raises(error, match=message):
        calls[case]()


def test_dask_local_cluster_scores_every_partition_like_onnx_model(scorer, given, table,
                                                                    cancer):
    dd = pytest.importorskip("dask.dataframe")   # in the dev extra: present in CI
    from distributed import Client, LocalCluster

    named, _ = scorer
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        ddf = dd.from_pandas(table, npartitions=5)
        scored = score_dask(ddf, named)
        assert scored.divisions == ddf.divisions
        out = scored.compute()
        assert out.index.equals(table.index)   # dask stores strings as pyarrow strings
        pd.testing.assert_frame_equal(out[table.columns], table, check_dtype=False)
        np.testing.assert_array_equal(out["score"], OnnxModel(named).score_samples(cancer[0]))
        _explained(score_dask(ddf, named, explain=2).compute(), named, cancer[0], 2)
        _given_labels(score_dask(ddf, given, label="diagnosis").compute(), given, cancer[0],
                      table["diagnosis"])
        assert client.run(lambda: "torch" in sys.modules) == {
            address: False for address in client.scheduler_info()["workers"]}


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")   # in the dev extra: present in CI
    from pyspark.sql import SparkSession

    before = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable   # the workers' Python: this environment's
    session = (SparkSession.builder.master("local[2]").appName("vaeanom-tests")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    yield session
    session.stop()
    if before is None:
        os.environ.pop("PYSPARK_PYTHON")
    else:
        os.environ["PYSPARK_PYTHON"] = before


def test_spark_local_scores_arrow_batches_like_onnx_model(spark, scorer, given, table, cancer):
    named, _ = scorer
    sdf = spark.createDataFrame(table.reset_index()).repartition(3)
    scored = score_spark(sdf, named)
    assert scored.columns == [*sdf.columns, "score", "is_outlier"]
    out = scored.toPandas().set_index("row").loc[table.index]
    np.testing.assert_array_equal(out["key"], table["key"])
    np.testing.assert_array_equal(out["score"], OnnxModel(named).score_samples(cancer[0]))
    explained = score_spark(sdf, named, explain=2)
    assert explained.schema["feature_1"].dataType.simpleString() == "string"
    _explained(explained.toPandas().set_index("row").loc[table.index], named, cancer[0], 2)
    labelled = score_spark(sdf, given, label="diagnosis").toPandas().set_index("row")
    _given_labels(labelled.loc[table.index], given, cancer[0], table["diagnosis"])

    def torch_in_worker(batches):   # nested: shipped by value, not by importing this module
        for _ in batches:
            yield pd.DataFrame({"torch": ["torch" in sys.modules]})

    # the job scores, then the same (reused) Python workers report what they imported
    seen = scored.mapInPandas(torch_in_worker, "torch boolean").toPandas()
    assert len(seen) and not seen["torch"].any()
    with pytest.raises(ValueError, match=r"already has column\(s\) \['Score'\].*ignores case"):
        score_spark(sdf.withColumnRenamed("key", "Score"), named)   # Spark: `score` ambiguous
    # input columns are found ignoring case too, as Spark finds them
    shouted = sdf.select(*(sdf[c].alias(c.upper()) for c in sdf.columns))
    out = score_spark(shouted, named).toPandas().set_index("ROW").loc[table.index]
    np.testing.assert_array_equal(out["score"], OnnxModel(named).score_samples(cancer[0]))


# -------------------------------------------------------------- streaming
def test_cli_streams_parquet_batch_by_batch_like_onnx_model(scorer, cancer, tmp_path):
    from vaeanom.cli import main

    named, _ = scorer
    X = cancer[0].set_index(pd.Index([f"r{i}" for i in range(len(cancer[0]))], name="rid"))
    X.to_parquet(tmp_path / "rows.parquet", row_group_size=50)
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(named),
                 "-o", str(tmp_path / "scores.parquet")]) == 0
    got = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(got, OnnxModel(named).score_frame(X))
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(named),   # streamed
                 "-o", str(tmp_path / "explained.parquet"), "--explain", "2"]) == 0
    got = pd.read_parquet(tmp_path / "explained.parquet")
    pd.testing.assert_frame_equal(got, OnnxModel(named).score_frame(X, explain=2),
                                  check_dtype=False)   # feature names: str or object dtype
    plain = cancer[0]                                     # a default index: the row number
    plain.to_parquet(tmp_path / "plain.parquet", row_group_size=64)
    assert score_parquet(tmp_path / "plain.parquet", named, tmp_path / "plain-scores.parquet",
                         batch_rows=100) == len(plain)
    got = pd.read_parquet(tmp_path / "plain-scores.parquet")
    assert got.index.tolist() == list(range(len(plain)))
    np.testing.assert_array_equal(got["score"], OnnxModel(named).score_samples(plain))


def test_a_key_column_streams_as_the_index(scorer, cancer, tmp_path):
    """--index-col turned streaming off (the file was loaded whole); now a key column,
    by name or position, is each batch's index, as the in-memory path gives it."""
    from vaeanom.cli import main

    named, _ = scorer
    keyed = cancer[0].assign(key=[f"k{i}" for i in range(len(cancer[0]))])
    keyed.to_parquet(tmp_path / "keyed.parquet", index=False, row_group_size=50)
    expected = OnnxModel(named).score_frame(keyed.set_index("key"))
    for index_col in ("key", str(keyed.shape[1] - 1)):
        assert main(["score", str(tmp_path / "keyed.parquet"), "--onnx", str(named),
                     "--index-col", index_col, "-o", str(tmp_path / "scores.parquet")]) == 0
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"), expected)
    with pytest.raises(ValueError, match="one of the model's input columns"):
        score_parquet(tmp_path / "keyed.parquet", named, tmp_path / "x.parquet",
                      index_col="mean radius")
    assert not (tmp_path / "x.parquet").exists()


def test_a_key_column_is_the_index_on_dask_too_and_an_array_model_skips_it(
        scorer, cancer, tmp_path):
    """--engine dask refused --index-col; and a model fitted on an array took a key
    column for one of its inputs by position."""
    from vaeanom.cli import main

    named, unnamed = scorer
    keyed = cancer[0].assign(key=[f"k{i}" for i in range(len(cancer[0]))])
    keyed = keyed[["key", *cancer[0].columns]]        # the key first: positions would shift
    keyed.to_parquet(tmp_path / "keyed.parquet", index=False, row_group_size=50)
    for onnx in (named, unnamed):
        expected = OnnxModel(onnx).score_frame(keyed.set_index("key"))
        assert main(["score", str(tmp_path / "keyed.parquet"), "--onnx", str(onnx),
                     "--index-col", "key", "-o", str(tmp_path / "dask.parquet"),
                     "--engine", "dask", "--workers", "1"]) == 0
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dask.parquet"), expected)
        assert main(["score", str(tmp_path / "keyed.parquet"), "--onnx", str(onnx),
                     "--index-col", "0", "-o", str(tmp_path / "stream.parquet")]) == 0
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "stream.parquet"), expected)
    with pytest.raises(ValueError, match="spark keeps every column.*leave out --index-col"):
        from vaeanom.cli import run_score
        run_score(None, tmp_path / "keyed.parquet", tmp_path / "o.parquet", onnx=named,
                  engine="spark", index_col="key")


def test_a_stream_that_fails_midway_leaves_the_old_output(scorer, cancer, tmp_path):
    named, _ = scorer
    X = cancer[0].copy()
    X.iloc[400, 3] = np.nan                               # a complete-data model refuses NaN
    X.to_parquet(tmp_path / "rows.parquet", row_group_size=100)
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"yesterday's scores")
    with pytest.raises(ValueError, match="NaN"):
        score_parquet(tmp_path / "rows.parquet", named, out, batch_rows=100)
    assert out.read_bytes() == b"yesterday's scores"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.parquet", "scores.parquet"]


def test_streams_keep_every_kind_of_index_and_take_array_models_by_position(scorer, cancer,
                                                                             tmp_path):
    from vaeanom.cli import main

    named, bare = scorer
    X = cancer[0]
    expected = OnnxModel(named).score_samples(X)
    cases = {"unnamed": X.set_index(pd.Index(np.arange(len(X)) * 2 + 7)),   # a stored column
             "sliced range": X.set_axis(pd.RangeIndex(5, 5 + 3 * len(X), 3))}  # metadata only
    for case, frame in cases.items():
        frame.to_parquet(tmp_path / f"{case}.parquet", row_group_size=100)
        score_parquet(tmp_path / f"{case}.parquet", named, tmp_path / f"{case}-out.parquet",
                      batch_rows=64)
        got = pd.read_parquet(tmp_path / f"{case}-out.parquet")
        assert got.index.tolist() == frame.index.tolist(), case
        np.testing.assert_array_equal(got["score"], expected)
    X.to_parquet(tmp_path / "rows.parquet")            # a model fitted on an array: by position
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(bare),
                 "-o", str(tmp_path / "bare.parquet")]) == 0
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "bare.parquet")["score"],
                                  OnnxModel(bare).score_samples(X.to_numpy()))


def test_dask_partitions_of_a_file_with_empty_row_groups_have_valid_divisions(cancer,
                                                                             tmp_path):
    """An empty row group at the end (as a writer that wrote no more rows leaves) made a
    partition of its own, whose division ran backwards: (0, 30, 29)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vaeanom.distributed import parquet_partitions

    rows = pa.Table.from_pandas(cancer[0].iloc[:30])
    with pq.ParquetWriter(tmp_path / "tail.parquet", rows.schema) as writer:
        writer.write_table(rows)
        writer.write_table(rows.slice(0, 0))
    columns = list(cancer[0].columns[:3])
    parts = parquet_partitions(tmp_path / "tail.parquet", columns, partition_rows=30)
    assert parts.divisions == (0, 29) and parts.npartitions == 1
    pd.testing.assert_frame_equal(parts.compute(scheduler="sync"), cancer[0].iloc[:30][columns])
    with pq.ParquetWriter(tmp_path / "none.parquet", rows.schema) as writer:
        writer.write_table(rows.slice(0, 0))
    with pq.ParquetWriter(tmp_path / "no_groups.parquet", rows.schema):
        pass
    for name in ("none", "no_groups"):
        nothing = parquet_partitions(tmp_path / f"{name}.parquet", columns).compute(
            scheduler="sync")
        assert len(nothing) == 0 and list(nothing.columns) == columns, name


def test_names_found_ignoring_case_where_spark_ignores_it(scorer, cancer):
    from vaeanom.distributed import input_columns

    model, names = OnnxModel(scorer[0]), list(cancer[0].columns)
    shouted = [name.upper() for name in names]
    assert input_columns(model, None, shouted, fold_case=True) == shouted
    assert input_columns(model, None, [*shouted, names[0]], fold_case=True)[0] == names[0]
    with pytest.raises(ValueError, match="the data has no column"):
        input_columns(model, None, shouted)
    with pytest.raises(ValueError, match="which Spark cannot tell apart"):
        input_columns(model, None, [*shouted, names[0].title()], fold_case=True)


def test_columns_can_be_named_differently_from_the_fitted_names(scorer, cancer):
    named, _ = scorer
    X = cancer[0]
    renamed = X.set_axis([f"c{i}" for i in range(X.shape[1])], axis=1)
    got = score_partition(renamed, named, columns=list(renamed.columns))
    np.testing.assert_array_equal(got["score"], OnnxModel(named).score_samples(X))


def test_the_partition_scorer_never_imports_torch(scorer, table, tmp_path):
    import subprocess

    named, _ = scorer
    table.to_parquet(tmp_path / "t.parquet")
    code = ("import sys, pandas as pd\n"
            "from vaeanom.distributed import score_partition\n"
            f"out = score_partition(pd.read_parquet({str(tmp_path / 't.parquet')!r}), "
            f"{str(named)!r})\n"
            "assert len(out) and 'torch' not in sys.modules, 'torch was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------- files through an engine
def test_cli_runs_a_parquet_file_on_a_dask_cluster_keeping_row_numbers(scorer, cancer,
                                                                        tmp_path):
    from vaeanom.cli import main

    named, _ = scorer
    X = cancer[0].set_axis(pd.RangeIndex(5, 5 + 3 * len(cancer[0]), 3))   # stored as metadata
    X.to_parquet(tmp_path / "rows.parquet", row_group_size=40)
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"yesterday's scores")                # replaced, as a file would be
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(named), "-o", str(out),
                 "--engine", "dask", "--workers", "2", "--explain", "1"]) == 0
    got = pd.read_parquet(out)               # dd.read_parquet would restart each part at 0
    assert got.index.tolist() == X.index.tolist()
    assert list(got.columns) == ["score", "is_outlier", "feature_1", "contribution_1"]
    np.testing.assert_array_equal(got["score"], OnnxModel(named).score_samples(X))
    _explained(got, named, X, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.parquet", "scores.parquet"]
    command = shutil.which("vaeanom") or str(Path(sys.executable).with_name("vaeanom"))
    done = subprocess.run([command, "score", str(tmp_path / "rows.parquet"), "--onnx",
                           str(named), "-o", str(out), "--engine", "dask", "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # dask's start-up and worker lines need -v (its warnings, e.g. a worker killed slowly
    # at close on a loaded machine, still show)
    assert not re.search(r"distributed\.[\w.]+ - INFO", done.stderr), done.stderr


def test_cli_streams_and_runs_engines_given_a_label_column(scorer, given, cancer, tmp_path):
    from vaeanom.cli import main

    X, y = cancer
    X.assign(diagnosis=DIAGNOSES[y]).to_parquet(tmp_path / "rows.parquet", row_group_size=100)
    for engine in ("stream", "dask"):
        out = tmp_path / f"{engine}.parquet"
        assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(given), "-o",
                     str(out), "--engine", engine, "--label", "diagnosis"]) == 0
        got = pd.read_parquet(out)
        assert list(got.columns) == ["score", "is_outlier"]
        _given_labels(got, given, X, DIAGNOSES[y])


def test_dask_and_streaming_write_the_same_index(scorer, cancer, tmp_path):
    """An unnamed stored index, a categorical one and an empty file with a named index:
    Dask's to_parquet named the first '__null_dask_index__', failed on the second, and
    the stream dropped the third's index."""
    from vaeanom.distributed import score_parquet_dask

    named, _ = scorer
    X = cancer[0].iloc[:120]
    cases = {"unnamed": X.set_axis(pd.Index(np.arange(120) * 2 + 7)),
             "categorical": X.set_axis(pd.CategoricalIndex(["u", "v"] * 60, name="site")),
             "empty": X.set_axis(pd.Index([f"r{i}" for i in range(120)], name="rid")).iloc[:0]}
    for case, frame in cases.items():
        frame.to_parquet(tmp_path / f"{case}.parquet", row_group_size=50)
        score_parquet(tmp_path / f"{case}.parquet", named, tmp_path / f"{case}-stream.parquet")
        score_parquet_dask(tmp_path / f"{case}.parquet", named, tmp_path / f"{case}-dask",
                           workers=1)
        streamed = pd.read_parquet(tmp_path / f"{case}-stream.parquet")
        assert streamed.index.names == frame.index.names, case
        assert streamed.index.tolist() == frame.index.tolist(), case
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{case}-dask"), streamed,
                                      obj=case)


def test_cli_runs_a_parquet_file_on_spark_keeping_key_columns(spark, scorer, table, cancer,
                                                              tmp_path):
    from vaeanom.cli import main

    named, _ = scorer
    table.to_parquet(tmp_path / "rows.parquet", row_group_size=100)   # index "row": a column
    out = tmp_path / "scores.parquet"
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(named), "-o", str(out),
                 "--engine", "spark"]) == 0
    got = pd.read_parquet(out).set_index("row").loc[table.index]
    assert list(got.columns) == ["key", "seen", "diagnosis", "score", "is_outlier"]
    np.testing.assert_array_equal(got["key"], table["key"])
    np.testing.assert_array_equal(got["score"], OnnxModel(named).score_samples(cancer[0]))
    assert not spark.sparkContext._jsc.sc().isStopped()   # a session it did not start: left on


def test_an_engine_job_that_fails_leaves_the_old_output(scorer, cancer, tmp_path, capsys):
    from vaeanom.cli import main

    named, _ = scorer
    X = cancer[0].copy()
    X.iloc[300, 3] = np.nan                               # a complete-data model refuses NaN
    X.to_parquet(tmp_path / "rows.parquet", row_group_size=100)
    (tmp_path / "scores.parquet").mkdir()
    (tmp_path / "scores.parquet" / "part.0.parquet").write_bytes(b"yesterday's scores")
    assert main(["score", str(tmp_path / "rows.parquet"), "--onnx", str(named),
                 "-o", str(tmp_path / "scores.parquet"), "--engine", "dask", "--workers", "1"]) != 0
    assert "contains NaN" in capsys.readouterr().err
    assert (tmp_path / "scores.parquet" / "part.0.parquet").read_bytes() == b"yesterday's scores"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.parquet", "scores.parquet"]
    with pytest.raises(ValueError, match="--engine dask scores a Parquet file"):
        from vaeanom.cli import run_score
        run_score(None, tmp_path / "rows.csv", tmp_path / "o.parquet", onnx=named, engine="dask")


# ------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")   # in the dev extra: present in CI
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_actors_score_batches_like_onnx_model(ray_local, scorer, given, table, cancer,
                                                  tmp_path):
    """As the README does it: read_parquet on a 2-CPU cluster with 2 workers. A fixed
    pool of 2 actors took both CPUs and the read tasks waited forever."""
    from vaeanom.distributed import _RayScorer, score_ray

    named, _ = scorer
    rows = table.reset_index()
    for i, part in enumerate((rows[:200], rows[200:400], rows[400:])):
        part.to_parquet(tmp_path / f"{i}.parquet")
    out = score_ray(ray_local.data.read_parquet(str(tmp_path)), named, workers=2,
                    explain=1).to_pandas()
    out = out.set_index("row").loc[table.index]
    _explained(out, named, cancer[0], 1)
    out = out.drop(columns=["feature_1", "contribution_1"])
    labelled = score_ray(ray_local.data.read_parquet(str(tmp_path)), given, workers=2,
                         label="diagnosis").to_pandas().set_index("row").loc[table.index]
    _given_labels(labelled, given, cancer[0], table["diagnosis"])
    assert list(out.columns) == [*table.columns, "score", "is_outlier"]
    np.testing.assert_array_equal(out["key"], table["key"])
    np.testing.assert_array_equal(out["score"], OnnxModel(named).score_samples(cancer[0]))

    class Probe(_RayScorer):   # nested: shipped by value, not by importing this module
        def __call__(self, batch):
            return super().__call__(batch).assign(torch="torch" in sys.modules)

    ds = ray_local.data.from_pandas([rows[:200], rows[200:400], rows[400:]])   # 3 blocks
    seen = ds.map_batches(Probe, batch_format="pandas",
                          compute=ray_local.data.ActorPoolStrategy(size=2),
                          fn_constructor_args=(str(named), None, 1)).to_pandas()
    assert len(seen) == len(table) and not seen["torch"].any()
