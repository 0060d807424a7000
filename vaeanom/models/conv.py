"""Convolutional encoder and decoder bodies for images of any height and width.

Each stage is a stride-2 convolution (kernel 3, padding 1), which maps a side
of length s to ceil(s / 2). The decoder mirrors the encoder with transposed
convolutions whose ``output_padding`` is chosen per stage so that it lands on
exactly the encoder's sizes, so 28x28, 8x8 or 30x17 images all round-trip.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def _stage_sizes(side: int, n_stages: int) -> list[int]:
    """Side lengths before each stage and after the last: [s, ceil(s/2), ...]."""
    sizes = [side]
    for _ in range(n_stages):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


class ConvEncoder(nn.Module):
    """Images (b, C, H, W) -> posterior mean and log-variance, each (b, latent_dim)."""

    def __init__(self, image_shape: tuple[int, int, int], channels: Sequence[int],
                 latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_downsampling(image_shape[0], channels), nn.Flatten())
        h_out, w_out = grid_shape(image_shape, len(channels))
        self.head = nn.Linear(channels[-1] * h_out * w_out, 2 * latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.head(self.body(x)).chunk(2, dim=1)
        return mu, log_var


class ConvDecoder(nn.Module):
    """z (b, latent_dim) -> likelihood parameters of shape (b, C, H, W)."""

    def __init__(self, latent_dim: int, channels: Sequence[int],
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        hs, ws = _stage_sizes(h, len(channels)), _stage_sizes(w, len(channels))
        self.grid = (channels[-1], hs[-1], ws[-1])
        self.head = nn.Linear(latent_dim, channels[-1] * hs[-1] * ws[-1])
        self.body = nn.Sequential(*_upsampling(channels, image_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.head(z).view(-1, *self.grid))


def _downsampling(image_channels: int, channels: Sequence[int]) -> list[nn.Module]:
    """Stride-2 convolutions with SiLU: each halves height and width (rounding up)."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip([image_channels, *channels[:-1]], channels):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
    return layers


def _upsampling(channels: Sequence[int], image_shape: tuple[int, int, int]) -> list[nn.Module]:
    """Transposed convolutions that undo :func:`_downsampling` exactly, then a 3x3 to C."""
    c, h, w = image_shape
    hs, ws = _stage_sizes(h, len(channels)), _stage_sizes(w, len(channels))
    layers: list[nn.Module] = []
    stages = list(reversed(channels))
    for i, (c_in, c_out) in enumerate(zip(stages, [*stages[1:], stages[-1]])):
        # Undo stage k: size hs[k+1] -> hs[k]; output = 2 * in - 1 + output_padding.
        k = len(channels) - 1 - i
        pad = (hs[k] - (2 * hs[k + 1] - 1), ws[k] - (2 * ws[k + 1] - 1))
        layers += [nn.SiLU(), nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1,
                                                 output_padding=pad)]
    return [*layers, nn.SiLU(), nn.Conv2d(stages[-1], c, 3, padding=1)]


class ResidualBlock(nn.Module):
    """x + conv1x1(SiLU(conv3x3(SiLU(x)))): the VQ-VAE paper's residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def grid_shape(image_shape: tuple[int, int, int], n_stages: int) -> tuple[int, int]:
    """(h, w) of the latent grid after ``n_stages`` stride-2 stages."""
    return _stage_sizes(image_shape[1], n_stages)[-1], _stage_sizes(image_shape[2], n_stages)[-1]


def decoded_side(fitted_side: int, n_stages: int, grid_side: int) -> int:
    """The side a grid side becomes in the decoder built for images of ``fitted_side``.

    Each transposed stage maps n to 2 n - 1 + p, with the output padding p
    that the fitted size needed at that stage, so the decoder maps g to
    2**n_stages * g - c for a constant 0 <= c < 2**n_stages.
    """
    sizes = _stage_sizes(fitted_side, n_stages)
    side = grid_side
    for k in reversed(range(n_stages)):
        side = 2 * side - 1 + (sizes[k] - (2 * sizes[k + 1] - 1))
    return side


def padded_side(fitted_side: int, n_stages: int, side: int) -> int:
    """The smallest side >= ``side`` that encoder and decoder map onto each other exactly.

    It is ``decoded_side(g)`` for the smallest grid side g whose decoded side
    reaches ``side``; the encoder maps it back to g, since ceil halvings of
    2**n g - c with c < 2**n give g. An image padded to it is reproduced at
    its own size, and the padding is cropped off after decoding.
    """
    stride, offset = 2 ** n_stages, decoded_side(fitted_side, n_stages, 0)
    grid = max(1, -(-(side - offset) // stride))
    return decoded_side(fitted_side, n_stages, grid)


class ConvGridEncoder(nn.Module):
    """Images (b, C, H, W) -> a grid of code_dim vectors (b, code_dim, h, w) for a VQ layer."""

    def __init__(self, image_shape: tuple[int, int, int], channels: Sequence[int],
                 code_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_downsampling(image_shape[0], channels),
                                  ResidualBlock(channels[-1]), nn.SiLU(),
                                  nn.Conv2d(channels[-1], code_dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ConvGridDecoder(nn.Module):
    """A grid of code vectors (b, code_dim, h, w) -> images (b, C, H, W)."""

    def __init__(self, code_dim: int, channels: Sequence[int],
                 image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(code_dim, channels[-1], 3, padding=1),
                                  ResidualBlock(channels[-1]),
                                  *_upsampling(channels, image_shape))

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)
