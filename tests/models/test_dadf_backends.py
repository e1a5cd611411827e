"""A tiny DADF on the fast backends against the same model on the reference backend:
predict (the inference fast path, no log-det) and the training losses.  An unavailable
backend is skipped here and fails under CI."""
import copy

import pytest
import torch

from dadf_fast import DADF

FAST = ["triton", "cpp"]


@pytest.mark.parametrize("backend", FAST)
def test_tiny_dadf_matches_reference(backend, require_backend):
    require_backend(backend)
    torch.manual_seed(0)
    ref = DADF("lite", pretrained=False, input_size=32, depth=1, flow_steps=2, backend="torch",
               score_scales=(0, 1, 2), smooth_sigma=0, score_cues=("flow",))
    fast = copy.deepcopy(ref).set_backend(backend)
    x = torch.randn(2, 3, 32, 32)
    a, b = ref.predict(x), fast.predict(x)
    torch.testing.assert_close(b["anomaly_map"], a["anomaly_map"], atol=1e-4, rtol=0)
    torch.testing.assert_close(b["score"], a["score"], atol=1e-4, rtol=0)
    ref.train(), fast.train()
    la, lb = ref(x), fast(x)
    torch.testing.assert_close(lb["loss_flow"], la["loss_flow"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(lb["loss_recon"], la["loss_recon"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_dadf_inference_fast_path_matches_reference(backend, require_backend):
    require_backend(backend)
    torch.manual_seed(0)
    ref = DADF("lite", pretrained=False, input_size=32, depth=1, flow_steps=2, backend="torch")
    ref.calibrate_cues(torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5)))  # every cue of the default
    fast = copy.deepcopy(ref).set_backend(backend)
    x = torch.randn(2, 3, 32, 32)
    a, b = ref.predict(x), fast.predict(x)
    torch.testing.assert_close(b["anomaly_map"], a["anomaly_map"], atol=1e-4, rtol=0)
    torch.testing.assert_close(b["score"], a["score"], atol=1e-4, rtol=0)
