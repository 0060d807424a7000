"""Images <-> bytes with a fitted VQVAEDetector: entropy-coded codes in a lean, checked container.

``compress`` encodes images to their grid of codes
(:meth:`VQVAEDetector.compression_codes`: the nearest codes, or with
``rate_weight`` > 0 a nearby code that is cheaper in its context) and
range-codes the grid with ``constriction``, in raster order, under the
model's context model (:class:`vaeanom.code_model.ContextModel`): each code's
probabilities depend on the classes of its left, upper and upper-right
neighbours, never on where it sits, so images of any size are coded alike.
``decompress`` range-decodes the codes and decodes them to uint8 images,
exactly ``to_uint8(decode(codes, image_size))``. How the encoder chose the
codes never matters to the decoder.

Container, format 3 (every field is checked on the way in)::

    tag       1 byte    0xB3: one image of the fitted size, nothing but its payload follows;
                        0xB4: a header follows. (The high nibble marks a vaeanom blob;
                        format 2 was 0xB2, and a later format takes 0xB5 and up.)
    header    varint    0xB4 only: (n - 1) * 2 + custom: n images; custom = 1 when H, W follow
    H-1, W-1  varints   only when custom: images of another size than the model was fitted on
    payload   the rest  range-coded codes, big-endian 32-bit words, the last one trimmed
    checksum  3 bytes   CRC-24 of the model fingerprint followed by everything before it

One image of the fitted size costs 4 bytes on top of its payload: 0.04 bits
per pixel of a 28x28 image, 9% of the default's 0.45 on Fashion-MNIST.
Format 1 cost 16-17 (a 2-byte magic, a version byte, a stored 4-byte
fingerprint, the shape and the payload length as varints, and a payload
padded to whole words); format 2, 6 (one tag for every blob, so a count
byte always, and a CRC-32). The fingerprint (BLAKE2b of the decoder,
codebook, context model and image size) is not stored; it enters the CRC,
so a blob from another model fails the same check as a corrupt one.

Integrity: CRC-24 (CRC-24/INTERLAKEN) detects every error burst of up to
24 bits, so every single-byte flip past the tag (a tag flipped to 0xB2 is
checked as format 2, against a CRC-32 that then covers other bytes); a
truncation, a model mismatch or random damage passes it with probability 2**-24, and must then also
survive the payload check below (a passing payload must be exactly the
code of the codes decoded from it). ``tests/test_compression.py`` flips
every byte and cuts every length of small blobs;
``benchmarks/compression.py`` measures the detection rate over many blobs.
We gave up the last byte of CRC-32 for 0.01 bits per pixel: one damaged (or
wrong-model) stream in 16.7 million, rather than 4.3 billion, passes the
checksum and is left to the payload check.

Decoding trusts no header field:

- memory is bounded by the payload, not by the image count or size the
  header claims. constriction's range coder keeps its range in [2**32, 2**64):
  coding a code of quantised probability q multiplies the range by at most q,
  and each 32-bit word it writes multiplies it by 2**32, so a genuine payload
  of L bytes (at most L / 4 + 1 words before trimming, one of them the
  sealing word) carries at most 8 L + 96 bits. A code's quantised probability
  is at most min(p_max + (K + 1) 2**-24, 1 - (K - 1) 2**-24) in its context,
  and the model caps p_max at 4096/4097, so every code costs at least
  b >= 3.5e-4 bits (see :func:`max_codes`), and a payload holds at most
  (8 L + 96) / b codes. A header claiming more is refused before anything is
  allocated;
- the range decoder itself is not trusted either: data it finds invalid for
  the model is a :class:`CorruptBlobError`, never constriction's error;
- the payload must be exactly the (trimmed) range code of the codes decoded
  from it: they are encoded again and compared byte for byte, so trailing
  bytes, a payload read past its end or codes padded in are all refused.

Determinism: the payload depends only on the codes and the context model's
weights, whole numbers computed in int64 (exact in float64, and quantised by
constriction with correctly rounded float operations on those exact inputs),
so the same codes give the same bytes on any machine and under any thread
count. Decoding on CPU is bit-identical from run to run (fixed chunk shapes,
see :data:`vaeanom.estimators.base.SCORE_CHUNK`). On another device (a GPU,
or a CPU with other kernels) the decoder's floating-point sums may differ in
the last bits, so a pixel may land one grey level away; the codes themselves
are always recovered exactly. Which codes an image gets is the encoder's
floating-point decision (the nearest code, or the rate-weighted choice) and
may differ on another machine for a near tie, as ``encode`` may; a blob,
once written, decodes to the same codes everywhere.

Blobs of format 2 (tag 0xB2, a header always, CRC-32) and format 1
(position-wise frequency tables, before the context model) still decompress
with the model that wrote them (:mod:`vaeanom.compression_v1`).
"""

from __future__ import annotations

import hashlib
import math
import weakref
import zlib

import constriction
import numpy as np
from sklearn.utils.validation import check_is_fitted

from . import code_model
from .code_model import ContextModel

#: the high nibble every vaeanom blob tag carries (format 1 starts with b"VQ" instead)
TAG_FAMILY = 0xB0
#: format 3, one image of the fitted size: no header
TAG_ONE = 0xB3
#: format 3, a header (image count, and the size when it is not the fitted one) follows
TAG_MANY = 0xB4
#: format 2, read only: a header always, CRC-32
TAG_V2 = 0xB2
#: the tags this version reads, and the checksum bytes each carries
CHECKSUM_BYTES = {TAG_V2: 4, TAG_ONE: 3, TAG_MANY: 3}
#: bytes of the model fingerprint that enters the checksum (never stored)
FINGERPRINT_BYTES = 4
#: constriction's fixed-point precision: probabilities are whole multiples of 2**-24
CODER_PRECISION = 24
#: decompress turns codes into pixels this many of the detector's fixed-size chunks at a time
DECODE_CHUNKS = 256


class CorruptBlobError(ValueError):
    """A compressed blob is truncated, altered, of an unknown version or from another model."""


# ---------------------------------------------------------------- the model
_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def context_model(detector) -> ContextModel:
    """The fitted detector's context model (cached per fitted model)."""
    return _cached(detector)["model"]


def fingerprint(detector) -> bytes:
    """4 bytes that change with anything that changes what a blob decodes to."""
    return _cached(detector)["fingerprint"]


def _cached(detector) -> dict:
    """Context model and fingerprint, rebuilt when fit, load or a refit replaces the counts."""
    key = detector.model_
    entry = _cache.get(key)
    if entry is None or entry["counts"] is not detector.context_counts_:
        model = ContextModel(detector.code_classes_, detector.context_counts_,
                             detector.n_code_classes_)
        entry = _cache[key] = {"counts": detector.context_counts_, "model": model,
                               "fingerprint": _fingerprint(detector, model)}
    return entry


def hash_decoder(detector, size: int = FINGERPRINT_BYTES):
    """A BLAKE2b digest fed with what turns codes into pixels: shapes, decoder, codebook."""
    digest = hashlib.blake2b(digest_size=size)
    digest.update(repr((tuple(detector.input_shape_), tuple(detector.code_grid_))).encode())
    state = detector.model_.state_dict()
    for name in sorted(state):
        if name.startswith(("decoder.", "quantizer.codebook.embedding")):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest


def _fingerprint(detector, model: ContextModel) -> bytes:
    digest = hash_decoder(detector)
    digest.update(repr((code_model.BACKOFF, code_model.SCALE_BITS, code_model.LEVELS,
                        model.n_classes)).encode())
    digest.update(np.ascontiguousarray(model.classes, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(model.counts, dtype="<i8").tobytes())
    return digest.digest()


def ideal_bits(detector, codes: np.ndarray) -> float:
    """Shannon code length -sum log2 p(code | context) of code grids (n, h, w)."""
    return context_model(detector).ideal_bits(np.asarray(codes))


# ------------------------------------------------------------ range coding
#: constriction's leaky categorical family: every code keeps a nonzero probability
_FAMILY = constriction.stream.model.Categorical(perfect=False)
#: images whose probability rows are built at once per grid position (each row K float64)
CODING_BLOCK = 512


def _coding_order(shape: tuple[int, int, int]):
    """(row, column, images) in the order both sides code: raster order, image blocks."""
    n, h, w = shape
    for row in range(h):
        for column in range(w):
            for start in range(0, n, CODING_BLOCK):
                yield row, column, slice(start, min(start + CODING_BLOCK, n))


def _probabilities(model: ContextModel, codes: np.ndarray, row: int, column: int,
                   images: slice) -> np.ndarray:
    """Each image's weights (b, K) at (row, column), from the codes decoded before it."""
    contexts = model.context_at(codes[images], row, column)
    unique, inverse = np.unique(contexts, return_inverse=True)
    return model.rows(unique)[inverse]


def _range_code(codes: np.ndarray, model: ContextModel) -> np.ndarray:
    """Code grids (n, h, w) -> constriction's 32-bit words."""
    encoder = constriction.stream.queue.RangeEncoder()
    for row, column, images in _coding_order(codes.shape):
        encoder.encode(codes[images, row, column].astype(np.int32), _FAMILY,
                       _probabilities(model, codes, row, column, images))
    return encoder.get_compressed()


def _range_decode(words: np.ndarray, shape: tuple[int, int, int],
                  model: ContextModel) -> np.ndarray:
    """Inverse of :func:`_range_code`; the decoder reads zero words past the end."""
    decoder = constriction.stream.queue.RangeDecoder(words)
    codes = np.zeros(shape, dtype=np.int64)
    try:
        for row, column, images in _coding_order(shape):
            codes[images, row, column] = decoder.decode(
                _FAMILY, _probabilities(model, codes, row, column, images))
    except AssertionError as err:  # constriction's "data that is invalid for the entropy model"
        raise CorruptBlobError("blob is corrupt or truncated: its payload is not a range code "
                               "under this model.") from err
    return codes


def encode_codes(codes: np.ndarray, model: ContextModel) -> bytes:
    """Code grids (n, h, w) -> payload: big-endian words, the last one cut short.

    The range coder seals its stream with a whole 32-bit word, of which fewer
    bytes usually suffice: the decoder reads zeros past the end, so the last
    word may be rounded up to a multiple of 2**8, 2**16 or 2**24 and its
    trailing zero bytes dropped, as long as the codes still decode. Each
    candidate is checked by decoding it, so the shortest that works is
    exact by construction; it is a function of the codes alone.
    """
    codes = np.asarray(codes, dtype=np.int64)
    words = _range_code(codes, model)
    if not len(words):
        return b""
    head = words[:-1].astype(">u4").tobytes()
    last = int(words[-1])
    for keep in (0, 1, 2, 3):
        unit = 1 << (8 * (4 - keep))
        rounded = -(-last // unit) * unit
        if rounded >= 1 << 32:
            continue
        payload = head + rounded.to_bytes(4, "big")[:keep]
        if _decodes_to(payload, codes, model):
            return payload
    return head + last.to_bytes(4, "big")


def _decodes_to(payload: bytes, codes: np.ndarray, model: ContextModel) -> bool:
    try:
        return np.array_equal(_decode_payload(payload, codes.shape, model), codes)
    except CorruptBlobError:  # a cut too short can leave data the decoder rejects
        return False


def _decode_payload(payload: bytes, shape, model: ContextModel):
    padded = payload + bytes(-len(payload) % 4)
    words = np.frombuffer(padded, dtype=">u4").astype(np.uint32)
    return _range_decode(words, shape, model)


def decode_codes(payload: bytes, shape: tuple[int, int, int],
                 model: ContextModel) -> np.ndarray:
    """Payload -> code grids ``shape`` = (n, h, w), checked to be exactly their code."""
    codes = _decode_payload(payload, shape, model)
    if encode_codes(codes, model) != payload:
        raise CorruptBlobError(f"blob is corrupt or truncated: its payload is not exactly the "
                               f"code of the {shape[0]} images its header announces (trailing, "
                               "missing or altered bytes).")
    return codes


def max_codes(model: ContextModel, payload_bytes: int) -> int:
    """The most codes a genuine payload of ``payload_bytes`` can hold (module docstring).

    constriction quantises probabilities to whole units u = 2**-24
    (``CODER_PRECISION``), rounding one up by less than 2 units, and gives
    every other code at least one unit; hence q <= min(p_max + (K + 1) u,
    1 - (K - 1) u) in each context, K >= 2. The second ceiling keeps the bound
    finite (about 1.4 (K - 1) u bits a code) even when one code takes all
    of a context's weight.
    """
    unit, k = 2.0 ** -CODER_PRECISION, model.n_codes
    slack = 2 * len(code_model.LEVELS) * k * 2.0 ** -code_model.SCALE_BITS  # the floors
    ceiling = min(model.max_probability() + slack + (k + 1) * unit, 1.0 - (k - 1) * unit)
    return int((8 * payload_bytes + 96) / -np.log2(ceiling))


# ---------------------------------------------------------------- container
def varint(value: int) -> bytes:
    """A non-negative int as LEB128: 7 bits a byte, low bits first."""
    if value < 0:
        raise ValueError(f"varint takes non-negative ints; got {value}.")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(blob: bytes, offset: int) -> tuple[int, int]:
    """(value, next offset) of the varint at ``offset``; padded (overlong) forms are refused."""
    value = shift = 0
    while True:
        if offset >= len(blob) or shift > 63:
            raise CorruptBlobError("blob is truncated inside its header.")
        byte = blob[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if not byte & 0x80:
            if byte == 0 and shift > 7:
                raise CorruptBlobError("blob is corrupt: a header number is padded with "
                                       "zero bytes (varint writes none).")
            return value, offset


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


def _check_context_model(detector) -> None:
    if getattr(detector, "context_counts_", None) is None:
        raise ValueError("this model was saved before vaeanom's context model (format 2 and "
                         "later): it decompresses the blobs it wrote; call "
                         "refit_code_model(images) on its training images (or fit it again) "
                         "to compress.")


def seal(detector, body: bytes) -> bytes:
    """body + checksum of (fingerprint, body), whose width its tag sets: it also says which model.

    CRC-24 for format 3; CRC-32 for format 2, which :func:`_open` still checks.
    """
    if CHECKSUM_BYTES[body[0]] == 4:
        return body + zlib.crc32(body, zlib.crc32(fingerprint(detector))).to_bytes(4, "big")
    return body + crc24(body, crc24(fingerprint(detector), final=False)).to_bytes(3, "big")


def _crc24_table(polynomial: int = 0x328B63) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        register = byte << 16
        for _ in range(8):
            register = (register << 1) ^ (polynomial if register & 0x800000 else 0)
        table.append(register & 0xFFFFFF)
    return tuple(table)


_CRC24_TABLE = _crc24_table()


def crc24(data: bytes, register: int = 0xFFFFFF, final: bool = True) -> int:
    """CRC-24/INTERLAKEN of ``data`` (continuing from ``register`` of an unfinished one).

    It detects every error burst of up to 24 bits. Its register starts and
    ends complemented: with a plain CRC (OpenPGP's), a sealed blob with a zero
    byte appended is sealed too (its last three bytes are then the CRC of the
    bytes before them); here no single appended byte reseals a blob, though
    one fixed 3-byte suffix does, as for any CRC, and is left to the payload
    check. Written out (about 0.16 s a MB) because the ``crc`` package's
    calculators keep their register on the object, so threads sharing one mix
    their sums; zlib has only CRC-32.
    """
    for byte in data:
        register = ((register << 8) & 0xFFFFFF) ^ _CRC24_TABLE[(register >> 16) ^ byte]
    return register ^ 0xFFFFFF if final else register


def compress(detector, images) -> bytes:
    """Images (n, H, W) or (n, C, H, W) -> one blob (see the module docstring).

    Images of another height and width than the fitted ones are coded at
    their own size (:meth:`VQVAEDetector.compression_codes`), which the header
    records.
    """
    _check_codec(detector)
    _check_context_model(detector)
    codes = detector.compression_codes(images)
    size = tuple(int(side) for side in np.shape(images)[-2:]) if np.ndim(images) >= 3 else None
    custom = size is not None and size != tuple(detector.input_shape_[-2:])
    if len(codes) == 1 and not custom:
        head = bytes([TAG_ONE])
    else:
        head = bytes([TAG_MANY]) + varint((len(codes) - 1) * 2 + custom)
        if custom:
            head += varint(size[0] - 1) + varint(size[1] - 1)
    payload = encode_codes(codes, context_model(detector))
    return seal(detector, head + payload)


def decompress(detector, blob: bytes) -> np.ndarray:
    """A blob from :func:`compress` -> uint8 images (n, [C,] H, W), at the size compressed."""
    _check_codec(detector)
    try:  # bytes(n) of an int n would allocate n bytes
        blob = bytes(memoryview(blob))
    except TypeError:
        raise TypeError(f"blob must be bytes (what compress returns); got "
                        f"{type(blob).__name__}.") from None
    from . import compression_v1

    if compression_v1.is_v1(blob):
        return _decode_images(detector, compression_v1.decompress_codes(detector, blob))
    _check_context_model(detector)
    n, size, payload = _open(detector, blob)
    codes = decode_codes(payload, (n, *_grid(detector, size)), context_model(detector))
    if size is None:
        codes = codes.reshape(n, *detector.code_grid_)
    return _decode_images(detector, codes, size)


def _grid(detector, size: tuple[int, int] | None) -> tuple[int, int]:
    """The code grid of one image of ``size`` (None: the fitted size); a sequence is one row."""
    grid = tuple(detector.code_grid_) if size is None else detector.code_grid_for(size)
    return grid if len(grid) == 2 else (1, *grid)


def _decode_images(detector, codes: np.ndarray,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 images of code grids (n, h, w), ``DECODE_CHUNKS`` scoring chunks at a time.

    ``size`` is the images' (H, W) when it is not the fitted one. Only the
    uint8 output grows with n; the float pixels of one block are dropped
    before the next, so decompressing costs about n * C * H * W bytes (plus
    the codes) rather than several float copies of every image. Blocks are
    whole chunks, so every image goes through the kernels it would in one
    ``decode`` call: the same pixels.
    """
    shape = (*detector.input_shape_[:-2], *(size or detector.input_shape_[-2:]))
    images = np.empty((len(codes), *shape), dtype=np.uint8)
    block_size = DECODE_CHUNKS * detector._chunk_rows
    for start in range(0, len(codes), block_size):
        block = codes[start:start + block_size]
        images[start:start + len(block)] = to_uint8(detector.decode(block, image_size=size))
    return images


def _open(detector, blob: bytes) -> tuple[int, tuple[int, int] | None, bytes]:
    """Check a blob's tag, checksum (and so its model), header and size.

    Returns (n, (H, W) or None for the fitted size, payload).
    """
    tag = _check_tag(blob)
    width = CHECKSUM_BYTES[tag]
    least = 1 + (tag != TAG_ONE) + width
    if len(blob) < least:
        raise CorruptBlobError(f"blob is truncated: {len(blob)} bytes is shorter than its tag, "
                               "header and checksum.")
    body = blob[:-width]
    if seal(detector, body) != blob:
        raise CorruptBlobError(f"blob is corrupt, truncated, or was made by another model: its "
                               f"CRC-{8 * width} does not match its bytes under this model's "
                               "fingerprint. Decompress it with the model that compressed it.")
    n, size, offset = 1, None, 1
    if tag != TAG_ONE:
        header, offset = read_varint(body, 1)
        n = (header >> 1) + 1
        if header & 1:
            size, offset = _read_size(detector, body, offset)
        if tag == TAG_MANY and header == 0:
            raise CorruptBlobError("blob is corrupt: its header announces one image of the "
                                   f"fitted size, which compress writes with tag {TAG_ONE:#x}.")
    payload = body[offset:]
    grid = _grid(detector, size)
    most = max_codes(context_model(detector), len(payload))
    if n * math.prod(grid) > most:  # exact: np.prod would wrap around at 2**63
        raise CorruptBlobError(f"blob header claims {n} images, but a {len(payload)}-byte "
                               f"payload holds at most {most} codes under this model; the blob is "
                               "corrupt or forged.")
    return n, size, payload


def _check_tag(blob: bytes) -> int:
    """The tag byte of a blob this version reads (0xB2-0xB4), or a CorruptBlobError why not."""
    if not blob or blob[0] & 0xF0 != TAG_FAMILY:
        raise CorruptBlobError("not a vaeanom VQ blob (bad tag byte); was it made by "
                               "VQVAEDetector.compress?")
    if blob[0] > max(CHECKSUM_BYTES):
        raise CorruptBlobError(f"blob has tag {blob[0]:#x}, from a newer vaeanom; this one reads "
                               "formats 1 to 3 (b'VQ', 0xb2, 0xb3 and 0xb4). Use the vaeanom "
                               "that wrote it, or check the file for corruption.")
    if blob[0] not in CHECKSUM_BYTES:
        raise CorruptBlobError(f"not a vaeanom VQ blob: tag byte {blob[0]:#x} was never written "
                               "(format 1 starts with b'VQ', later ones with 0xb2, 0xb3 or 0xb4).")
    return blob[0]


def _read_size(detector, body: bytes, offset: int) -> tuple[tuple[int, int], int]:
    """The (H, W) a blob of images of another size records, checked against the model."""
    height, offset = read_varint(body, offset)
    width, offset = read_varint(body, offset)
    size = (height + 1, width + 1)
    if size == tuple(detector.input_shape_[-2:]):
        raise CorruptBlobError("blob is corrupt: its header records the fitted image size, "
                               "which compress never writes.")
    if not detector._any_size():
        raise CorruptBlobError(f"blob holds {size[0]}x{size[1]} images, but this model codes only "
                               "its fitted size (an MLP backbone); it was not made by this model.")
    return size, offset


def psnr(reference: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 images (peak 255); identical images give inf."""
    diff = reference.reshape(len(reference), -1).astype(np.float64) - decoded.reshape(
        len(decoded), -1)
    mse = (diff ** 2).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


__all__ = ["compress", "decompress", "CorruptBlobError", "context_model", "ideal_bits",
           "fingerprint", "to_uint8", "psnr", "encode_codes", "decode_codes", "max_codes"]
