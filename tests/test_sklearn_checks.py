"""scikit-learn's own estimator suite, with no expected failures."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from vaeanom import VAEDetector

from .conftest import FAST


@parametrize_with_checks([VAEDetector(**FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)
