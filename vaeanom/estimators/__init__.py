"""The scikit-learn estimators: a shared base and one thin class per model family."""

from .base import BaseDetector
from .params import InvalidParameterError
from .vae import VAEDetector

#: the estimator names a saved model file may name
DETECTORS = ("VAEDetector",)

__all__ = ["BaseDetector", "VAEDetector", "InvalidParameterError", "DETECTORS"]
