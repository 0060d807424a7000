"""Images <-> bytes with a fitted VQVAEDetector: entropy-coded codes in a checked container.

``compress`` encodes images to their codes (:meth:`VQVAEDetector.encode`) and
range-codes the codes with ``constriction`` under the model's probability model:
the frequency of each code at each grid position over the training set,
smoothed towards the overall code frequencies so that a code never seen at a
position still costs a finite number of bits. ``decompress`` range-decodes the
codes and decodes them to uint8 images, exactly ``to_uint8(decode(codes))``.

Container (every field is checked on the way in)::

    magic        2 bytes   b"VQ"
    version      1 byte    FORMAT_VERSION
    fingerprint  4 bytes   BLAKE2b of the decoder, codebook, probability model and shapes
    n, C, H, W   varints   number of images and their shape
    length       varint    payload bytes
    payload      length    range-coded codes, 32-bit words, little-endian
    checksum     4 bytes   CRC-32 of everything before it

A blob from another model, a truncated blob, a flipped byte or an unknown
version raises :class:`CorruptBlobError`; CRC-32 detects every error burst of
up to 32 bits, so every single-byte flip, and the length field every truncation.

The CRC and the fingerprint stop accidents, not forgers (both can be copied
from any blob the model wrote), so decoding trusts no header field either:

- memory is bounded by the payload, not by the image count the header claims.
  constriction's range coder keeps its range in [2**32, 2**64): coding a
  code of (quantised) probability q multiplies the range by at most q, each
  32-bit word it writes multiplies it by 2**32, and sealing writes one word
  more, so W payload words carry at most 32 W bits of information. A code's
  quantised probability is at most min(p_max + (K + 1) 2**-24,
  1 - (K - 1) 2**-24) for its position (see :func:`max_images`), so one image
  costs at least B > 0 bits, the sum over positions of -log2 of that ceiling,
  and a payload of L bytes holds at most (8 L + 64) / B images (64 bits of
  margin). A header claiming more is refused before anything is allocated;
  one within the bound costs what a genuine blob of that size costs: the
  codes (4 bytes each) and the uint8 images, decoded ``DECODE_CHUNKS``
  chunks at a time. The ratio is the model's: with a collapsed codebook (one code all but
  certain at every position) a genuine payload of a few bytes codes 10**5
  images; ``max_images(detector, L)`` says how many;
- the range decoder itself is not trusted either: data it finds invalid for
  the model is a :class:`CorruptBlobError`, never constriction's error;
- the payload must be exactly the range code of the codes decoded from it:
  they are encoded again and compared byte for byte, so trailing bytes, a
  payload read past its end or codes padded in are all refused.

Determinism: the payload depends only on the codes and the probability model
(float64 numpy, quantised by constriction), so the same codes give the same
bytes on any machine. Decoding on CPU is bit-identical from run to run (fixed
chunk shapes, see :data:`vaeanom.estimators.base.SCORE_CHUNK`). On another device
(a GPU, or a CPU with other kernels) the decoder's floating-point sums may
differ in the last bits, so a pixel may land one grey level away; the codes
themselves are always recovered exactly.
"""

from __future__ import annotations

import hashlib
import struct
import weakref
import zlib

import constriction
import numpy as np
from sklearn.utils.validation import check_is_fitted

MAGIC = b"VQ"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 4
#: pseudo-count of the overall code frequencies added to each position's counts
PRIOR_STRENGTH = 16
#: constriction's fixed-point precision: probabilities are whole multiples of 2**-24
CODER_PRECISION = 24
#: decompress turns codes into pixels this many of the detector's fixed-size chunks at a time
DECODE_CHUNKS = 256


class CorruptBlobError(ValueError):
    """A compressed blob is truncated, altered, of an unknown version or from another model."""


# ---------------------------------------------------------------- the model
def code_weights(code_counts: np.ndarray) -> np.ndarray:
    """Per-position code weights (positions, K): whole numbers, exact in float64.

    Proportional to count[position, k] + s * g[k], where g are the overall code
    frequencies (add-1/2 smoothed) and s = ``PRIOR_STRENGTH``, so a code never
    seen at a position still costs a finite number of bits. The weights are
    integers (below 2**53) so that every machine hands the coder the same
    numbers; constriction normalises them with its own exact arithmetic.
    """
    counts = np.asarray(code_counts, dtype=np.int64)
    overall = 2 * counts.sum(axis=0) + 1                    # (count + 1/2) * 2
    weights = counts * int(overall.sum()) + int(PRIOR_STRENGTH) * overall
    if weights.max() >= 2**53:
        raise ValueError("too many training codes for exact float64 code weights.")
    return weights.astype(np.float64)


def code_probabilities(code_counts: np.ndarray) -> np.ndarray:
    """The code weights normalised per position: p(k | position)."""
    weights = code_weights(code_counts)
    return weights / weights.sum(axis=1, keepdims=True)


def ideal_bits(detector, codes: np.ndarray) -> float:
    """Shannon code length -sum log2 p(code) of ``codes`` (n, *grid) under the model."""
    p = code_probabilities(detector.code_counts_)
    flat = np.asarray(codes).reshape(len(codes), -1)
    return float(-np.log2(p[np.arange(flat.shape[1]), flat]).sum())


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(detector) -> bytes:
    """4 bytes that change with anything that changes what a blob decodes to.

    Cached per fitted model (a refit makes a new one), so per-image calls stay cheap.
    """
    key = detector.model_
    cached = _fingerprints.get(key)
    if cached is None or cached[0] is not detector.code_counts_:
        cached = _fingerprints[key] = (detector.code_counts_, _fingerprint(detector))
    return cached[1]


def _fingerprint(detector) -> bytes:
    digest = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    digest.update(repr((tuple(detector.input_shape_), tuple(detector.code_grid_))).encode())
    state = detector.model_.state_dict()
    for name in sorted(state):
        if name.startswith(("decoder.", "quantizer.codebook.embedding")):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    digest.update(code_weights(detector.code_counts_).tobytes())
    return digest.digest()


# ------------------------------------------------------------ range coding
def _position_models(probabilities: np.ndarray) -> list:
    """One constriction model per grid position, from its row of (unnormalised) weights.

    Lazy, non-perfect models quantise exactly as a model family given an (n, K)
    table per symbol would (the same bytes), without materialising that table:
    coding memory is the codes themselves, whatever K.
    """
    return [constriction.stream.model.Categorical(np.ascontiguousarray(row, dtype=np.float64),
                                                  perfect=False, lazy=True)
            for row in probabilities]


def encode_codes(codes: np.ndarray, probabilities: np.ndarray) -> bytes:
    """Range-code codes (n, positions) position by position; returns the payload.

    ``probabilities`` (positions, K) may be unnormalised weights.
    """
    encoder = constriction.stream.queue.RangeEncoder()
    for position, model in enumerate(_position_models(probabilities)):
        encoder.encode(np.ascontiguousarray(codes[:, position], dtype=np.int32), model)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_codes(payload: bytes, n: int, probabilities: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_codes`: codes (n, positions), int32.

    Decoding alone cannot tell a payload from garbage (a range decoder reads
    zeros past the end); :func:`decompress` encodes the codes again to check.
    """
    if len(payload) % 4:
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not a whole number "
                               "of 32-bit words.")
    decoder = constriction.stream.queue.RangeDecoder(
        np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    codes = np.empty((n, len(probabilities)), dtype=np.int32)
    try:
        for position, model in enumerate(_position_models(probabilities)):
            codes[:, position] = decoder.decode(model, n)
    except AssertionError as err:  # constriction's "data that is invalid for the entropy model"
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not a range code "
                               "under this model.") from err
    return codes


# ---------------------------------------------------------------- container
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(blob: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(blob) or shift > 63:
            raise CorruptBlobError("blob is truncated inside its header.")
        byte = blob[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if not byte & 0x80:
            return value, offset


def _image_shape(detector) -> tuple[int, int, int]:
    shape = tuple(detector.input_shape_)
    return (1, *shape) if len(shape) == 2 else shape


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] -> uint8 grey levels (round half to even, as numpy does)."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_codec(detector) -> None:
    check_is_fitted(detector)
    if not hasattr(detector, "code_counts_"):
        raise ValueError(f"compress and decompress need a fitted VQVAEDetector; got a "
                         f"{type(detector).__name__}.")
    if not detector.is_image_:
        raise ValueError(f"{type(detector).__name__} was fitted on rows; compress and decompress "
                         "work on image models (fit on (n, H, W) or (n, C, H, W) arrays).")


def compress(detector, images) -> bytes:
    """Images (n, H, W) or (n, C, H, W) -> one blob (see the module docstring)."""
    _check_codec(detector)
    codes = detector.encode(images).reshape(len(images), -1)
    payload = encode_codes(codes, code_weights(detector.code_counts_))
    header = (MAGIC + bytes([FORMAT_VERSION]) + fingerprint(detector)
              + b"".join(_varint(v) for v in (len(codes), *_image_shape(detector), len(payload))))
    body = header + payload
    return body + struct.pack(">I", zlib.crc32(body))


def decompress(detector, blob: bytes) -> np.ndarray:
    """A blob from :func:`compress` -> uint8 images (n, *detector.input_shape_)."""
    _check_codec(detector)
    try:  # bytes(n) of an int n would allocate n bytes
        blob = bytes(memoryview(blob))
    except TypeError:
        raise TypeError(f"blob must be bytes (what compress returns); got "
                        f"{type(blob).__name__}.") from None
    n, payload = _open(detector, blob)
    weights = code_weights(detector.code_counts_)
    codes = decode_codes(payload, n, weights)
    if encode_codes(codes, weights) != payload:
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not exactly the "
                               f"code of the {n} images its header announces (trailing, missing "
                               "or altered bytes).")
    return _decode_images(detector, codes)


def _decode_images(detector, codes: np.ndarray) -> np.ndarray:
    """uint8 images of codes (n, positions), ``DECODE_CHUNKS`` scoring chunks at a time.

    Only the uint8 output grows with n; the float pixels of one block are
    dropped before the next, so decompressing costs about n * C * H * W bytes
    (plus the codes) rather than several float copies of every image. Blocks
    are whole chunks, so every image goes through the kernels it would in one
    ``decode`` call: the same pixels.
    """
    images = np.empty((len(codes), *detector.input_shape_), dtype=np.uint8)
    size = DECODE_CHUNKS * detector._chunk_rows
    for start in range(0, len(codes), size):
        block = codes[start:start + size]
        images[start:start + len(block)] = to_uint8(
            detector.decode(block.reshape(len(block), *detector.code_grid_)))
    return images


def _open(detector, blob: bytes) -> tuple[int, bytes]:
    """Check a blob's magic, version, checksum, model and lengths; return (n, payload)."""
    if len(blob) < 3 or blob[:2] != MAGIC:
        raise CorruptBlobError("not a vaeanom VQ blob (bad magic bytes); was it made by "
                               "VQVAEDetector.compress?")
    if blob[2] != FORMAT_VERSION:
        raise CorruptBlobError(f"blob has format version {blob[2]}; this vaeanom reads version "
                               f"{FORMAT_VERSION}. Use the vaeanom that wrote it, or check the "
                               "file for corruption.")
    if len(blob) < 3 + FINGERPRINT_BYTES + 4:
        raise CorruptBlobError(f"blob is truncated: {len(blob)} bytes is shorter than a header.")
    body, (checksum,) = blob[:-4], struct.unpack(">I", blob[-4:])
    if zlib.crc32(body) != checksum:
        raise CorruptBlobError("blob is corrupt or truncated: its CRC-32 checksum does not match.")
    made_by = body[3:3 + FINGERPRINT_BYTES]
    if made_by != fingerprint(detector):
        raise CorruptBlobError(f"blob was made by another model (fingerprint {made_by.hex()}, "
                               f"this model's is {fingerprint(detector).hex()}); decompress it "
                               "with the model that compressed it.")
    offset = 3 + FINGERPRINT_BYTES
    fields = []
    for _ in range(5):
        value, offset = _read_varint(body, offset)
        fields.append(value)
    n, shape, length = fields[0], tuple(fields[1:4]), fields[4]
    if shape != _image_shape(detector):
        raise CorruptBlobError(f"blob holds images of shape {shape}; this model makes "
                               f"{_image_shape(detector)}.")
    if len(body) - offset != length:
        raise CorruptBlobError(f"blob is corrupt, truncated or padded: header says {length} "
                               f"payload bytes, found {len(body) - offset}.")
    if n < 1:
        raise CorruptBlobError("blob is corrupt: its header claims 0 images (compress writes "
                               "at least one).")
    most = max_images(detector, length)
    if n > most:
        raise CorruptBlobError(f"blob header claims {n} images, but a {length}-byte payload "
                               f"holds at most {most} under this model; the blob is corrupt "
                               "or forged.")
    return n, body[offset:]


def max_images(detector, payload_bytes: int) -> int:
    """The most images a payload of ``payload_bytes`` can code (see the module docstring).

    Each code costs at least -log2 of an upper bound on its coded probability:
    constriction quantises probabilities to whole units of 2**-24
    (``CODER_PRECISION``), rounding one up by less than 2 units, and gives every
    other code at least one unit; hence q <= min(p_max + (K + 1) u, 1 - (K - 1) u)
    with u = 2**-24 and K >= 2 codes. The second ceiling keeps the bound finite
    (about 1.4 (K - 1) u bits a code) even when one code takes all the weight.
    """
    p = code_probabilities(detector.code_counts_)
    unit, k = 2.0 ** -CODER_PRECISION, p.shape[1]
    ceiling = np.minimum(p.max(axis=1) + (k + 1) * unit, 1.0 - (k - 1) * unit)
    bits_per_image = float(-np.log2(ceiling).sum())
    return int((8 * payload_bytes + 64) / bits_per_image)


def psnr(reference: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (peak 255); identical images give inf."""
    diff = reference.reshape(len(reference), -1).astype(np.float64) - decoded.reshape(
        len(decoded), -1)
    mse = (diff ** 2).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


__all__ = ["compress", "decompress", "CorruptBlobError", "code_weights", "code_probabilities",
           "ideal_bits",
           "fingerprint", "to_uint8", "psnr", "encode_codes", "decode_codes"]
