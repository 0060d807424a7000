"""Names shared by the ONNX exporter (torch) and the runtime (no torch)."""

#: ``metadata_props`` key of the JSON document describing an exported file
METADATA_KEY = "vaeanom"
FORMAT = "vaeanom-onnx"
#: bumped when a file's graph signature or metadata changes incompatibly
FORMAT_VERSION = 1
PARTS = ("scorer", "encoder", "decoder")
