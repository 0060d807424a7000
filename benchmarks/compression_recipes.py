"""Training recipes for the default codec on a CPU: fit time against quality, test pool unseen.

Issue 19 asks for the default ``VQVAEDetector`` (K = 1024, the benchmark's
default operating point) to fit on the 48000 training images in under 10
minutes on 2 CPU cores, within 0.2 dB of the 30-epoch float32 default of
the time (the "fp32" recipe; the "default" recipe is today's). Each
recipe here is fitted on the training pool of ``compression.py`` and judged
by its PSNR on every 6th training image (8000): a criterion that never looks
at the test pool, so a recipe chosen here can then be reported on it. (The
gap between the two pools is small for these networks: the CPU-fitted
default scores 26.88 dB on the training pool and 26.85 dB on the test pool.)

Models are saved in ``--models-dir`` under the names ``compression.py`` uses
(``vq7x7-k1024`` for the default), with their fit time, so both scripts share
fits:

    python benchmarks/compression_recipes.py --data-dir ../shared/data \\
        --models-dir /tmp/cpu_models --recipes default,fp32,cpu,bf16
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pandas as pd

from _common import DEFAULT_DATA_DIR, load_fashion, versions, write_results
from compression import (BF16_RECIPE, CPU_RECIPE, FIT_SECONDS_TARGET, FP32_RECIPE,
                         fit_or_load, split)

CODEBOOK = 1024
#: name -> VQVAEDetector parameters on top of codebook_size=CODEBOOK
RECIPES = {
    # 48 and 96 channels, bfloat16 where the CPU has it, 22 epochs at 2e-3 (session 16's
    # "c48" recipe ran 25 epochs: 562 s, -0.03 dB; 22 leaves room under the 600 s target)
    "default": {},
    # the default until session 17: 64 and 128 channels, 30 epochs at 1e-3 in float32
    "fp32": FP32_RECIPE,
    "cpu": CPU_RECIPE,
    # the fp32 network in bfloat16 (about 1.6x its float32 images per second on this
    # CPU) at twice the rate, for as many epochs as fit in 10 minutes
    "bf16": BF16_RECIPE,
}
#: a recipe may lose at most this much PSNR against the default (issue 19)
TOLERANCE_DB = 0.2


def model_name(recipe: str) -> str:
    """The file name compression.py gives the same model."""
    return f"vq7x7-k{CODEBOOK}" if recipe == "default" else f"vq7x7-k{CODEBOOK}-{recipe}"


def judge(detector, images: np.ndarray, train: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) of the 8-bit reconstructions of ``images``, and the bits per pixel of
    their codes under the model's context model (the Shannon length of one blob).

    Networks are compared on their nearest codes (rate_weight 0, the context model
    counted on ``train`` again): a rate weight moves a model along its own curve.
    """
    from vaeanom.compression import ideal_bits, psnr, to_uint8

    if detector.rate_weight:
        detector = copy.deepcopy(detector).set_params(rate_weight=0.0).refit_code_model(train)
    codes = detector.compression_codes(images)
    return {"training_psnr": float(psnr(images, to_uint8(detector.decode(codes))).mean()),
            "training_bpp": ideal_bits(detector, codes) / images.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models-dir", type=Path, default=Path("benchmark-models"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--name", default="compression_recipes")
    args = parser.parse_args()
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        parser.error(f"unknown --recipes {sorted(unknown)}; choose from {list(RECIPES)}")

    train, _ = split(*load_fashion(args.data_dir))
    judged = train[::6]
    rows = []
    for recipe in args.recipes.split(","):
        params = {"codebook_size": CODEBOOK, **RECIPES[recipe]}
        detector, fit_s, device = fit_or_load(model_name(recipe), params, train,
                                              args.models_dir, args.device)
        rows.append({"recipe": recipe, "params": str(RECIPES[recipe]), "fit_s": fit_s,
                     "fit_device": device, **judge(detector, judged, train),
                     "perplexity": detector.perplexity_})
        print(rows[-1], flush=True)
    results = pd.DataFrame(rows)
    if "fp32" in set(results.recipe):
        reference = results.set_index("recipe").loc["fp32"]
        results["db_vs_fp32"] = results.training_psnr - reference.training_psnr
        results["bpp_vs_fp32"] = results.training_bpp / reference.training_bpp
        results["meets_target"] = ((results.db_vs_fp32 >= -TOLERANCE_DB)
                                   & (results.bpp_vs_fp32 <= 1.0)
                                   & (results.fit_s <= FIT_SECONDS_TARGET))
    table = results.to_markdown(index=False, floatfmt=".3f")
    print("\n" + table)
    markdown = "\n\n".join([
        f"# Codec training recipes (K = {CODEBOOK}, {len(train)} training images)",
        f"training_psnr: mean PSNR of every 6th training image ({len(judged)}); training_bpp: "
        "the Shannon length of their codes under the model's context model, per pixel (one "
        "blob, no container). The test pool is not used. Target (meets_target): fit_s <= "
        f"{FIT_SECONDS_TARGET} on 2 CPU cores, at most {TOLERANCE_DB} dB below the fp32 "
        "recipe (the default until session 17) and no more bits. fit_s is recorded when a "
        "model is fitted (timings vary 20-45% between runs).", table])
    write_results(args.name, {"benchmark": "compression_recipes", "recipes": RECIPES,
                              "results": results.to_dict(orient="records"),
                              "versions": versions("torch", "vaeanom")}, markdown)


if __name__ == "__main__":
    main()
