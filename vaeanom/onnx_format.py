"""Names shared by the ONNX exporter (torch) and the runtime (no torch)."""

#: ``metadata_props`` key of the JSON document describing an exported file
METADATA_KEY = "vaeanom"
FORMAT = "vaeanom-onnx"
#: bumped when a file's graph signature or metadata changes incompatibly
#: (2: sealed with a SHA-256 digest, preprocessing in the metadata)
FORMAT_VERSION = 2
#: ``metadata_props`` key of the file's SHA-256 seal (see vaeanom.digest)
DIGEST_KEY = "vaeanom.sha256"
#: the serialized bytes just before the digest: the key's protobuf field, then the value's
#: tag and length (64)
DIGEST_MARKER = b"\x0a" + bytes([len(DIGEST_KEY)]) + DIGEST_KEY.encode() + b"\x12\x40"
PARTS = ("scorer", "encoder", "decoder")
