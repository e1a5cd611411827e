"""benchmarks/rescore.py: rescoring a trained model's saved cue maps with the model's own rule
gives the model's own anomaly map (the tool measures other rules on the same footing)."""
import os
import sys

import numpy as np
import pytest
import torch

from dadf_fast import DADF
from dadf_fast.models import cues

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import rescore  # noqa: E402


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    images = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    m = DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2)
    m.fit(images, recipe="lite", epochs_recon=1, iters_flow=2, progress=False, log=None, calibration_fraction=0.0)
    return m.eval(), images


def test_default_rule_is_the_models_map(fitted):
    m, images = fitted
    assert m.config["smooth_sigma"] == rescore.SIGMA
    calib, emb, emb4 = rescore._maps(m, images)
    memory = cues.flatten_patches(emb)
    torch.testing.assert_close(m.cue_memory, memory)
    assert emb4.shape[1] == m.backbone.channels[0] + memory.shape[1]
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    test = rescore._maps(m, x, memory, cues.flatten_patches(emb4))[0]
    d = {**{f"calib_{k}": v.numpy() for k, v in calib.items()}, **{f"test_{k}": v.numpy() for k, v in test.items()}}
    rule = dict(zip(m.config["score_cues"], m.config["cue_weights"]))
    want = m.predict(x)["anomaly_map"][:, 0].numpy()
    np.testing.assert_allclose(rescore.combine(d, rule), want, rtol=1e-4, atol=1e-4)
    # a single scale's flow map is that scale's share of the flow cue: the three average to it
    np.testing.assert_allclose((d["test_flow0"] + d["test_flow1"] + d["test_flow2"]) / 3, d["test_flow"],
                               rtol=1e-5, atol=1e-6)
    # the calibrated kNN cue alone is the memory distance, minus its training mean, over the spread
    mean, spread = cues.calibration(calib["knn"][:, None])
    np.testing.assert_allclose(rescore.combine(d, {"knn": 1.0}), (d["test_knn"] - mean) / spread, rtol=1e-4, atol=1e-4)


def test_evaluate_counts_each_defect_kind_against_the_good_images():
    amap = np.zeros((4, 8, 8), np.float32)
    amap[1, 2, 2], amap[2, 3, 3], amap[3, 0, 0] = 3.0, 0.5, -1.0
    d = {"labels": np.array([0, 1, 1, 0]), "masks": np.zeros((4, 8, 8), bool),
         "defects": np.array(["good", "scratch", "colour", "good"])}
    d["masks"][1, 2, 2] = True
    d["masks"][2, 3, 3] = True
    out = rescore.evaluate(d, amap)
    assert out["scratch"] == 1.0 and out["colour"] == 1.0   # 3.0 and 0.5 above both good maxima (0, 0)
    assert out["image_auroc"] == 1.0
    amap[0, 5, 5] = 1.0                                     # a good image above the colour one
    out = rescore.evaluate(d, amap)
    assert out["colour"] == 0.5 and out["scratch"] == 1.0
