"""scikit-learn's own estimator suite, with no expected failures."""

import pytest
from sklearn.utils.estimator_checks import (check_estimators_partial_fit_n_features,
                                            parametrize_with_checks)

from vaeanom import VAEDetector, VQVAEDetector

from .conftest import FAST


VQ_FAST = dict(epochs=3, hidden_dims=(16,), codebook_size=8, code_dim=2, n_codes=2,
               random_state=0)


@parametrize_with_checks([VAEDetector(**FAST), VAEDetector(**{**FAST, "latent_dim": (32, 8)}),
                          VQVAEDetector(**VQ_FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("estimator", [VAEDetector(**FAST), VQVAEDetector(**VQ_FAST)],
                         ids=["VAEDetector", "VQVAEDetector"])
def test_partial_fit_refuses_a_chunk_with_other_columns(estimator):
    # scikit-learn yields this check for classifiers, regressors and clusterers only
    check_estimators_partial_fit_n_features(type(estimator).__name__, estimator)
