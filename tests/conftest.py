"""Test configuration.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; the interpreter
must be switched on before triton is first imported, so it is set here, at collection time.
Tests marked ``gpu`` are skipped when no CUDA device is visible.

Hypothesis profiles (the fuzz tests, tests/ops/test_fuzz_*.py): ``ci``, the default, is derandomized (the same
examples on every run) and small; ``deep`` draws new random examples on every run and 10 times
as many (``HYPOTHESIS_PROFILE=deep`` or ``--hypothesis-profile=deep``).  Neither writes an
example database into the checkout: a failure prints its ``@reproduce_failure`` blob instead.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# the Triton interpreter takes a second or more per example, by design
_FUZZ_HEALTH = [HealthCheck.too_slow]
settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, database=None,
                          print_blob=True, suppress_health_check=_FUZZ_HEALTH)
settings.register_profile("deep", max_examples=200, deadline=None, derandomize=False, database=None,
                          print_blob=True, suppress_health_check=_FUZZ_HEALTH)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests: on a shared 2-core machine it is
    faster and steadier than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def require_backend():
    """``require_backend(name, device="cpu")``: skip when the backend cannot run on that
    device's tensors here, but fail under CI (``CI`` set), where the extension and the Triton
    interpreter must work, so that a broken fast path can never pass as a skip.  ``"auto"``
    always runs; ``cuda`` is left to the ``gpu`` mark (tests on it are skipped without a GPU)."""
    import dadf_fast

    def check(name, device="cpu"):
        if name == "auto":
            return
        entry = dadf_fast.backends()[name][device]
        if entry["available"]:
            return
        if os.environ.get("CI") and device == "cpu":
            pytest.fail(f"backend {name!r} must be available in CI: {entry['reason']}")
        pytest.skip(f"backend {name!r} cannot run on {device} here: {entry['reason']}")

    return check


def pytest_terminal_summary(terminalreporter):
    """List every skip reason with its count at the end of the run, so a skip is never silent."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.write_sep("-", "skipped")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{n:5d}  {reason}")
