"""What ``vaeanom serve PATH`` serves: one exported ``.onnx`` file or a Triton repository.

A repository has exactly the layout ``vaeanom export --triton`` writes, which
is Triton's own: ``REPO/<name>/config.pbtxt`` and ``REPO/<name>/<version>/model.onnx``.
``config.pbtxt`` is read with Triton's model-config protobuf
(``tritonclient.grpc.model_config_pb2``) and protobuf's ``text_format``, so
whatever Triton accepts parses here, and the settings Triton's dynamic
batcher reads (``max_batch_size``, ``dynamic_batching.max_queue_delay_microseconds``)
mean the same. So does ``version_policy``: the latest version only when the config
sets none (Triton's default), ``latest { num_versions: N }``, ``all {}`` or
``specific { versions: [...] }`` (a listed version without its folder is left
out with a warning; a policy that leaves none is refused). The highest version
served is the default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..runtime import OnnxModel

logger = logging.getLogger(__name__)

#: what a single .onnx file is served with (Triton's defaults for a dynamic batcher)
DEFAULT_MAX_BATCH_SIZE = 4096


@dataclass
class ServedModel:
    """One version of one model, and how its requests are batched."""

    name: str
    version: str
    model: OnnxModel
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    dynamic_batching: bool = True
    max_queue_delay_us: int = 0


def read_config(path: Path):
    """A ``config.pbtxt`` as Triton's ``ModelConfig`` message; ValueError names a bad file."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a valid Triton model config: {err}") from None


def load(path: str | Path, **model_options) -> dict[str, dict[str, ServedModel]]:
    """Every model under ``path``: {name: {version: ServedModel}}."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".onnx":
            raise ValueError(f"{str(path)!r} is neither an .onnx file nor a model repository.")
        return {path.stem: {"1": ServedModel(path.stem, "1", OnnxModel(path, **model_options))}}
    if not path.is_dir():
        raise FileNotFoundError(f"no model file or repository at {str(path)!r}.")
    models = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        models[folder.name] = _load_model(folder, model_options)
    if not models:
        raise ValueError(f"{str(path)!r} holds no model folder (REPO/<name>/config.pbtxt and "
                         "REPO/<name>/<version>/model.onnx, as `vaeanom export --triton` writes).")
    return models


def _load_model(folder: Path, model_options: dict) -> dict[str, ServedModel]:
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        raise ValueError(f"model folder {str(folder)!r} has no config.pbtxt.")
    config = read_config(config_path)
    name = config.name or folder.name
    if name != folder.name:
        raise ValueError(f"{str(config_path)!r} names the model {name!r}, but its folder is "
                         f"{folder.name!r}; Triton requires them to match.")
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and _is_version(p.name)),
                      key=lambda p: int(p.name))
    if not versions:
        raise ValueError(f"model folder {str(folder)!r} has no version folder (<version>/"
                         "model.onnx).")
    versions = _chosen_versions(versions, config.version_policy, config_path)
    if config.max_batch_size < 1:
        raise ValueError(f"{str(config_path)!r} has max_batch_size {config.max_batch_size}: "
                         "vaeanom models take a batch dimension; set max_batch_size >= 1.")
    batching = config.HasField("dynamic_batching")
    served = {}
    for version in versions:
        model = OnnxModel(version / (config.default_model_filename or "model.onnx"),
                          **model_options)
        served[version.name] = ServedModel(
            name, version.name, model, max_batch_size=config.max_batch_size,
            dynamic_batching=batching,
            max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds)
    return served


def _is_version(name: str) -> bool:
    """A version folder's name, as Triton reads one: digits, without a leading zero
    (Triton ignores ``01``, which would be version 1 twice)."""
    return name.isdigit() and (name == "0" or not name.startswith("0"))


def _chosen_versions(versions: list[Path], policy, config_path: Path) -> list[Path]:
    """The version folders (sorted by number) that ``version_policy`` serves, as Triton
    chooses them: a ``specific`` version without its folder is left out with a warning,
    and a policy that leaves none is refused."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        wanted = set(policy.specific.versions)
        missing = sorted(wanted - {int(p.name) for p in versions})
        if missing:
            logger.warning("%s: version_policy names version(s) %s, which have no folder",
                           config_path, missing)
        chosen = [p for p in versions if int(p.name) in wanted]
    elif kind == "all":
        chosen = versions
    else:
        count = policy.latest.num_versions if kind == "latest" else 1
        chosen = versions[-count:] if count > 0 else []
    if not chosen:
        raise ValueError(f"{str(config_path)!r}: its version_policy leaves no version to serve "
                         f"(version folders: {[p.name for p in versions]}); name one that "
                         "exists.")
    return chosen
