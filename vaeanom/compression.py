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
  Under the model, one image costs at least B = sum over positions of
  -log2(max_k p(k | position)) bits (its most likely codes), and a range coder
  cannot write a message in fewer bits than its information content (less a
  final state of 64 bits), so a payload of L bytes holds at most
  (8 L + 64) / B images; a header claiming more is refused before anything
  is allocated;
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
def _categorical() -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(perfect=False)


def encode_codes(codes: np.ndarray, probabilities: np.ndarray) -> bytes:
    """Range-code codes (n, positions) position by position; returns the payload.

    ``probabilities`` (positions, K) may be unnormalised weights.
    """
    encoder = constriction.stream.queue.RangeEncoder()
    model = _categorical()
    for position in range(codes.shape[1]):
        table = np.broadcast_to(probabilities[position], (len(codes), probabilities.shape[1]))
        encoder.encode(codes[:, position].astype(np.int32), model, np.ascontiguousarray(table))
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_codes(payload: bytes, n: int, probabilities: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_codes`: codes (n, positions)."""
    if len(payload) % 4:
        raise CorruptBlobError("payload length is not a whole number of 32-bit words.")
    decoder = constriction.stream.queue.RangeDecoder(
        np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    model = _categorical()
    codes = np.empty((n, probabilities.shape[0]), dtype=np.int64)
    for position in range(probabilities.shape[0]):
        table = np.broadcast_to(probabilities[position], (n, probabilities.shape[1]))
        codes[:, position] = decoder.decode(model, np.ascontiguousarray(table))
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
    n, payload = _open(detector, bytes(blob))
    weights = code_weights(detector.code_counts_)
    codes = decode_codes(payload, n, weights)
    if encode_codes(codes, weights) != payload:
        raise CorruptBlobError("the payload is not exactly the code of the images its header "
                               "announces (trailing, missing or altered bytes).")
    decoded = detector.decode(codes.reshape(n, *detector.code_grid_))
    return to_uint8(decoded)


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
    if len(body) - offset != length or n < 1:
        raise CorruptBlobError(f"blob is truncated or padded: header says {length} payload "
                               f"bytes, found {len(body) - offset}.")
    most = max_images(detector, length)
    if n > most:
        raise CorruptBlobError(f"blob header claims {n} images, but a {length}-byte payload "
                               f"holds at most {most} under this model; the blob is corrupt "
                               "or forged.")
    return n, body[offset:]


def max_images(detector, payload_bytes: int) -> int:
    """The most images a payload of ``payload_bytes`` can code (see the module docstring).

    The floor on the bits of one image allows for constriction's quantisation
    of the probabilities (24-bit precision: a probability can grow by at most
    one unit of 2**-24 per code) so the bound stays sound.
    """
    p = code_probabilities(detector.code_counts_)
    slack = (p.shape[1] + 1) * 2.0**-24
    bits_per_image = float(-np.log2(np.minimum(p.max(axis=1) + slack, 1.0)).sum())
    if bits_per_image <= 0:
        return 2**31
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
