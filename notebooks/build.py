"""Write the tutorial notebooks from the cells below and execute them in a Jupyter kernel.

    python notebooks/build.py            # every notebook, outputs and figures saved in it
    python notebooks/build.py images     # one of them

The notebooks are committed with their outputs, so GitHub shows the results;
this script is how they are made, so a change to a tutorial is a change here,
run once. Each notebook's first code cell (tagged ``parameters``) holds the
settings the tests shrink (``tests/test_notebooks.py`` runs every notebook in a
real kernel with a cell of small values injected after it, as papermill does).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

TABLES = [
    ("markdown", """# Tables in pandas: fit, score, evaluate, explain

A table as it comes from a database: numbers, a categorical column and missing
values. `VAEDetector` takes the DataFrame as it is (no encoding, no imputing),
scores every row, and says which columns made a row unusual.

The data: the breast-cancer table that ships with scikit-learn, with a
categorical `size_band` column (small / medium / large by mean radius) and 5%
of the entries knocked out. Benign tumours train; the test set holds the other
benign rows (normal) and the malignant ones (anomalies)."""),
    ("parameters", """EPOCHS = "auto"      # the tests run with fewer"""),
    ("code", """import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from IPython.display import Image, display

from vaeanom import VAEDetector, evaluate

data = load_breast_cancer(as_frame=True)
table = data.frame.drop(columns="target")
table["size_band"] = pd.cut(table["mean radius"], [0, 12, 16, 100],
                            labels=["small", "medium", "large"]).astype(str)
rng = np.random.default_rng(0)
holes = rng.random(table.shape) < 0.05
table = table.mask(holes)                       # NaN in numbers, NaN in size_band too
anomaly = (data.target == 0).astype(int)        # malignant
benign = np.flatnonzero(anomaly == 0)
train = rng.choice(benign, 200, replace=False)
test = np.setdiff1d(np.arange(len(table)), train)
table.iloc[:3, [0, 1, -1]]"""),
    ("code", """det = VAEDetector(epochs=EPOCHS, random_state=0).fit(table.iloc[train])
evaluate(det, table.iloc[test], anomaly.iloc[test], plots_to=".")"""),
    ("markdown", """ROC-AUC and average precision rank by the score; precision, recall and F1 use
the threshold `offset_` that `fit` set (10% of the training rows flagged).
`evaluate` also drew the ROC curve and the score histograms:"""),
    ("code", """display(Image("roc.png"), Image("scores.png"))"""),
    ("markdown", """## One row per input row, same index

`score_frame` gives the score and its parts; `explain=3` adds the three
columns that contributed most to each row's anomaly, in nats."""),
    ("code", """frame = det.score_frame(table.iloc[test], explain=3)
frame.sort_values("score").head(5)"""),
    ("markdown", """## A contextual anomaly

Take a large benign tumour and call it `small`: every number is typical, the
combination is not. The explanation names the column that disagrees with the
others."""),
    ("code", """row = table.iloc[test][(table.iloc[test]["size_band"] == "large")
                     & (anomaly.iloc[test] == 0)].iloc[[0]]
liar = row.assign(size_band="small")
pd.concat({"as recorded": det.score_frame(row, explain=2),
           "called small": det.score_frame(liar, explain=2)})[
    ["score", "is_outlier", "feature_1", "contribution_1"]]"""),
    ("code", """det.explain(liar).T.sort_values(liar.index[0], ascending=False).head(5)"""),
    ("markdown", """## Training curves

`history_` holds one record per epoch: loss, ELBO, reconstruction and KL."""),
    ("code", """pd.DataFrame(det.history_).set_index("epoch")[["elbo", "reconstruction", "kl"]].plot(
    subplots=True, figsize=(7, 5));"""),
]

IMAGES = [
    ("markdown", """# Images: latent map, samples, interpolation, the conditional and the hierarchical VAE

scikit-learn's 8x8 digits, as images `(n, 8, 8)` in [0, 1]. One VAE learns all
ten digits without labels; a conditional VAE learns them with labels and draws
the class it is asked for; a hierarchical VAE scores a digit it never saw."""),
    ("parameters", """EPOCHS = "auto"      # the tests run with fewer"""),
    ("code", """import numpy as np
import pandas as pd
from IPython.display import Image, display
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from vaeanom import VAEDetector, plotting

digits, labels = load_digits(return_X_y=True)
images = (digits / 16.0).reshape(-1, 8, 8)
vae = VAEDetector(epochs=EPOCHS, random_state=0).fit(images)
vae.history_[-1]"""),
    ("markdown", """## The latent map

The posterior means of every digit, projected on their first two principal
components, coloured by the label the VAE never saw."""),
    ("code", """plotting.save_latent_map(vae.encode(images), labels, "latent_map.png",
                         "posterior means, coloured by digit")
display(Image("latent_map.png"))"""),
    ("markdown", """## Prior samples and an interpolation

`sample` decodes z ~ N(0, I); `interpolate` walks the great circle between
two digits' codes, and its ends are exactly their reconstructions."""),
    ("code", """plotting.save_image_grid(vae.sample(32, random_state=0), "prior_samples.png", nrow=16)
zero, one = images[labels == 0][0], images[labels == 1][0]
path = vae.interpolate(zero, one, n_steps=10, method="spherical")
plotting.save_image_grid(path, "interpolation.png", nrow=10)
display(Image("prior_samples.png"), Image("interpolation.png"))"""),
    ("markdown", """## The conditional VAE: ask for a digit

`conditional=True` learns p(x | y). `sample(10, y=c)` draws ten of class c:
one row per digit below. A classifier trained on the real digits reads them."""),
    ("code", """from sklearn.linear_model import LogisticRegression

cvae = VAEDetector(conditional=True, epochs=EPOCHS, random_state=0).fit(images, labels)
grid = np.concatenate([cvae.sample(10, random_state=c, y=c) for c in range(10)])
plotting.save_image_grid(grid, "class_samples.png", nrow=10)
display(Image("class_samples.png"))
reader = LogisticRegression(max_iter=2000).fit(digits / 16.0, labels)
read_as = reader.predict(grid.reshape(len(grid), -1))
print(f"recognised as the class asked for: {np.mean(read_as == np.repeat(np.arange(10), 10)):.0%}")"""),
    ("markdown", """## The hierarchical VAE scores a digit it never saw

Fit on every digit but 0, with two latent layers (`latent_dim=(16, 4)`), then
rank every image by each score kind: the zeros are the anomalies. `llr` is
Havtorn et al.'s likelihood ratio; the figures of the Fashion-MNIST benchmark
are in the README."""),
    ("code", """normal = images[labels != 0]
hvae = VAEDetector(latent_dim=(16, 4), epochs=EPOCHS, random_state=0).fit(normal)
is_zero = (labels == 0).astype(int)
pd.Series({kind: roc_auc_score(is_zero, -hvae.set_params(score_kind=kind).score_samples(images))
           for kind in ("elbo", "iwae", "llr", "elbo_complexity")}, name="ROC-AUC").to_frame()"""),
    ("markdown", """The bounds find the zeros; `llr` ranks them as *more* normal than the
digits it was trained on (ROC-AUC below 0.5): a held-out digit shares the
low-level statistics of the others, which is what the ratio cancels, and what
is left does not point at the zeros. It was built for inputs from another data
set. `elbo_complexity`, the image default chosen on 28x28 Fashion-MNIST, also
does worse than the plain ELBO on these 8x8 digits."""),
    ("code", """pd.DataFrame(hvae.history_).set_index("epoch")[["kl_1", "kl_2"]].plot(
    title="KL per layer (bottom first)", figsize=(6, 3));"""),
]

NOTEBOOKS = {"tables": TABLES, "images": IMAGES}


def notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for kind, source in cells:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind == "parameters":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, folder: Path, timeout: int = 900) -> None:
    """Run every cell in a fresh python3 kernel with ``folder`` as its working directory."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()


def main(names: list[str]) -> None:
    for name in names or NOTEBOOKS:
        nb = notebook(NOTEBOOKS[name])
        with tempfile.TemporaryDirectory() as scratch:    # the figures' files go there
            execute(nb, Path(scratch))
        for cell in nb.cells:            # ids and timings would make every rebuild a diff
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, HERE / f"{name}.ipynb")
        print(f"wrote {HERE / name}.ipynb")


if __name__ == "__main__":
    main(sys.argv[1:])
