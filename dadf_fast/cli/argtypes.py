"""argparse ``type=`` functions shared by the CLI and the bench command: a bad value becomes a
one-line usage error (exit code 2) naming the option."""
from __future__ import annotations

import argparse

from dadf_fast.utils.checks import check_number


def _int_at_least(low: int, high: int | None = None):
    want = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)
nonnegative_int = _int_at_least(0)
seed_int = _int_at_least(0, 2**32 - 1)


def input_size(text: str) -> int:
    """Image side: a multiple of 16 in [32, 4096] (the backbone's stride 16, and sane memory)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 32 or value > 4096 or value % 16:
        raise argparse.ArgumentTypeError(f"expected a multiple of 16 from 32 to 4096, got {text!r}")
    return value


def sigma(text: str) -> float:
    """A Gaussian sigma in pixels: a finite number >= 0 (0: no smoothing), the rule the models
    apply to ``smooth_sigma``."""
    try:
        return check_number("--sigma", "sigma", float(text), nonnegative=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}") from None


def fraction(text: str) -> float:
    """A fraction in [0, 1) (of the training images held out)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 and < 1, got {text!r}")
    return value
