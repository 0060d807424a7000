"""The scikit-learn estimators: a shared base and one thin class per model family."""

from .base import BaseDetector
from .params import InvalidParameterError
from .vae import VAEDetector
from .vq import VQVAEDetector

#: the estimator names a saved model file may name
DETECTORS = ("VAEDetector", "VQVAEDetector")

__all__ = ["BaseDetector", "VAEDetector", "VQVAEDetector", "InvalidParameterError", "DETECTORS"]
