"""vaeanom: anomaly detection and compression with variational autoencoders.

Names are imported on first use, so ``import vaeanom.runtime`` (numpy and
onnxruntime only) never pulls in torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "VAEDetector": "vaeanom.estimators",
    "VQVAEDetector": "vaeanom.estimators",
    "InvalidParameterError": "vaeanom.estimators.params",
    "TrainingDivergedError": "vaeanom.training",
    "OnnxModel": "vaeanom.runtime",
    "Preprocessing": "vaeanom.preprocessing",
    "evaluate": "vaeanom.evaluation",
    "anomaly_roc_auc": "vaeanom.evaluation",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vaeanom' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
