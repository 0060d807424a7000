"""Scale-out benchmark: one Parquet file scored by streaming, Dask and Spark, same run.

A generated table of N rows x 30 float64 features and an int64 ``id`` key is
written to disk in row groups of 131,072 rows, and scored by the exported
scorer of a VAEDetector fitted on 20,000 rows drawn the same way. Each
configuration runs ``vaeanom score FILE --onnx M -o OUT --engine E --workers W``
as a fresh process, so every figure includes start-up (a JVM, a cluster) and
the write:

- ``stream``: one process, batch by batch (onnxruntime on both cores);
- ``dask``: a LocalCluster of 1 or 2 worker processes, one thread each;
- ``spark``: Spark in local[1] or local[2] mode.

Peak memory is the largest sum over the process and all its descendants
(scheduler, workers, JVM, Python workers), sampled every 50 ms, of RSS (an
upper bound: a page shared by processes counts once per process) and of PSS
(shared pages split between their processes). Every
output is checked against ``OnnxModel.score_samples`` on its first 20,000 rows.

The scorer is small (hidden 64-32, latent 8, 4 samples, ``score_kind="elbo"``)
so that what is measured is the engines' cost, not the network's. The default
scorer costs far more per row; its rate on one core is measured in the same
run and reported beside the table, to scale the figures by.

    python benchmarks/scale_out.py                     # 1M and 10M rows: ~20 min, 2.6 GB of disk
    python benchmarks/scale_out.py --rows 1000000      # one size
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from _common import versions, write_results

N_FEATURES = 30
ROW_GROUP = 131_072
CHECKED_ROWS = 20_000
CONFIGS = (("stream", 1), ("dask", 1), ("dask", 2), ("spark", 1), ("spark", 2))
BENCH_MODEL = dict(hidden_dims=(64, 32), latent_dim=8, n_score_samples=4, score_kind="elbo")
CLI = "from vaeanom.cli import main; raise SystemExit(main())"


def rows_block(start: int, n: int, seed: int = 0) -> pd.DataFrame:
    """Rows start..start+n of the generated table: correlated Gaussian features with
    1% of rows shifted (the anomalies), the same rows whatever the block size."""
    mixing = np.random.default_rng(seed).normal(size=(N_FEATURES, N_FEATURES)) / N_FEATURES**0.5
    x = np.random.default_rng([seed, start]).normal(size=(n, N_FEATURES)) @ mixing
    x[np.random.default_rng([seed, start, 1]).random(n) < 0.01] += 3.0
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
    frame.insert(0, "id", np.arange(start, start + n, dtype=np.int64))
    return frame


def write_table(path: Path, n_rows: int) -> None:
    """The N-row file, one row group at a time (memory: one group)."""
    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == n_rows:
        return
    partial = path.with_suffix(".part")
    writer = None
    for start in range(0, n_rows, ROW_GROUP):
        table = pa.Table.from_pandas(rows_block(start, min(ROW_GROUP, n_rows - start)),
                                     preserve_index=False)
        writer = writer or pq.ParquetWriter(partial, table.schema)
        writer.write_table(table)
    writer.close()
    partial.rename(path)


class PeakMemory:
    """The largest summed RSS and PSS of a process tree, sampled on a thread.

    RSS counts a page shared by several processes (Spark's forked Python
    workers, the JVM's libraries) once per process: an upper bound. PSS splits
    each shared page between its processes: what the tree really holds.
    """

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.root, self.every_s = psutil.Process(pid), every_s
        self.peak_rss = self.peak_pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            rss = pss = 0
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for proc in tree:
                try:
                    memory = proc.memory_full_info()
                except psutil.Error:
                    continue
                rss, pss = rss + memory.rss, pss + memory.pss
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._done.wait(self.every_s)

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak_rss / 2**20, "peak_pss_mb": self.peak_pss / 2**20}


def run_config(data: Path, model: Path, out: Path, engine: str, workers: int) -> dict:
    command = [sys.executable, "-c", CLI, "score", str(data), "--onnx", str(model),
               "-o", str(out), "--engine", engine, "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    memory = PeakMemory(proc.pid)
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    peaks = memory.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} x{workers} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, **peaks}


def check_output(out: Path, engine: str, expected: np.ndarray) -> bool:
    """Scores of the first CHECKED_ROWS rows, by row number (stream, dask) or id (spark)."""
    import pyarrow.dataset as ds

    table = ds.dataset(out, format="parquet").to_table().to_pandas()
    if engine == "spark":
        table = table.set_index("id")
    scores = table.sort_index()["score"].to_numpy()[:CHECKED_ROWS]
    return bool(np.array_equal(scores, expected))


def default_scorer_rate(work: Path, X_fit: pd.DataFrame) -> float:
    """Rows/s of the default VAEDetector's scorer on one core (onnxruntime, 1 thread)."""
    from vaeanom import OnnxModel, VAEDetector

    VAEDetector(random_state=0).fit(X_fit).export_onnx(work / "default.onnx")
    model = OnnxModel(work / "default.onnx", intra_op_num_threads=1)
    rows = rows_block(10**9, 50_000).drop(columns="id")
    model.score_samples(rows[:1000])
    start = time.perf_counter()
    model.score_samples(rows)
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "vaeanom-scale-out",
                        help="where the generated files go (kept for the next run)")
    args = parser.parse_args()
    from vaeanom import OnnxModel, VAEDetector

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    X_fit = rows_block(10**10, 20_000).drop(columns="id")
    model_path = work / "scorer.onnx"
    VAEDetector(random_state=0, **BENCH_MODEL).fit(X_fit).export_onnx(model_path)
    reference = OnnxModel(model_path).score_samples(rows_block(0, CHECKED_ROWS).drop(columns="id"))

    records = []
    for n_rows in args.rows:
        data = work / f"rows-{n_rows}.parquet"
        started = time.perf_counter()
        write_table(data, n_rows)
        print(f"{n_rows:,} rows: {data.stat().st_size / 2**30:.2f} GiB "
              f"({time.perf_counter() - started:.0f} s to write or find)", flush=True)
        for engine, workers in CONFIGS:
            out = work / f"scores-{n_rows}-{engine}-{workers}.parquet"
            figures = run_config(data, model_path, out, engine, workers)
            record = {"rows": n_rows, "engine": engine, "workers": workers, **figures,
                      "rows_per_s": n_rows / figures["seconds"],
                      "first_rows_equal_onnx_model": check_output(out, engine, reference)}
            shutil.rmtree(out) if out.is_dir() else out.unlink()
            records.append(record)
            print(f"  {engine:6s} x{workers}: {record['rows_per_s']:>9,.0f} rows/s  "
                  f"peak RSS {record['peak_rss_mb']:,.0f} MB, PSS {record['peak_pss_mb']:,.0f} MB  "
                  f"bit-equal {record['first_rows_equal_onnx_model']}", flush=True)

    default_rate = default_scorer_rate(work, X_fit)
    frame = pd.DataFrame(records)
    table = frame.assign(
        rows=frame["rows"].map("{:,}".format),
        rows_per_s=frame["rows_per_s"].map("{:,.0f}".format),
        seconds=frame["seconds"].map("{:.1f}".format),
        peak_rss_mb=frame["peak_rss_mb"].map("{:,.0f}".format),
        peak_pss_mb=frame["peak_pss_mb"].map("{:,.0f}".format)).to_markdown(index=False)
    markdown = (
        "# Scale-out: one Parquet file, streaming vs Dask vs Spark (same run)\n\n"
        f"{N_FEATURES} float64 features + an int64 key, row groups of {ROW_GROUP:,}. "
        f"Scorer: VAEDetector({', '.join(f'{k}={v!r}' for k, v in BENCH_MODEL.items())}), "
        "exported to ONNX. Wall time of a fresh `vaeanom score --engine E --workers W` "
        "process (start-up and write included). Peak memory of the whole process tree "
        "(workers, JVM): summed RSS, an upper bound that counts shared pages once per "
        "process, and summed PSS, which splits them. 2 cores.\n\n"
        f"{table}\n\n"
        f"The default VAEDetector's scorer runs at {default_rate:,.0f} rows/s on one core "
        "(onnxruntime, 1 thread) in this run: with it, scoring rather than the engine sets "
        "the pace.\n\n"
        "Regenerate: `python benchmarks/scale_out.py`")
    print("\n" + markdown)
    write_results("scale_out", {"versions": versions("vaeanom", "onnxruntime-gpu", "dask",
                                                     "distributed", "pyspark", "pyarrow"),
                                "model": BENCH_MODEL, "row_group": ROW_GROUP,
                                "default_scorer_rows_per_s_one_core": default_rate,
                                "records": records}, markdown)


if __name__ == "__main__":
    main()
