"""The training recipes' configuration (``FitConfig``): the lite recipe counts flow steps,
and every field rejects a bad value by name."""
import pytest
import torch

from dadf_fast import DADF


def _tiny(**kw):
    torch.manual_seed(0)
    return DADF("lite", pretrained=False, input_size=64, depth=1, flow_steps=2, **kw).eval()


def test_lite_recipe_counts_flow_steps_not_epochs():
    from dadf_fast.models.training import LITE_FLOW_ITERS, FitConfig

    cfg = FitConfig.for_recipe("lite")
    assert cfg.iters_flow == LITE_FLOW_ITERS == 375 and cfg.lr_flow == 1e-3 and cfg.batch_size_flow == 8
    # an explicit epoch count replaces the recipe's step count
    assert FitConfig.for_recipe("lite", epochs_flow=3).iters_flow is None
    assert FitConfig.for_recipe("paper").iters_flow is None
    m = _tiny()
    imgs = torch.randn(5, 3, 64, 64)
    # 5 images at batch 2: 3 steps per epoch, so 7 steps -> 3 epochs
    res = m.fit(imgs, recipe="lite", epochs_recon=1, iters_flow=7, batch_size_flow=2, progress=False,
                log=lambda *a: None, calibration_fraction=0.0)
    assert len(res["loss_flow"]) == 3
    # with one of the 5 held out for the thresholds: 4 images, 2 steps per epoch -> 4 epochs
    res = _tiny().fit(imgs, recipe="lite", epochs_recon=1, iters_flow=7, batch_size_flow=2, progress=False,
                      log=lambda *a: None)
    assert len(res["loss_flow"]) == 4 and res["calibration"]["n_normal"] == 1


@pytest.mark.parametrize("field,value", [("epochs_flow", -1), ("iters_flow", 2.5), ("batch_size_flow", 0),
                                         ("lr_flow", 0.0), ("grad_clip", -1.0), ("val_fraction", 1.0)])
def test_fit_config_rejects_bad_values(field, value):
    from dadf_fast.models.training import FitConfig

    with pytest.raises(ValueError, match=f"FitConfig.{field} must be"):
        FitConfig(**{field: value})
