"""vaeanom: anomaly detection and compression with variational autoencoders."""

__version__ = "0.1.0"

from .estimators import InvalidParameterError, VAEDetector  # noqa: E402
from .training import TrainingDivergedError  # noqa: E402

__all__ = ["VAEDetector", "InvalidParameterError", "TrainingDivergedError", "__version__"]
