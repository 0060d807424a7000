"""A small table-driven validator for estimator parameters.

scikit-learn's own ``_parameter_constraints`` machinery is private API, so we
keep our own: each parameter maps to a rule that can test a value and describe
what it allows, and the error names the parameter, the rule and the value.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class InvalidParameterError(ValueError, TypeError):
    """A parameter has a value outside what the estimator allows."""


class Rule:
    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Rule):
    """A real (or, with ``integer=True``, whole) number in an interval."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: Any) -> bool:
        kind = numbers.Integral if self.integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # NaN, inf
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        kind = "an int" if self.integer else "a float"
        left = "(" if self.low_open else "["
        low = "-inf" if self.low is None else self.low
        high = "inf)" if self.high is None else f"{self.high}{')' if self.high_open else ']'}"
        return f"{kind} in {left}{low}, {high}"


@dataclass(frozen=True)
class OneOf(Rule):
    options: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options or (
            value is None and None in self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


@dataclass(frozen=True)
class Flag(Rule):
    """True or False (numpy's booleans too)."""

    def accepts(self, value: Any) -> bool:
        return type(value).__name__ in ("bool", "bool_")

    def describe(self) -> str:
        return "True or False"


@dataclass(frozen=True)
class IntTuple(Rule):
    """A tuple or list of at least ``min_length`` positive ints (layer widths)."""

    min_length: int = 1

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) >= self.min_length
                and all(Number(1, integer=True).accepts(v) for v in value))

    def describe(self) -> str:
        if self.min_length == 1:   # a bare 16 is the usual slip
            return "a non-empty tuple of positive ints, such as (64, 32), or (16,) for one"
        return f"a tuple of at least {self.min_length} positive ints, such as (32, 8)"


@dataclass(frozen=True)
class AnyOf(Rule):
    rules: tuple[Rule, ...]

    def accepts(self, value: Any) -> bool:
        return any(rule.accepts(value) for rule in self.rules)

    def describe(self) -> str:
        return " or ".join(rule.describe() for rule in self.rules)


@dataclass(frozen=True)
class RandomState(Rule):
    def accepts(self, value: Any) -> bool:
        import numpy as np

        return value is None or isinstance(value, np.random.RandomState) or (
            Number(0, 2**32 - 1, integer=True).accepts(value))

    def describe(self) -> str:
        return "None, an int in [0, 2**32 - 1] or a numpy RandomState"


def validate_params(estimator: Any, rules: Mapping[str, Rule]) -> None:
    """Raise InvalidParameterError for the first parameter its rule rejects."""
    owner = type(estimator).__name__
    for name, value in estimator.get_params(deep=False).items():
        rule = rules.get(name)
        if rule is None:
            close = difflib.get_close_matches(name, rules, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidParameterError(f"{owner} has no rule for parameter {name!r}{hint}.")
        if not rule.accepts(value):
            raise InvalidParameterError(
                f"{owner}: parameter {name!r} must be {rule.describe()}; got {value!r}.")
