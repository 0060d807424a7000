"""VQVAEDetector: a vector-quantised autoencoder as detector, encoder and image codec."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.utils.validation import check_array, check_is_fitted
from torch import Tensor, nn

from .. import training
from ..checks import check_count, image_shape_hint, is_outlier
from ..codes import check_code_values
from ..models import (VQVAE, Codebook, ConvGridDecoder, ConvGridEncoder, MLPGridDecoder,
                      MLPGridEncoder, VectorQuantizer, decoded_side, grid_shape, padded_side,
                      usage_statistics)
from . import inputs
from .base import BaseDetector, _seed_from
from .params import AnyOf, IntTuple, InvalidParameterError, Number, OneOf


class ReconstructionScore(nn.Module):
    """x (model units) -> minus the mean squared error of its quantised reconstruction."""

    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        reconstruction, _ = self.model(x)
        return -(x - reconstruction).flatten(1).pow(2).mean(dim=1)


class _EncodeCodes(nn.Module):
    def __init__(self, model: VQVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode(x)


class _DecodeCodes(_EncodeCodes):
    """Codes -> model-unit reconstructions; image pixels clipped to [0, 1] as ``decode`` does."""

    def __init__(self, model: VQVAE, clip: bool) -> None:
        super().__init__(model)
        self.clip = clip

    def forward(self, codes: Tensor) -> Tensor:
        decoded = self.model.decode(codes)
        return decoded.clamp(0.0, 1.0) if self.clip else decoded


class VQVAEDetector(BaseDetector):
    """Anomaly detector, discrete encoder and image codec built on a VQ-VAE.

    The encoder maps each input to a grid of vectors (``h x w`` for images,
    ``n_codes`` for rows), each replaced by its nearest entry in a codebook of
    ``codebook_size`` vectors; the decoder maps the codes back. ``encode`` gives
    the integer codes, ``compress`` entropy-codes them to bytes, and
    ``score_samples`` is minus the reconstruction error (higher = more normal).

    Parameters
    ----------
    codebook_size : int or "auto", default="auto"
        Number of codes K; each code costs at most log2(K) bits before entropy
        coding. "auto" is 1024 for images (the default operating point of
        ``benchmarks/compression.py``: on Fashion-MNIST 26.13 dB at 0.448 bits
        per pixel, every byte of one stream per image, 0.318x the bits of WebP
        method 6 at that PSNR) and 64 for rows, whose short code sequences
        need fewer codes.
    code_dim : int, default=32
        Dimension D of each code vector.
    conv_channels : tuple of int, default=(48, 96)
        Channels of the convolutional stages. Each stage halves height and width,
        so two stages give a 7x7 grid of codes for 28x28 images. (64, 128), the
        default before, trained 30 epochs in float32, reconstructs Fashion-MNIST
        0.13 dB better at the same bits and takes three times as long to fit.
    hidden_dims : tuple of int, default=(256, 128)
        Widths of the MLP encoder's hidden layers for rows (the decoder mirrors them).
    n_codes : int, default=4
        Length of the code sequence of one row (MLP backbone).
    backbone : {"auto", "mlp", "conv"}, default="auto"
        "auto" picks "conv" for images and "mlp" for rows.
    commitment_weight : float, default=0.25
        beta of the commitment loss ||z_e - sg(e)||^2 that keeps the encoder near its codes.
    codebook_update : {"ema", "loss"}, default="ema"
        Move codes by exponential moving averages of their assigned encoder
        outputs (robust, the default) or by the codebook loss ||sg(z_e) - e||^2.
    ema_decay : float in [0, 1), default=0.99
    dead_code_threshold : float, default=1.0
        A code whose moving average (decay ``ema_decay``) of vectors assigned per
        batch falls below this is restarted on an encoder output of the current
        batch; 0 turns restarts off. (We tried a faster average, over about ten
        batches: it kept restarting the rarer codes of a 1024-code book, and that
        model lost 0.5 dB on Fashion-MNIST in our one comparison.)
    lr_schedule : {"constant", "cosine"}, default="constant"
        "cosine" decays the learning rate per batch from ``learning_rate`` to 0
        over the planned epochs (``fit`` only; ``partial_fit`` keeps it
        constant). Not yet shown to help a VQ-VAE: on 1200 digits it
        reconstructed worse than a constant rate (``tests/test_vq.py``), and
        on Fashion-MNIST (48000 images, 25 epochs of the CPU recipe of
        ``benchmarks/compression.py``) it cost 0.6 dB at K=1024.
    rate_weight : float >= 0, default=1.0
        What one bit is worth when :meth:`compress` chooses codes, in units of
        the training set's mean squared quantisation error
        (``quantisation_error_``): each position takes, among its 16 closest
        codes, the one that minimises squared distance + weight x its bits in
        context (:func:`vaeanom.code_model.choose_codes`), and the context
        model is counted on those choices. 0 writes the nearest codes, as
        :meth:`encode` gives them. Larger weights give smaller blobs and lower
        PSNR; only compression is affected, never scores or :meth:`encode`.
        Set after fit, call :meth:`refit_code_model` so that the counts follow
        (blobs decode either way, but cost more).
    precision : {"auto", "fp32", "bf16"}, default="auto"
        "bf16" runs the convolutions of training under ``torch.autocast`` in
        bfloat16 (about 1.6x the images per second of float32 for the 64/128
        network on a CPU with AVX512-BF16). The quantiser (nearest codes,
        moving averages), the weights and everything after fit stay float32.
        "auto" is "bf16" for convolutional image models on a device that
        computes bfloat16 in hardware (a CPU with AVX512-BF16 or AMX, or a
        recent GPU), "fp32" elsewhere: so the same ``random_state`` gives the
        same model on machines alike, and may differ between a CPU with and
        one without bfloat16.
    epochs : int, default=22
    learning_rate : float, default=2e-3
        With the defaults above, the recipe that fits Fashion-MNIST's 48000
        training images in under 10 minutes on 2 CPU cores
        (``benchmarks/compression_recipes.py``, which judges recipes on
        training images only); the earlier 30 epochs at 1e-3 in float32 took
        27 minutes.
    contamination, threshold_folds, batch_size, weight_decay, clip_grad_norm,
    validation_fraction, patience, device, verbose, random_state :
        As in :class:`vaeanom.VAEDetector`.

    Attributes
    ----------
    model_ : vaeanom.models.VQVAE
    offset_ : float
    history_ : list of dict
        Per epoch: loss, reconstruction (mean squared error in model units),
        commitment, codebook (loss mode), perplexity exp(-sum p log p) of the
        epoch's code usage, and used_codes (share of the codebook used).
    code_grid_ : tuple of int
        Shape of one input's codes: (h, w) for images, (n_codes,) for rows.
    code_counts_ : ndarray of shape (prod(code_grid_), K)
        How often each code occurs at each grid position over the training
        set (what :meth:`sample` draws from, and what decoded version-1 blobs).
    code_classes_, context_counts_, n_code_classes_ :
        Images only: the context model of :meth:`compress`
        (:class:`vaeanom.code_model.ContextModel`): the class of each code
        (k-means on the codebook) and the training counts of codes per context.
    perplexity_, used_codes_ : float
        Codebook health on the training set at the end of fit.
    quantisation_error_ : float
        Mean squared distance from an encoder output to its nearest code over
        the training set: the unit of ``rate_weight``.
    """

    _state_params: ClassVar = ("backbone", "hidden_dims", "conv_channels", "codebook_size",
                               "code_dim", "n_codes")
    _rules: ClassVar = {
        "codebook_size": AnyOf((OneOf(("auto",)), Number(2, integer=True))),
        "code_dim": Number(1, integer=True),
        "conv_channels": IntTuple(),
        "hidden_dims": IntTuple(),
        "n_codes": Number(1, integer=True),
        "backbone": OneOf(("auto", "mlp", "conv")),
        "commitment_weight": Number(0.0),
        "codebook_update": OneOf(("ema", "loss")),
        "ema_decay": Number(0.0, 1.0, high_open=True),   # at 1 the codes would never move
        "dead_code_threshold": Number(0.0),
        "lr_schedule": OneOf(("constant", "cosine")),
        "precision": OneOf(("auto", "fp32", "bf16")),
        "rate_weight": Number(0.0),
        **BaseDetector._common_rules,
    }
    _fitted_arrays: ClassVar = ("center_", "scale_", "code_counts_", "code_classes_",
                                "context_counts_")
    # row models have no context model; image models saved before it decompress old blobs
    _optional_arrays: ClassVar = ("code_classes_", "context_counts_")
    # Each chunk row is a whole image through convolutions: small chunks keep one-image
    # calls (compress, per-image streams) cheap, and the matrices stay large (rows x grid).
    _chunk_rows: ClassVar[int] = 16
    _fitted_values: ClassVar = (*BaseDetector._fitted_values, "code_grid_", "perplexity_",
                                "used_codes_", "n_code_classes_", "quantisation_error_")
    _scoring_state: ClassVar = ("offset_", "code_grid_", "code_counts_", "perplexity_",
                                "used_codes_", "code_classes_", "context_counts_",
                                "n_code_classes_", "quantisation_error_")
    #: closest codes each grid position weighs when rate_weight > 0
    _candidates: ClassVar[int] = 16
    #: images whose candidates are held at once while codes are chosen
    _choice_block: ClassVar[int] = 4096

    def __init__(self, codebook_size="auto", code_dim=32, conv_channels=(48, 96),
                 hidden_dims=(256, 128), n_codes=4, backbone="auto", commitment_weight=0.25,
                 codebook_update="ema", ema_decay=0.99, dead_code_threshold=1.0,
                 rate_weight=1.0, contamination=0.1, threshold_folds=None, epochs=22,
                 batch_size=128, learning_rate=2e-3, lr_schedule="constant", weight_decay=0.0,
                 clip_grad_norm=10.0, validation_fraction=None, patience=10, precision="auto",
                 device="auto", verbose=0, random_state=None):
        self._set_params(locals())

    def _schedule(self) -> str:
        return self.lr_schedule

    def _precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        native = training.native_bf16(training.resolve_device(self.device))
        return "bf16" if native and self._backbone(self.is_image_) == "conv" else "fp32"

    # ----------------------------------------------------------------- hooks
    def _build_model(self, shape: tuple[int, ...], images: bool) -> VQVAE:
        codebook = Codebook(self._book_size(images), self.code_dim, self.codebook_update,
                            decay=self.ema_decay, dead_threshold=self.dead_code_threshold)
        if self._backbone(images) == "conv":
            encoder = ConvGridEncoder(shape, self.conv_channels, self.code_dim)
            decoder = ConvGridDecoder(self.code_dim, self.conv_channels, shape)
        else:
            n_features = int(np.prod(shape))
            encoder = MLPGridEncoder(n_features, self.hidden_dims, self.n_codes, self.code_dim)
            decoder = MLPGridDecoder(self.n_codes, self.code_dim, self.hidden_dims, shape)
        return VQVAE(encoder, VectorQuantizer(codebook), decoder)

    def _book_size(self, images: bool) -> int:
        if self.codebook_size != "auto":
            return self.codebook_size
        return 1024 if images else 64

    def _grid(self) -> tuple[int, ...]:
        if self._backbone(self.is_image_) == "conv":
            return grid_shape(self._model_shape(), len(self.conv_channels))
        return (self.n_codes,)

    def _loss(self, model: VQVAE, batch: Tensor, generator: torch.Generator, progress: float):
        reconstruction, quantized = model(batch, generator if model.training else None)
        mse = F.mse_loss(reconstruction, batch)
        loss = mse + self.commitment_weight * quantized.commitment + quantized.codebook_loss
        terms = {"reconstruction": mse, "commitment": quantized.commitment}
        if self.codebook_update == "loss":
            terms["codebook"] = quantized.codebook_loss
        return loss, terms

    def _epoch_statistics(self) -> dict[str, float]:
        return self.model_.quantizer.codebook.epoch_statistics()

    def _on_fitted(self, x: Tensor, generator: torch.Generator) -> None:
        self.code_grid_ = tuple(int(s) for s in self._grid())
        nearest, errors = self._nearest_codes(x)
        codes = nearest.reshape(len(x), -1)
        self.quantisation_error_ = float(errors.mean()) if len(x) else 0.0
        size = self._book_size(self.is_image_)
        counts = np.zeros((codes.shape[1], size), dtype=np.int64)
        for position in range(codes.shape[1]):
            counts[position] = np.bincount(codes[:, position], minlength=size)
        self.code_counts_ = counts
        for name in ("code_classes_", "context_counts_", "n_code_classes_"):
            self.__dict__.pop(name, None)
        if self.is_image_:
            self._fit_context_model(x, codes.reshape(len(x), *self.code_grid_))
        health = usage_statistics(torch.from_numpy(counts.sum(axis=0)))
        self.perplexity_, self.used_codes_ = health["perplexity"], health["used_codes"]

    def refit_code_model(self, images) -> VQVAEDetector:
        """Count :meth:`compress`'s context model afresh on ``images``; the network is kept.

        For a model saved before the context model (vaeanom format-1 blobs), or to
        adapt the code statistics to other images without retraining. Blobs
        compressed before the refit no longer decompress: the model's
        fingerprint changes with its statistics.
        """
        check_is_fitted(self)
        if not self.is_image_:
            raise ValueError("refit_code_model needs an image model; this one was fitted on rows.")
        # partial_fit leaves the scoring state pending; settle it first, or the next
        # compress would count the context model again over this one.
        getattr(self, "offset_")
        self._check_rate_weight()
        x = self._images_of_any_size(images)
        nearest, errors = self._nearest_codes(x)
        if not hasattr(self, "quantisation_error_"):   # saved before rate weights
            self.quantisation_error_ = float(errors.mean())
        self._fit_context_model(x, nearest)
        return self

    def _nearest_codes(self, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The nearest codes (n, *grid) of x (model units) and their squared distances."""
        found = self._map_chunks(lambda t: self.model_.candidates(t, 1), x)
        return found.codes[..., 0].astype(np.int64), found.distances[..., 0]

    def _fit_context_model(self, x: Tensor, nearest: np.ndarray) -> None:
        """Count the context model on the codes ``compress`` writes for x (model units).

        Those depend on the model itself when ``rate_weight`` > 0, so it is
        counted twice: on the nearest codes, then on the codes chosen under
        that first count. (On Fashion-MNIST the second count took 1% fewer
        bits at weight 0.23 and 4% at 0.68, for 0.01 and 0.09 dB; further
        rounds were not tried.)
        """
        from ..code_model import N_CLASSES, ContextModel, as_grids, code_classes

        book = self.model_.quantizer.codebook.embedding.detach().cpu().double().numpy()
        n_classes = min(N_CLASSES, len(book))
        classes = code_classes(book, n_classes)
        model = ContextModel.fit(as_grids(nearest), classes, n_classes)
        if self.rate_weight > 0:
            model = ContextModel.fit(self._chosen_codes(x, model), classes, n_classes)
        self.code_classes_, self.context_counts_ = model.classes, model.counts
        self.n_code_classes_ = n_classes

    @classmethod
    def load(cls, path, device: str = "auto"):
        detector = super().load(path, device)
        has = [hasattr(detector, name) for name in ("code_classes_", "context_counts_",
                                                    "n_code_classes_")]
        if any(has):
            from ..code_model import ContextModel
            try:
                if not all(has) or not detector.is_image_:
                    raise ValueError("part of it is missing" if detector.is_image_
                                     else "a row model has none")
                ContextModel(detector.code_classes_, detector.context_counts_,
                             detector.n_code_classes_)
            except ValueError as err:
                raise ValueError(f"{str(path)!r}: its context model is not valid ({err}); the "
                                 "file is corrupt.") from None
        return detector

    def _array_shapes(self, found):
        grid = self._grid()
        if not hasattr(self, "code_grid_"):
            raise ValueError("the file has no code_grid_ among its fitted values; it is corrupt.")
        if tuple(self.code_grid_) != tuple(grid):
            raise ValueError(f"code_grid_ {tuple(self.code_grid_)} does not match the "
                             f"architecture's {tuple(grid)}; the file is corrupt.")
        size = self._book_size(self.is_image_)
        shapes = {**super()._array_shapes(found), "code_counts_": (int(np.prod(grid)), size)}
        if "context_counts_" in found:
            counts = found["context_counts_"]
            shapes.update(code_classes_=(size,),
                          context_counts_=(len(counts) if counts.ndim == 2 else 0, 4))
        return shapes

    def _make_scorer(self) -> nn.Module:
        return ReconstructionScore(self.model_)

    def onnx_part(self, part: str, *, fp16: bool = False):
        from ..export import PartSpec

        model = self._model_for_export(fp16)
        size = self._latent_range()
        if part == "scorer":
            return PartSpec(ReconstructionScore(model), "data", ("score",), self.score_kind,
                            codebook_size=size)
        if part == "encoder":
            return PartSpec(_EncodeCodes(model), "data", ("codes",), self.score_kind,
                            codebook_size=size)
        return PartSpec(_DecodeCodes(model, clip=self.is_image_), "latent", ("reconstruction",),
                        self.score_kind, latent_shape=tuple(self.code_grid_),
                        latent_dtype=torch.int64, codebook_size=size)

    @property
    def score_kind(self) -> str:
        """What ``score_samples`` returns: always minus the reconstruction error."""
        return "reconstruction"

    def _latent_range(self) -> int:
        """The number of codes: latents (codes) are integers in [0, K)."""
        return self._book_size(self.is_image_)

    def _n_latent_columns(self) -> int:
        return int(np.prod(self.code_grid_))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # transform gives integer codes
        return tags

    # ----------------------------------------------------- latent space API
    def _codes_model_units(self, x: Tensor) -> np.ndarray:
        codes = self._map_chunks(self.model_.encode, x)
        return codes.astype(np.int64)

    def encode(self, X) -> np.ndarray:
        """Integer code indices: (n, h, w) for images, (n, n_codes) for rows.

        A convolutional image model encodes images of any height and width (with
        the fitted number of channels): they are padded by repeating their last
        row and column up to :meth:`padded_size`, which the decoder reproduces
        exactly, so their grid is ``code_grid_for((H, W))``.
        """
        return self._codes_model_units(self._images_of_any_size(X))

    def decode(self, codes, image_size=None) -> np.ndarray:
        """Codes (n, *code_grid_), or flattened (n, prod(code_grid_)), back to inputs.

        Images come back as floats in [0, 1]; rows in the user's units. A
        convolutional image model also decodes grids of other sizes: to
        ``image_size`` (H, W) when given (the padding :meth:`encode` added is
        cropped off), else to the whole decoded size.
        """
        check_is_fitted(self)
        codes = self._check_codes(codes)
        decoded = self._map_chunks(self.model_.decode, torch.from_numpy(codes))
        if not self.is_image_:
            return self._to_user_units(decoded)
        decoded = np.clip(decoded, 0.0, 1.0)
        height, width = self._decoded_size(codes.shape[1:], image_size)
        return decoded[..., :height, :width].reshape(
            len(decoded), *self.input_shape_[:-2], height, width)

    def reconstruct(self, X) -> np.ndarray:
        """decode(encode(X)) at the size of X: floats in [0, 1] for images."""
        check_is_fitted(self)
        size = None
        if self._any_size() and inputs.is_image_input(X):
            size = tuple(np.shape(X)[-2:])
        return self.decode(self.encode(X), image_size=size)

    def transform(self, X) -> np.ndarray:
        """:meth:`encode` as a 2-D array, one row per input, for inputs of the fitted size.

        A transformer's output has one width (``get_feature_names_out``,
        ``set_output``), so images of another size are refused here; :meth:`encode`
        takes them.
        """
        check_is_fitted(self)
        if self._of_another_size(X):
            raise ValueError(
                f"transform gives {self._n_latent_columns()} columns, the codes of images of "
                f"the fitted shape {tuple(self.input_shape_)}; X holds images of shape "
                f"{tuple(np.shape(X)[1:])}. encode(X) takes images of any size.")
        return super().transform(X)

    def code_grid_for(self, image_size) -> tuple[int, int]:
        """The code grid (h, w) of images of ``image_size`` (H, W)."""
        return grid_shape((1, *self.padded_size(image_size)), len(self.conv_channels))

    def padded_size(self, image_size) -> tuple[int, int]:
        """(H', W') >= (H, W): the size images are padded to before encoding.

        The smallest size that the encoder's halvings and the decoder's
        doublings map onto each other (:func:`vaeanom.models.padded_side`);
        (H, W) itself for the fitted size and, with the default two stages,
        for any multiple of 4.
        """
        self._check_any_size()
        height, width = self._check_image_size(image_size)
        n_stages, fitted = len(self.conv_channels), self.input_shape_[-2:]
        return (padded_side(fitted[0], n_stages, height), padded_side(fitted[1], n_stages, width))

    # ------------------------------------------------------ images of any size
    def _any_size(self) -> bool:
        return bool(self.is_image_) and self._backbone(True) == "conv"

    def _of_another_size(self, X) -> bool:
        """Images that a convolutional model encodes at their own size, not the fitted one."""
        return (self._any_size() and inputs.is_image_input(X)
                and tuple(np.shape(X)[1:]) != tuple(self.input_shape_))

    def _check_any_size(self) -> None:
        check_is_fitted(self)
        if not self._any_size():
            raise ValueError("images of other sizes need a convolutional image model "
                             f"(backbone='conv'); this {type(self).__name__} was fitted on "
                             f"{'images with an MLP' if self.is_image_ else 'rows'}.")

    @staticmethod
    def _check_image_size(image_size) -> tuple[int, int]:
        try:
            height, width = (int(side) for side in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be a pair (H, W) of ints; got {image_size!r}.") \
                from None
        if height < 1 or width < 1:
            raise ValueError(f"image_size must be at least (1, 1); got {(height, width)}.")
        return height, width

    def _images_of_any_size(self, X) -> Tensor:
        """X in model units; images of another size are edge-padded to :meth:`padded_size`."""
        check_is_fitted(self)
        if not self._of_another_size(X):
            return self._preprocess(X)
        images, shape, _ = inputs.check_images(self, X, fitting=False)
        if len(shape) != len(self.input_shape_) or shape[:-2] != tuple(self.input_shape_[:-2]):
            raise ValueError(f"{type(self).__name__} was fitted on images of shape "
                             f"{tuple(self.input_shape_)}; images of another height and width "
                             f"are fine, but they need the same channels: got {tuple(shape)}"
                             f"{image_shape_hint(shape, (*self.input_shape_[:-2], *shape[-2:]))}.")
        height, width = self.padded_size(shape[-2:])
        pad = ((0, 0), (0, 0), (0, height - shape[-2]), (0, width - shape[-1]))
        return torch.from_numpy(np.pad(images, pad, mode="edge"))

    def _decoded_size(self, grid: tuple[int, ...], image_size) -> tuple[int, int]:
        """(H, W) that decode returns for code grids ``grid``, cropped to ``image_size``."""
        if not self._any_size():        # an MLP decodes the fitted size only
            fitted = tuple(self.input_shape_[-2:])
            if image_size is not None and self._check_image_size(image_size) != fitted:
                self._check_any_size()  # says why
            return fitted
        if image_size is None:
            n_stages, fitted = len(self.conv_channels), self.input_shape_[-2:]
            return (decoded_side(fitted[0], n_stages, grid[0]),
                    decoded_side(fitted[1], n_stages, grid[1]))
        size = self._check_image_size(image_size)
        expected = self.code_grid_for(size)
        if expected != tuple(grid):
            raise ValueError(f"images of {size[0]}x{size[1]} have a {expected} code grid; "
                             f"these codes are {tuple(grid)}.")
        return size

    def _check_codes(self, codes) -> np.ndarray:
        codes = check_array(codes, allow_nd=True, dtype=None, input_name="codes",
                            ensure_min_samples=0)
        check_code_values(codes, self._latent_range())
        grid = tuple(self.code_grid_)
        flat = int(np.prod(grid))
        if codes.shape[1:] == (flat,) or (not self._any_size() and codes.shape[1:] == (1, flat)):
            # flattened, or an MLP's sequence as the one-row grid compression_codes gives (a
            # conv model's (1, k) grid is a wide image's, kept as it is)
            return codes.reshape(len(codes), *grid).astype(np.int64)
        if codes.shape[1:] != grid and not (self._any_size() and codes.ndim == 3
                                            and min(codes.shape[1:]) >= 1):
            raise ValueError(f"codes have shape {codes.shape}; this model's codes are "
                             f"(n, {', '.join(map(str, grid))}) or flattened (n, {np.prod(grid)})"
                             + (", or (n, h, w) grids of other images" if self._any_size()
                                else "") + ".")
        return codes.astype(np.int64)

    def sample(self, n_samples: int = 1, random_state=None) -> np.ndarray:
        """Draw codes from their training-set frequencies (per grid position) and decode them.

        Positions are drawn independently, so samples show the codebook's
        vocabulary rather than coherent new inputs (that needs a learned prior).
        """
        check_is_fitted(self)
        n_samples = check_count(n_samples)
        rng = np.random.default_rng(_seed_from(random_state))
        p = self.code_counts_ / self.code_counts_.sum(axis=1, keepdims=True)
        codes = np.stack([rng.choice(len(row), size=n_samples, p=row)
                          for row in p], axis=1).reshape(n_samples, len(p))
        return self.decode(codes)

    def score_frame(self, X) -> pd.DataFrame:
        """One row per input row, same index: score, reconstruction_error, is_outlier."""
        offset = self._threshold("score_frame")
        score = self.score_samples(X)
        return pd.DataFrame({"score": score, "reconstruction_error": -score,
                             "is_outlier": is_outlier(score, offset)},
                            index=self._index_of(X))

    # ----------------------------------------------------------- compression
    def compression_codes(self, images) -> np.ndarray:
        """The code grids (n, h, w) that :meth:`compress` writes for ``images``.

        With ``rate_weight`` 0 these are :meth:`encode`'s nearest codes (as
        one-row grids for an MLP model). Otherwise each position may take
        one of its ``_candidates`` closest codes that is cheaper to code in
        its context (:func:`vaeanom.code_model.choose_codes`), at a price of
        ``rate_weight * quantisation_error_`` squared distance per bit.
        Models saved before ``quantisation_error_`` keep the nearest codes.
        """
        from ..code_model import as_grids
        from ..compression import _check_codec, context_model

        _check_codec(self)
        self._check_rate_weight()
        x = self._images_of_any_size(images)
        if self.rate_weight == 0 or not hasattr(self, "quantisation_error_"):
            return as_grids(self._codes_model_units(x))
        return self._chosen_codes(x, context_model(self))

    def _check_rate_weight(self) -> None:
        """fit checks every parameter; this one may also be set after fit."""
        rule = self._rules["rate_weight"]
        if not rule.accepts(self.rate_weight):
            raise InvalidParameterError(f"{type(self).__name__}: parameter 'rate_weight' must "
                                        f"be {rule.describe()}; got {self.rate_weight!r}.")

    def _chosen_codes(self, x: Tensor, model) -> np.ndarray:
        """Rate-weighted code grids of x (model units) under the context model ``model``."""
        from ..code_model import choose_codes

        weight = self.rate_weight * self.quantisation_error_
        grids = []
        for start in range(0, len(x), self._choice_block):
            found = self._map_chunks(lambda t: self.model_.candidates(t, self._candidates),
                                     x[start:start + self._choice_block])
            distances, codes = (a.reshape(len(a), -1, *a.shape[-2:]) for a in found)
            grids.append(choose_codes(distances, codes.astype(np.int64), model, weight))
        return np.concatenate(grids)

    def compress(self, images) -> bytes:
        """Images -> bytes: entropy-coded codes in a versioned, checksummed container.

        See :mod:`vaeanom.compression` for the format. ``decompress`` gives back
        exactly ``to_uint8(decode(compression_codes(images)))``.
        """
        from ..compression import compress
        return compress(self, images)

    def decompress(self, blob: bytes) -> np.ndarray:
        """Bytes from :meth:`compress` -> uint8 images, at the size they were compressed."""
        from ..compression import decompress
        return decompress(self, blob)
