"""Reading version-1 blobs: what vaeanom wrote before the context model (read-only).

Version 1 coded each grid position with its own code frequencies
(``detector.code_counts_``) in this container::

    magic        2 bytes   b"VQ"
    version      1 byte    1
    fingerprint  4 bytes   BLAKE2b of the decoder, codebook, position counts and shapes
    n, C, H, W   varints   number of images and their shape
    length       varint    payload bytes
    payload      length    range-coded codes, 32-bit words, little-endian
    checksum     4 bytes   CRC-32 of everything before it

This module only reads such blobs, with the checks they always had: CRC,
fingerprint, exact lengths, a bound on the image count before anything is
allocated, and the payload must be exactly the code of the codes decoded
from it. :mod:`vaeanom.compression` writes format 3.
"""

from __future__ import annotations

import struct
import weakref
import zlib

import constriction
import numpy as np

from .compression import CODER_PRECISION, CorruptBlobError, hash_decoder, read_varint

MAGIC = b"VQ"
FORMAT_VERSION = 1
FINGERPRINT_BYTES = 4
#: pseudo-count of the overall code frequencies added to each position's counts
PRIOR_STRENGTH = 16


def is_v1(blob: bytes) -> bool:
    return blob[:2] == MAGIC


def code_weights(code_counts: np.ndarray) -> np.ndarray:
    """Per-position code weights (positions, K): whole numbers, exact in float64."""
    counts = np.asarray(code_counts, dtype=np.int64)
    overall = 2 * counts.sum(axis=0) + 1                    # (count + 1/2) * 2
    weights = counts * int(overall.sum()) + int(PRIOR_STRENGTH) * overall
    if weights.max() >= 2**53:
        raise ValueError("too many training codes for exact float64 code weights.")
    return weights.astype(np.float64)


_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(detector) -> bytes:
    """The 4-byte model fingerprint version-1 blobs carry (cached per fitted model)."""
    key = detector.model_
    cached = _fingerprints.get(key)
    if cached is None or cached[0] is not detector.code_counts_:
        digest = hash_decoder(detector, FINGERPRINT_BYTES)
        digest.update(code_weights(detector.code_counts_).tobytes())
        cached = _fingerprints[key] = (detector.code_counts_, digest.digest())
    return cached[1]


def _position_models(weights: np.ndarray) -> list:
    return [constriction.stream.model.Categorical(np.ascontiguousarray(row), perfect=False,
                                                  lazy=True) for row in weights]


def encode_codes(codes: np.ndarray, weights: np.ndarray) -> bytes:
    """Range-code codes (n, positions) position by position (version 1's payload)."""
    encoder = constriction.stream.queue.RangeEncoder()
    for position, model in enumerate(_position_models(weights)):
        encoder.encode(np.ascontiguousarray(codes[:, position], dtype=np.int32), model)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_codes(payload: bytes, n: int, weights: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_codes`: codes (n, positions), int32."""
    if len(payload) % 4:
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not a whole number "
                               "of 32-bit words.")
    decoder = constriction.stream.queue.RangeDecoder(
        np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    codes = np.empty((n, len(weights)), dtype=np.int32)
    try:
        for position, model in enumerate(_position_models(weights)):
            codes[:, position] = decoder.decode(model, n)
    except AssertionError as err:  # constriction's "data that is invalid for the entropy model"
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not a range code "
                               "under this model.") from err
    return codes


def max_images(detector, payload_bytes: int) -> int:
    """The most images a version-1 payload of ``payload_bytes`` can code.

    Each code costs at least -log2 of an upper bound on its quantised
    probability, min(p_max + (K + 1) u, 1 - (K - 1) u) with u = 2**-24, and
    W words carry at most 32 W + 64 bits (see :mod:`vaeanom.compression`).
    """
    weights = code_weights(detector.code_counts_)
    p = weights / weights.sum(axis=1, keepdims=True)
    unit, k = 2.0 ** -CODER_PRECISION, p.shape[1]
    ceiling = np.minimum(p.max(axis=1) + (k + 1) * unit, 1.0 - (k - 1) * unit)
    return int((8 * payload_bytes + 64) / float(-np.log2(ceiling).sum()))


def decompress_codes(detector, blob: bytes) -> np.ndarray:
    """A version-1 blob -> its codes (n, *code_grid_), every field checked."""
    n, payload = _open(detector, blob)
    weights = code_weights(detector.code_counts_)
    codes = decode_codes(payload, n, weights)
    if encode_codes(codes, weights) != payload:
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not exactly the "
                               f"code of the {n} images its header announces (trailing, missing "
                               "or altered bytes).")
    return codes.reshape(n, *detector.code_grid_)


def _open(detector, blob: bytes) -> tuple[int, bytes]:
    if len(blob) < 3 + FINGERPRINT_BYTES + 4:
        raise CorruptBlobError(f"blob is truncated: {len(blob)} bytes is shorter than a header.")
    if blob[2] != FORMAT_VERSION:
        raise CorruptBlobError(f"blob has format version {blob[2]} under the version-1 magic "
                               "b'VQ'; it is corrupt.")
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
        value, offset = read_varint(body, offset)
        fields.append(value)
    n, shape, length = fields[0], tuple(fields[1:4]), fields[4]
    expected = tuple(detector.input_shape_)
    if shape != ((1, *expected) if len(expected) == 2 else expected):
        raise CorruptBlobError(f"blob holds images of shape {shape}; this model makes "
                               f"{expected}.")
    if len(body) - offset != length:
        raise CorruptBlobError(f"blob is corrupt, truncated or padded: header says {length} "
                               f"payload bytes, found {len(body) - offset}.")
    if n < 1:
        raise CorruptBlobError("blob is corrupt: its header claims 0 images.")
    most = max_images(detector, length)
    if n > most:
        raise CorruptBlobError(f"blob header claims {n} images, but a {length}-byte payload "
                               f"holds at most {most} under this model; the blob is corrupt "
                               "or forged.")
    return n, body[offset:]
