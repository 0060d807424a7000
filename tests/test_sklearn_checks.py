"""scikit-learn's own estimator suite, with no expected failures."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from vaeanom import VAEDetector, VQVAEDetector

from .conftest import FAST


VQ_FAST = dict(epochs=3, hidden_dims=(16,), codebook_size=8, code_dim=2, n_codes=2,
               random_state=0)


@parametrize_with_checks([VAEDetector(**FAST), VQVAEDetector(**VQ_FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
