"""Fully connected encoder and decoder bodies for tabular rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .likelihoods import holes_zeroed


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x (b, d) -> posterior mean and log-variance, each (b, latent_dim).

    A missing entry (NaN) is fed as 0: the training mean, in standardised units.
    (A model fitted on a table with holes uses :class:`vaeanom.models.table.TableEncoder`,
    which sees the mask instead.)
    """

    def __init__(self, n_features: int, hidden_dims: Sequence[int], latent_dim: int) -> None:
        super().__init__()
        self.net = mlp([n_features, *hidden_dims, 2 * latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        mu, log_var = self.net(holes_zeroed(x)).chunk(2, dim=1)
        return mu, log_var


class MLPDecoder(nn.Module):
    """z (b, latent_dim) -> likelihood parameters with the data's shape."""

    def __init__(self, latent_dim: int, hidden_dims: Sequence[int],
                 output_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.output_shape = tuple(output_shape)
        n_out = int(torch.Size(self.output_shape).numel())
        self.net = mlp([latent_dim, *reversed(hidden_dims), n_out])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.output_shape)


class MLPGridEncoder(nn.Module):
    """x (b, d) -> a short sequence of code vectors (b, code_dim, n_codes) for a VQ layer."""

    def __init__(self, n_features: int, hidden_dims: Sequence[int], n_codes: int,
                 code_dim: int) -> None:
        super().__init__()
        self.shape = (code_dim, n_codes)
        self.net = mlp([n_features, *hidden_dims, n_codes * code_dim])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).view(-1, *self.shape)


class MLPGridDecoder(nn.Module):
    """A sequence of code vectors (b, code_dim, n_codes) -> rows with the data's shape."""

    def __init__(self, n_codes: int, code_dim: int, hidden_dims: Sequence[int],
                 output_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.decoder = MLPDecoder(n_codes * code_dim, hidden_dims, output_shape)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z.flatten(1))
