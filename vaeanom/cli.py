"""The ``vaeanom`` command: demo, fit, score, export, serve, compress, decompress.

Each subcommand is a parser builder plus a pure worker; ``main(argv)`` takes
its arguments so tests run it in-process. Results (the demo's table, scores,
fit's one-line summary) go to standard output, progress bars to standard error
when it is a terminal, the rest through logging (``-v`` for more); any error
becomes one readable line and exit status 1.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .fileio import atomic_write, refuse_folder_name
from .tables import UNNAMED_FIRST, integer_bytes, shown_columns

#: the estimators ``vaeanom fit`` can fit (kept in step with vaeanom.estimators.DETECTORS,
#: which a test checks, so that ``--help`` does not import torch)
DETECTORS = ("VAEDetector", "VQVAEDetector")

logger = logging.getLogger("vaeanom")


# ------------------------------------------------------------------- demo
def _epochs(text: str) -> int | str:
    """--epochs: a positive int or "auto"."""
    if text == "auto":
        return text
    return _positive_int(text, "must be 'auto' or a positive int")


def _positive_int(text: str, rule: str = "must be a positive int") -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{rule}; got {text!r}")
    return value


def run_demo(out_dir: Path, epochs: int | str = "auto", seed: int = 0,
             figures: Path | None = None) -> pd.DataFrame:
    """One-class load_digits: VAEDetector next to IsolationForest, same run.

    Writes the per-digit table, the digit-0 model and a reconstructions figure
    to ``out_dir``, and with ``figures`` the digit-0 model's figures there
    (:func:`save_demo_figures`); returns the table.
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    from . import VAEDetector
    from .datasets import digits_one_class

    rows, models = [], {}
    for digit in range(10):
        split = digits_one_class(digit, seed=seed)
        t0 = time.perf_counter()
        vae = VAEDetector(epochs=epochs, random_state=seed).fit(split.X_train)
        t1 = time.perf_counter()
        forest = IsolationForest(random_state=seed).fit(split.X_train)
        rows.append({"digit": digit,
                     "VAEDetector": roc_auc_score(split.y_test, -vae.score_samples(split.X_test)),
                     "IsolationForest": roc_auc_score(split.y_test,
                                                      -forest.score_samples(split.X_test)),
                     "vae_fit_s": t1 - t0})
        models[digit] = (vae, split)
    table = pd.DataFrame(rows).set_index("digit")
    table.loc["mean"] = table.mean()
    out_dir.mkdir(parents=True, exist_ok=True)
    vae, split = models[0]
    vae.save(out_dir / "vae-digit0.safetensors")
    _save_reconstructions(vae, split, out_dir / "reconstructions.png")
    if figures is not None:
        save_demo_figures(vae, split, figures)
        save_class_samples(figures / "class_samples.png", epochs, seed)
    table.to_csv(out_dir / "roc_auc.csv")
    return table


def _save_reconstructions(detector, split, path: Path) -> None:
    """Grid of 8x8 digits: top row inputs (normal, then anomalies), bottom row reconstructions."""
    from .plotting import save_image_grid

    originals = split.X_test[_picks(split)]
    save_image_grid(np.concatenate([originals, detector.reconstruct(originals)])
                    .reshape(-1, 8, 8), path, nrow=16)


def _picks(split, n: int = 8) -> np.ndarray:
    """The first n normal test rows, then the first n anomalies."""
    return np.concatenate([np.flatnonzero(split.y_test == 0)[:n],
                           np.flatnonzero(split.y_test == 1)[:n]])


def save_demo_figures(detector, split, out_dir: Path) -> list[Path]:
    """The digit-0 model's figures: reconstructions, prior samples, interpolations from
    normal digits to anomalies, the latent map of the test rows, training curves, ROC
    and score histograms. Returns the files written."""
    from . import plotting

    out_dir.mkdir(parents=True, exist_ok=True)
    picks = _picks(split)
    normal, other = split.X_test[picks[:4]], split.X_test[picks[8:12]]
    strips = [detector.interpolate(a[None], b[None], n_steps=8, method="spherical")
              for a, b in zip(normal, other)]
    score = detector.score_samples(split.X_test)
    labels = np.where(split.y_test == 1, "other digits (anomalies)", "digit 0 (normal)")
    figures = {
        "reconstructions.png": lambda p: _save_reconstructions(detector, split, p),
        "prior_samples.png": lambda p: plotting.save_image_grid(
            detector.sample(32, random_state=0).reshape(-1, 8, 8), p, nrow=16),
        "interpolation.png": lambda p: plotting.save_image_grid(
            np.concatenate(strips).reshape(-1, 8, 8), p, nrow=8),
        "latent_map.png": lambda p: plotting.save_latent_map(
            detector.encode(split.X_test), labels, p, "posterior means of the test digits"),
        "training_curves.png": lambda p: plotting.save_training_curves(detector.history_, p),
        "roc.png": lambda p: plotting.save_roc_curve(split.y_test, -score, p),
        "score_histograms.png": lambda p: plotting.save_score_histograms(
            score, split.y_test, detector.offset_, p),
    }
    for name, save in figures.items():
        save(out_dir / name)
    return [out_dir / name for name in figures]


def save_class_samples(path: Path, epochs: int | str = "auto", seed: int = 0) -> None:
    """A conditional VAE fitted on every digit with its label: ``sample(10, y=c)`` for each
    class c, one row per class (the per-class prior samples of a CVAE)."""
    from sklearn.datasets import load_digits

    from . import VAEDetector
    from .plotting import save_image_grid

    X, y = load_digits(return_X_y=True)
    cvae = VAEDetector(conditional=True, epochs=epochs, random_state=seed).fit(X / 16.0, y)
    rows = [cvae.sample(10, random_state=seed + c, y=c) for c in range(10)]
    save_image_grid(np.concatenate(rows).reshape(-1, 8, 8), path, nrow=10)


# -------------------------------------------------------------- fit/score
def parse_params(pairs: list[str]) -> dict:
    """``["latent_dim=8", "hidden_dims=(64, 32)"]`` -> dict, values as Python literals."""
    params = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects NAME=VALUE; got {pair!r}.")
        try:
            params[name.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            params[name.strip()] = text  # a bare word such as gaussian
    return params


def run_fit(data: Path, model: Path, params: dict, index_col=None,
            estimator: str = "VAEDetector", progress: bool = False,
            columns: list[str] | None = None, drop: list[str] | None = None,
            label: str | None = None) -> str:
    """Fit a detector on a data file, save it, and return the one-line summary.

    ``columns`` fits on those columns of a table only, in that order; ``drop``
    fits on all but those (a label, an identifier). ``vaeanom score`` then takes
    the model's columns from its data by name and leaves the others out.
    ``label`` names the column of class labels a conditional VAE learns p(x | y)
    for (``conditional=True`` is implied); it is not a feature.
    ``progress`` shows a progress bar on standard error unless ``params`` sets
    ``verbose``. The bar belongs to this run, not to the model: the saved file
    keeps the estimator's own ``verbose``, so it is the same with or without a
    terminal.
    """
    from . import estimators
    from .datasets import read_data

    _refuse_overwriting(model, data, "--model", "the saved model (.safetensors)",
                        (*DATA_SUFFIXES, ".onnx", ".pbtxt"))
    X = read_data(data, index_col=index_col)
    y, X = (None, X) if label is None else _split_label(X, label, params, estimator)
    X = select_columns(X, columns, drop, label)
    detector = getattr(estimators, estimator)(**params)
    own_verbose = detector.get_params()["verbose"]
    if progress and "verbose" not in params:
        detector.set_params(verbose=1)
    start = time.perf_counter()
    detector.fit(X) if y is None else detector.fit(X, y)
    seconds = time.perf_counter() - start
    detector.set_params(verbose=own_verbose)
    detector.save(model)
    return fit_summary(detector, len(X), seconds, model)


def select_columns(X, columns: list[str] | None = None, drop: list[str] | None = None,
                   label: str | None = None):
    """The table's ``columns`` in that order, or all but ``drop``; names are matched as
    text, as a CSV spells them. An array, which has no names, takes neither. ``label``
    (``--label``'s column, already taken out) and the index (``--index-col``) may be
    named in either: they are never features."""
    if columns is None and drop is None:
        return X
    option = "--columns" if columns is not None else "--drop"
    if not isinstance(X, pd.DataFrame):
        raise ValueError(f"{option} picks a table's columns; an .npy array has no names.")
    wanted = _split_names(columns if columns is not None else drop)
    if not wanted:
        raise ValueError(f"{option} names no column; give names separated by commas.")
    not_features = {label, *(str(name) for name in X.index.names if name is not None)}
    if UNNAMED_FIRST not in X.columns:     # read as the index (read_data): never a feature
        not_features.add(UNNAMED_FIRST)
    wanted = [name for name in wanted if name not in not_features]
    by_name = {str(name): name for name in X.columns}
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(f"{option}: the data has no column(s) {shown_columns(missing)}; "
                         f"it has {shown_columns(list(by_name))}.")
    if len(set(wanted)) < len(wanted):
        raise ValueError(f"{option} names a column twice: {', '.join(map(repr, wanted))}.")
    if columns is not None:
        if not wanted:
            raise ValueError("--columns names only the --label or --index-col column; name "
                             "the features.")
        return X[[by_name[name] for name in wanted]]
    kept = [name for name in X.columns if str(name) not in set(wanted)]
    if not kept:
        raise ValueError("--drop leaves no column to fit on.")
    return X[kept]


def _split_label(X, label: str, params: dict, estimator: str):
    """(labels, the other columns) for ``--label``, which sets ``conditional=True``."""
    if estimator != "VAEDetector" or params.get("conditional", True) is not True:
        raise ValueError("--label fits a conditional VAEDetector (conditional=True); drop "
                         "--estimator and --set conditional=... or drop --label.")
    params["conditional"] = True
    labels = label_column(X, label)
    return labels, X.drop(columns=[labels.name])


def label_column(X, label: str):
    """A table's column of labels, by name (``--label``)."""
    if not isinstance(X, pd.DataFrame):
        raise ValueError("--label names a table's column of labels; an .npy array has none.")
    return X[_column_named(X, label, "--label")]


def _column_named(X: pd.DataFrame, name: str, option: str):
    by_name = {str(column): column for column in X.columns}
    if name not in by_name:
        raise ValueError(f"{option}: the data has no column {name!r}; it has "
                         f"{shown_columns(list(by_name))}.")
    return by_name[name]


def _split_names(values: list[str]) -> list[str]:
    """``["a,b", "c"]`` (repeated options, commas, or both) -> ``["a", "b", "c"]``."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def fit_summary(detector, n_rows: int, seconds: float, model: Path) -> str:
    """What ``vaeanom fit`` prints: what was fitted on what, how long it took, the
    threshold (``offset_``) and where the model went, in one line."""
    if detector.is_image_:
        data = f"{n_rows} images of {'x'.join(map(str, detector.input_shape_))} pixels"
    else:
        data = f"{n_rows} rows x {detector.n_features_in_} features"
    return (f"fitted {type(detector).__name__} on {data} in {seconds:.1f} s; "
            f"threshold {detector.offset_:.4g}; saved to {model}")


def _stderr_is_terminal() -> bool:
    """True when a person is watching standard error (where progress bars go)."""
    return sys.stderr.isatty()


#: suffixes of data files, and of saved models: what a command's output must not be named
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".npy", ".png", ".json", ".xlsx")
SAVED_MODEL_SUFFIXES = (".safetensors", ".st")


def _refuse_overwriting(output: Path, source: Path, option: str, what: str,
                        other_formats: tuple[str, ...]) -> None:
    """An output that is the command's own input, or named as another format, would be
    overwritten with bytes that are not what its name says (a training CSV became a
    model file without a word)."""
    if Path(output).exists() and Path(source).exists() and Path(output).samefile(source):
        raise ValueError(f"{option} {str(output)!r} is the input file: it would be "
                         f"overwritten by {what}. Give another path.")
    if Path(output).suffix.lower() in other_formats:
        raise ValueError(f"{option} {str(output)!r} names a {Path(output).suffix} file, but "
                         f"it gets {what}: give it that suffix.")


def _is_saved_model(path: Path) -> bool:
    """True when ``path`` starts as a safetensors file does (an 8-byte header length, then
    the JSON header)."""
    with open(path, "rb") as file:
        return file.read(10)[8:] == b'{"'


def _categories_of(scorer) -> dict[str, tuple[str, ...]]:
    """A table model's categorical columns -> their categories (a CSV reads them as text)."""
    schema = (scorer._table_schema() if hasattr(scorer, "_table_schema")
              else getattr(scorer, "table_schema", None))
    names = getattr(scorer, "feature_names_in_", None)
    if schema is None or names is None:
        return {}
    return {str(name): known for name, known in zip(names, schema.categories)
            if known is not None}


def load_detector(path: Path):
    """Whichever vaeanom estimator wrote ``path`` (read from the file's metadata)."""
    from . import estimators
    from .estimators.persistence import read

    path = Path(path)
    if path.suffix.lower() == ".onnx" and path.is_file() and not _is_saved_model(path):
        raise ValueError(f"{str(path)!r} is an ONNX export, not a saved model: score it with "
                         f"--onnx {str(path)!r}.")
    estimator = read(path)[0]["estimator"]
    if estimator not in estimators.DETECTORS:
        raise ValueError(f"{str(path)!r} holds an unknown estimator {estimator!r}.")
    return getattr(estimators, estimator).load(path)


def run_score(model: Path | None, data: Path, output: Path | None, index_col=None,
              onnx: Path | None = None, explain: int = 0, engine: str | None = None,
              workers: int = 2, label: str | None = None) -> pd.DataFrame | None:
    """Score a data file with a saved model, or with an exported ONNX scorer (no torch).

    ``explain=k`` adds each row's k most anomalous features (a saved VAE model, or a
    scorer exported with explanations).
    A Parquet file scored by an ONNX scorer into a Parquet file is streamed in
    batches (:func:`vaeanom.distributed.score_parquet`, bounded memory), and
    nothing is returned; ``engine="dask"`` or ``"spark"`` runs that job on a
    local Dask cluster or Spark with ``workers`` processes, into a folder of parts.
    ``label`` names the column of labels a conditional model scores each row given
    (a saved conditional VAE, or a scorer exported with ``--with-label``).
    """
    from .datasets import read_data, write_frame

    if (model is None) == (onnx is None):
        raise ValueError("give exactly one of --model (a saved model) or --onnx (an exported scorer).")
    if onnx is not None and Path(onnx).is_file() and _is_saved_model(onnx):   # on every path
        raise ValueError(f"{str(onnx)!r} is a saved model, not an ONNX export: score it "
                         f"with --model {str(onnx)!r}, or export it first (vaeanom export).")
    if engine in ENGINES:
        if not _streams(data, output, onnx):
            raise ValueError(f"--engine {engine} scores a Parquet file with an exported scorer into "
                             "a Parquet folder: give DATA.parquet --onnx M.onnx -o OUT.parquet.")
        if engine == "spark" and index_col is not None:
            raise ValueError("--engine spark keeps every column that is not a model input, "
                             "keys included (Spark has no index): leave out --index-col.")
        from . import distributed
        keyed = {} if index_col is None else {"index_col": index_col}
        rows = getattr(distributed, f"score_parquet_{engine}")(data, onnx, output, workers,
                                                               explain=explain, label=label,
                                                               **keyed)
        logger.info("%s scored %d rows into %s", engine, rows, output)
        return None
    if _streams(data, output, onnx):
        from .distributed import score_parquet
        rows = score_parquet(data, onnx, output, explain=explain, label=label,
                             index_col=index_col)
        logger.info("streamed %d scores to %s", rows, output)
        return None
    if onnx is not None:
        from .runtime import OnnxModel
        scorer = OnnxModel(onnx)
    else:
        scorer = load_detector(model)
    if explain and not hasattr(scorer, "explain"):
        raise ValueError("--explain needs a VAEDetector (--model) or a scorer exported with "
                         "`vaeanom export --explain` (--onnx); a VQ-VAE has no per-feature "
                         "explanations.")
    table = read_data(data, index_col=index_col, categories=_categories_of(scorer))
    labels = None if label is None else label_column(table, label)
    if labels is not None:
        if not (getattr(scorer, "conditional", False) or getattr(scorer, "takes_labels", False)):
            raise ValueError("--label is for a conditional model (vaeanom fit --label) or a "
                             "scorer exported with --with-label; this one takes no labels. "
                             "Drop --label.")
        table = table.drop(columns=[labels.name])
    table = _as_pixels(scorer, _model_columns(scorer, table))
    options = {"explain": explain} if explain else {}
    if labels is not None:
        options["y"] = labels
    frame = scorer.score_frame(table, **options)
    if output is not None:
        write_frame(frame, output)
        logger.info("wrote %d scores to %s", len(frame), output)
    return frame


def _as_pixels(scorer, table):
    """A table of whole numbers in 0..255 as uint8, for a model that takes 8-bit pixels.

    A CSV cannot say its numbers are bytes: pandas reads them as int64, which the
    models hold to [0, 1] (only uint8 means 0..255), and the fix the error gives,
    ``X.astype(np.uint8)``, is not one a command-line user can make. Anything else is
    passed on as it is, for the scorer to refuse with its own message.
    """
    takes_bytes = (getattr(scorer, "pixel_dtype_", None) == "uint8"
                   or getattr(scorer, "input_dtype", None) == np.uint8)
    return integer_bytes(table) if takes_bytes else table


def _model_columns(scorer, table):
    """The table's columns the model was fitted on, by name and in its order, as the
    streamed and engine paths take them; the others are left out, with a warning.
    A table without all of them is refused, naming only those it lacks (the
    columns it has besides are no fault of it)."""
    names = getattr(scorer, "feature_names_in_", None)
    if names is None or not isinstance(table, pd.DataFrame):
        return table
    by_name = {str(column): column for column in table.columns}
    names = [str(name) for name in names]
    if list(by_name) == names:
        return table
    missing = [name for name in names if name not in by_name]
    if missing == [UNNAMED_FIRST]:
        raise ValueError(f"the model was fitted on {UNNAMED_FIRST!r}, the row numbers "
                         "DataFrame.to_csv writes, which vaeanom now reads as the index: its "
                         "scores depended on each row's number. Refit it on the file.")
    if missing:
        raise ValueError(f"the data has no column(s) {shown_columns(missing)}, which the model "
                         f"was fitted on; it has {shown_columns(list(by_name))}. Score a file "
                         "with every column the model takes (others are left out).")
    extra = [name for name in by_name if name not in set(names)]
    if extra:
        logger.warning("leaving out column(s) %s, which the model was not fitted on",
                       shown_columns(extra))
    return table[[by_name[name] for name in names]]


INDEX_COL_HELP = ("the CSV or Parquet column holding the row index: its name, else its position "
                  "(default: a CSV's first column if its header is empty, as to_csv writes it)")
#: engines ``vaeanom score --engine`` runs a Parquet job on (besides streaming in-process)
ENGINES = ("dask", "spark")


def _streams(data: Path, output: Path | None, onnx: Path | None) -> bool:
    """Parquet in, Parquet out, an ONNX scorer: stream batches instead of loading the file."""
    parquet = (".parquet", ".pq")
    return (onnx is not None and output is not None
            and Path(data).suffix.lower() in parquet and Path(output).suffix.lower() in parquet)


def run_export(model: Path, out: Path | None, part: str, fp16: bool, input_dtype: str,
               triton: Path | None, name: str | None = None, max_batch_size: int | None = None,
               explain: bool = False, with_label: bool = False) -> Path:
    """Export a saved model to one ONNX file, or to a Triton model repository."""
    if (out is None) == (triton is None):
        raise ValueError("give exactly one of OUT.onnx or --triton REPO_DIR.")
    if triton is None and (name, max_batch_size) != (None, None):
        raise ValueError("--name and --max-batch-size are for a Triton repository; add "
                         "--triton REPO_DIR, or drop them.")
    name = "vaeanom" if name is None else name
    max_batch_size = 4096 if max_batch_size is None else max_batch_size
    if out is not None:
        _refuse_overwriting(out, model, "OUT", "an ONNX file (.onnx)",
                            (*SAVED_MODEL_SUFFIXES, *DATA_SUFFIXES))
    detector = load_detector(model)
    if triton is not None:
        folder = detector.export_triton(triton, name, part, fp16=fp16, input_dtype=input_dtype,
                                        max_batch_size=max_batch_size, explain=explain,
                                        with_label=with_label)
        logger.info("wrote Triton model %s", folder)
        return folder
    detector.export_onnx(out, part, fp16=fp16, input_dtype=input_dtype, explain=explain,
                         with_label=with_label)
    logger.info("wrote the %s of %s to %s", part, model, out)
    return out


# ------------------------------------------------------------ compression
def read_images(path: Path, channels: int | None = None) -> np.ndarray:
    """A .npy array or one PNG -> images (n, [C,] H, W); see :func:`_read_png`."""
    if path.suffix.lower() == ".png":
        return _read_png(path, channels)[None]
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    raise ValueError(f"{str(path)!r}: give a .png file, a folder of .png files or a .npy array.")


def _png_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise ValueError(f"{str(folder)!r} holds no .png files.")
    return files


def _read_png(path: Path, channels: int | None = None) -> np.ndarray:
    """A PNG's 8-bit pixels, (H, W) or (C, H, W). A palette image becomes its colours
    (grey for a grey model), not its palette indices; ``channels`` 1 (a model fitted
    on (n, 1, H, W)) gives a grey image its channel axis. For a grey model (``channels``
    None or 1), an RGB image whose three channels are equal is the grey image it holds
    (many grey images are saved so); one in colour is refused."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("LA", "RGBA", "PA"):
            raise ValueError(f"{str(path)!r} has an alpha channel; vaeanom compresses grey or "
                             "RGB images: flatten it onto a background first.")
        if image.mode in ("P", "1") or (image.mode == "L" and channels == 3):
            image = image.convert("RGB" if channels == 3 else "L")  # colours, not indices
        if image.mode not in ("L", "RGB") or _png_bit_depth(path) == 16:
            mode = "16-bit RGB" if image.mode == "RGB" else image.mode
            raise ValueError(f"{str(path)!r} is a {mode} PNG; vaeanom compresses 8-bit "
                             "grey or RGB images: save it with 8 bits per channel first.")
        pixels = np.asarray(image)
    if pixels.ndim == 3 and channels in (None, 1):
        pixels = _grey_of(pixels, path)
    if pixels.ndim == 2:
        return pixels[None] if channels == 1 else pixels
    return pixels.transpose(2, 0, 1)  # HWC -> CHW


def _grey_of(rgb: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 3) pixels with three equal channels -> (H, W), exactly; else refused."""
    if (rgb == rgb[..., :1]).all():
        return rgb[..., 0]
    raise ValueError(f"{str(path)!r} is a colour (RGB) PNG, but the model was fitted on grey "
                     "images: convert it to grey first (Pillow: Image.open(path).convert('L')), "
                     "or use a model fitted on RGB images.")


def _png_bit_depth(path: Path) -> int:
    """The bits per channel in a PNG's header (IHDR). Pillow opens a 16-bit RGB PNG as
    8-bit "RGB", keeping the high byte of each value, so its mode cannot tell."""
    with open(path, "rb") as handle:
        header = handle.read(25)
    return header[24] if len(header) == 25 and header[12:16] == b"IHDR" else 8


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    pixels = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    pixels = pixels.transpose(1, 2, 0) if pixels.ndim == 3 else pixels
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"))


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # np.save(path) would append ".npy" to the temporary name
        np.save(handle, array)


def _load_codec(model: Path):
    detector = load_detector(model)
    if not hasattr(detector, "compress"):
        raise ValueError(f"{str(model)!r} holds a {type(detector).__name__}; compression needs a "
                         "VQVAEDetector fitted on images.")
    return detector


def run_compress(model: Path, source: Path, out: Path) -> list[Path]:
    """PNG -> blob, .npy -> one blob, folder of PNGs -> folder of blobs (one per image)."""
    detector = _load_codec(model)
    channels = _channels(detector)
    if source.is_dir():  # one blob per PNG, so the PNGs may differ in size
        targets = _unique_targets(((file, out / f"{file.stem}.vq")
                                   for file in _png_files(source)), "blob")
        blobs = {target: detector.compress(_read_png(file, channels)[None])
                 for target, file in targets.items()}
        n_images = len(blobs)
    else:
        images = read_images(source, channels)
        blobs, n_images = {out: detector.compress(images)}, len(images)
    _check_targets(blobs, out if source.is_dir() else None)
    for path, blob in blobs.items():  # everything is encoded before anything is written
        atomic_write(path, lambda tmp, blob=blob: Path(tmp).write_bytes(blob))
    logger.info("compressed %d images into %d blobs (%d bytes)", n_images, len(blobs),
                sum(map(len, blobs.values())))
    return list(blobs)


def run_decompress(model: Path, source: Path, out: Path) -> list[Path]:
    """Blob -> .npy (or .png for one image); folder of .vq blobs -> folder of PNGs.

    In a folder, a blob of one image becomes ``<stem>.png``; a blob of n images
    becomes ``<stem>_0.png`` ... ``<stem>_<n-1>.png`` (numbers zero-padded to
    the same width), so no image is left out. Two blobs that would write the
    same PNG (``a.vq`` of 2 images and ``a_0.vq``) are refused, not overwritten.
    """
    detector = _load_codec(model)
    if source.is_dir():
        images = _decompress_folder(detector, source, out)
    else:
        if out.suffix.lower() not in (".png", ".npy"):
            raise ValueError(f"{str(out)!r}: decompress writes a .png (one image) or a .npy "
                             "file (any number of images).")
        decoded = detector.decompress(source.read_bytes())
        if out.suffix.lower() == ".npy":
            atomic_write(out, lambda tmp: _save_npy(tmp, decoded))
            return [out]
        if len(decoded) != 1:
            raise ValueError(f"{str(out)!r}: write {len(decoded)} images to a .npy file "
                             "(a .png holds one image).")
        images = {out: decoded[0]}
    _check_targets(images, out if source.is_dir() else None)
    for path, image in images.items():  # everything is decoded before anything is written
        _write_png(path, image)
    return list(images)


def _channels(detector) -> int | None:
    """The channel count a codec was fitted with: 1 or 3 for (n, C, H, W), else None."""
    shape = tuple(getattr(detector, "input_shape_", ()))
    return shape[0] if len(shape) == 3 else None


def _unique_targets(pairs, what: str) -> dict[Path, Path]:
    """(input, output) pairs -> {output: input}, refusing two inputs that would write the
    same output (a.png and a.PNG; a.vq of 2 images and a_0.vq)."""
    made_by: dict[Path, Path] = {}
    for source, target in pairs:
        if target in made_by:
            raise ValueError(f"{made_by[target].name} and {source.name} would both write the "
                             f"{what} {target.name}; rename one of them.")
        made_by[target] = source
    return made_by


def _check_targets(paths, folder: Path | None) -> None:
    """Refuse, before anything is written, outputs that cannot be written: the output
    folder is a file, or an output file's name is a folder's."""
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is a file; a folder of inputs writes a folder of "
                         "outputs: give a folder name.")
    for path in paths:
        refuse_folder_name(path)


def _decompress_folder(detector, source: Path, out: Path) -> dict[Path, np.ndarray]:
    """PNG path -> image for every image of every .vq blob in ``source`` (see run_decompress)."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() == ".vq")
    if not files:
        raise ValueError(f"{str(source)!r} holds no .vq files.")
    images = {file: _png_names(out, file.stem, detector.decompress(file.read_bytes()))
              for file in files}
    _unique_targets(((file, path) for file, named in images.items() for path in named),
                    "image")
    return {path: image for named in images.values() for path, image in named.items()}


def _png_names(folder: Path, stem: str, decoded: np.ndarray) -> dict[Path, np.ndarray]:
    """PNG paths for the images of one blob: stem.png, or stem_0.png, stem_1.png, ..."""
    if len(decoded) == 1:
        return {folder / f"{stem}.png": decoded[0]}
    width = len(str(len(decoded) - 1))
    return {folder / f"{stem}_{i:0{width}d}.png": image for i, image in enumerate(decoded)}


# ----------------------------------------------------------------- parser
def plain_text(text: str) -> str:
    """Docstring text without reStructuredText markup, for ``--help``:
    ``x`` in double backticks -> x, :class:`~a.B` -> a.B."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaeanom",
                                     description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="one-class load_digits: VAEDetector vs IsolationForest")
    demo.add_argument("--out", type=Path, default=Path("vaeanom-demo"),
                      help="folder for the model, figure and table (default: %(default)s)")
    demo.add_argument("--figures", type=Path, default=None, metavar="DIR",
                      help="also write the digit-0 model's figures (samples, interpolations, "
                           "latent map, training curves, ROC, histograms) to DIR")
    demo.add_argument("--epochs", type=_epochs, default="auto",
                      help="training epochs, or 'auto' (the default's step count)")

    fit = sub.add_parser("fit", help="fit a detector on a CSV, Parquet or .npy file")
    fit.add_argument("data", type=Path, help="rows, or images (n, H, W) / (n, C, H, W) in .npy")
    fit.add_argument("--estimator", choices=DETECTORS, default="VAEDetector")
    fit.add_argument("--model", type=Path, required=True, help="where to save the model")
    fit.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                     help="an estimator parameter as a Python literal, e.g. --set latent_dim=8 or "
                          "--set hidden_dims=64,32 (repeatable)")
    fit.add_argument("--index-col", default=None, help=INDEX_COL_HELP)
    fit.add_argument("--label", default=None, metavar="COLUMN",
                     help="the column of class labels: fit a conditional VAE, p(x | label)")
    picked = fit.add_mutually_exclusive_group()
    picked.add_argument("--columns", action="append", default=None, metavar="A,B,...",
                        help="fit on these columns of the table only (repeatable)")
    picked.add_argument("--drop", action="append", default=None, metavar="A,B,...",
                        help="fit on all columns but these, e.g. a label (repeatable)")

    score = sub.add_parser("score", help="score a data file with a saved model")
    score.add_argument("data", type=Path)
    score.add_argument("--model", type=Path, default=None, help="a model saved by fit")
    score.add_argument("--onnx", type=Path, default=None,
                       help="an exported scorer (.onnx) instead of --model; runs without torch")
    score.add_argument("--output", "-o", type=Path, default=None,
                       help=".csv or .parquet file (default: CSV on standard output)")
    score.add_argument("--index-col", default=None, help=INDEX_COL_HELP)
    score.add_argument("--engine", choices=("stream", *ENGINES), default="stream",
                       help="Parquet in and out with --onnx: stream in this process (default), "
                            "or run on a local Dask cluster or Spark; OUT is then a folder of "
                            "parts")
    score.add_argument("--workers", type=_positive_int, default=2,
                       help="worker processes (Dask) or cores (Spark local[N]) for --engine")
    score.add_argument("--label", default=None, metavar="COLUMN",
                       help="score each row given its label in COLUMN (a conditional model)")
    score.add_argument("--explain", type=int, default=0, metavar="K",
                       help="add each row's K most anomalous features and their contributions")

    export = sub.add_parser("export", help="export a saved model to ONNX or a Triton repository")
    export.add_argument("out", type=Path, nargs="?", default=None, help="the .onnx file to write")
    export.add_argument("--model", type=Path, required=True)
    export.add_argument("--part", choices=("scorer", "encoder", "decoder"), default="scorer")
    export.add_argument("--fp16", action="store_true", help="half-precision networks (for GPUs)")
    export.add_argument("--explain", action="store_true",
                        help="the scorer also returns each feature's contribution (what "
                             "explain gives; served as 'explanations' by /v1/.../score)")
    export.add_argument("--with-label", action="store_true",
                        help="a conditional model's scorer that scores each row given its label "
                             "(a second input, 'label'; \"labels\" beside \"records\" in /score)")
    export.add_argument("--input-dtype", choices=("auto", "float32", "uint8"), default="auto",
                        help="auto: what the model was fitted on (8-bit pixels for models "
                             "fitted on uint8 images); uint8: the graph takes 8-bit pixels")
    export.add_argument("--triton", type=Path, default=None, metavar="REPO_DIR",
                        help="write REPO_DIR/NAME/config.pbtxt and NAME/1/model.onnx instead")
    export.add_argument("--name", default=None,
                        help="Triton model name, with --triton (default: vaeanom)")
    export.add_argument("--max-batch-size", type=int, default=None,
                        help="with --triton (default: 4096)")

    serve = sub.add_parser("serve", help="serve an .onnx file or a Triton repository over the "
                                         "Open Inference Protocol (needs vaeanom[serve])")
    serve.add_argument("path", type=Path, help="an exported .onnx file, or a repository "
                                               "written by `vaeanom export --triton`")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes")
    serve.add_argument("--max-body-bytes", type=int, default=64 * 2**20)
    serve.add_argument("--request-timeout", type=float, default=30.0, metavar="SECONDS")
    serve.add_argument("--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long requests in flight may take to finish")
    serve.add_argument("--threads", type=int, default=None,
                       help="onnxruntime intra-op threads per model (default: all cores)")
    serve.add_argument("--chunk-rows", type=int, default=8,
                       help="rows per onnxruntime call, the last zero-padded: a 1-row request "
                            "pays for this many, a 256-row one makes 256/N calls (default: 8)")

    for verb, text in (("compress", "images (.png, folder of .png, .npy) to bytes with a "
                                    "VQVAEDetector"),
                       ("decompress", "bytes back to images (.png, folder of .png, .npy)")):
        codec = sub.add_parser(verb, help=text)
        codec.add_argument("source", type=Path, metavar="IN")
        codec.add_argument("out", type=Path, metavar="OUT")
        codec.add_argument("--model", type=Path, required=True, help="a saved VQVAEDetector")
    return parser


def _to_stdout(frame: pd.DataFrame) -> int:
    """Write the scores as CSV to standard output; a reader that leaves early (``| head``)
    ends the command quietly with status 1, as Unix tools do."""
    try:
        frame.to_csv(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    return 0


def _index_col(value):
    return int(value) if isinstance(value, str) and value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    if args.command != "serve":   # a server's lines are timestamped, as its workers' are
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():   # the library's warnings as log lines, not source lines
        warnings.showwarning = _log_warning
        return _run(args)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logger.warning("%s", message)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            table = run_demo(args.out, epochs=args.epochs, figures=args.figures)
            print(table.to_string(float_format=lambda v: f"{v:.4f}"))
            print(f"\nmodel, figure and table written to {args.out}/")
        elif args.command == "fit":
            print(run_fit(args.data, args.model, parse_params(args.params),
                          _index_col(args.index_col), args.estimator,
                          progress=_stderr_is_terminal(), columns=args.columns,
                          drop=args.drop, label=args.label))
        elif args.command == "score":
            frame = run_score(args.model, args.data, args.output, _index_col(args.index_col),
                              onnx=args.onnx, explain=args.explain, engine=args.engine,
                              workers=args.workers, label=args.label)
            if args.output is None:
                return _to_stdout(frame)
        elif args.command == "export":
            run_export(args.model, args.out, args.part, args.fp16, args.input_dtype, args.triton,
                       args.name, args.max_batch_size, args.explain, args.with_label)
        elif args.command == "serve":
            from .serving import serve
            serve(args.path, args.host, args.port, args.workers,
                  max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout,
                  graceful_timeout_s=args.graceful_timeout, intra_op_num_threads=args.threads,
                  chunk_rows=args.chunk_rows)
        elif args.command == "compress":
            run_compress(args.model, args.source, args.out)
        elif args.command == "decompress":
            run_decompress(args.model, args.source, args.out)
    except Exception as err:  # one readable line, no traceback, unless -vv
        logger.debug("traceback", exc_info=True)
        print(f"vaeanom {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
