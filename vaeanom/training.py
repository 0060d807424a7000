"""The fit loop shared by every vaeanom estimator.

Adam on shuffled mini-batches, optional early stopping on a hold-out the user
asks for (never a silent one), gradient clipping, a tqdm bar when verbose and a
per-epoch history. All randomness comes from the ``torch.Generator`` passed in;
global RNG state is never read or written.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm   # text bars: tqdm.auto warns in notebooks without ipywidgets

logger = logging.getLogger(__name__)

#: the training rows: one tensor, or a tuple of tensors with one row each per example
#: (a conditional model's (x, labels)); batches are taken from each alike
Data = Tensor | tuple[Tensor, ...]
#: loss_fn(model, batch, generator, progress) -> (scalar loss to minimise, named per-batch
#: means); progress is the share of the planned training done before this batch, 0 to 1
#: (1 for a validation loss), for losses with a schedule (a KL warm-up)
LossFn = Callable[[nn.Module, Data, torch.Generator, float],
                  tuple[Tensor, dict[str, Tensor]]]


def rows(data: Data, index) -> Data:
    """The rows ``index`` (a slice or an index tensor) of every tensor in ``data``."""
    if isinstance(data, tuple):
        return tuple(t[index] for t in data)
    return data[index]


def first(data: Data) -> Tensor:
    """The first tensor of ``data`` (whose length and device stand for all of them)."""
    return data[0] if isinstance(data, tuple) else data


class TrainingDivergedError(ArithmeticError):
    """The loss became NaN or infinite; the message says what to try."""


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 0.0
    clip_grad_norm: float | None = None
    validation_fraction: float | None = None
    patience: int = 10
    verbose: int = 0
    #: "fp32", or "bf16": forward and backward passes under torch.autocast in bfloat16
    #: (weights, optimiser state and the loss's sums stay float32)
    precision: str = "fp32"
    #: share of training during which the loss is still changing (a KL warm-up): early
    #: stopping neither keeps an epoch nor counts patience before it ends
    warmup: float = 0.0
    #: "constant" learning rate, or "cosine": decayed per batch from learning_rate to 0 over
    #: the planned epochs (fit only; partial_fit's stream has no planned end)
    schedule: str = "constant"


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when a GPU is really present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but torch sees no GPU; "
                         "use device='cpu' or device='auto'.")
    return torch.device(device)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware (a CUDA GPU that supports it, or a
    CPU with AVX512-BF16 or AMX); elsewhere bfloat16 is emulated and no faster."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` ("fp32": none) on ``device``'s type."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _split(n: int, fraction: float | None, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    order = torch.randperm(n, generator=generator)
    if not fraction:
        return order, order[:0]
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise ValueError(f"validation_fraction={fraction} leaves no training rows out of {n}; "
                         "use a smaller fraction or more data.")
    return order[n_val:], order[:n_val]


def _check_finite(loss: float, epoch: int, config: TrainingConfig) -> None:
    if not math.isfinite(loss):
        raise TrainingDivergedError(
            f"training diverged at epoch {epoch + 1}: the loss is {loss}. "
            f"Try a lower learning_rate (now {config.learning_rate}), set clip_grad_norm "
            "(e.g. 1.0), or check the input for extreme values.")


@torch.no_grad()
def _evaluate(model: nn.Module, loss_fn: LossFn, data: Data, batch_size: int,
              generator: torch.Generator) -> float:
    model.eval()
    total, n_rows = 0.0, len(first(data))
    for start in range(0, n_rows, batch_size):
        batch = rows(data, slice(start, start + batch_size))
        loss, _ = loss_fn(model, batch, generator, 1.0)
        total += loss.item() * len(first(batch))
    return total / n_rows


def fit(model: nn.Module, loss_fn: LossFn, data: Data, config: TrainingConfig,
        generator: torch.Generator,
        epoch_statistics: Callable[[], dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Train ``model`` in place on ``data`` (already on the model's device).

    Returns the history: one dict per epoch with the mean of each named term,
    plus ``val_loss`` when a validation fraction was given and whatever
    ``epoch_statistics()`` returns after each epoch. With early stopping
    the weights of the best validation epoch are restored at the end.
    """
    device = first(data).device
    train_idx, val_idx = _split(len(first(data)), config.validation_fraction, generator)
    train, val = rows(data, train_idx.to(device)), rows(data, val_idx.to(device))
    # foreach: one multi-tensor kernel per update step instead of one per parameter, the
    # same arithmetic (small tables take many steps whose cost is mostly this overhead)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay, foreach=True)
    history: list[dict[str, float]] = []
    best = (math.inf, None, -1)  # (val loss, state, epoch)
    settled = _first_settled_epoch(config)
    bar = tqdm(range(config.epochs), desc="fit", unit="epoch", disable=not config.verbose,
               leave=False)
    for epoch in bar:
        record = _train_epoch(model, loss_fn, train, config, optimiser, generator, epoch)
        if epoch_statistics is not None:
            record.update(epoch_statistics())
        if len(first(val)):
            record["val_loss"] = _evaluate(model, loss_fn, val, config.batch_size, generator)
            if epoch >= settled and record["val_loss"] < best[0]:
                best = (record["val_loss"], copy.deepcopy(model.state_dict()), epoch)
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4g}")
        logger.debug("epoch %d: %s", epoch + 1, record)
        if len(first(val)) and epoch - max(best[2], settled - 1) >= config.patience:
            logger.info("early stop at epoch %d (best %d)", epoch + 1, best[2] + 1)
            break
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return history


def _first_settled_epoch(config: TrainingConfig) -> int:
    """The first epoch (0-based) that ends after the warm-up: early stopping starts there."""
    return max(0, math.ceil(config.warmup * config.epochs - 1e-9) - 1)


def train_chunk(model: nn.Module, loss_fn: LossFn, data: Data, config: TrainingConfig,
                generator: torch.Generator, optimiser_state: dict | None,
                epoch: int) -> tuple[dict[str, float], dict]:
    """One pass over ``data`` (one chunk of a stream), continuing Adam from
    ``optimiser_state`` (None: a fresh one). Returns the epoch's record and the
    optimiser's new state, which the caller keeps for the next chunk."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay, foreach=True)
    if optimiser_state is not None:
        optimiser.load_state_dict(optimiser_state)
    constant = dataclasses.replace(config, schedule="constant")
    record = _train_epoch(model, loss_fn, data, constant, optimiser, generator, epoch)
    model.eval()
    return record, optimiser.state_dict()


def _train_epoch(model: nn.Module, loss_fn: LossFn, data: Data, config: TrainingConfig,
                 optimiser: torch.optim.Optimizer, generator: torch.Generator,
                 epoch: int) -> dict[str, float]:
    model.train()
    n_rows, device = len(first(data)), first(data).device
    order = torch.randperm(n_rows, generator=generator).to(device)
    sums: dict[str, Tensor] = {}
    for start in range(0, n_rows, config.batch_size):
        batch = rows(data, order[start:start + config.batch_size])
        n_batch = len(first(batch))
        progress = min(1.0, (epoch + start / n_rows) / config.epochs)
        if config.schedule == "cosine":
            for group in optimiser.param_groups:
                group["lr"] = config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        with autocast(config.precision, device):
            loss, terms = loss_fn(model, batch, generator, progress)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad_norm)
        optimiser.step()
        for name, value in {"loss": loss, **terms}.items():  # summed as tensors: no sync a step
            sums[name] = sums.get(name, 0.0) + value.detach() * n_batch
    record = {k: (v / n_rows).item() for k, v in sums.items()}
    _check_finite(record["loss"], epoch, config)
    return {"epoch": epoch + 1, **record}
