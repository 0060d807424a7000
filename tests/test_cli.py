"""The vaeanom command, in-process (main(argv)) and as the installed console script."""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vaeanom import OnnxModel, VAEDetector, cli
from vaeanom.cli import main, parse_params
from vaeanom.datasets import read_data


@pytest.fixture()
def table(tmp_path, cancer):
    X, _ = cancer
    frame = X.iloc[:120].set_index(pd.Index([f"p{i}" for i in range(120)], name="patient"))
    frame.to_csv(tmp_path / "rows.csv")
    frame.to_parquet(tmp_path / "rows.parquet")
    np.save(tmp_path / "rows.npy", frame.to_numpy())
    return frame, tmp_path


def test_parse_params_reads_python_literals():
    assert parse_params(["latent_dim=8", "hidden_dims=(32, 16)", "likelihood=gaussian"]) == {
        "latent_dim": 8, "hidden_dims": (32, 16), "likelihood": "gaussian"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_params(["latent_dim"])


def test_fit_then_score_parquet_keeps_index_and_matches_python(table):
    frame, tmp = table
    args = ["--set", "epochs=5", "--set", "random_state=0", "--set", "hidden_dims=(32,)"]
    assert main(["fit", str(tmp / "rows.parquet"), "--model", str(tmp / "m.safetensors"), *args]) == 0
    assert main(["score", str(tmp / "rows.parquet"), "--model", str(tmp / "m.safetensors"),
                 "-o", str(tmp / "scores.parquet")]) == 0
    scores = pd.read_parquet(tmp / "scores.parquet")
    assert scores.index.equals(frame.index)
    expected = VAEDetector.load(tmp / "m.safetensors").score_samples(frame)
    np.testing.assert_array_equal(scores["score"].to_numpy(), expected)


def test_a_csv_written_with_its_index_is_read_with_it_as_the_index(tmp_path, cancer, capsys):
    """DataFrame.to_csv writes the index as a first column with an empty header; fitted
    as a feature, it tied every score to the row's number."""
    X = cancer[0].iloc[:100]
    X.to_csv(tmp_path / "rows.csv")
    assert read_data(tmp_path / "rows.csv").equals(X)
    assert main(["fit", str(tmp_path / "rows.csv"), "--model", str(tmp_path / "m.st"),
                 "--set", "epochs=2", "--set", "random_state=0"]) == 0
    assert " on 100 rows x 30 features " in capsys.readouterr().out
    X.set_axis(X.index + 10_000).to_csv(tmp_path / "renumbered.csv")
    assert main(["score", str(tmp_path / "renumbered.csv"), "--model", str(tmp_path / "m.st"),
                 "-o", str(tmp_path / "s.csv")]) == 0
    scores = pd.read_csv(tmp_path / "s.csv", index_col=0)
    assert list(scores.index) == list(X.index + 10_000)
    np.testing.assert_array_equal(scores["score"],
                                  VAEDetector.load(tmp_path / "m.st").score_samples(X))
    # --drop "Unnamed: 0", the old way round it, still works
    assert main(["fit", str(tmp_path / "rows.csv"), "--model", str(tmp_path / "d.st"),
                 "--drop", "Unnamed: 0", "--set", "epochs=2"]) == 0
    # a model fitted on the row numbers (as before) is told why it no longer scores the file
    VAEDetector(epochs=2).fit(pd.read_csv(tmp_path / "rows.csv")).save(tmp_path / "old.st")
    capsys.readouterr()
    assert main(["score", str(tmp_path / "rows.csv"), "--model", str(tmp_path / "old.st")]) == 1
    assert "the model was fitted on 'Unnamed: 0', the row numbers" in capsys.readouterr().err


def test_scoring_a_file_without_a_model_column_names_that_column_only(table, capsys):
    frame, tmp = table
    labelled = frame.assign(diagnosis=1)
    labelled.to_csv(tmp / "labelled.csv")
    assert main(["fit", str(tmp / "labelled.csv"), "--index-col", "patient", "--drop",
                 "patient,diagnosis", "--model", str(tmp / "m.st"), "--set", "epochs=2"]) == 0
    assert main(["export", "--model", str(tmp / "m.st"), str(tmp / "m.onnx")]) == 0
    labelled.drop(columns=["mean radius"]).to_csv(tmp / "short.csv")
    capsys.readouterr()
    for source in (["--model", str(tmp / "m.st")], ["--onnx", str(tmp / "m.onnx")]):
        assert main(["score", str(tmp / "short.csv"), "--index-col", "patient", *source]) == 1
        err = capsys.readouterr().err
        assert "the data has no column(s) 'mean radius', which the model was fitted on" in err
        assert "diagnosis" not in err.split(";")[0]


def test_score_csv_to_stdout_with_index_column(table, capsys):
    frame, tmp = table
    main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(tmp / "m.st"),
          "--set", "epochs=2"])
    capsys.readouterr()
    assert main(["score", str(tmp / "rows.csv"), "--index-col", "patient",
                 "--model", str(tmp / "m.st")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("patient,score,") and out[1].startswith("p0,")
    assert len(out) == 121


def test_fit_on_chosen_columns_then_score_the_whole_file(table, capsys, caplog):
    frame, tmp = table
    labelled = frame.assign(diagnosis=np.arange(len(frame)) % 2)
    labelled.to_csv(tmp / "labelled.csv")
    fit = ["fit", str(tmp / "labelled.csv"), "--index-col", "patient", "--set", "epochs=2",
           "--set", "random_state=0"]
    assert main([*fit, "--model", str(tmp / "dropped.st"), "--drop", "diagnosis"]) == 0
    assert " on 120 rows x 30 features " in capsys.readouterr().out
    dropped = VAEDetector.load(tmp / "dropped.st")
    assert list(dropped.feature_names_in_) == list(frame.columns)
    picked = ["mean radius", "mean texture", "worst area"]
    assert main([*fit, "--model", str(tmp / "picked.st"), "--columns", ",".join(picked[:2]),
                 "--columns", picked[2]]) == 0
    assert list(VAEDetector.load(tmp / "picked.st").feature_names_in_) == picked
    capsys.readouterr()
    # score takes the model's columns by name and leaves the label out, saying so
    assert main(["score", str(tmp / "labelled.csv"), "--index-col", "patient",
                 "--model", str(tmp / "dropped.st"), "-o", str(tmp / "s.csv")]) == 0
    assert "leaving out column(s) 'diagnosis'" in caplog.text
    scores = pd.read_csv(tmp / "s.csv", index_col="patient")
    np.testing.assert_allclose(scores["score"], dropped.score_samples(frame), rtol=1e-6)


@pytest.mark.parametrize("option, error", [
    (["--drop", "diagnosis"], "--drop: the data has no column(s) 'diagnosis'; it has 'mean"),
    (["--drop", ","], "--drop names no column; give names separated by commas"),
    (["--columns", " "], "--columns names no column"),
    (["--columns", "mean radius,mean radius"], "--columns names a column twice"),
    (["--columns", "patient"], "--columns names only the --label or --index-col column"),
])
def test_fit_names_a_column_choice_it_cannot_make(table, capsys, option, error):
    _, tmp = table
    assert main(["fit", str(tmp / "rows.csv"), "--index-col", "patient",
                 "--model", str(tmp / "m.st"), *option]) == 1
    assert error in capsys.readouterr().err
    assert not (tmp / "m.st").exists()


def test_column_choices_are_for_tables_and_exclude_each_other(table, capsys):
    _, tmp = table
    assert main(["fit", str(tmp / "rows.npy"), "--model", str(tmp / "m.st"),
                 "--columns", "0"]) == 1
    assert "an .npy array has no names" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", str(tmp / "rows.csv"), "--model", str(tmp / "m.st"), "--columns", "a",
              "--drop", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
    everything = ",".join(["patient", *pd.read_csv(tmp / "rows.csv", nrows=0).columns[1:]])
    assert main(["fit", str(tmp / "rows.csv"), "--model", str(tmp / "m.st"),
                 "--drop", everything]) == 1
    assert "--drop leaves no column to fit on" in capsys.readouterr().err


def test_a_semicolon_csv_is_named_instead_of_fitted_as_one_text_column(tmp_path, capsys):
    rows = "a;b\n" + "".join(f"{i};{i % 3}\n" for i in range(30))
    (tmp_path / "semi.csv").write_text(rows)
    assert main(["fit", str(tmp_path / "semi.csv"), "--model", str(tmp_path / "m.st")]) == 1
    error = capsys.readouterr().err
    assert "one column named 'a;b'" in error and "sep=';'" in error
    assert not (tmp_path / "m.st").exists()
    (tmp_path / "one.csv").write_text("pressure|kPa\n" + "".join(f"{i}.5\n" for i in range(30)))
    assert read_data(tmp_path / "one.csv").columns.tolist() == ["pressure|kPa"]  # one column


def test_an_output_is_never_the_input_or_named_as_another_format(table, capsys):
    """fit --model rows.csv turned the training CSV into a model file, and export OUT onto
    the saved model made it ONNX; a model and an export given to the other option are
    named as what they are."""
    frame, tmp = table
    data = str(tmp / "rows.csv")
    fit = ["fit", data, "--index-col", "patient", "--set", "epochs=1"]
    for model, match in ((data, "is the input file"), (str(tmp / "m.onnx"), "names a .onnx")):
        assert main([*fit, "--model", model]) == 1
        assert match in capsys.readouterr().err
    assert pd.read_csv(data, index_col="patient").equals(frame)
    assert main([*fit, "--model", str(tmp / "m.st")]) == 0
    saved = (tmp / "m.st").read_bytes()
    for out, match in ((tmp / "m.st", "is the input file"), (tmp / "m.safetensors", "names a")):
        assert main(["export", "--model", str(tmp / "m.st"), str(out)]) == 1
        assert match in capsys.readouterr().err
    assert (tmp / "m.st").read_bytes() == saved
    assert main(["export", "--model", str(tmp / "m.st"), str(tmp / "s.onnx")]) == 0
    for option, path, match in (("--model", "s.onnx", "is an ONNX export.*--onnx"),
                                ("--onnx", "m.st", "is a saved model.*--model")):
        assert main(["score", data, "--index-col", "patient", option, str(tmp / path)]) == 1
        assert re.search(match, capsys.readouterr().err)


def test_a_library_warning_is_a_log_line_with_the_option_to_use(tmp_path):
    """Not Python's 'tables.py:394: UserWarning' with its source line, and the fix named as
    an option of the command, not only as pandas code."""
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": [f"u{i}" for i in range(80)], "a": rng.normal(size=80),
                  "c": rng.choice(["x", "y"], 80)}).to_csv(tmp_path / "ids.csv", index=False)
    done = subprocess.run([_console_script(), "fit", "ids.csv", "--model", "m.st", "--set",
                           "epochs=1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    error = done.stderr
    assert "WARNING vaeanom: column 'id' has 80 distinct values" in error
    assert "--drop 'id'" in error and "UserWarning" not in error and ".py:" not in error


@pytest.mark.parametrize("text, shown", [
    ("x;city\n1.5;Oslo\n2.5;Paris, FR\n", "';'"),       # a comma in a text field
    ("x;y\n1,5;2\n2,5;3,25\n", "';'"),                   # decimal commas, a varying count
    ("x\ty\tcity\n1.5\t2\tParis, FR\n2.5\t3\tOslo\n", "tabs"),
    ("\ufeffa|b\r\n1|2\r\n", "'|'"),                       # BOM and CRLF
    ('a;b;c\n1;"x;y";3\n', "';'"),                       # a quoted separator
    ("a;b\n1;2;\n", "';'"),                               # a trailing separator
    ("sep=;\na;b\n1;2\n", "';'.*skiprows=1"),              # Excel's first line
])
def test_other_separators_are_named_before_pandas_misreads_them(tmp_path, text, shown):
    """These files got pandas' tokenizing error, or (the tab file, whose comma moved the
    first field into the index) 'every entry missing'."""
    (tmp_path / "data.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=f"separated by {shown}.*decimal=','"):
        read_data(tmp_path / "data.csv")


def test_a_csv_scores_as_the_frame_a_model_was_fitted_on(tmp_path):
    """Text categories that look like numbers ("01234", "4.00") were re-read as numbers
    at score time and became unseen categories: most rows flagged. The model's
    categorical columns are now read as the file's text (a value it does not know that
    is a number is still read as one: 1.0 finds a category fitted as 1)."""
    rng = np.random.default_rng(0)
    votes = pd.DataFrame({"zip": rng.choice(["01234", "02139", "10001"], 200),
                          "vote": rng.choice(["y", "n"], 200),
                          "price": rng.choice(["3.50", "4.00", "5.25"], 200)})
    votes.to_csv(tmp_path / "votes.csv", index=False)
    det = VAEDetector(epochs=5, random_state=0).fit(pd.read_csv(tmp_path / "votes.csv",
                                                                dtype=str))
    det.save(tmp_path / "votes.safetensors")
    assert main(["score", str(tmp_path / "votes.csv"), "--model",
                 str(tmp_path / "votes.safetensors"), "-o", str(tmp_path / "s.csv")]) == 0
    scores = pd.read_csv(tmp_path / "s.csv", index_col=0)["score"].to_numpy()
    np.testing.assert_array_equal(scores, det.score_samples(votes))
    det.export_onnx(tmp_path / "votes.onnx")
    assert main(["score", str(tmp_path / "votes.csv"), "--onnx", str(tmp_path / "votes.onnx"),
                 "-o", str(tmp_path / "o.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "o.csv", index_col=0)["score"], scores,
                               rtol=1e-4, atol=1e-4 * np.abs(scores).max())  # float32 graph
    codes = pd.DataFrame({"x": rng.normal(size=60), "level": rng.choice([1, 2], 60)})
    coded = VAEDetector(epochs=2, random_state=0).fit(codes.astype({"level": "category"}))
    (tmp_path / "floats.csv").write_text("x,level\n0.5,1.0\n0.5,2\n")
    read = read_data(tmp_path / "floats.csv", categories=cli._categories_of(coded))
    np.testing.assert_array_equal(coded.score_samples(read),
                                  coded.score_samples(pd.DataFrame({"x": [0.5, 0.5],
                                                                    "level": [1, 2]})))


def test_a_csv_keeps_na_as_text_in_a_text_column_and_a_hole_among_numbers(tmp_path):
    """pandas reads NA, NULL, None, n/a... as missing everywhere: a region column's
    North America became a hole in a third of the rows. Only numbers and booleans read
    them as holes now (R writes NA for a missing number)."""
    (tmp_path / "t.csv").write_text("amount,region,paid,note\n1.5,EU,True,\n"
                                    "NA,NA,NA,None\n2.5,,False,ok\n")
    table = read_data(tmp_path / "t.csv")
    assert table["amount"].isna().tolist() == [False, True, False]
    assert table["region"].tolist()[:2] == ["EU", "NA"] and pd.isna(table["region"][2])
    assert table["paid"].tolist()[::2] == [True, False] and pd.isna(table["paid"][1])
    assert table["note"].tolist()[1:] == ["None", "ok"]             # text: stays text
    (tmp_path / "dup.csv").write_text("a,a,b\n1,2,x\n")
    with pytest.raises(ValueError, match=r"names column\(s\) \['a'\] more than once"):
        read_data(tmp_path / "dup.csv")


def test_a_quoted_name_holding_a_separator_is_one_column(tmp_path):
    (tmp_path / "one.csv").write_text('"x;y"\n1.5\n2.5\n')
    assert read_data(tmp_path / "one.csv").columns.tolist() == ["x;y"]


def test_score_takes_a_hierarchical_model(table):
    """A model that scores by its bound alone writes score and is_outlier, as its ONNX
    scorer does (score_frame used to refuse it, so `vaeanom score --model` failed)."""
    frame, tmp = table
    assert main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model",
                 str(tmp / "h.st"), "--set", "latent_dim=(4, 2)", "--set", "epochs=2"]) == 0
    assert main(["score", str(tmp / "rows.csv"), "--index-col", "patient", "--model",
                 str(tmp / "h.st"), "-o", str(tmp / "s.csv")]) == 0
    scores = pd.read_csv(tmp / "s.csv", index_col="patient")
    assert list(scores.columns) == ["score", "is_outlier"] and scores.index.equals(frame.index)
    expected = VAEDetector.load(tmp / "h.st").score_samples(frame)
    np.testing.assert_allclose(scores["score"], expected, rtol=1e-6)


def test_score_explain_writes_the_top_features(table):
    frame, tmp = table
    main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(tmp / "m.st"),
          "--set", "epochs=2", "--set", "random_state=0"])
    assert main(["score", str(tmp / "rows.csv"), "--index-col", "patient", "--model",
                 str(tmp / "m.st"), "--explain", "3", "-o", str(tmp / "s.csv")]) == 0
    scores = pd.read_csv(tmp / "s.csv", index_col="patient")
    assert list(scores.columns[-6:]) == ["feature_1", "contribution_1", "feature_2",
                                         "contribution_2", "feature_3", "contribution_3"]
    expected = VAEDetector.load(tmp / "m.st").explain(frame).idxmax(axis=1)
    assert (scores["feature_1"] == expected).all()


def test_index_col_is_a_name_before_a_position_in_csv_and_parquet(tmp_path):

    frame = pd.DataFrame({"2024": [10, 11, 12], "id": ["a", "b", "c"], "x": [0.5, 1.5, 2.5]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    for name in ("t.csv", "t.parquet"):
        assert read_data(tmp_path / name, index_col=2024).index.tolist() == [10, 11, 12]
        by_name = read_data(tmp_path / name, index_col="id")
        assert by_name.index.tolist() == ["a", "b", "c"] and list(by_name.columns) == ["2024", "x"]
        assert read_data(tmp_path / name, index_col=2).index.tolist() == [0.5, 1.5, 2.5]
        with pytest.raises(ValueError, match="no column 'nope' for the index"):
            read_data(tmp_path / name, index_col="nope")
    np.save(tmp_path / "t.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no columns to take an index from"):
        read_data(tmp_path / "t.npy", index_col=0)


def test_an_output_name_held_by_a_folder_is_refused_and_the_folder_kept(table, capsys):
    frame, tmp = table
    (tmp / "out.csv").mkdir()
    (tmp / "out.csv" / "part-0.parquet").write_bytes(b"kept")
    main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(tmp / "m.st"),
          "--set", "epochs=2"])
    capsys.readouterr()
    assert main(["score", str(tmp / "rows.csv"), "--index-col", "patient", "--model",
                 str(tmp / "m.st"), "-o", str(tmp / "out.csv")]) == 1
    assert "a folder has that name" in capsys.readouterr().err
    assert (tmp / "out.csv" / "part-0.parquet").read_bytes() == b"kept"


def test_extra_and_reordered_columns_are_scored_by_name_on_every_path(table, caplog):
    frame, tmp = table
    model = tmp / "m.st"
    main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(model),
          "--set", "epochs=2", "--set", "random_state=0"])
    labelled = frame.iloc[:, ::-1].assign(label=0)
    labelled.to_csv(tmp / "labelled.csv")
    assert main(["score", str(tmp / "labelled.csv"), "--index-col", "patient", "--model",
                 str(model), "-o", str(tmp / "s.csv")]) == 0
    assert "leaving out column(s) 'label'" in caplog.text
    scores = pd.read_csv(tmp / "s.csv", index_col="patient")
    np.testing.assert_array_equal(scores["score"], VAEDetector.load(model).score_samples(frame))
    assert main(["export", "--model", str(model), str(tmp / "m.onnx")]) == 0
    labelled.to_parquet(tmp / "labelled.parquet")
    for out in ("o.csv", "o.parquet"):          # loaded whole, and streamed in batches
        assert main(["score", str(tmp / "labelled.parquet"), "--onnx", str(tmp / "m.onnx"),
                     "-o", str(tmp / out)]) == 0
        read = pd.read_csv if out.endswith(".csv") else pd.read_parquet
        np.testing.assert_allclose(read(tmp / out)["score"], scores["score"], rtol=1e-5,
                                   atol=1e-5 * scores["score"].abs().max())   # float32 graph


def test_the_reader_closing_the_pipe_ends_the_command_quietly(table):
    frame, tmp = table
    pd.concat([frame] * 200).to_csv(tmp / "long.csv")      # more than a pipe buffer of scores
    main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(tmp / "m.st"),
          "--set", "epochs=1"])
    command = [_console_script(), "score", str(tmp / "long.csv"), "--index-col", "patient",
               "--model", str(tmp / "m.st")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"patient,score")
    process.stdout.close()                                   # what `| head -1` does
    assert process.wait(timeout=120) == 1
    err = process.stderr.read()
    assert b"Broken pipe" not in err and b"Traceback" not in err and b"Exception" not in err


def test_npy_files_are_accepted(table):
    _, tmp = table
    assert main(["fit", str(tmp / "rows.npy"), "--model", str(tmp / "m.st"), "--set", "epochs=2"]) == 0


def test_export_then_score_with_onnx_matches_the_saved_model(table):
    frame, tmp = table
    model = str(tmp / "m.safetensors")
    assert main(["fit", str(tmp / "rows.parquet"), "--model", model, "--set", "epochs=3",
                 "--set", "random_state=0", "--set", "hidden_dims=(16,)"]) == 0
    assert main(["export", "--model", model, str(tmp / "scorer.onnx")]) == 0
    assert main(["score", str(tmp / "rows.parquet"), "--onnx", str(tmp / "scorer.onnx"),
                 "-o", str(tmp / "scores.csv")]) == 0
    scores = pd.read_csv(tmp / "scores.csv", index_col=0)
    assert scores.index.tolist() == frame.index.tolist()
    expected = VAEDetector.load(model).score_frame(frame)
    # elbo_kl scores are in standard units around 0: compare at float32's resolution
    np.testing.assert_allclose(scores["score"], expected["score"], rtol=1e-5, atol=1e-5)
    assert (scores["is_outlier"] == expected["is_outlier"]).all()
    assert main(["export", "--model", model, "--triton", str(tmp / "repo"), "--name", "cancer",
                 "--part", "encoder"]) == 0
    assert (tmp / "repo" / "cancer" / "config.pbtxt").is_file()
    assert (tmp / "repo" / "cancer" / "1" / "model.onnx").is_file()
    assert main(["export", "--model", model, "--triton", str(tmp / "repo"), "--name",
                 "../up"]) == 1                              # named, before anything is written
    assert main(["export", "--model", model, str(tmp / "x.onnx"), "--name", "x"]) == 1
    assert not (tmp / "up").exists() and not (tmp / "x.onnx").exists()
    assert main(["export", "--model", model, str(tmp / "explaining.onnx"), "--explain"]) == 0
    explained = OnnxModel(tmp / "explaining.onnx").explain(frame)
    pd.testing.assert_index_equal(explained.columns, frame.columns)
    np.testing.assert_allclose(explained, VAEDetector.load(model).explain(frame),
                               rtol=1e-4, atol=1e-4)
    assert main(["score", str(tmp / "rows.parquet"), "--onnx", str(tmp / "explaining.onnx"),
                 "--explain", "2", "-o", str(tmp / "top.csv")]) == 0
    top = pd.read_csv(tmp / "top.csv", index_col=0)
    assert (top["feature_1"] == explained.idxmax(axis=1).to_numpy()).all()
    np.testing.assert_allclose(top["contribution_1"], explained.max(axis=1), rtol=1e-6)
    assert main(["score", str(tmp / "rows.parquet"), "--onnx", str(tmp / "scorer.onnx"),
                 "--explain", "2"]) == 1    # no contributions in that graph: said, no traceback


@pytest.mark.parametrize("argv, message", [
    (["score", "rows.csv", "--model", "m.st", "--onnx", "m.onnx"], "exactly one of --model"),
    (["score", "rows.csv", "--onnx", "missing.onnx"], "no ONNX model"),
    (["export", "--model", "missing.st", "out.onnx"], "no model file"),
    (["score", "missing.csv", "--model", "missing.st"], "no model file"),
    (["fit", "data.txt", "--model", "m.st"], "expected one of .csv"),
    (["fit", "rows.csv", "--model", "m.st", "--set", "latent_dim=-1"], "'latent_dim' must be"),
])
def test_errors_are_one_readable_line(table, capsys, monkeypatch, argv, message):
    _, tmp = table
    monkeypatch.chdir(tmp)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_demo_in_process(tmp_path, capsys):
    from PIL import Image

    figures = tmp_path / "figures"
    assert main(["demo", "--out", str(tmp_path), "--epochs", "5", "--figures",
                 str(figures)]) == 0
    out = capsys.readouterr().out
    assert "VAEDetector" in out and "IsolationForest" in out and "mean" in out
    assert (tmp_path / "reconstructions.png").read_bytes()[:4] == b"\x89PNG"
    sizes = {path.name: Image.open(path).size for path in figures.iterdir()}
    assert sorted(sizes) == sorted(["reconstructions.png", "prior_samples.png",
                                    "interpolation.png", "latent_map.png",
                                    "training_curves.png", "roc.png", "score_histograms.png",
                                    "class_samples.png"])
    assert sizes["class_samples.png"] == (10 * 34 + 2, 10 * 34 + 2)   # 10 per class, 10 classes
    assert sizes["interpolation.png"] == (8 * 34 + 2, 4 * 34 + 2)   # 4 strips of 8 digits
    table = pd.read_csv(tmp_path / "roc_auc.csv", index_col=0)
    assert table.loc["mean", "VAEDetector"] > 0.9  # five epochs already beat chance by far
    VAEDetector.load(tmp_path / "vae-digit0.safetensors")


def test_demo_epochs_are_auto_or_a_positive_int(capsys):
    from vaeanom.cli import build_parser

    assert build_parser().parse_args(["demo"]).epochs == "auto"
    assert build_parser().parse_args(["demo", "--epochs", "7"]).epochs == 7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--epochs", "0"])
    assert "'auto' or a positive int" in capsys.readouterr().err


def _console_script() -> str:
    """The installed ``vaeanom`` command (next to this interpreter when not on PATH)."""
    return shutil.which("vaeanom") or str(Path(sys.executable).with_name("vaeanom"))


def test_installed_console_script(tmp_path):
    exe = _console_script()
    done = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "demo" in done.stdout and "score" in done.stdout
    bad = subprocess.run([exe, "score", "nope.csv", "--model", "nope.st"], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 1 and "no model file" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------- manners
SUMMARY = re.compile(r"fitted (\w+) on (.+) in (\d+\.\d) s; threshold (\S+); saved to (.+)")


def test_fit_prints_one_summary_line(table, digit_images, capsys):
    frame, tmp = table
    model = tmp / "m.safetensors"
    assert main(["fit", str(tmp / "rows.csv"), "--index-col", "patient", "--model", str(model),
                 "--set", "epochs=2"]) == 0
    out, err = capsys.readouterr()
    (line,) = out.splitlines()
    estimator, data, _, threshold, saved = SUMMARY.fullmatch(line).groups()
    assert (estimator, data, saved) == ("VAEDetector", "120 rows x 30 features", str(model))
    assert threshold == f"{VAEDetector.load(model).offset_:.4g}"
    assert err == ""  # standard error is no terminal here: no progress bar
    images, _ = digit_images
    np.save(tmp / "images.npy", images[:40])
    assert main(["fit", str(tmp / "images.npy"), "--model", str(model), "--set", "epochs=1"]) == 0
    assert " on 40 images of 8x8 pixels in " in capsys.readouterr().out


def test_fit_shows_a_progress_bar_only_on_a_terminal(table, capsys, monkeypatch):
    _, tmp = table
    model = tmp / "m.safetensors"
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: True)
    assert main(["fit", str(tmp / "rows.npy"), "--model", str(model), "--set", "epochs=3"]) == 0
    err = capsys.readouterr().err
    assert "fit:" in err and "epoch" in err
    assert VAEDetector.load(model).verbose == 0  # the file does not record the terminal
    assert main(["fit", str(tmp / "rows.npy"), "--model", str(model), "--set", "epochs=3",
                 "--set", "verbose=0"]) == 0  # the user's choice wins
    assert capsys.readouterr().err == ""


def _subcommands() -> list[str]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(action.choices)


@pytest.mark.parametrize("command", [[], *[[name] for name in _subcommands()]],
                         ids=lambda argv: " ".join(argv) or "vaeanom")
def test_help_texts_carry_no_restructuredtext_markup(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vaeanom" in text
    for markup in ("``", ":class:", ":func:", ":meth:", ":mod:", ":attr:"):
        assert markup not in text, f"{markup!r} in vaeanom {' '.join(command)} --help"


def test_plain_text_strips_restructuredtext_roles():
    assert cli.plain_text("The ``vaeanom`` command, see :class:`~vaeanom.VAEDetector` and "
                          ":func:`vaeanom.cli.main`.") == (
        "The vaeanom command, see vaeanom.VAEDetector and vaeanom.cli.main.")


def test_installed_fit_prints_the_summary_line(table):
    _, tmp = table
    done = subprocess.run([_console_script(), "fit", "rows.csv", "--index-col", "patient",
                           "--model", "m.safetensors", "--set", "epochs=2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert SUMMARY.fullmatch(line).group(2, 5) == ("120 rows x 30 features", "m.safetensors")
    assert "epoch" not in done.stderr  # a pipe is no terminal: no progress bar


def test_a_csv_of_8_bit_pixels_scores_with_a_model_fitted_on_uint8_images(tmp_path):
    """pandas reads 0..255 as int64, which a uint8 model refused with a Python-only fix
    (X.astype(np.uint8)); the CLI now reads whole numbers in 0..255 as the bytes they are."""
    from sklearn.datasets import load_digits

    images = (load_digits().images[:200] * 16).clip(0, 255).astype(np.uint8)
    det = VAEDetector(hidden_dims=(16,), latent_dim=2, epochs=2, random_state=0).fit(images)
    det.save(tmp_path / "m.safetensors")
    det.export_onnx(tmp_path / "m.onnx")
    pd.DataFrame(images[:5].reshape(5, -1)).to_csv(tmp_path / "px.csv", index=False)
    expected = det.score_samples(images[:5])
    for source in (["--model", str(tmp_path / "m.safetensors")],
                   ["--onnx", str(tmp_path / "m.onnx")]):
        out = tmp_path / "scores.csv"
        assert main(["score", str(tmp_path / "px.csv"), *source, "-o", str(out)]) == 0
        np.testing.assert_allclose(pd.read_csv(out, index_col=0)["score"], expected,
                                   rtol=1e-5, atol=1e-4)
    # streamed (Parquet in and out, an ONNX scorer): int64, as pandas writes Parquet, too
    pd.DataFrame(images[:5].reshape(5, -1).astype(np.int64),
                 columns=[str(i) for i in range(64)]).to_parquet(tmp_path / "px.parquet")
    assert main(["score", str(tmp_path / "px.parquet"), "--onnx", str(tmp_path / "m.onnx"),
                 "-o", str(tmp_path / "scores.parquet")]) == 0
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "scores.parquet")["score"], expected,
                               rtol=1e-5, atol=1e-4)
    # in memory, from a Parquet file of pandas' nullable integers
    pd.DataFrame(images[:5].reshape(5, -1), columns=[str(i) for i in range(64)]).astype(
        "Int64").to_parquet(tmp_path / "nullable.parquet")
    assert main(["score", str(tmp_path / "nullable.parquet"), "--model",
                 str(tmp_path / "m.safetensors"), "-o", str(out)]) == 0
    np.testing.assert_allclose(pd.read_csv(out, index_col=0)["score"], expected,
                               rtol=1e-5, atol=1e-4)
    pd.DataFrame(images[:5].reshape(5, -1).astype(int) * 2).to_csv(tmp_path / "big.csv",
                                                                     index=False)
    assert main(["score", str(tmp_path / "big.csv"), "--onnx", str(tmp_path / "m.onnx")]) == 1
