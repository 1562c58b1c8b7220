"""Argument checks at the edge: each raises ValueError naming the parameter, the accepted range
and the value it got ("NAME must be ..., got V"), so the jitted code can assume valid input."""
from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer (not a bool) in [low, high] (high None: no upper bound)."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return value


def _is_real(value) -> bool:
    """A Python, NumPy or 0-d array int or float, not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, numbers.Real):
        return True
    dtype = getattr(value, "dtype", None)
    return (dtype is not None and np.ndim(value) == 0
            and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)))


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``float(value)`` if it is a finite number in the range; bools, NaN and +-inf are refused.

    low / high: the bounds (None: unbounded on that side); low_open / high_open: exclude the bound.
    Out of range: "mu must be >= 0, got -1.0"; not a finite number: "mu must be a finite number
    >= 0, got inf" (and "in [0, 1)" when both bounds are set).
    """
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if low is not None and high is not None:
        rng = f"in {left}{low}, {high}{right}"
    elif low is not None:
        rng = f"{'>' if low_open else '>='} {low}"
    elif high is not None:
        rng = f"{'<' if high_open else '<='} {high}"
    else:
        rng = ""
    real = _is_real(value)
    shown = value if real else repr(value)       # 1.0 or inf, not np.float64(1.0); 'a' quoted
    if not (real and math.isfinite(float(value))):
        raise ValueError(f"{name} must be a finite number {rng}".rstrip() + f", got {shown}")
    x = float(value)
    ok = ((low is None or (x > low if low_open else x >= low))
          and (high is None or (x < high if high_open else x <= high)))
    if not ok:
        raise ValueError(f"{name} must be {rng}, got {shown}")
    return x
