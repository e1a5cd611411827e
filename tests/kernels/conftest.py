"""The kernel tests reuse the op tests' inputs and reference check (tests/ops/samples.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ops"))
