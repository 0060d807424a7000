"""Vector quantisation: a codebook, the quantiser layer around it, and the VQ-VAE.

Follows van den Oord et al. (2017), "Neural Discrete Representation Learning",
with the fixes that keep a codebook alive (as in vector-quantize-pytorch):

- the codebook is a module of its own (:class:`Codebook`), updated either by the
  codebook loss ``||sg(z_e) - e||^2`` or, by default, by exponential moving
  averages of the encoder outputs assigned to each code (the paper's appendix);
- it is initialised by k-means on the encoder outputs of the first batch, so no
  code starts far from the data;
- codes whose moving-average usage (decay ``decay``) falls below
  ``dead_threshold`` assignments per batch are restarted on encoder outputs of
  the current batch.

Forward passes are deterministic (nearest code, no noise), so the quantiser
exports to ONNX as is. Training-time updates need randomness (k-means seeds,
restarts); they draw from a ``torch.Generator`` passed to ``forward``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KMEANS_ITERATIONS = 10


def _draw_rows(vectors: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n rows of ``vectors`` drawn at random (without replacement when there are enough)."""
    if len(vectors) >= n:
        index = torch.randperm(len(vectors), generator=generator)[:n]
    else:
        index = torch.randint(len(vectors), (n,), generator=generator)
    return vectors[index.to(vectors.device)]


class Codebook(nn.Module):
    """K code vectors of dimension D, their moving-average usage, and the k-means start."""

    def __init__(self, size: int, dim: int, update: str = "ema", decay: float = 0.99,
                 dead_threshold: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        if update not in ("ema", "loss"):
            raise ValueError(f"codebook update must be 'ema' or 'loss'; got {update!r}")
        self.update, self.decay, self.dead_threshold, self.eps = update, decay, dead_threshold, eps
        self.embedding = nn.Parameter(torch.zeros(size, dim), requires_grad=update == "loss")
        self.register_buffer("usage", torch.zeros(size))          # EMA of assignments per batch
        self.register_buffer("embedding_sum", torch.zeros(size, dim))
        self.register_buffer("initialised", torch.tensor(False))
        self.epoch_counts = torch.zeros(size, dtype=torch.long)   # training statistics, not saved

    @property
    def size(self) -> int:
        return self.embedding.shape[0]

    def _distances_less_norm(self, vectors: Tensor) -> Tensor:
        """||e||^2 - 2 v.e for every (row, code): the squared distance less ||v||^2.

        ||v - e||^2 = ||v||^2 - 2 v.e + ||e||^2; the first term is the same for
        every code, so ranking codes needs only the rest (one fused addmm).
        """
        codes = self.embedding
        return torch.addmm(codes.pow(2).sum(1), vectors, codes.T, alpha=-2)

    def nearest(self, vectors: Tensor) -> Tensor:
        """Index of the closest code (squared Euclidean distance) for each row of ``vectors``."""
        return self._distances_less_norm(vectors).argmin(dim=1)

    def candidates(self, vectors: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Squared distances (n, k) to the k closest codes of each row, and their indices."""
        partial = self._distances_less_norm(vectors)
        distances, index = partial.topk(min(k, self.size), dim=1, largest=False)
        return (distances + vectors.pow(2).sum(1, keepdim=True)).clamp_min(0.0), index

    def lookup(self, index: Tensor) -> Tensor:
        return F.embedding(index, self.embedding)

    @torch.no_grad()
    def initialise(self, vectors: Tensor, generator: torch.Generator) -> None:
        """k-means (Lloyd, random rows as seeds) on the first batch of encoder outputs."""
        centres = _draw_rows(vectors, self.size, generator)
        for _ in range(KMEANS_ITERATIONS):
            self.embedding.data.copy_(centres)
            index = self.nearest(vectors)
            counts = torch.bincount(index, minlength=self.size).to(vectors.dtype)
            sums = torch.zeros_like(centres).index_add_(0, index, vectors)
            filled = counts > 0
            centres[filled] = sums[filled] / counts[filled, None]
        self.embedding.data.copy_(centres)
        # The moving averages start as if each code had been chosen once per batch, so a
        # code the data leave behind falls below a threshold of 1 after a few batches.
        self.usage.fill_(1.0)
        self.embedding_sum.copy_(centres)
        self.initialised.fill_(True)

    @torch.no_grad()
    def train_step(self, vectors: Tensor, index: Tensor, generator: torch.Generator) -> None:
        """After a training batch: count usage, move codes (EMA mode), restart dead codes."""
        counts = torch.bincount(index, minlength=self.size)
        self.epoch_counts += counts.cpu()
        counts = counts.to(vectors.dtype)
        self.usage.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.update == "ema":
            sums = torch.zeros_like(self.embedding).index_add_(0, index, vectors)
            self.embedding_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            # Laplace smoothing keeps rarely used codes from dividing by ~0.
            total = self.usage.sum()
            smoothed = (self.usage + self.eps) / (total + self.size * self.eps) * total
            self.embedding.data.copy_(self.embedding_sum / smoothed[:, None])
        self._restart_dead(vectors, generator)

    def _restart_dead(self, vectors: Tensor, generator: torch.Generator) -> None:
        dead = self.usage < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        fresh = _draw_rows(vectors, n_dead, generator)
        self.embedding.data[dead] = fresh
        self.usage[dead] = self.dead_threshold
        self.embedding_sum[dead] = fresh * self.dead_threshold

    def epoch_statistics(self) -> dict[str, float]:
        """Perplexity exp(-sum p log p) of this epoch's code usage and the share of codes used."""
        counts = self.epoch_counts.double()
        self.epoch_counts = torch.zeros_like(self.epoch_counts)
        return usage_statistics(counts)


def usage_statistics(counts: Tensor) -> dict[str, float]:
    """Perplexity and used fraction of a histogram of code indices."""
    total = counts.sum()
    if total == 0:
        return {"perplexity": 0.0, "used_codes": 0.0}
    p = counts[counts > 0] / total
    return {"perplexity": float(torch.exp(-(p * p.log()).sum())),
            "used_codes": float((counts > 0).double().mean())}


class Quantized(NamedTuple):
    """What the quantiser returns; ``codes`` keeps the grid: (b, *grid)."""

    z_q: Tensor            # straight-through quantised vectors, (b, D, *grid)
    codes: Tensor          # int64 code indices, (b, *grid)
    commitment: Tensor     # ||z_e - sg(e)||^2, mean over elements
    codebook_loss: Tensor  # ||sg(z_e) - e||^2 (zero in EMA mode)


class Candidates(NamedTuple):
    """The closest codes of each grid position, nearest first: (b, *grid, k) each."""

    distances: Tensor      # squared Euclidean distance from the encoder output
    codes: Tensor          # int64 code indices


class VectorQuantizer(nn.Module):
    """z_e (b, D, *grid) -> nearest codes, with the straight-through gradient."""

    def __init__(self, codebook: Codebook) -> None:
        super().__init__()
        self.codebook = codebook

    def forward(self, z_e: Tensor, generator: torch.Generator | None = None) -> Quantized:
        with torch.autocast(z_e.device.type, enabled=False):  # codes and EMA sums in float32
            return self._quantise(z_e.float(), generator)

    def _quantise(self, z_e: Tensor, generator: torch.Generator | None) -> Quantized:
        grid = z_e.shape[2:]
        vectors = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
        detached = vectors.detach()
        training = self.training and generator is not None
        if training and not bool(self.codebook.initialised):
            self.codebook.initialise(detached, generator)
        index = self.codebook.nearest(detached)
        quantised = self.codebook.lookup(index)
        zero = vectors.new_zeros(())
        commitment = F.mse_loss(vectors, quantised.detach()) if self.training else zero
        codebook_loss = (F.mse_loss(quantised, detached)
                         if self.training and self.codebook.update == "loss" else zero)
        if training:
            self.codebook.train_step(detached, index, generator)
        straight_through = vectors + (quantised - vectors).detach()
        return Quantized(self.to_grid(straight_through, z_e.shape[0], grid),
                         index.view(z_e.shape[0], *grid), commitment, codebook_loss)

    def embed(self, codes: Tensor) -> Tensor:
        """Code indices (b, *grid) -> code vectors (b, D, *grid)."""
        return self.to_grid(self.codebook.lookup(codes.flatten()), codes.shape[0], codes.shape[1:])

    @staticmethod
    def to_grid(vectors: Tensor, batch: int, grid: torch.Size) -> Tensor:
        return vectors.view(batch, *grid, -1).movedim(-1, 1)


class VQVAE(nn.Module):
    """Encoder -> vector quantiser -> decoder. The encoder maps x to (b, D, *grid)."""

    def __init__(self, encoder: nn.Module, quantizer: VectorQuantizer, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder

    def encode(self, x: Tensor) -> Tensor:
        """Code indices (b, *grid) of the nearest codes."""
        return self.quantizer(self.encoder(x)).codes

    def candidates(self, x: Tensor, k: int) -> Candidates:
        """The k closest codes at every grid position, nearest first, and their distances."""
        z_e = self.encoder(x).float()
        vectors = z_e.movedim(1, -1).reshape(-1, z_e.shape[1])
        distances, index = self.quantizer.codebook.candidates(vectors, k)
        shape = (z_e.shape[0], *z_e.shape[2:], -1)
        return Candidates(distances.view(shape), index.view(shape))

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction (model units) from code indices (b, *grid)."""
        return self.decoder(self.quantizer.embed(codes))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor,
                                                                                   Quantized]:
        quantized = self.quantizer(self.encoder(x), generator)
        return self.decoder(quantized.z_q), quantized
