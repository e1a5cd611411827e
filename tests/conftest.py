"""Test configuration.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors; the interpreter
must be switched on before triton is first imported, so it is set here, at collection time.
Tests marked ``gpu`` are skipped when no CUDA device is visible.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

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
