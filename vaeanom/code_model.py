"""A position-free context model for grids of VQ codes, in integers both sides compute alike.

Each code of an (h, w) grid is predicted from three neighbours a decoder
working in raster order already has: left (L), upper (T) and upper-right (TR).
They enter through their *class*: the codebook is clustered into
``n_classes`` groups (k-means on the code vectors, so codes that look alike
share statistics), and a neighbour beyond the border is the class
``n_classes`` ("outside"). The model never asks where in the grid a code
sits, so it codes grids of any size.

The probabilities back off from the longest context to shorter ones,
Witten-Bell style::

    p_L(k | L)          = (n(L, k)        + a p_0(k))          / (n(L)        + a)
    p_LT(k | L, T)      = (n(L, T, k)     + a p_L(k | L))      / (n(L, T)     + a)
    p(k | L, T, TR)     = (n(L, T, TR, k) + a p_LT(k | L, T))  / (n(L, T, TR) + a)

with n the training counts, p_0 the overall code frequencies (add-1/2) and
a = ``BACKOFF`` * (distinct codes seen in the context) + 1: a context that
has seen many different codes trusts its own counts less. We chose this
model on Fashion-MNIST codes of a 1024-code model, counting on 40 000
training images and scoring 8 000 others (bits per image; per-position
tables 405, the overall frequencies alone 469): classes 16 / 32 / 64 gave
350 / 342 / 338; (L, T) alone 351; a fixed pseudo-count instead of
Witten-Bell 348; BACKOFF 1 / 2 / 3 / 4 gave 347 / 340 / 338 / 338.

Why integers: an entropy decoder must see exactly the probabilities the
encoder saw, or the stream decodes to garbage (CompressAI issues #279 and
#309: a float network evaluated on another CPU or GPU differs in the last
bits). Every level is computed in int64 with floor division, as weights that
sum to about 2**24, and handed to the coder as whole numbers, exact in
float64. constriction quantises them with a few correctly rounded IEEE
operations on those exact inputs, so every machine codes the same bytes.

numpy only: the torch-free side can decode with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Witten-Bell backoff strength: a = BACKOFF * (distinct codes seen) + 1
BACKOFF = 3
#: every level's weights sum to about 2**SCALE_BITS
SCALE_BITS = 24
#: classes the codebook is clustered into (at most one class a code)
N_CLASSES = 64
#: the neighbours each level adds, longest context last
LEVELS = (("L",), ("L", "T"), ("L", "T", "TR"))
#: training codes one level may count (2**38): count * 2**SCALE_BITS stays exact in int64
MAX_COUNT = 1 << 38
#: no code takes more than CAP / (CAP + 1) of a context, so every code costs bits (>= 3.5e-4)
CAP = 4096
#: contexts whose weights are computed at once (each row is K int64)
ROW_BLOCK = 512
#: rows of weights kept per model (each K float64: 32 MiB for K = 1024)
ROW_CACHE = 4096


@dataclass(frozen=True, eq=False)
class ContextModel:
    """Sparse code counts per context, and the probabilities they give.

    Attributes
    ----------
    classes : ndarray of shape (K,), int64
        The class (0 .. n_classes - 1) of each code.
    counts : ndarray of shape (m, 4), int64
        One row per (level, context, code) seen in training, with its count;
        sorted. Level ``l`` uses the neighbours ``LEVELS[l]``, and its
        context number is their classes as digits in base n_classes + 1.
    n_classes : int
        How many classes the codes fall into (at most one per code).
    """

    classes: np.ndarray
    counts: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        classes, counts = np.asarray(self.classes), np.asarray(self.counts)
        if not (isinstance(self.n_classes, (int, np.integer)) and classes.ndim == 1
                and 1 <= self.n_classes <= len(classes)):
            raise ValueError(f"n_classes must be an int in [1, number of codes]; got "
                             f"{self.n_classes!r} for {classes.size} codes.")
        if classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= self.n_classes:
            raise ValueError(f"classes must be one int in [0, {self.n_classes}) per code.")
        if counts.ndim != 2 or counts.shape[1] != 4 or counts.dtype.kind not in "iu" or (
                len(counts) and (counts[:, 0].min() < 0 or counts[:, 0].max() >= len(LEVELS)
                                 or counts[:, 1].min() < 0
                                 or counts[:, 1].max() >= (self.n_classes + 1) ** len(LEVELS)
                                 or counts[:, 2].min() < 0 or counts[:, 2].max() >= len(classes)
                                 or counts[:, 3].min() < 1 or counts[:, 3].max() >= MAX_COUNT)):
            raise ValueError("counts must be rows of (level, context, code, count >= 1) within "
                             "the model's levels, contexts and codes.")
        classes, counts = classes.astype(np.int64), counts.astype(np.int64)
        if any(counts[counts[:, 0] == level, 3].sum() >= MAX_COUNT
               for level in range(len(LEVELS))):
            raise ValueError(f"counts total {MAX_COUNT} or more codes in one level; exact "
                             "int64 weights need fewer.")
        key = (counts[:, 0] * (self.n_classes + 1) ** len(LEVELS) + counts[:, 1]) * len(
            classes) + counts[:, 2]
        if (np.diff(key) <= 0).any():
            raise ValueError("counts rows must be sorted by (level, context, code), each once.")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "n_classes", int(self.n_classes))
        object.__setattr__(self, "_tables", [self._level_table(level)
                                             for level in range(len(LEVELS))])
        object.__setattr__(self, "_keys", [  # each level's (context, code) as one sorted key
            np.repeat(contexts, np.diff(bounds)) * len(classes) + codes
            for contexts, bounds, codes, _, _ in self._tables])
        object.__setattr__(self, "_base", self._base_weights())
        object.__setattr__(self, "_cache", {})

    @property
    def n_codes(self) -> int:
        return len(self.classes)

    # --------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, codes: np.ndarray, classes: np.ndarray, n_classes: int) -> ContextModel:
        """Count the codes of training grids (n, h, w) in their contexts at every level."""
        codes = np.asarray(codes, dtype=np.int64)
        classes = np.asarray(classes, dtype=np.int64)
        empty = cls(classes, np.zeros((0, 4), dtype=np.int64), n_classes)
        rows = []
        for level, contexts in enumerate(empty.level_contexts(codes)):
            key = contexts.ravel() * len(classes) + codes.ravel()
            unique, count = np.unique(key, return_counts=True)
            rows.append(np.stack([np.full(len(unique), level), unique // len(classes),
                                  unique % len(classes), count], axis=1))
        return cls(classes, np.concatenate(rows).astype(np.int64), n_classes)

    # -------------------------------------------------------------- contexts
    def _neighbours(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        outside = self.n_classes
        labels = self.classes[codes]
        n, h, w = codes.shape
        padded = np.full((n, h + 1, w + 2), outside, dtype=np.int64)
        padded[:, 1:, 1:-1] = labels
        return {"L": padded[:, 1:, :-2], "T": padded[:, :-1, 1:-1], "TR": padded[:, :-1, 2:]}

    def level_contexts(self, codes: np.ndarray) -> list[np.ndarray]:
        """Every position's context number at every level, for grids (n, h, w)."""
        neighbours = self._neighbours(np.asarray(codes, dtype=np.int64))
        return [self._number([neighbours[name] for name in names]) for names in LEVELS]

    def contexts(self, codes: np.ndarray) -> np.ndarray:
        """The full context number of every position of grids (n, h, w)."""
        return self.level_contexts(codes)[-1]

    def context_at(self, codes: np.ndarray, row: int, column: int) -> np.ndarray:
        """The full context of position (row, column) of grids (n, h, w), from earlier codes."""
        n, _, w = codes.shape
        outside = np.full(n, self.n_classes, dtype=np.int64)
        left = self.classes[codes[:, row, column - 1]] if column else outside
        upper = self.classes[codes[:, row - 1, column]] if row else outside
        upper_right = (self.classes[codes[:, row - 1, column + 1]]
                       if row and column + 1 < w else outside)
        return self._number([left, upper, upper_right])

    def _number(self, digits: list[np.ndarray]) -> np.ndarray:
        number = np.zeros_like(digits[0])
        for digit in digits:
            number = number * (self.n_classes + 1) + digit
        return number

    # --------------------------------------------------------- probabilities
    def _level_table(self, level: int):
        """(contexts, starts + end, codes, counts, totals) of one level, contexts sorted."""
        rows = self.counts[self.counts[:, 0] == level]
        contexts, starts = np.unique(rows[:, 1], return_index=True)
        totals = (np.add.reduceat(rows[:, 3], starts) if len(rows)
                  else np.zeros(0, dtype=np.int64))
        return contexts, np.r_[starts, len(rows)], rows[:, 2], rows[:, 3], totals

    def _base_weights(self) -> np.ndarray:
        """p_0 as int64 weights summing to about 2**SCALE_BITS: the overall frequencies."""
        total = np.zeros(self.n_codes, dtype=np.int64)
        codes, counts = self._level_table(0)[2:4]
        np.add.at(total, codes, counts)
        smoothed = 2 * total + 1                                # (count + 1/2) * 2
        return np.maximum(smoothed * (1 << SCALE_BITS) // int(smoothed.sum()), 1)

    def rows(self, contexts: np.ndarray) -> np.ndarray:
        """Whole-number weights (m, K) float64 of p(code | context) for full contexts (m,).

        Integer arithmetic throughout (exact on every machine); see the module
        docstring. The most recent ``ROW_CACHE`` rows are kept: neighbouring
        images and a stream's trial decodes meet the same contexts again.
        """
        contexts = [int(c) for c in np.asarray(contexts, dtype=np.int64)]
        found = {c: row for c in contexts if (row := self._cache.get(c)) is not None}
        missing = sorted(set(contexts) - set(found))
        for start in range(0, len(missing), ROW_BLOCK):
            block = missing[start:start + ROW_BLOCK]
            found.update(zip(block, self._compute_rows(np.array(block))))
        if missing:
            if len(self._cache) + len(missing) > ROW_CACHE:
                self._cache.clear()
            self._cache.update((c, found[c]) for c in missing[:ROW_CACHE])
        return np.stack([found[c] for c in contexts])

    def _compute_rows(self, contexts: np.ndarray) -> np.ndarray:
        weights = np.tile(self._base, (len(contexts), 1))
        for level, table in enumerate(self._tables):
            self._back_off(weights, self._prefixes(contexts, level), table)
        others = weights.sum(axis=1, keepdims=True) - weights
        return np.minimum(weights, CAP * others).astype(np.float64)

    def _prefixes(self, contexts: np.ndarray, level: int) -> np.ndarray:
        """Each full context's number at ``level``: the classes of its first neighbours."""
        return contexts // (self.n_classes + 1) ** (len(LEVELS) - 1 - level)

    @staticmethod
    def _find(contexts: np.ndarray, prefixes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each prefix sits in a level's sorted ``contexts``, and whether it is there."""
        at = np.minimum(np.searchsorted(contexts, prefixes), len(contexts) - 1)
        return at, contexts[at] == prefixes

    @staticmethod
    def _back_off(weights: np.ndarray, prefixes: np.ndarray, table) -> None:
        """Rows of weights backed off to the counts of their prefixes (:func:`_backed_off`)."""
        contexts, bounds, codes, counts, totals = table
        if not len(contexts):
            return
        at, seen = ContextModel._find(contexts, prefixes)
        rows = np.flatnonzero(seen)                   # the others keep the shorter context
        at = at[rows]
        starts, lengths = bounds[at], bounds[at + 1] - bounds[at]
        row_counts = np.zeros((len(rows), weights.shape[1]), dtype=np.int64)
        which = np.repeat(np.arange(len(rows)), lengths)
        entries = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths,
                                                       lengths) + np.repeat(starts, lengths)
        row_counts[which, codes[entries]] = counts[entries]
        weights[rows] = _backed_off(row_counts, weights[rows], (BACKOFF * lengths + 1)[:, None],
                                    totals[at][:, None])

    def code_bits(self, contexts: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """About -log2 p(code | context) for pairs of full contexts and codes (same shape).

        Each pair's weight is computed exactly as :meth:`rows` computes it,
        without the rest of its row: the row's total is taken as
        2**SCALE_BITS, which every level's weights sum to within K units
        (the floors), so the bits are off by about 1e-4 at most. The one
        exception is a context where ``CAP`` clips a code that takes almost
        all of the row: the clip shrinks the row, so its other codes cost
        less than priced here (never more). Cheap enough to price every
        candidate code of every position while an encoder chooses
        (:func:`choose_codes`).
        """
        contexts = np.asarray(contexts, dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        weights = self._base[codes]
        for level, (table, keys) in enumerate(zip(self._tables, self._keys)):
            contexts_seen, bounds, _, counts, totals = table
            if not len(contexts_seen):
                continue
            prefixes = self._prefixes(contexts, level)
            at, seen = self._find(contexts_seen, prefixes)
            where, pair_seen = self._find(keys, prefixes * self.n_codes + codes)
            count = np.where(pair_seen, counts[where], 0)
            backed_off = _backed_off(count, weights, BACKOFF * (bounds[at + 1] - bounds[at]) + 1,
                                     totals[at])
            weights = np.where(seen, backed_off, weights)
        others = np.maximum((1 << SCALE_BITS) - weights, 1)   # the rest of the row, about
        capped = np.minimum(weights, CAP * others)
        return np.log2((others + capped).astype(np.float64)) - np.log2(capped.astype(np.float64))

    def ideal_bits(self, codes: np.ndarray) -> float:
        """Shannon code length -sum log2 p(code | context) of grids (n, h, w)."""
        codes = np.asarray(codes, dtype=np.int64)
        unique, inverse = np.unique(self.contexts(codes).ravel(), return_inverse=True)
        flat, bits = codes.ravel(), 0.0
        for start in range(0, len(unique), ROW_BLOCK):
            weights = self._compute_rows(unique[start:start + ROW_BLOCK])
            p = weights / weights.sum(axis=1, keepdims=True)
            here = (inverse >= start) & (inverse < start + ROW_BLOCK)
            bits -= float(np.log2(p[inverse[here] - start, flat[here]]).sum())
        return bits

    def max_probability(self) -> float:
        """An upper bound on p(code | context) over every context, seen or not.

        Each level mixes its counts' frequencies with the level below in the
        proportion of its back-off, so its largest probability is at most that
        mixture of the two levels' largest; the floors and the floor of 1 move
        a weight by less than one unit of about 2**-24 of the row, which the
        caller's slack covers. ``CAP`` bounds it below 1 whatever the counts.
        """
        bound = float(self._base.max() / self._base.sum())
        for contexts, bounds, _, counts, totals in self._tables:
            if not len(contexts):
                continue
            largest = np.maximum.reduceat(counts, bounds[:-1])
            alpha = BACKOFF * np.diff(bounds) + 1
            bound = max(bound, float(((largest + alpha * bound) / (totals + alpha)).max()))
        return min(bound, CAP / (CAP + 1))


def _backed_off(count: np.ndarray, weight: np.ndarray, alpha: np.ndarray,
                total: np.ndarray) -> np.ndarray:
    """Witten-Bell back-off in integers: (n(c, k) 2**SCALE_BITS + a w_k) // (n(c) + a), >= 1.

    ``count`` is n(c, k), the code's count in the longer context c, ``total``
    n(c), ``weight`` w_k the code's weight in the shorter context and
    ``alpha`` a = BACKOFF * (codes seen in c) + 1; all int64, broadcast.
    """
    return np.maximum(((count << SCALE_BITS) + alpha * weight) // (total + alpha), 1)


def choose_codes(distances: np.ndarray, candidates: np.ndarray, model: ContextModel,
                 rate_weight: float) -> np.ndarray:
    """Entropy-constrained code choice: grids (n, h, w) of codes to entropy-code.

    ``distances`` and ``candidates`` (n, h, w, m) are each position's m closest
    codes and their squared distances from the encoder output. In raster
    order (the coder's), each position takes the candidate that minimises

        distance + rate_weight * bits(code | context of the codes chosen so far),

    with the bits -log2 p under ``model`` (:meth:`ContextModel.code_bits`): a
    code slightly farther away is taken when its context makes it much
    cheaper. This is the encoder side of rate-distortion optimised
    quantisation (as in video coders' RDOQ); the decoder is unchanged, and
    rate_weight 0 keeps the nearest codes. It is greedy: a choice does not
    weigh what it costs its successors' contexts.
    """
    distances = np.asarray(distances, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.int64)
    n, h, w, _ = candidates.shape
    codes = np.zeros((n, h, w), dtype=np.int64)
    for row in range(h):
        for column in range(w):
            here = candidates[:, row, column]
            contexts = model.context_at(codes, row, column)[:, None]
            cost = distances[:, row, column] + rate_weight * model.code_bits(contexts, here)
            codes[:, row, column] = candidates[np.arange(n), row, column, cost.argmin(axis=1)]
    return codes


def as_grids(codes: np.ndarray) -> np.ndarray:
    """Code grids (n, h, w) as they are; an MLP's code sequences (n, k) as one-row grids."""
    return codes.reshape(len(codes), -1, codes.shape[-1])


def code_classes(codebook: np.ndarray, n_classes: int, random_state: int = 0) -> np.ndarray:
    """Cluster code vectors (K, D) into ``n_classes`` groups: k-means labels (K,), int64.

    Only fit calls this; the labels are saved, so decoding never reruns k-means.
    One thread: scikit-learn's threaded k-means sums in arrival order, which
    could flip a near-tie label from one fit to the next.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    codebook = np.asarray(codebook, dtype=np.float64)
    if n_classes >= len(codebook):
        return np.arange(len(codebook), dtype=np.int64)
    with threadpool_limits(1):
        kmeans = KMeans(n_classes, n_init=4, random_state=random_state).fit(codebook)
    return kmeans.labels_.astype(np.int64)
