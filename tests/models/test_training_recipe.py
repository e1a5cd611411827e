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
                log=lambda *a: None, calibration_fraction=0.0, hflip=False, vflip=False)
    assert len(res["loss_flow"]) == 3
    # the lite recipe's flips make 20 training samples of the 5: 10 steps per epoch -> 1 epoch
    res = _tiny().fit(imgs, recipe="lite", epochs_recon=1, iters_flow=7, batch_size_flow=2, progress=False,
                      log=lambda *a: None, calibration_fraction=0.0)
    assert len(res["loss_flow"]) == 1
    # with one of the 5 held out for the thresholds: 4 images, 2 steps per epoch -> 4 epochs
    res = _tiny().fit(imgs, recipe="lite", epochs_recon=1, iters_flow=7, batch_size_flow=2, progress=False,
                      log=lambda *a: None, hflip=False, vflip=False)
    assert len(res["loss_flow"]) == 4 and res["calibration"]["n_normal"] == 1


@pytest.mark.parametrize("field,value", [("epochs_flow", -1), ("iters_flow", 2.5), ("batch_size_flow", 0),
                                         ("lr_flow", 0.0), ("grad_clip", -1.0), ("val_fraction", 1.0)])
def test_fit_config_rejects_bad_values(field, value):
    from dadf_fast.models.training import FitConfig

    with pytest.raises(ValueError, match=f"FitConfig.{field} must be"):
        FitConfig(**{field: value})


def test_lite_recipe_trains_on_the_mirror_images_with_the_same_stage1_steps():
    from dadf_fast.models.training import FitConfig

    assert FitConfig.for_recipe("lite").hflip and FitConfig.for_recipe("lite").vflip
    assert not FitConfig.for_recipe("paper").hflip and not FitConfig.for_recipe("lite", hflip=False).hflip
    torch.manual_seed(1)
    imgs = torch.randn(5, 3, 64, 64)
    m = _tiny()
    seen = []
    features = m.features
    m.features = lambda x: (seen.append(x.detach().clone()), features(x))[1]
    res = m.fit(imgs, recipe="lite", epochs_recon=4, iters_flow=2, progress=False, log=lambda *a: None,
                calibration_fraction=0.0)
    # stage 1: 4 passes' worth of steps over the 5 images = 1 epoch over their 20 variants
    assert len(res["loss_recon"]) == 1
    assert len(_tiny().fit(imgs, recipe="lite", epochs_recon=4, iters_flow=2, progress=False, log=lambda *a: None,
                           calibration_fraction=0.0, hflip=False, vflip=False)["loss_recon"]) == 4
    rows = torch.cat(seen)
    for variant in (imgs, imgs.flip(-1), imgs.flip(-2), imgs.flip(-1).flip(-2)):
        for img in variant:
            assert any(torch.equal(img, r) for r in rows)
    # the feature cache holds every variant once; the cue calibration sees the 5 images as given
    assert rows.shape[0] == 20 + 5
