"""Version-1 blobs, as vaeanom wrote them before the context model, for the tests that read them."""

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
