"""Blobs of earlier container versions, as vaeanom wrote them, for the tests that read them."""

import struct
import zlib

from vaeanom import compression, compression_v1


def v1_blob(detector, images) -> bytes:
    codes = detector.encode(images).reshape(len(images), -1)
    payload = compression_v1.encode_codes(codes,
                                          compression_v1.code_weights(detector.code_counts_))
    shape = (1, *detector.input_shape_)
    body = (b"VQ\x01" + compression_v1.fingerprint(detector)
            + b"".join(compression.varint(v) for v in (len(images), *shape, len(payload)))
            + payload)
    return body + struct.pack(">I", zlib.crc32(body))


def v2_blob(detector, images) -> bytes:
    """Format 2, as vaeanom wrote it before format 3: tag 0xB2, a count always, and the
    CRC-32 of (model fingerprint, body)."""
    codes = detector.encode(images)
    payload = compression.encode_codes(codes, compression.context_model(detector))
    body = bytes([0xB2]) + compression.varint((len(images) - 1) * 2) + payload
    checksum = zlib.crc32(body, zlib.crc32(compression.fingerprint(detector)))
    return body + struct.pack(">I", checksum)
