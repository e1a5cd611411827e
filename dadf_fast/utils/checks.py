"""Argument checks shared by every layer: one wording for "must be a finite number" and
"must be True or False", whether the value came from Python or from the command line."""
from __future__ import annotations

import math
import numbers


def check_number(op: str, name: str, v, positive: bool = False, nonnegative: bool = False) -> float:
    """``v`` as a float; raise unless it is a finite real number (``> 0`` when ``positive``,
    ``>= 0`` when ``nonnegative``).  The message is ``"{op}: {name} must be a finite number
    [> 0 | >= 0], got ..."`` (``TypeError`` for a non-number, ``ValueError`` for a bad value).

    bool and str are rejected on purpose: ``float(True)`` and ``float("0.5")`` would succeed
    and silently turn a mistaken argument into a value."""
    want = "finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{op}: {name} must be a {want}, got {type(v).__name__} {v!r}")
    f = float(v)
    if not math.isfinite(f) or (positive and not f > 0) or (nonnegative and not f >= 0):
        raise ValueError(f"{op}: {name} must be a {want}, got {v!r}")
    return f


def check_flag(op: str, name: str, v) -> bool:
    """``v`` unchanged; raise unless it is a bool (``bool("False")`` is True: a string or an int
    would silently pick a branch)."""
    if not isinstance(v, bool):
        raise TypeError(f"{op}: {name} must be True or False, got {type(v).__name__} {v!r}")
    return v
