"""Names shared by the ONNX exporter (torch) and the runtime (no torch)."""

#: ``metadata_props`` key of the JSON document describing an exported file
METADATA_KEY = "vaeanom"
FORMAT = "vaeanom-onnx"
#: bumped when a file's graph signature or metadata changes incompatibly
#: (2: sealed with a SHA-256 digest, preprocessing in the metadata; 3: the graph's inputs
#: listed in the metadata, and table models take numbers, category codes and a mask)
FORMAT_VERSION = 3
#: ``metadata_props`` key of the file's SHA-256 seal (see vaeanom.digest)
DIGEST_KEY = "vaeanom.sha256"
#: the serialized bytes just before the digest: the key's protobuf field, then the value's
#: tag and length (64)
DIGEST_MARKER = b"\x0a" + bytes([len(DIGEST_KEY)]) + DIGEST_KEY.encode() + b"\x12\x40"
PARTS = ("scorer", "encoder", "decoder")


def table_inputs(cardinalities) -> list[dict]:
    """The graph inputs of a table model's scorer and encoder, per row (batch dim left out).

    ``cardinalities[j]`` is 0 for a numeric column and K for a categorical one:

    - ``numbers``, float32 (p,): the p numeric columns in the user's units, in
      table order (any value where missing);
    - ``codes``, int64 (q,): the q categorical columns as codes 0..K-1 into the
      categories stored in the metadata, K (or any code outside 0..K-1) for a
      category fit never saw (any value where missing);
    - ``observed``, bool (d,): False where an entry of the d columns is missing.

    ``numbers`` or ``codes`` is left out when the table has no such column.
    """
    p = sum(1 for k in cardinalities if k == 0)
    q = len(cardinalities) - p
    inputs = [{"name": "numbers", "dtype": "float32", "shape": [p]},
              {"name": "codes", "dtype": "int64", "shape": [q]},
              {"name": "observed", "dtype": "bool", "shape": [len(cardinalities)]}]
    return [spec for spec in inputs if spec["shape"][0] > 0]
