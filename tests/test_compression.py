"""compress / decompress: exact round trips, near-ideal sizes, every corruption caught, CLI."""

import copy
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from vaeanom import VQVAEDetector, compression
from vaeanom.code_model import ContextModel

from .blobs import v1_blob, v2_blob
from vaeanom.cli import main
from vaeanom.compression import (CorruptBlobError, compress, decompress, ideal_bits,
                                 to_uint8)

SMALL = dict(codebook_size=16, code_dim=4, epochs=3, batch_size=64, random_state=0)


@pytest.fixture(scope="module")
def codecs(digit_images):
    """Two image codecs of different shapes: 8x8 digits (2x2 codes), 7x5 crops (4x3 codes)."""
    images, _ = digit_images
    square = VQVAEDetector(conv_channels=(8, 16), **SMALL).fit(images[:600])
    crops = VQVAEDetector(conv_channels=(8,), **SMALL).fit(images[:600, :7, 1:6])
    return {"square": (square, images), "crops": (crops, images[:, :7, 1:6])}


@settings(max_examples=30)
@given(data=st.data())
def test_round_trip_equals_decode_of_encode_and_size_is_near_ideal(codecs, data):
    detector, images = codecs[data.draw(st.sampled_from(sorted(codecs)), label="codec")]
    n = data.draw(st.integers(1, 40), label="n")
    if data.draw(st.booleans(), label="noise"):
        batch = data.draw(arrays(np.uint8, (n, *images.shape[1:])), label="images")
    else:
        start = data.draw(st.integers(0, len(images) - n), label="start")
        batch = images[start:start + n]
    blob = compress(detector, batch)
    decoded = decompress(detector, blob)
    codes = detector.compression_codes(batch)
    expected = to_uint8(detector.decode(codes))
    assert decoded.dtype == np.uint8 and decoded.shape == batch.shape
    np.testing.assert_array_equal(decoded, expected)
    payload_bits = 8 * (len(blob) - _header_and_checksum_bytes(blob))
    ideal = ideal_bits(detector, codes)
    assert payload_bits <= 1.01 * ideal + 64    # one 32-bit word of flush, plus rounding up


def _coded(detector, images: np.ndarray) -> np.ndarray:
    """What a blob of ``images`` must decompress to: the decoded codes compress chose."""
    size = images.shape[-2:]
    return to_uint8(detector.decode(detector.compression_codes(images), image_size=size))


def _header_and_checksum_bytes(blob: bytes) -> int:
    # tag, for several images the varint (n - 1) * 2 (one byte below 64 images), CRC-24
    if blob[0] == compression.TAG_ONE:
        return 1 + 3
    _, offset = compression.read_varint(blob, 1)
    return offset + 3


def test_batch_and_per_image_streams_decode_to_the_same_images(codecs):
    detector, images = codecs["square"]
    together = decompress(detector, compress(detector, images[600:650]))
    one_by_one = np.concatenate([decompress(detector, compress(detector, image[None]))
                                 for image in images[600:650]])
    np.testing.assert_array_equal(together, one_by_one)


def test_threads_sharing_a_model_write_and_read_the_same_blobs(codecs):
    detector, images = codecs["square"]
    batches = [images[i:i + 1 + i % 5] for i in range(0, 400, 20)]
    alone = [compress(detector, batch) for batch in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda batch: compress(detector, batch), batches))
        decoded = list(pool.map(lambda blob: decompress(detector, blob), together))
    assert together == alone
    for batch, images_back in zip(batches, decoded):
        np.testing.assert_array_equal(images_back, _coded(detector, batch))


def test_decompression_is_deterministic(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:100])
    assert compress(detector, images[:100]) == blob
    np.testing.assert_array_equal(decompress(detector, blob), decompress(detector, blob))


@pytest.mark.parametrize("n, size", [(1, None), (3, None), (3, (12, 20))])
def test_every_byte_flip_and_every_truncation_is_detected(codecs, n, size):
    detector, images = codecs["square"]
    blob = compress(detector, images[:n] if size is None else _tiled(images[:n], size))
    for position in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            corrupt = bytearray(blob)
            corrupt[position] ^= mask
            with pytest.raises(CorruptBlobError):
                decompress(detector, bytes(corrupt))
    for length in range(len(blob)):
        with pytest.raises(CorruptBlobError):
            decompress(detector, blob[:length])
    for extra in range(256):  # the CRC itself refuses a byte appended (compression.crc24)
        with pytest.raises(CorruptBlobError, match="CRC-24"):
            decompress(detector, blob + bytes([extra]))


def test_wrong_model_and_unknown_version_have_clear_errors(codecs, digit_images):
    detector, images = codecs["square"]
    blob = compress(detector, images[:2])
    other = VQVAEDetector(conv_channels=(8, 16), **{**SMALL, "random_state": 1})
    other.fit(digit_images[0][:600])
    with pytest.raises(CorruptBlobError, match="another model"):
        decompress(other, blob)
    newer = bytearray(blob)
    newer[0] = compression.TAG_FAMILY | 5
    with pytest.raises(CorruptBlobError, match="tag 0xb5, from a newer vaeanom"):
        decompress(detector, bytes(newer))
    newer[0] = compression.TAG_FAMILY | 1
    with pytest.raises(CorruptBlobError, match="never written"):
        decompress(detector, bytes(newer))
    with pytest.raises(CorruptBlobError, match="bad tag byte"):
        decompress(detector, b"PK\x03\x04" + blob[4:])
    with pytest.raises(CorruptBlobError, match="bad tag byte"):
        decompress(detector, b"")


def test_a_single_image_costs_four_bytes_besides_its_payload(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:1])
    payload = compression.encode_codes(detector.compression_codes(images[:1]),
                                       compression.context_model(detector))
    assert blob == compression.seal(detector, bytes([compression.TAG_ONE]) + payload)
    assert len(blob) == len(payload) + 4
    two = compress(detector, images[:2])
    assert two[:2] == bytes([compression.TAG_MANY, 2])


def test_the_checksum_is_the_standard_crc_24():
    # CRC-24/INTERLAKEN's check value in the catalogue of parametrised CRC algorithms
    assert compression.crc24(b"123456789") == 0xB4F3E6
    assert compression.crc24(b"6789", compression.crc24(b"12345", final=False)) == 0xB4F3E6


def test_the_one_suffix_that_reseals_any_blob_is_caught_by_the_payload_check(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:1])
    resealed = blob + bytes.fromhex("ebb19c")        # CRC-24/INTERLAKEN's residue
    assert compression.seal(detector, resealed[:-3]) == resealed
    with pytest.raises(CorruptBlobError, match="not exactly the code"):
        decompress(detector, resealed)


def test_one_image_of_the_fitted_size_has_one_form(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:1])
    long_form = compression.seal(detector, bytes([compression.TAG_MANY, 0]) + blob[1:-3])
    with pytest.raises(CorruptBlobError, match="writes with tag 0xb3"):
        decompress(detector, long_form)


def test_version_2_blobs_still_decompress_with_every_check(codecs):
    detector, images = codecs["square"]
    for n in (1, 3):
        blob = v2_blob(detector, images[:n])              # format 2 wrote the nearest codes
        np.testing.assert_array_equal(decompress(detector, blob),
                                      to_uint8(detector.decode(detector.encode(images[:n]))))
        for cut in range(len(blob)):
            with pytest.raises(CorruptBlobError):
                decompress(detector, blob[:cut])
        with pytest.raises(CorruptBlobError, match="CRC-32"):
            decompress(detector, blob[:-1] + bytes([blob[-1] ^ 1]))


def test_row_models_refuse_to_compress(cancer):
    X, _ = cancer
    rows = VQVAEDetector(codebook_size=8, epochs=1, random_state=0).fit(X)
    with pytest.raises(ValueError, match="fitted on rows"):
        rows.compress(X.to_numpy())
    with pytest.raises(ValueError, match="image model"):
        rows.refit_code_model(X)


# ---------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def saved_codec(codecs, tmp_path_factory):
    detector, images = codecs["square"]
    path = tmp_path_factory.mktemp("model") / "vq.safetensors"
    detector.save(path)
    return path, detector, images


def test_cli_round_trips_npy_png_and_folders(saved_codec, tmp_path):
    model, detector, images = saved_codec
    expected = _coded(detector, images[:5])
    np.save(tmp_path / "in.npy", images[:5])
    assert main(["compress", "--model", str(model), str(tmp_path / "in.npy"),
                 str(tmp_path / "all.vq")]) == 0
    assert main(["decompress", "--model", str(model), str(tmp_path / "all.vq"),
                 str(tmp_path / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:5]):
        Image.fromarray(image).save(folder / f"img{i}.png")
    wide = _tiled(images[:1], (12, 20))                       # PNGs may differ in size
    Image.fromarray(wide[0]).save(folder / "wide.png")
    assert main(["compress", "--model", str(model), str(folder), str(tmp_path / "blobs")]) == 0
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [
        *(f"img{i}.vq" for i in range(5)), "wide.vq"]
    assert main(["decompress", "--model", str(model), str(tmp_path / "blobs"),
                 str(tmp_path / "back")]) == 0
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back" / f"img{i}.png")),
                                      expected[i])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back" / "wide.png")),
                                  _coded(detector, wide)[0])

    assert main(["compress", "--model", str(model), str(folder / "img0.png"),
                 str(tmp_path / "one.vq")]) == 0
    assert main(["decompress", "--model", str(model), str(tmp_path / "one.vq"),
                 str(tmp_path / "one.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png")), expected[0])


def test_cli_errors_leave_no_output(saved_codec, tmp_path, capsys):
    model, detector, images = saved_codec
    blob = detector.compress(images[:2])
    (tmp_path / "bad.vq").write_bytes(blob[:-1])
    assert main(["decompress", "--model", str(model), str(tmp_path / "bad.vq"),
                 str(tmp_path / "out.npy")]) == 1
    assert "corrupt, truncated" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a.vq").write_bytes(detector.compress(images[:1]))
    (blobs / "b.vq").write_bytes(b"garbage")
    assert main(["decompress", "--model", str(model), str(blobs), str(tmp_path / "pngs")]) == 1
    assert not (tmp_path / "pngs").exists()          # a.png was not written either


def test_cli_reads_palette_pngs_as_colours_and_refuses_clashes_before_writing(
        saved_codec, tmp_path, capsys):
    model, detector, images = saved_codec
    grey = Image.fromarray(images[0])
    grey.save(tmp_path / "grey.png")
    grey.convert("P").save(tmp_path / "palette.png")       # the same picture, as indices
    for name in ("grey", "palette"):
        assert main(["compress", "--model", str(model), str(tmp_path / f"{name}.png"),
                     str(tmp_path / f"{name}.vq")]) == 0
    assert (tmp_path / "palette.vq").read_bytes() == (tmp_path / "grey.vq").read_bytes()
    folder = tmp_path / "clash"
    folder.mkdir()
    grey.save(folder / "a.png")
    grey.save(folder / "a.PNG")
    assert main(["compress", "--model", str(model), str(folder), str(tmp_path / "out")]) == 1
    assert "would both write the blob a.vq" in capsys.readouterr().err
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for name in ("a", "b", "c"):
        (blobs / f"{name}.vq").write_bytes(detector.compress(images[:1]))
    (tmp_path / "pngs" / "b.png").mkdir(parents=True)          # b's output name is a folder
    assert main(["decompress", "--model", str(model), str(blobs), str(tmp_path / "pngs")]) == 1
    assert "a folder has that name" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["b.png"]   # no a.png


def _png_16_bit_rgb(path: Path, height: int = 8, width: int = 8) -> None:
    """A 16-bit RGB PNG, written by hand: Pillow cannot write one."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + bytes(range(width * 6)) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_cli_refuses_pngs_it_would_misread_by_name(saved_codec, tmp_path, capsys):
    """Alpha and 16-bit PNGs are refused, not cut down: Pillow reads a 16-bit RGB PNG as
    8-bit RGB, so only the file's header tells."""
    model, _, images = saved_codec
    Image.fromarray(images[0]).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(images[0].astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    _png_16_bit_rgb(tmp_path / "rgb16.png")
    colour = np.stack([images[0], images[0], 255 - images[0]], axis=-1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    for name, said in (("alpha", "has an alpha channel"), ("grey16", "PNG; vaeanom compresses"),
                       ("rgb16", "is a 16-bit RGB PNG"),
                       ("colour", "is a colour (RGB) PNG, but the model was fitted on grey")):
        assert main(["compress", "--model", str(model), str(tmp_path / f"{name}.png"),
                     str(tmp_path / f"{name}.vq")]) == 1
        assert said in capsys.readouterr().err, name
        assert not (tmp_path / f"{name}.vq").exists()


def test_a_grey_image_saved_as_rgb_compresses_as_the_grey_image(saved_codec, tmp_path):
    """Many grey images are saved with three equal channels; a grey model refused them."""
    model, _, images = saved_codec
    Image.fromarray(images[0]).save(tmp_path / "grey.png")
    Image.fromarray(images[0]).convert("RGB").save(tmp_path / "rgb.png")
    for name in ("grey", "rgb"):
        assert main(["compress", "--model", str(model), str(tmp_path / f"{name}.png"),
                     str(tmp_path / f"{name}.vq")]) == 0
    assert (tmp_path / "rgb.vq").read_bytes() == (tmp_path / "grey.vq").read_bytes()


def test_decompress_names_the_formats_it_writes(saved_codec, tmp_path, capsys):
    model, _, images = saved_codec
    Image.fromarray(images[0]).save(tmp_path / "grey.png")
    assert main(["compress", "--model", str(model), str(tmp_path / "grey.png"),
                 str(tmp_path / "grey.vq")]) == 0
    assert main(["decompress", "--model", str(model), str(tmp_path / "grey.vq"),
                 str(tmp_path / "back.jpg")]) == 1
    assert "decompress writes a .png (one image) or a .npy file" in capsys.readouterr().err
    assert not (tmp_path / "back.jpg").exists()


def test_a_wide_image_whose_grid_is_one_row_of_the_fitted_size_round_trips(codecs):
    detector, images = codecs["square"]
    wide = _tiled(images[:2], (4, 16))
    grid = detector.code_grid_for((4, 16))
    assert grid == (1, int(np.prod(detector.code_grid_)))     # (1, 4) against a 2x2 fit
    np.testing.assert_array_equal(detector.decompress(detector.compress(wide)),
                                  _coded(detector, wide))


def test_image_codecs_with_a_channel_axis_or_an_mlp_round_trip(digit_images, tmp_path):
    images, _ = digit_images
    channel = VQVAEDetector(conv_channels=(8,), **SMALL).fit(images[:300, None])
    channel.save(tmp_path / "c1.st")
    Image.fromarray(images[0]).save(tmp_path / "one.png")       # a grey PNG has no axis
    assert main(["compress", "--model", str(tmp_path / "c1.st"), str(tmp_path / "one.png"),
                 str(tmp_path / "one.vq")]) == 0
    np.testing.assert_array_equal(channel.decompress((tmp_path / "one.vq").read_bytes()),
                                  channel.decompress(channel.compress(images[:1, None])))
    mlp = VQVAEDetector(backbone="mlp", hidden_dims=(16,), n_codes=3, **SMALL).fit(images[:300])
    decoded = mlp.decompress(mlp.compress(images[:4]))
    np.testing.assert_array_equal(decoded, to_uint8(mlp.decode(mlp.compression_codes(images[:4]))))
    assert mlp.sample(2).shape == mlp.reconstruct(images[:2]).shape == (2, 8, 8)


def test_cli_fits_a_codec_on_npy_images(digit_images, tmp_path):
    from vaeanom import estimators
    from vaeanom.cli import DETECTORS

    assert DETECTORS == estimators.DETECTORS
    images, _ = digit_images
    np.save(tmp_path / "train.npy", images[:300])
    assert main(["fit", str(tmp_path / "train.npy"), "--estimator", "VQVAEDetector",
                 "--model", str(tmp_path / "vq.safetensors"), "--set", "codebook_size=8",
                 "--set", "epochs=1"]) == 0
    assert main(["compress", "--model", str(tmp_path / "vq.safetensors"),
                 str(tmp_path / "train.npy"), str(tmp_path / "train.vq")]) == 0


def test_installed_console_script_compresses(saved_codec, tmp_path):
    model, _, images = saved_codec
    np.save(tmp_path / "in.npy", images[:3])
    exe = shutil.which("vaeanom") or str(Path(sys.executable).with_name("vaeanom"))
    done = subprocess.run([exe, "compress", "--model", str(model), str(tmp_path / "in.npy"),
                           str(tmp_path / "x.vq")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.vq").read_bytes()[0] == compression.TAG_MANY


# ------------------------------------------------------------ forged blobs
def _forge(detector, n_images: int, payload: bytes, size=None) -> bytes:
    """A blob sealed with this model's CRC (which anyone holding the model can compute)."""
    if n_images == 1 and size is None:
        return compression.seal(detector, bytes([compression.TAG_ONE]) + payload)
    header = compression.varint((n_images - 1) * 2 + (size is not None))
    if size is not None:
        header += b"".join(compression.varint(v - 1) for v in size)
    return compression.seal(detector, bytes([compression.TAG_MANY]) + header + payload)


def test_a_forged_header_claiming_2_30_images_fails_fast_in_little_memory(codecs):
    detector, images = codecs["square"]
    forged = _forge(detector, 2**30, b"\0" * 8)
    assert len(forged) < 40
    decompress(detector, compress(detector, images[:1]))  # warm the caches
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CorruptBlobError, match="claims 1073741824 images.*holds at most"):
        decompress(detector, forged)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # the memory bound is the test; the time bound only has to miss a loaded machine's waits
    assert time.perf_counter() - start < 5.0 and peak < 1_000_000, peak


_PEAK_RSS = """
import sys
from pathlib import Path
from vaeanom import VQVAEDetector
from vaeanom.compression import CorruptBlobError

def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

detector = VQVAEDetector.load(sys.argv[1])
detector.decompress(Path(sys.argv[2]).read_bytes())      # imports and caches: not counted
forged = Path(sys.argv[3]).read_bytes()
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")                                       # peak RSS := current RSS
before = peak_kib()
try:
    detector.decompress(forged)
except CorruptBlobError as err:
    print("refused:", err)
print("peak growth KiB:", peak_kib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_forged_2_30_image_blob_costs_no_resident_memory(saved_codec, tmp_path):
    # tracemalloc sees numpy but not torch or constriction (Rust): measure the process.
    model, detector, images = saved_codec
    (tmp_path / "real.vq").write_bytes(compress(detector, images[:1]))
    (tmp_path / "forged.vq").write_bytes(_forge(detector, 2**30, b"\0" * 8))
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(model), str(tmp_path / "real.vq"),
                           str(tmp_path / "forged.vq")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "refused: blob header claims 1073741824 images" in done.stdout
    growth = int(done.stdout.rsplit(":", 1)[1])
    assert growth < 4096, done.stdout                     # KiB: no 2**30-image buffer was made


def test_the_payload_must_be_exactly_the_code_of_its_images(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:6])
    n, _, payload = compression._open(detector, blob)
    for bad in (payload + b"\0\0\0\0", payload[:-1], payload + b"\0"):  # trailing, missing
        with pytest.raises(CorruptBlobError, match="corrupt or truncated"):
            decompress(detector, _forge(detector, n, bad))
    with pytest.raises(CorruptBlobError, match="fitted image size"):
        decompress(detector, _forge(detector, n, payload, size=(8, 8)))
    assert len(decompress(detector, _forge(detector, n, payload))) == n


def test_a_payload_the_range_decoder_rejects_is_a_corrupt_blob_error(codecs):
    detector, _ = codecs["square"]
    with pytest.raises(CorruptBlobError, match="not a range code") as caught:
        decompress(detector, _forge(detector, 1, b"\xff" * 8))
    assert isinstance(caught.value.__cause__, AssertionError)  # constriction's, wrapped


def _collapsed(n_codes: int, code: int, grids: int = 10**6) -> ContextModel:
    """A context model that has only ever seen ``code``, in every context."""
    model = ContextModel.fit(np.full((1, 3, 3), code), np.arange(n_codes) % 4, 4)
    counts = model.counts.copy()
    counts[:, 3] *= grids
    return ContextModel(model.classes, counts, 4)


def test_the_code_bound_holds_for_the_cheapest_grids_and_stays_finite():
    for model, n in ((_collapsed(16, 0), 200_000), (_collapsed(16, 15), 200_000),
                     (_collapsed(1024, 7), 100_000)):
        cheapest = np.full((n, 3, 3), int(model.counts[0, 2]))
        payload = compression.encode_codes(cheapest, model)
        most = compression.max_codes(model, len(payload))
        assert cheapest.size <= most < 50 * cheapest.size, (len(payload), most)  # sound, useful
        rng = np.random.default_rng(0)                        # any other grids cost more
        other = rng.integers(0, model.n_codes, (1000, 3, 3))
        assert other.size <= compression.max_codes(
            model, len(compression.encode_codes(other, model)))


def test_images_are_decoded_in_blocks_exactly_as_in_one_call(codecs):
    detector, images = codecs["square"]
    block = compression.DECODE_CHUNKS * detector._chunk_rows
    batch = np.resize(images, (block + 3, *images.shape[1:]))
    np.testing.assert_array_equal(decompress(detector, compress(detector, batch)),
                                  _coded(detector, batch))


def _mutated_blob(data, detector, blob: bytes) -> bytes:
    """Random bytes, bytes flipped under the CRC, or edited fields resealed with a good CRC."""
    how = data.draw(st.sampled_from(["reseal payload", "reseal payload", "reseal fields",
                                     "flip", "random"]), label="how")
    if how == "random":
        return data.draw(st.binary(max_size=200), label="bytes")
    if how == "flip":
        mutated = bytearray(blob)
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            mutated[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        return bytes(mutated)
    n, _, payload = compression._open(detector, blob)
    size = None
    if how == "reseal payload":
        payload = data.draw(st.one_of(
            st.binary(max_size=64),
            st.builds(lambda at, byte: payload[:at] + byte + payload[at + 1:],
                      st.integers(0, len(payload) - 1), st.binary(min_size=1, max_size=1)),
            st.builds(lambda cut, extra: payload[:cut] + extra,
                      st.integers(0, len(payload)), st.binary(max_size=12))), label="payload")
    else:
        n = data.draw(st.one_of(st.integers(1, 2 * n + 2), st.integers(1, 2**70)), label="n")
        if data.draw(st.integers(0, 3), label="edit size?") == 0:
            size = data.draw(st.tuples(*[st.integers(1, 2**40)] * 2), label="size")
    return _forge(detector, n, payload, size)


@settings(max_examples=200)
@given(data=st.data())
def test_mutated_and_random_blobs_only_ever_raise_corrupt_blob_error(codecs, data):
    detector, images = codecs[data.draw(st.sampled_from(sorted(codecs)), label="codec")]
    original = compress(detector, images[:data.draw(st.sampled_from([1, 3, 8]), label="n")])
    blob = _mutated_blob(data, detector, original)
    start = time.perf_counter()
    try:
        out = decompress(detector, blob)
    except CorruptBlobError as err:
        assert str(err)
        event(re.sub(r"\d+", "N", str(err))[:70])  # --hypothesis-show-statistics
    else:  # a flip never decodes; a resealed blob only if it is a valid code of its images
        event("decoded")
        n, size, payload = compression._open(detector, blob)
        assert out.dtype == np.uint8 and out.shape == (n, *(size or images.shape[1:]))
        model = compression.context_model(detector)
        codes = compression.decode_codes(payload, (n, *compression._grid(detector, size)), model)
        assert compression.encode_codes(codes, model) == payload
        if blob == original:
            np.testing.assert_array_equal(out, decompress(detector, original))
    assert time.perf_counter() - start < 30.0     # a hang, not a loaded machine's wait


def test_cli_decompresses_every_image_of_a_multi_image_blob_in_a_folder(saved_codec, tmp_path):
    model, detector, images = saved_codec
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "batch.vq").write_bytes(compress(detector, images[:12]))
    (blobs / "single.vq").write_bytes(compress(detector, images[:1]))
    assert main(["decompress", "--model", str(model), str(blobs), str(tmp_path / "back")]) == 0
    names = sorted(p.name for p in (tmp_path / "back").iterdir())
    assert names == [f"batch_{i:02d}.png" for i in range(12)] + ["single.png"]
    expected = _coded(detector, images[:12])
    for i in range(12):
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "back" / f"batch_{i:02d}.png")), expected[i])


def test_cli_refuses_two_blobs_that_would_write_the_same_png(saved_codec, tmp_path, capsys):
    model, detector, images = saved_codec
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a.vq").write_bytes(compress(detector, images[:2]))     # a_0.png, a_1.png
    (blobs / "a_0.vq").write_bytes(compress(detector, images[2:3]))  # a_0.png again
    assert main(["decompress", "--model", str(model), str(blobs), str(tmp_path / "back")]) == 1
    assert "a.vq and a_0.vq would both write the image a_0.png" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


# ------------------------------------------------ versions and determinism
def test_version_1_blobs_still_decompress_with_every_check(codecs):
    detector, images = codecs["square"]
    blob = v1_blob(detector, images[:4])
    np.testing.assert_array_equal(decompress(detector, blob),
                                  to_uint8(detector.decode(detector.encode(images[:4]))))
    for position in range(len(blob)):
        corrupt = bytearray(blob)
        corrupt[position] ^= 0x40
        with pytest.raises(CorruptBlobError):
            decompress(detector, bytes(corrupt))
    for length in range(len(blob)):
        with pytest.raises(CorruptBlobError):
            decompress(detector, blob[:length])


def test_a_model_saved_before_the_context_model_decompresses_but_will_not_compress(
        codecs, tmp_path):
    detector, images = codecs["square"]
    old = copy.deepcopy(detector)
    for name in ("code_classes_", "context_counts_", "n_code_classes_"):
        delattr(old, name)
    old.save(tmp_path / "old.safetensors")
    loaded = VQVAEDetector.load(tmp_path / "old.safetensors")
    np.testing.assert_array_equal(decompress(loaded, v1_blob(detector, images[:3])),
                                  decompress(detector, v1_blob(detector, images[:3])))
    with pytest.raises(ValueError, match="refit_code_model"):
        loaded.compress(images[:1])


@pytest.mark.parametrize("damage", ["unsorted", "huge class count", "scalar counts",
                                    "half missing", "huge counts"])
def test_a_file_with_a_broken_context_model_is_refused(codecs, tmp_path, damage):
    detector, _ = codecs["crops"]
    broken = copy.deepcopy(detector)
    if damage == "unsorted":
        broken.context_counts_ = detector.context_counts_[::-1].copy()
    elif damage == "huge class count":
        broken.n_code_classes_ = 10**9
    elif damage == "scalar counts":
        broken.context_counts_ = np.array(7, dtype=np.int64)
    elif damage == "half missing":
        del broken.code_classes_
    else:
        broken.context_counts_ = detector.context_counts_.copy()
        broken.context_counts_[:, 3] = 2**62
    broken.save(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="context model is not valid|the file is corrupt"):
        VQVAEDetector.load(tmp_path / "broken.safetensors")


def test_overlong_header_numbers_are_refused(codecs):
    detector, images = codecs["square"]
    blob = compress(detector, images[:2])
    padded = compression.seal(detector, blob[:1] + bytes([blob[1] | 0x80, 0]) + blob[2:-3])
    with pytest.raises(CorruptBlobError, match="padded with zero bytes"):
        decompress(detector, padded)


_THREADS = """
import sys
import numpy as np
import torch
from vaeanom import VQVAEDetector
torch.set_num_threads(int(sys.argv[1]))
detector = VQVAEDetector.load(sys.argv[2])
images = np.load(sys.argv[3])
blob = detector.compress(images)
open(sys.argv[4], "wb").write(blob)
np.save(sys.argv[5], detector.decompress(open(sys.argv[6], "rb").read()))
"""


def test_streams_are_the_same_bytes_and_decode_the_same_under_1_and_2_threads(
        saved_codec, tmp_path):
    model, detector, images = saved_codec
    np.save(tmp_path / "images.npy", images[:64])
    (tmp_path / "here.vq").write_bytes(compress(detector, images[:64]))
    for threads in (1, 2):
        done = subprocess.run(
            [sys.executable, "-c", _THREADS, str(threads), str(model),
             str(tmp_path / "images.npy"), str(tmp_path / f"t{threads}.vq"),
             str(tmp_path / f"t{threads}.npy"), str(tmp_path / "here.vq")],
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert ((tmp_path / "t1.vq").read_bytes() == (tmp_path / "t2.vq").read_bytes()
            == (tmp_path / "here.vq").read_bytes())
    np.testing.assert_array_equal(np.load(tmp_path / "t1.npy"), np.load(tmp_path / "t2.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "t1.npy"),
                                  decompress(detector, (tmp_path / "here.vq").read_bytes()))


_WITHOUT_TORCH = """
import sys
import numpy as np
from vaeanom.code_model import ContextModel
from vaeanom.compression import decode_codes
arrays = np.load(sys.argv[1])
model = ContextModel(arrays["classes"], arrays["counts"], int(arrays["n_classes"]))
np.save(sys.argv[3], decode_codes(open(sys.argv[2], "rb").read(), tuple(arrays["shape"]), model))
assert "torch" not in sys.modules, "torch was imported"
"""


def test_a_blob_decodes_to_its_codes_without_torch_so_no_device_can_change_them(
        saved_codec, tmp_path):
    """Encode on one device, decode on another: the codes come from numpy integer tables and
    the range coder alone, in a process that never imports torch, so a GPU decode (which
    runs only the pixel decoder on the device) reads the very codes the CPU wrote."""
    _, detector, images = saved_codec
    blob = compress(detector, images[:32])
    n, size, payload = compression._open(detector, blob)
    model = compression.context_model(detector)
    np.savez(tmp_path / "model.npz", classes=model.classes, counts=model.counts,
             n_classes=model.n_classes, shape=(n, *compression._grid(detector, size)))
    (tmp_path / "payload.bin").write_bytes(payload)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "model.npz"),
                           str(tmp_path / "payload.bin"), str(tmp_path / "codes.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    codes = np.load(tmp_path / "codes.npy").reshape(n, *detector.code_grid_)
    np.testing.assert_array_equal(codes, detector.compression_codes(images[:32]))


def test_refit_code_model_recounts_the_statistics_and_keeps_the_network(codecs):
    detector, images = codecs["crops"]
    refitted = copy.deepcopy(detector)
    old_blob = compress(detector, images[:3])
    refitted.refit_code_model(images[::-1][:300])
    assert refitted.context_counts_[:, 3].sum() == 3 * 300 * np.prod(detector.code_grid_)
    np.testing.assert_array_equal(refitted.encode(images[:5]), detector.encode(images[:5]))
    with pytest.raises(CorruptBlobError, match="another model"):
        decompress(refitted, old_blob)
    np.testing.assert_array_equal(  # the same decoder, codes chosen under the new counts
        decompress(refitted, compress(refitted, images[:3])),
        to_uint8(detector.decode(refitted.compression_codes(images[:3]))))



# ------------------------------------------------------------- rate weight
def test_rate_weight_trades_bits_for_a_little_psnr_on_held_out_images(fashion_sized,
                                                                     digit_images):
    detector, held_out, _ = fashion_sized
    train = _upscaled(digit_images[0][:800])
    found = {}
    for weight in (0.0, 0.5, 1.0, 2.0):
        model = copy.deepcopy(detector).set_params(rate_weight=weight).refit_code_model(train)
        codes = model.compression_codes(held_out)
        decoded = decompress(model, compress(model, held_out))
        np.testing.assert_array_equal(decoded, to_uint8(model.decode(codes)))
        found[weight] = (ideal_bits(model, codes), compression.psnr(held_out, decoded).mean())
    np.testing.assert_array_equal(  # weight 0: the nearest codes, as encode gives them
        copy.deepcopy(detector).set_params(rate_weight=0.0).compression_codes(held_out),
        detector.encode(held_out))
    bits = [found[w][0] for w in sorted(found)]
    assert all(a > b for a, b in zip(bits, bits[1:])), found
    # measured: weight 1 takes 16% fewer bits for 0.07 dB on these digits
    assert found[1.0][0] <= 0.9 * found[0.0][0] and found[1.0][1] >= found[0.0][1] - 0.3, found


def test_a_model_saved_before_rate_weights_writes_the_nearest_codes(codecs, tmp_path):
    detector, images = codecs["square"]
    old = copy.deepcopy(detector)
    del old.quantisation_error_
    old.save(tmp_path / "old.safetensors")
    loaded = VQVAEDetector.load(tmp_path / "old.safetensors")
    assert loaded.rate_weight == 1.0 and not hasattr(loaded, "quantisation_error_")
    np.testing.assert_array_equal(loaded.compression_codes(images[:50]), detector.encode(
        images[:50]))
    np.testing.assert_array_equal(decompress(loaded, compress(loaded, images[:5])),
                                  to_uint8(detector.reconstruct(images[:5])))
    loaded.refit_code_model(images[:600])          # measures its quantisation error again
    assert loaded.quantisation_error_ == pytest.approx(detector.quantisation_error_, rel=1e-6)
    np.testing.assert_array_equal(loaded.compression_codes(images[:50]),
                                  detector.compression_codes(images[:50]))


def test_a_rate_weight_set_after_fit_is_checked(codecs):
    detector, images = codecs["square"]
    for bad in (-1.0, float("nan"), "high"):
        model = copy.deepcopy(detector).set_params(rate_weight=bad)
        with pytest.raises(ValueError, match="rate_weight"):
            model.compress(images[:1])
        with pytest.raises(ValueError, match="rate_weight"):
            model.refit_code_model(images[:10])


# ------------------------------------------------------- images of any size
def _tiled(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Images of another (H, W): each image tiled and cropped."""
    reps = (1,) * (images.ndim - 2) + (-(-size[0] // images.shape[-2]),
                                       -(-size[1] // images.shape[-1]))
    return np.tile(images, reps)[..., :size[0], :size[1]]


@settings(max_examples=25)
@given(data=st.data())
def test_images_of_any_size_round_trip_at_their_own_size(codecs, data):
    detector, images = codecs[data.draw(st.sampled_from(sorted(codecs)), label="codec")]
    size = (data.draw(st.integers(1, 40), label="H"), data.draw(st.integers(1, 40), label="W"))
    n = data.draw(st.integers(1, 5), label="n")
    batch = _tiled(images[:n], size)
    blob = compress(detector, batch)
    decoded = decompress(detector, blob)
    assert decoded.shape == batch.shape
    codes = detector.compression_codes(batch)
    assert codes.shape == detector.encode(batch).shape == (n, *detector.code_grid_for(size))
    np.testing.assert_array_equal(decoded, to_uint8(detector.decode(codes, image_size=size)))
    custom = size != images.shape[-2:]
    assert (blob[1] & 1) == custom


@pytest.fixture(scope="module")
def fashion_sized(digit_images):
    """A codec fitted on 28x28 images (digits upscaled 3x and padded by 2)."""
    images, _ = digit_images
    big = _upscaled(images)
    detector = VQVAEDetector(conv_channels=(8, 16), codebook_size=32, code_dim=8, epochs=15,
                             batch_size=32, learning_rate=3e-3, random_state=0)
    return detector.fit(big[:800]), big[800:], big[:800].mean(axis=0)


def _upscaled(images: np.ndarray) -> np.ndarray:
    """8x8 digits as 28x28 images: each pixel 3x3, padded by 2."""
    return np.pad(np.kron(images, np.ones((1, 3, 3), dtype=np.uint8)), ((0, 0), (2, 2), (2, 2)))


@pytest.mark.parametrize("size", [(56, 56), (28, 84)])
def test_a_model_fitted_on_28x28_codes_larger_images_as_well_as_its_own(fashion_sized, size):
    detector, test, mean = fashion_sized
    assert detector.code_grid_ == (7, 7) and detector.code_grid_for(size) == (size[0] // 4,
                                                                              size[1] // 4)
    # A mosaic of test images. Its tiles lose a little (measured: 1.2-1.6 dB, +30% bytes):
    # the network learned the edges of 28x28 images from zero padding, and tiles inside a
    # mosaic have neighbours instead.
    tiles = test[:3 * size[0] // 28 * size[1] // 28]
    mosaic = tiles.reshape(3, size[0] // 28, size[1] // 28, 28, 28).transpose(
        0, 1, 3, 2, 4).reshape(3, *size)
    blob = compress(detector, mosaic)
    decoded = decompress(detector, blob)
    assert decoded.shape == mosaic.shape
    alone = compression.psnr(tiles, decompress(detector, compress(detector, tiles))).mean()
    mean_image = compression.psnr(tiles, to_uint8(np.broadcast_to(mean / 255.0, tiles.shape)))
    assert compression.psnr(mosaic, decoded).mean() > max(alone - 2.5, mean_image.mean() + 4.0)
    assert len(blob) < 1.5 * len(compress(detector, tiles))


def test_other_sizes_have_clear_errors(codecs, digit_images):
    detector, images = codecs["square"]
    with pytest.raises(ValueError, match="same channels"):
        detector.encode(images[:2, None].repeat(3, axis=1))
    with pytest.raises(ValueError, match="code grid"):
        detector.decode(detector.encode(images[:2]), image_size=(16, 16))
    with pytest.raises(ValueError, match="at least"):
        detector.code_grid_for((0, 5))
    with pytest.raises(ValueError, match="fitted on images of shape"):
        detector.score_samples(_tiled(images[:2], (16, 16)))   # scores stay fitted-size
    mlp = VQVAEDetector(backbone="mlp", **SMALL).fit(images[:300])
    with pytest.raises(ValueError, match="fitted on images of shape"):
        mlp.compress(_tiled(images[:2], (16, 16)))
    with pytest.raises(ValueError, match="convolutional"):
        mlp.code_grid_for((16, 16))
    with pytest.raises(CorruptBlobError, match="fitted size"):
        decompress(mlp, _forge(mlp, 1, b"\0", size=(16, 16)))


def test_a_forged_image_size_is_refused_before_anything_is_allocated(codecs):
    detector, _ = codecs["square"]
    tracemalloc.start()
    with pytest.raises(CorruptBlobError, match="holds at most"):
        decompress(detector, _forge(detector, 1, b"\0" * 8, size=(2**40, 2**40)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000
