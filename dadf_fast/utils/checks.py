"""Argument checks shared by every layer: one wording for "must be a finite number" and
"must be True or False", whether the value came from Python or from the command line."""
from __future__ import annotations

import math


def check_number(op: str, name: str, v, positive: bool = False) -> float:
    """``v`` as a float; raise unless it is a finite real number (``> 0`` when ``positive``).

    bool and str are rejected on purpose: ``float(True)`` and ``float("0.5")`` would succeed
    and silently turn a mistaken argument into a value."""
    import numbers

    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(v).__name__} {v!r}")
    f = float(v)
    if not math.isfinite(f) or (positive and not f > 0):
        raise ValueError(f"{op}: {name} must be a finite{' positive' if positive else ''} number, got {v!r}")
    return f


def check_flag(op: str, name: str, v) -> bool:
    """``v`` unchanged; raise unless it is a bool (``bool("False")`` is True: a string or an int
    would silently pick a branch)."""
    if not isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {type(v).__name__} {v!r}")
    return v
