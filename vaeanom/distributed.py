"""Scoring beyond one process: one torch-free partition function, an adapter per engine.

:func:`score_partition` scores one pandas DataFrame with an exported scorer
(``det.export_onnx``) and returns it with ``score`` and ``is_outlier``
appended, every other column (keys, timestamps) carried through untouched.
With ``explain=k`` (a scorer exported with ``explain=True``) each row also gets
its k most anomalous features, ``feature_i`` and ``contribution_i``, as
:meth:`vaeanom.OnnxModel.score_frame` ranks them, on every engine.
Each worker process opens the onnxruntime session once, on first use, and
keeps it (:func:`cached_model`); a session is never pickled, only the path.
The adapters hand that function to the engine's own partition-wise map:

- :func:`score_dask`: ``map_partitions`` with ``meta``: index and divisions kept;
- :func:`score_spark`: ``mapInPandas`` over Arrow batches, with an explicit
  schema; the model file travels to the executors with ``SparkContext.addFile``;
- :func:`score_ray`: ``map_batches`` with a callable class: actors hold the session;
- :func:`score_parquet`: no engine: a Parquet file streamed batch by batch.

Scores are those of :meth:`vaeanom.OnnxModel.score_samples`, bit for bit:
``OnnxModel`` runs rows in fixed, zero-padded chunks, so a row's score does not
depend on the partition it lands in. Like the rest of the runtime this module
never imports torch; engines are imported only when their adapter is called
(extras ``vaeanom[dask]``, ``vaeanom[spark]``, ``vaeanom[ray]``).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .checks import check_count
from .runtime import OnnxModel
from .tables import as_numpy_dtypes, integer_bytes

#: the columns scoring appends, and their pandas dtypes
SCORE_COLUMNS = {"score": "float64", "is_outlier": "bool"}


def score_columns(model: OnnxModel, explain: int = 0) -> dict[str, str]:
    """The columns scoring appends, with their pandas dtypes: ``score`` and ``is_outlier``,
    then ``feature_i`` (a column's name) and ``contribution_i`` for each of a row's
    ``explain`` most anomalous features (at most the model's feature count)."""
    columns = dict(SCORE_COLUMNS)
    for i in range(1, min(check_count(explain, "explain"), model.n_features_in_) + 1):
        columns[f"feature_{i}"] = "str"
        columns[f"contribution_{i}"] = "float64"
    return columns


def cached_model(path: str, threads: int | None = 1) -> OnnxModel:
    """This process's ``OnnxModel`` for ``path``, opened on first use and kept.

    A file rewritten in place (a new export to the same path) is opened anew:
    the cache is keyed by the file's size and modification time too.
    ``threads`` is onnxruntime's intra-op thread count: one per worker process
    is what an engine with a worker per core wants.
    """
    if not os.path.isfile(path):   # said as OnnxModel says it, not as a data file's errno
        raise FileNotFoundError(f"no ONNX model at {path!r}.")
    stat = os.stat(path)
    return _open_model(path, stat.st_size, stat.st_mtime_ns, threads)


@lru_cache(maxsize=8)
def _open_model(path: str, size: int, mtime_ns: int, threads: int | None) -> OnnxModel:
    return OnnxModel(path, intra_op_num_threads=threads)


def score_partition(frame: pd.DataFrame, model_path: str | os.PathLike,
                    columns: Sequence | None = None, threads: int | None = 1,
                    explain: int = 0, label: str | None = None) -> pd.DataFrame:
    """``frame`` with ``score`` and ``is_outlier`` appended (same index, same rows), and
    with ``explain=k`` each row's k most anomalous features (:func:`score_columns`).

    ``columns`` names the model's input columns in order; None takes the
    feature names the model was fitted with. Other columns are carried through.
    ``label`` names the column of each row's label, for a conditional scorer
    exported with ``with_label=True`` (``OnnxModel.takes_labels``), which scores a row
    given its label.
    """
    model = cached_model(os.fspath(model_path), threads)
    names = input_columns(model, columns, frame.columns, explain=explain, label=label)
    if len(frame) == 0:
        return frame.assign(**{name: pd.Series(dtype=dtype, index=frame.index)
                               for name, dtype in score_columns(model, explain).items()})
    rows = frame[names]    # in numpy dtypes; 8-bit pixels may come as int64 or int32 (Spark)
    rows = integer_bytes(rows) if model.input_dtype == np.uint8 else as_numpy_dtypes(rows)
    if getattr(model, "feature_names_in_", None) is None:   # fitted on an array
        rows = rows.to_numpy()
    else:                                  # the data's names for the model's columns
        rows = rows.set_axis(model.feature_columns, axis=1)
    y = None if label is None else frame[_column(frame.columns, label)].to_numpy()
    scored = model.score_frame(rows, explain=explain, y=y)
    return frame.assign(**{name: scored[name].to_numpy() for name in scored})  # index may repeat


def input_columns(model: OnnxModel, columns: Sequence | None, available: Sequence,
                  fold_case: bool = False, explain: int = 0, label: str | None = None) -> list:
    """The data's labels of the columns to score, in the model's order, checked against
    the model and the data; errors say what to pass. ``columns`` may give labels as
    strings (``["0", "1"]`` finds integer labels 0 and 1). ``fold_case``: names are
    found, and clash with the appended columns, ignoring case, as Spark's column names
    are by default (an exact match wins; a name two columns share but for case is
    refused as ambiguous).
    ``explain=k`` needs a scorer exported with explanations; ``label``, a scorer that
    takes labels (and one that takes them needs it)."""
    if model.part != "scorer":
        raise ValueError(f"{model.path} is the model's {model.part}; scoring needs the scorer "
                         "(det.export_onnx(path), part='scorer').")
    if check_count(explain, "explain"):
        model.require_explanations()
    _refuse_clashes(available, fold_case, score_columns(model, explain))
    _check_label(model, label, available)
    if columns is None:
        if getattr(model, "feature_names_in_", None) is None:
            raise ValueError("this model was fitted on an array, so it has no column names; "
                             f"pass columns=[...] ({model.n_features_in_} names, in order).")
        columns = model.feature_columns
    columns = [str(c) for c in columns]
    _refuse_ambiguous(model, columns)
    by_label = _labels_by_name(available, columns, fold_case)
    missing = [c for c in columns if c not in by_label]
    if missing:
        raise ValueError(f"the data has no column(s) {missing[:5]}; it has "
                         f"{list(available)[:10]}.")
    if label is not None and str(label) in columns:
        raise ValueError(f"the label column {str(label)!r} is one of the model's inputs; "
                         "name the column that holds each row's label.")
    return [by_label[c] for c in columns]


def _labels_by_name(available: Sequence, names: list[str], fold_case: bool) -> dict:
    """{name: the data's label} for each of ``names`` the data has: matched as text, and
    with ``fold_case`` ignoring case where no column has the exact name."""
    by_label = {str(label): label for label in available}
    if not fold_case:
        return by_label
    folded: dict[str, list] = {}
    for label in available:
        folded.setdefault(str(label).lower(), []).append(label)
    for name in names:
        matches = folded.get(name.lower(), [])
        if name in by_label or not matches:
            continue
        if len(matches) > 1:
            raise ValueError(f"the data has columns {[str(m) for m in matches]}, which Spark "
                             f"cannot tell apart (it ignores case); rename all but one to score "
                             f"{name!r}.")
        by_label[name] = matches[0]
    return by_label


def _check_label(model: OnnxModel, label: str | None, available: Sequence) -> None:
    """``label`` given exactly when the scorer takes labels, and a column of the data."""
    if label is None and model.takes_labels:
        raise ValueError(f"{model.path} scores each row given its label (exported with "
                         "with_label=True): name the column of labels, label='COLUMN' "
                         "(vaeanom score --label COLUMN).")
    if label is not None and not model.takes_labels:
        raise ValueError(f"label is for a conditional scorer exported with with_label=True; "
                         f"{model.path} takes none. Leave it out.")
    if label is not None:
        _column(available, label)


def _column(available: Sequence, name: str):
    """The data's label of the column called ``name`` (matched as text)."""
    by_label = {str(column): column for column in available}
    if str(name) not in by_label:
        raise ValueError(f"the data has no label column {str(name)!r}; it has "
                         f"{list(available)[:10]}.")
    return by_label[str(name)]


def _refuse_clashes(available: Sequence, fold_case: bool, appended: Sequence[str]) -> None:
    fold = (lambda name: str(name).lower()) if fold_case else str
    appended = {fold(column) for column in appended}
    clash = [name for name in available if fold(name) in appended]
    if clash:
        raise ValueError(f"the data already has column(s) {clash}, which scoring appends"
                         f"{' (Spark ignores case)' if fold_case else ''}; rename or drop "
                         "them first.")


def _refuse_ambiguous(model: OnnxModel, columns: list[str]) -> None:
    """Columns that cannot be the model's inputs: the wrong count, one named twice, or the
    model's own names in another order (``columns`` is positional, so that would score
    each feature as another, without a word)."""
    if len(columns) != model.n_features_in_:
        raise ValueError(f"{len(columns)} columns given; the model takes "
                         f"{model.n_features_in_}.")
    twice = sorted(name for name, count in Counter(columns).items() if count > 1)
    if twice:
        raise ValueError(f"`columns` lists {twice} more than once; name each input column once.")
    own = getattr(model, "feature_names_in_", None)
    own = None if own is None else [str(name) for name in own]
    if own is not None and set(columns) == set(own) and columns != own:
        raise ValueError("columns holds the model's own column names in another order; "
                         "columns is positional, so each feature would be scored as another. "
                         f"Give them in the model's order, {own[:10]}, or leave columns out.")


# ------------------------------------------------------------- streaming
#: rows per batch read from a Parquet file: about 16 MB of float64 for 30 columns
STREAM_BATCH_ROWS = 65_536


def score_parquet(source: str | os.PathLike, model_path: str | os.PathLike,
                  output: str | os.PathLike, columns: Sequence | None = None,
                  batch_rows: int = STREAM_BATCH_ROWS, threads: int | None = None,
                  explain: int = 0, label: str | None = None, index_col=None) -> int:
    """Score a Parquet file into another, one batch at a time; returns the rows scored.

    Memory stays bounded by a batch (and a row group being decoded), whatever
    the file's size. The output holds the input's index (a stored index is
    carried; a default range index becomes the row number; ``index_col``, a
    column's name or position, takes its place: a key column) and ``score`` and
    ``is_outlier`` (and ``explain=k``'s columns), as ``vaeanom score`` writes without
    streaming. It is written to a temporary file and renamed: an interrupted run
    leaves no half file. ``threads``: onnxruntime's intra-op threads (None: all cores).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .fileio import atomic_write

    _refuse_other_formats(output)
    reader = pq.ParquetFile(source)
    index_columns, index_range = _file_index(reader.schema_arrow, source, index_col)
    names, appended = _file_columns(reader.schema_arrow, model_path, columns, explain, label,
                                    index_columns)
    read = [*index_columns, *names, *([] if label is None else [label])]
    counted = 0

    def write(tmp: str) -> None:
        nonlocal counted
        writer = None
        try:
            for batch in _batches(reader, read, batch_rows):
                frame = _with_index(batch.to_pandas(), index_columns, index_range, counted)
                scored = score_partition(frame, model_path, names, threads, explain,
                                         label)[appended]
                table = pa.Table.from_pandas(scored, preserve_index=True)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                counted += len(frame)
            if writer is None:   # no rows: still a valid, empty file, with the file's index
                rows = _with_index(reader.schema_arrow.empty_table().select(read).to_pandas(),
                                   index_columns, index_range, 0)
                empty = score_partition(rows, model_path, names, threads, explain, label)
                empty[appended].to_parquet(tmp)
        finally:
            if writer is not None:
                writer.close()

    atomic_write(output, write)
    return counted


def _file_index(schema, source, index_col=None) -> tuple[list[str], dict]:
    """The index the rows of a Parquet file get: ``index_col``'s column (a key, by name or
    position), else the index pandas stored (:func:`_stored_index`)."""
    if index_col is None:
        return _stored_index(schema)
    from .datasets import index_column

    column = index_column(index_col, list(schema.names), Path(source))
    return [schema.names[column] if isinstance(column, int) else column], {}


def _refuse_other_formats(output: str | os.PathLike) -> None:
    """An output named for another format would get Parquet bytes under that name."""
    suffix = Path(output).suffix.lower()
    if suffix in (".csv", ".tsv", ".txt", ".json", ".npy", ".xlsx"):
        raise ValueError(f"{os.fspath(output)!r} names a {suffix} file, but scores stream out "
                         "as Parquet: name it .parquet (or score in memory with "
                         "OnnxModel.score_frame and write the format you need).")


def _batches(reader, columns: list[str], batch_rows: int) -> Iterator:
    """The file's record batches, one row group at a time: one ``iter_batches`` over the
    whole file keeps what it has decoded (pyarrow 26 on Linux: 1.1 GB after 3.3M rows of
    30 columns), while a reader per row group frees it (135 MB)."""
    for group in range(reader.num_row_groups):
        yield from reader.iter_batches(batch_size=batch_rows, row_groups=[group],
                                       columns=columns)


def _stored_index(schema) -> tuple[list[str], dict]:
    """The index columns pandas stored in a Parquet file, and its range index (start, step,
    name) when the index was a range: stored as metadata only, it is rebuilt batch by batch."""
    import json

    meta = (schema.metadata or {}).get(b"pandas")
    listed = json.loads(meta).get("index_columns", []) if meta is not None else []
    ranges = [i for i in listed if isinstance(i, dict) and i.get("kind") == "range"]
    return [i for i in listed if isinstance(i, str)], (ranges[0] if ranges else {})


def _with_index(frame: pd.DataFrame, index_columns: list[str], index_range: dict,
                offset: int) -> pd.DataFrame:
    """A batch with the file's index: its stored columns, or the range continued at
    ``offset`` (rows before this batch)."""
    still_columns = [c for c in index_columns if c in frame.columns]
    if still_columns:   # pyarrow restores the index itself when the metadata lets it
        return frame.set_index(still_columns)
    if index_columns:
        return frame
    start, step = int(index_range.get("start", 0)), int(index_range.get("step", 1))
    first = start + step * offset   # as int64 values: a range is stored per batch otherwise
    frame.index = pd.Index(np.arange(first, first + step * len(frame), step, dtype=np.int64),
                           name=index_range.get("name"))
    return frame


def _engine(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed; pip install \"vaeanom[{extra}]\"") from err


def _check_model(model_path, columns, available, fold_case: bool = False,
                 explain: int = 0, label: str | None = None) -> tuple[Path, dict[str, str], list]:
    """Open the model here once, so that a wrong path or column fails before any work is
    sent; the model's resolved path, the columns scoring appends and the data's labels of
    the input columns (:func:`input_columns`)."""
    path = Path(model_path).resolve()
    model = cached_model(str(path), 1)
    inputs = input_columns(model, columns, list(available), fold_case, explain, label)
    return path, score_columns(model, explain), inputs


# ------------------------------------------------------------------ Dask
def score_dask(ddf, model_path: str | os.PathLike, columns: Sequence | None = None,
               threads: int | None = 1, explain: int = 0, label: str | None = None):
    """A dask DataFrame: ``ddf`` with ``score`` and ``is_outlier`` (and ``explain=k``'s
    columns) appended, lazily.

    Index and divisions are kept. ``model_path`` must be readable by every
    worker (the same path on a shared or local disk).
    """
    _engine("dask.dataframe", "dask")
    path, appended, _ = _check_model(model_path, columns, ddf.columns, explain=explain,
                                     label=label)
    meta = ddf._meta.assign(**{name: pd.Series(dtype=dtype) for name, dtype in appended.items()})
    return ddf.map_partitions(score_partition, str(path), columns, threads, explain, label,
                              meta=meta)


# ----------------------------------------------------------------- Spark
def score_spark(sdf, model_path: str | os.PathLike, columns: Sequence | None = None,
                threads: int | None = 1, explain: int = 0, label: str | None = None):
    """A Spark DataFrame: ``sdf``'s columns, then ``score`` (double) and ``is_outlier``
    (and ``explain=k``'s ``feature_i`` strings and ``contribution_i`` doubles).

    Runs :func:`score_partition` on Arrow batches with ``mapInPandas``; the
    model file is shipped to the executors with ``SparkContext.addFile`` under
    a name made from its content, so two models never collide.
    """
    _engine("pyspark", "spark")
    from pyspark.sql.types import BooleanType, DoubleType, StringType, StructField, StructType

    fold_case = sdf.sparkSession.conf.get("spark.sql.caseSensitive", "false").lower() != "true"
    path, appended, inputs = _check_model(model_path, columns, sdf.columns, fold_case, explain,
                                          label)
    shipped = _content_named_copy(path)
    sdf.sparkSession.sparkContext.addFile(str(shipped))
    types = {"float64": DoubleType(), "bool": BooleanType(), "str": StringType()}
    schema = StructType([*sdf.schema.fields, *(  # a hole's contribution is NaN: null in Arrow
        StructField(name, types[dtype], name.startswith("contribution_"))
        for name, dtype in appended.items())])
    name = shipped.name
    # the executors' batches carry the data's names: give them as Spark matched them
    columns = [str(label) for label in inputs] if fold_case else columns

    def score_batches(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import SparkFiles

        local = SparkFiles.get(name)
        for batch in batches:
            yield score_partition(batch, local, columns, threads, explain, label)

    return sdf.mapInPandas(score_batches, schema)


# ------------------------------------------------------------------- Ray
class _RayScorer:
    """A Ray Data actor: opens the session once, in its own process, and scores batches."""

    def __init__(self, model_path: str, columns: list[str] | None, threads: int | None,
                 explain: int = 0, label: str | None = None):
        self.model_path, self.columns, self.threads = model_path, columns, threads
        self.explain, self.label = explain, label
        cached_model(model_path, threads)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return score_partition(batch, self.model_path, self.columns, self.threads,
                               self.explain, self.label)


def score_ray(ds, model_path: str | os.PathLike, columns: Sequence | None = None,
              threads: int | None = 1, workers: int = 2, cpus_per_worker: float = 1.0,
              explain: int = 0, label: str | None = None):
    """A Ray Dataset: ``ds`` with ``score`` and ``is_outlier`` (and ``explain=k``'s
    columns) appended, lazily.

    ``map_batches`` over pandas batches with up to ``workers`` actors, each
    holding its onnxruntime session (a callable class: the session is opened
    once per actor, never pickled). Ray Data has no index: key columns carry
    the rows' identity. ``model_path`` must be readable by every actor.

    The pool starts with one actor and grows to ``workers`` as CPUs allow, so
    the tasks that read ``ds`` are never starved: a fixed pool that takes
    every CPU waits forever for its input (``ray.init(num_cpus=2)`` and
    ``read_parquet`` with ``workers=2`` did). Each actor reserves
    ``cpus_per_worker`` CPUs; on a one-CPU cluster give 0, so that the reads,
    which take a whole CPU each, can run beside the actor.
    """
    data = _engine("ray.data", "ray")
    path, _, _ = _check_model(model_path, columns, ds.columns(), explain=explain, label=label)
    return ds.map_batches(_RayScorer, batch_format="pandas", num_cpus=cpus_per_worker,
                          compute=data.ActorPoolStrategy(min_size=1, max_size=workers),
                          fn_constructor_args=(str(path), None if columns is None
                                               else list(columns), threads, explain,
                                                                   label))


# -------------------------------------------------- files through an engine
#: rows per Dask partition when a Parquet file is read by row groups
PARTITION_ROWS = 262_144


def parquet_partitions(source: str | os.PathLike, columns: Sequence[str],
                       partition_rows: int = PARTITION_ROWS, index_col=None):
    """A dask DataFrame of a Parquet file's ``columns``, read by row groups, with the
    file's index: ``index_col``'s column (a key, by name or position), else its
    stored index columns, or the row number where pandas stored a range index
    (``dd.read_parquet`` restarts that at 0 in every partition, which would lose
    the rows' identity). Divisions are known for a range index of some rows; a
    file without rows is one empty partition."""
    dd = _engine("dask.dataframe", "dask")
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(source).metadata
    schema = metadata.schema.to_arrow_schema()
    index_columns, index_range = _file_index(schema, source, index_col)
    parts, offsets, rows, group = [], [], 0, 0
    while group < metadata.num_row_groups:
        first, size = group, 0
        while group < metadata.num_row_groups and (size == 0 or size < partition_rows):
            size += metadata.row_group(group).num_rows
            group += 1
        if size == 0 and parts:   # empty row groups at the end join the last partition
            path, groups, before = parts[-1]
            parts[-1] = (path, (*groups, *range(first, group)), before)
            continue
        parts.append((os.fspath(source), tuple(range(first, group)), rows))
        offsets.append(rows)
        rows += size
    read = _RowGroupReader(index_columns, index_range, list(columns))
    if not parts:                          # a file written without any row group
        return dd.from_pandas(read.empty(schema), npartitions=1)
    divisions = None
    if not index_columns and rows and int(index_range.get("step", 1)) > 0:
        start, step = int(index_range.get("start", 0)), int(index_range.get("step", 1))
        divisions = (*(start + step * o for o in offsets), start + step * (rows - 1))
    return dd.from_map(read, parts, meta=read.empty(schema), divisions=divisions,
                       label="read-row-groups", enforce_metadata=False)


class _RowGroupReader:
    """Reads one partition, (path, row groups, rows before them), as pandas."""

    def __init__(self, index_columns: list[str], index_range: dict, columns: list[str]):
        self.index_columns, self.index_range, self.columns = index_columns, index_range, columns

    def __call__(self, part: tuple[str, tuple[int, ...], int]) -> pd.DataFrame:
        import pyarrow.parquet as pq

        path, groups, offset = part
        table = pq.ParquetFile(path).read_row_groups(
            list(groups), columns=[*self.index_columns, *self.columns])
        return _with_index(table.to_pandas(), self.index_columns, self.index_range, offset)

    def empty(self, schema) -> pd.DataFrame:
        """The partitions' ``meta``: no rows, the columns and index of a read one."""
        table = schema.empty_table().select([*self.index_columns, *self.columns])
        return _with_index(table.to_pandas(), self.index_columns, self.index_range, 0)


def score_parquet_dask(source: str | os.PathLike, model_path: str | os.PathLike,
                       output: str | os.PathLike, workers: int = 2,
                       columns: Sequence | None = None, explain: int = 0,
                       label: str | None = None, index_col=None) -> int:
    """Score a Parquet file on a local Dask cluster of ``workers`` processes (one
    thread each) into a folder of Parquet parts: the file's index (or ``index_col``'s
    key column), ``score`` and ``is_outlier`` (and ``explain=k``'s columns), as
    :func:`score_parquet` writes. Returns the rows scored."""
    _engine("distributed", "dask")
    from distributed import Client, LocalCluster

    from .fileio import atomic_write_dir

    schema = _schema_of(source)
    index_columns, _ = _file_index(schema, source, index_col)
    names, appended = _file_columns(schema, model_path, columns, explain, label, index_columns)
    read = [*names, *([] if label is None else [label])]
    scored = score_dask(parquet_partitions(source, read, index_col=index_col), model_path,
                        names, explain=explain, label=label)
    scored = scored[appended]
    with _dask_logs_at_our_level(), LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=_our_log_level()) as cluster, Client(cluster):
        atomic_write_dir(output, lambda tmp: _write_parts(scored, tmp))
    return _rows_in(output)


def _write_parts(scored, folder: str) -> None:
    """Each partition as a Parquet file of its own, written by pandas as
    :func:`score_parquet` writes: the index kept as it is. Dask's ``to_parquet``
    names an unnamed index ``__null_dask_index__`` and fails on a categorical index
    whose ``meta`` has no categories."""
    import dask

    os.makedirs(folder)
    parts = scored.to_delayed()
    writes = [dask.delayed(_write_part)(part, os.path.join(folder, f"part.{i:05d}.parquet"))
              for i, part in enumerate(parts)]
    dask.compute(*writes)


def _write_part(frame: pd.DataFrame, path: str) -> None:
    frame.to_parquet(path)


def _our_log_level() -> int:
    """vaeanom's logging level, at least WARNING unless asked for more (``vaeanom -v``)."""
    return logging.getLogger("vaeanom").getEffectiveLevel()


@contextmanager
def _dask_logs_at_our_level() -> Iterator[None]:
    """Dask's scheduler logs each start, connection and worker at INFO (its config sets
    the "distributed" logger's level); hold it to vaeanom's level while our cluster runs,
    then restore it. The workers get the same level through ``silence_logs``."""
    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    dask_logger.setLevel(max(before, _our_log_level()))
    try:
        yield
    finally:
        dask_logger.setLevel(before)


def score_parquet_spark(source: str | os.PathLike, model_path: str | os.PathLike,
                        output: str | os.PathLike, workers: int = 2,
                        columns: Sequence | None = None, explain: int = 0,
                        label: str | None = None) -> int:
    """Score a Parquet file with Spark in ``local[workers]`` mode (or the session
    already running) into a folder of Parquet parts: every column that is not a
    model input (Spark has no index: keys carry the rows' identity), ``score``
    and ``is_outlier`` (and ``explain=k``'s columns). Returns the rows scored."""
    sql = _engine("pyspark.sql", "spark")
    from .fileio import atomic_write_dir

    names, _ = _file_columns(_schema_of(source), model_path, columns, explain, label)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)   # workers run this Python
    running = sql.SparkSession.getActiveSession()
    spark = running or (sql.SparkSession.builder.master(f"local[{workers}]")
                        .appName("vaeanom score").config("spark.ui.enabled", "false")
                        .getOrCreate())
    try:
        scored = score_spark(spark.read.parquet(os.fspath(source)), model_path, names,
                             explain=explain, label=label)
        atomic_write_dir(output, lambda tmp: scored.drop(*names).write.parquet(tmp))
    finally:
        if running is None:
            spark.stop()
    return _rows_in(output)


def _file_columns(schema, model_path, columns: Sequence[str] | None, explain: int = 0,
                  label: str | None = None, index_columns: Sequence[str] = ()
                  ) -> tuple[list[str], list[str]]:
    """The model's input columns in a Parquet file's Arrow ``schema`` (by position for
    an array-fitted model: every column but the index, stored or ``index_columns``,
    and the labels), and the columns scoring appends."""
    keys = [*_stored_index(schema)[0], *index_columns]
    model = cached_model(os.fspath(model_path), 1)
    inputs = getattr(model, "feature_names_in_", None)
    named_input = [k for k in index_columns if inputs is not None and k in list(inputs)]
    if named_input:
        raise ValueError(f"index column {named_input[0]!r} is one of the model's input "
                         "columns; the index must be another column (a key).")
    available = [n for n in schema.names if n not in keys]
    if columns is None and getattr(model, "feature_names_in_", None) is None:
        # a model fitted on an array takes the columns by position (all but the labels)
        columns = [name for name in available if name != label]
    names = input_columns(model, columns, available, explain=explain, label=label)
    return names, list(score_columns(model, explain))


def _schema_of(source):
    """A Parquet file's Arrow schema (its footer only)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(source).schema_arrow


def _rows_in(folder: str | os.PathLike) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(os.fspath(folder), format="parquet").count_rows()


def _content_named_copy(path: Path) -> Path:
    """A copy of ``path`` in the temp folder named by its SHA-256 (reused when present)."""
    digest = _sha256(path)[:16]
    target = Path(tempfile.gettempdir()) / "vaeanom-models" / f"{digest}-{path.name}"
    if not target.is_file() or _sha256(target)[:16] != digest:   # never trust what is there
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(path, partial)
        os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


__all__ = ["SCORE_COLUMNS", "cached_model", "parquet_partitions", "score_columns", "score_dask",
           "score_parquet", "score_parquet_dask", "score_parquet_spark", "score_partition",
           "score_ray", "score_spark"]
