"""How the default rate_weight was chosen: on training images only, against WebP method 6.

``VQVAEDetector(rate_weight=w)`` lets ``compress`` take, at each position, a
nearby code that is cheaper in its context (see
:func:`vaeanom.code_model.choose_codes`). For each weight, the default
network of ``compression.py`` has its context model counted on 5/6 of the
training pool (at that weight) and is judged on the other 1/6 (every 6th
training image, 8000): mean PSNR, and the Shannon length of their codes plus
the 4-byte container, per pixel. WebP method 6 compresses the same images,
and ``bpp_vs_webp_m6`` divides our bits by WebP's at the same PSNR. The test
pool is not used, so the weight chosen here is reported on it by
``compression.py``.

    python benchmarks/compression_rate_weight.py --data-dir ../shared/data \\
        --models-dir /tmp/cpu_models
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import pandas as pd

from _common import DEFAULT_DATA_DIR, load_fashion, versions, write_results
from compression import (DEFAULT_POINT, OPERATING_POINTS, WEBP_STRONG_QUALITIES, fit_or_load,
                         pillow_codec, rate_ratios, split)

WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
#: single-image container bytes of format 3 (tag and CRC-24)
CONTAINER_BYTES = 4


def weight_row(detector, weight: float, counted: np.ndarray, judged: np.ndarray) -> dict:
    from vaeanom.compression import ideal_bits, psnr, to_uint8

    model = copy.deepcopy(detector).set_params(rate_weight=weight).refit_code_model(counted)
    codes = model.compression_codes(judged)
    bits = ideal_bits(model, codes) / len(judged) + 8 * CONTAINER_BYTES
    return {"codec": "vaeanom VQ-VAE", "setting": f"rate_weight {weight:g}",
            "psnr": float(psnr(judged, to_uint8(model.decode(codes))).mean()),
            "bpp": bits / judged[0].size}


def webp_rows(judged: np.ndarray) -> list[dict]:
    from vaeanom.compression import psnr

    rows = []
    for quality in WEBP_STRONG_QUALITIES:
        blobs, decoded, *_ = pillow_codec(judged, "WEBP", quality=quality, method=6)
        rows.append({"codec": "WebP method 6", "setting": f"quality {quality}",
                     "psnr": float(psnr(judged, decoded).mean()),
                     "bpp": float(np.mean([len(b) for b in blobs])) * 8 / judged[0].size})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--models-dir", type=Path, default=Path("benchmark-models"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--name", default="compression_rate_weight")
    args = parser.parse_args()

    train, _ = split(*load_fashion(args.data_dir))
    judged_at = np.arange(0, len(train), 6)
    judged, counted = train[judged_at], np.delete(train, judged_at, axis=0)
    detector, _, _ = fit_or_load(DEFAULT_POINT, OPERATING_POINTS[DEFAULT_POINT], train,
                                 args.models_dir, args.device)
    rows = [weight_row(detector, weight, counted, judged) for weight in WEIGHTS]
    results = pd.DataFrame(rows + webp_rows(judged))
    results["bpp_vs_webp_m6"] = rate_ratios(results, "WebP method 6")
    ours = results[results.codec == "vaeanom VQ-VAE"]
    table = ours.to_markdown(index=False, floatfmt=".4f")
    print("\n" + table)
    markdown = "\n\n".join([
        f"# Choosing rate_weight on training images ({DEFAULT_POINT})",
        f"Context model counted on {len(counted)} training images at each weight; PSNR and "
        f"bits (Shannon length + {CONTAINER_BYTES}-byte container) on the other "
        f"{len(judged)} (every 6th). bpp_vs_webp_m6: our bpp over WebP method 6's at the "
        "same PSNR on the same images. The test pool is not used.", table])
    write_results(args.name, {"benchmark": "compression_rate_weight", "weights": WEIGHTS,
                              "results": results.to_dict(orient="records"),
                              "versions": versions("vaeanom", "torch", "pillow")}, markdown)


if __name__ == "__main__":
    main()
