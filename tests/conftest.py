"""Shared fixtures: small real data sets that ship with scikit-learn."""

import os

# Lets scikit-learn run its array-API check on numpy too (read when scipy is imported).
os.environ.setdefault("SCIPY_ARRAY_API", "1")

# Each pytest-xdist worker gets its share of the cores, and so do the processes a test
# starts (OMP_NUM_THREADS is inherited). torch starts one thread per core in every
# process, and OpenMP threads that outnumber the cores wait for each other: with two
# workers of two threads on two cores, tests/test_rows_default.py and test_tables.py took
# over 6.7 minutes instead of 77 s.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = str(max(1, len(os.sched_getaffinity(0)) // _WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", _THREADS)

import torch  # noqa: E402

if _WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits  # noqa: E402


# Property tests draw the same examples on every run, so that a run that lands is not
# decided by luck; VAEANOM_HYPOTHESIS=explore draws new ones (and keeps failures found
# in Hypothesis's example database) for a deeper local search.
settings.register_profile("fixed", derandomize=True, database=None, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("VAEANOM_HYPOTHESIS", "fixed"))

#: few epochs: enough to exercise every code path, cheap enough for many fits
FAST = dict(epochs=3, hidden_dims=(16,), latent_dim=2, n_score_samples=4, random_state=0)


@pytest.fixture(scope="session")
def cancer():
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return X, y


@pytest.fixture(scope="session")
def digit_images():
    """load_digits as uint8 images (n, 8, 8) scaled to 0..255."""
    X, y = load_digits(return_X_y=True)
    return (X * 255 / 16).round().astype(np.uint8).reshape(-1, 8, 8), y
