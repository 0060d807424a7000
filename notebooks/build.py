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

Take the large benign tumour the model finds most typical and call it `small`:
every number is as it was, the combination is not. The explanation names the
column that disagrees with the others."""),
    ("code", """held_out = table.iloc[test]
large_benign = held_out[(held_out["size_band"] == "large") & (anomaly.iloc[test] == 0)]
row = large_benign.iloc[[np.argmax(det.score_samples(large_benign))]]
liar = row.assign(size_band="small")
pd.concat({"as recorded": det.score_frame(row, explain=2),
           "called small": det.score_frame(liar, explain=2)})[
    ["score", "is_outlier", "feature_1", "contribution_1"]]"""),
    ("code", """det.explain(liar).T.sort_values(liar.index[0], ascending=False).head(5)"""),
    ("markdown", """The lie costs the row several nats in `size_band`, and its score falls,
though here not past the threshold: the score weighs every column and the
row's place in the latent space, and one category out of line is a small part
of that. A row need not be flagged for `explain` to say which of its columns is
out of line; rank by a column's contribution to hunt for such rows."""),
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
does worse than the plain ELBO on these 8x8 digits.

Each layer's KL term over training: a hierarchy warms up (`kl_warmup="auto"`,
the KL weight rising from 0 over the first third of the epochs), so the bottom
layer first takes what it needs; as the weight reaches 1 the top layer, which
starts later, takes over part of the code. A layer whose KL stayed at 0 would
have collapsed onto its prior."""),
    ("code", """pd.DataFrame(hvae.history_).set_index("epoch")[["kl_1", "kl_2"]].plot(
    title="KL per layer (bottom first)", figsize=(6, 3));"""),
]

COMPRESSION = [
    ("markdown", """# Compression: images to bytes and back

A VQ-VAE maps each image to a small grid of integer codes; `compress`
range-codes them under a context model learned in fit (each code predicted
from its left, upper and upper-right neighbours), and `decompress` gives the
images back. The bits per pixel (bpp) and the PSNR trace a
rate-distortion curve as the codebook grows. The images: scikit-learn's 8x8
digits as uint8 (0-255); the README has the 28x28 Fashion-MNIST figures
against JPEG and WebP."""),
    ("parameters", """EPOCHS = 20          # the tests run with fewer"""),
    ("code", """import numpy as np
import pandas as pd
from IPython.display import Image, display
from sklearn.datasets import load_digits

from vaeanom import VQVAEDetector, plotting

digits, _ = load_digits(return_X_y=True)
images = np.clip(digits * 16, 0, 255).astype(np.uint8).reshape(-1, 8, 8)
train, test = images[:1400], images[1400:]

vq = VQVAEDetector(codebook_size=32, conv_channels=(32,), epochs=EPOCHS,
                   random_state=0).fit(train)
blob = vq.compress(test)
back = vq.decompress(blob)
print(f"{len(test)} images, {test.nbytes} bytes raw -> {len(blob)} bytes "
      f"({8 * len(blob) / test.size:.2f} bits per pixel); codes per image: "
      f"{vq.encode(test[:1]).shape[1:]}")"""),
    ("code", """plotting.save_image_grid(np.concatenate([test[:12], back[:12]]) / 255.0,
                         "round_trip.png", nrow=12, scale=6)
display(Image("round_trip.png"))   # top: originals, bottom: decompressed"""),
    ("markdown", """`decompress` is exactly `decode(encode(x))` rounded to uint8, and a
damaged blob is refused, never decoded into wrong images:"""),
    ("code", """from vaeanom.compression import CorruptBlobError

damaged = bytearray(blob)
damaged[len(damaged) // 2] ^= 0xFF
try:
    vq.decompress(bytes(damaged))
except CorruptBlobError as err:
    print("refused:", err)"""),
    ("markdown", """## Rate and distortion

One model per codebook size; the rate is the real size of the blob."""),
    ("code", """def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)

rows = []
for size in (4, 16, 64, 256):
    model = VQVAEDetector(codebook_size=size, conv_channels=(32,), epochs=EPOCHS,
                          random_state=0).fit(train)
    blob = model.compress(test)
    rows.append({"codebook_size": size, "bpp": 8 * len(blob) / test.size,
                 "psnr_db": psnr(test, model.decompress(blob))})
curve = pd.DataFrame(rows).set_index("codebook_size")
curve"""),
    ("code", """ax = curve.plot(x="bpp", y="psnr_db", marker="o", legend=False, figsize=(5, 3.5),
                title="VQ-VAE on 8x8 digits")
ax.set_xlabel("bits per pixel")
ax.set_ylabel("PSNR (dB)");"""),
]

SERVING = [
    ("markdown", """# ONNX export and serving

Export a fitted detector to one ONNX file, score it without torch
(`OnnxModel`), then serve it over the Open Inference Protocol with
`vaeanom serve` and call it with Triton's own client and plain HTTP."""),
    ("parameters", """EPOCHS = "auto"      # the tests run with fewer"""),
    ("code", """import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

from vaeanom import OnnxModel, VAEDetector

X, y = load_breast_cancer(return_X_y=True, as_frame=True)
det = VAEDetector(epochs=EPOCHS, random_state=0).fit(X[y == 1])
det.export_onnx("scorer.onnx")
onnx = OnnxModel("scorer.onnx")                 # onnxruntime only: no torch
gap = np.abs(onnx.score_samples(X) - det.score_samples(X)).max()
print(f"largest difference to score_samples over {len(X)} rows: {gap:.2e}")"""),
    ("code", """with socket.socket() as sock:                   # a free port
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
vaeanom = Path(sys.executable).parent / "vaeanom"
server = subprocess.Popen([str(vaeanom), "serve", "scorer.onnx", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def ready():
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready").status == 200
    except OSError:
        return False

deadline = time.time() + 120
while not ready() and time.time() < deadline:
    time.sleep(0.2)
print("ready:", ready())"""),
    ("markdown", """Triton's HTTP client, unchanged, against the Open Inference Protocol:"""),
    ("code", """import tritonclient.http as http

client = http.InferenceServerClient(f"127.0.0.1:{port}")
rows = X.to_numpy(np.float32)[:5]
tensor = http.InferInput("input", list(rows.shape), "FP32")
tensor.set_data_from_numpy(rows, binary_data=True)
served = client.infer("scorer", [tensor]).as_numpy("score")
print(served)
print("same as OnnxModel:", np.allclose(served, onnx.score_samples(rows)))"""),
    ("markdown", """And plain JSON records by column name, with the verdict:"""),
    ("code", """records = X.iloc[:2].to_dict(orient="records")
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/scorer/score",
                                 data=json.dumps(records).encode(), method="POST")
print(json.dumps(json.load(urllib.request.urlopen(request)), indent=1)[:400])"""),
    ("code", """server.terminate()
print("server exit code:", server.wait(timeout=60))"""),
]

NOTEBOOKS = {"tables": TABLES, "images": IMAGES, "compression": COMPRESSION,
             "serving": SERVING}


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
