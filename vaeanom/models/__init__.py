"""torch modules only: encoder/decoder bodies, likelihoods, the VAE itself.

Nothing here imports numpy, pandas or scikit-learn; the estimators compose these.
"""

from .conv import (ConvDecoder, ConvEncoder, ConvGridDecoder, ConvGridEncoder, decoded_side,
                   grid_shape, padded_side)
from .likelihoods import (BernoulliLikelihood, GaussianLikelihood, bernoulli_log_prob,
                          gaussian_kl_standard_normal, gaussian_log_prob)
from .mlp import MLPDecoder, MLPEncoder, MLPGridDecoder, MLPGridEncoder
from .table import MixedLikelihood, TableEncoder, n_decoder_outputs
from .vae import VAE, ELBOTerms
from .vq import VQVAE, Candidates, Codebook, Quantized, VectorQuantizer, usage_statistics

__all__ = [
    "VAE", "ELBOTerms", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder",
    "GaussianLikelihood", "BernoulliLikelihood", "gaussian_log_prob", "bernoulli_log_prob",
    "gaussian_kl_standard_normal", "VQVAE", "Candidates", "Codebook", "Quantized",
    "VectorQuantizer", "usage_statistics", "ConvGridEncoder", "ConvGridDecoder", "MLPGridEncoder",
    "MLPGridDecoder", "grid_shape", "decoded_side", "padded_side", "TableEncoder",
    "MixedLikelihood", "n_decoder_outputs",
]
