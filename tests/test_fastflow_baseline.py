"""The FastFlow baseline of the accuracy harness (benchmarks/fastflow_baseline.py) and the
harness's own plumbing (benchmarks/accuracy.py): the baseline is anomalib's FastflowModel on
exactly DADF's lite features, trains with anomalib's loss whether or not the frozen features
are cached, and fits :func:`dadf_fast.engine.evaluation.evaluate`; the harness's summary and
bar check compute what they claim, and ``--jobs 2`` reproduces the serial numbers.

anomalib is an optional dependency (``pip install -e ".[integrations]"``): without it these
tests skip, except under CI (``CI`` set), where its absence fails.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

if importlib.util.find_spec("anomalib") is None:
    if os.environ.get("CI"):
        raise ImportError("anomalib must be installed under CI: .ci/run installs the [integrations] extra")
    pytest.skip("anomalib is not installed (pip install -e '.[integrations]')", allow_module_level=True)

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import accuracy  # noqa: E402
from anomalib.models.image.fastflow.loss import FastflowLoss  # noqa: E402
from fastflow_baseline import FastFlowBaseline  # noqa: E402

from dadf_fast.data import normalize  # noqa: E402
from dadf_fast.models.backbone import Backbone  # noqa: E402
from dadf_fast.models.postprocess import gaussian_smooth  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.rand(n, 3, SIZE, SIZE, generator=g))


@pytest.fixture(scope="module")
def trained():
    """A 2-step FastFlow fitted for 2 epochs on 4 images (module-wide: predict tests read it)."""
    model = FastFlowBaseline(SIZE, flow_steps=2, seed=0)
    model.fit(_images(4), epochs=2, batch_size=2, log=None)
    return model


def test_features_are_dadf_backbone_features():
    model = FastFlowBaseline(SIZE, flow_steps=2)
    x = _images(2)
    ours, dadf = model.features(x), Backbone("efficientnet_lite0")(x)
    assert [tuple(f.shape) for f in ours] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    for a, b in zip(ours, dadf, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # the ImageNet weights are loaded: random weights give other features
    random = FastFlowBaseline(SIZE, flow_steps=2, pretrained=False).features(x)
    assert (random[2] - dadf[2]).abs().max() > 0.1
    # anomalib's default pre-processor normalises as dadf_fast.data.normalize does
    from anomalib.models import Fastflow

    raw = torch.rand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(Fastflow.configure_pre_processor((SIZE, SIZE)).transform(raw), normalize(raw),
                               rtol=0, atol=1e-6)


def test_anomalib_architecture_and_frozen_extractor():
    model = FastFlowBaseline(SIZE, flow_steps=4, seed=0)
    ff = model.model
    assert [tuple(n.normalized_shape) for n in ff.norms] == [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    assert [len(b) for b in ff.fast_flow_blocks] == [4, 4, 4]
    # subnets alternate 3x3 / 1x1 with hidden = in channels (hidden_ratio 1)
    kernels = [blk.subnet[0].kernel_size[0] for blk in ff.fast_flow_blocks[0]]
    assert kernels == [3, 1, 3, 1]
    assert ff.fast_flow_blocks[0][0].subnet[0].out_channels == 12
    assert not any(p.requires_grad for p in ff.feature_extractor.parameters())
    # the seed fixes the flows' random permutations, and building leaves torch's global generator alone
    state = torch.get_rng_state()
    same = FastFlowBaseline(SIZE, flow_steps=4, seed=0).model.fast_flow_blocks[1][2].w_perm
    assert torch.equal(torch.get_rng_state(), state)
    other = FastFlowBaseline(SIZE, flow_steps=4, seed=1).model.fast_flow_blocks[1][2].w_perm
    assert torch.equal(same, ff.fast_flow_blocks[1][2].w_perm) and not torch.equal(other, same)


def test_cached_step_is_anomalibs_loss_and_gradient():
    model = FastFlowBaseline(SIZE, flow_steps=2, seed=0)
    model.train()
    x = _images(3)
    loss_ref = FastflowLoss()(*model.model(x))
    grads_ref = torch.autograd.grad(loss_ref, list(model.model.norms.parameters()))
    loss = FastflowLoss()(*model.flow(model.features(x)))
    grads = torch.autograd.grad(loss, list(model.model.norms.parameters()))
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=0)
    for g, r in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)
    # the loss is per scale the batch mean of 0.5 * sum z^2 - log|det J|
    z, jac = model.flow(model.features(x))
    manual = sum((0.5 * zz.pow(2).flatten(1).sum(1) - j).mean() for zz, j in zip(z, jac))
    torch.testing.assert_close(loss, manual, rtol=1e-6, atol=0)


def test_fit_records_anomalibs_loss_and_cache_changes_nothing():
    x = _images(4, seed=1)
    fresh = FastFlowBaseline(SIZE, flow_steps=2, seed=3)
    ref = copy.deepcopy(fresh).train()
    first = FastflowLoss()(*ref.model(x)).item()  # one full batch: fit's first step sees exactly x
    one = copy.deepcopy(fresh).fit(x, epochs=1, batch_size=4, log=None, cache_features=False)
    assert one["steps"] == 1 and math.isclose(one["loss"][0], first, rel_tol=1e-6)

    a, b = copy.deepcopy(fresh), copy.deepcopy(fresh)
    ha = a.fit(x, epochs=3, batch_size=3, log=None, cache_features=True)
    hb = b.fit(x, epochs=3, batch_size=3, log=None, cache_features=False)
    assert ha["steps"] == hb["steps"] == 6  # ceil(4 / 3) steps an epoch
    torch.testing.assert_close(torch.tensor(ha["loss"]), torch.tensor(hb["loss"]), rtol=1e-5, atol=0)
    assert ha["loss"][-1] < ha["loss"][0]  # the flows learn
    pa, pb = a.predict(x), b.predict(x)
    torch.testing.assert_close(pa["anomaly_map"], pb["anomaly_map"], rtol=1e-5, atol=1e-6)
    assert not a.training and not a.model.training


def test_predict_is_anomalibs_map_and_max(trained):
    x = _images(3, seed=2)
    out = trained.predict(x)
    amap, score = out["anomaly_map"], out["score"]
    assert amap.shape == (3, 1, SIZE, SIZE) and score.shape == (3,)
    torch.testing.assert_close(score, amap.flatten(1).amax(1), rtol=0, atol=0)
    assert float(amap.max()) <= 0 and float(amap.min()) >= -1
    # anomalib's map: minus the mean over scales of exp(-0.5 mean_c z^2), upsampled bilinearly
    with torch.no_grad():
        z, _ = trained.flow(trained.features(x))
    probs = [F.interpolate(torch.exp(-0.5 * zz.pow(2).mean(1, keepdim=True)), size=(SIZE, SIZE),
                           mode="bilinear", align_corners=False) for zz in z]
    torch.testing.assert_close(amap, -torch.stack(probs).mean(0), rtol=1e-5, atol=1e-6)
    assert float(score.std()) > 0  # the images are told apart
    smooth = trained.predict(x, smooth_sigma=2.0)
    torch.testing.assert_close(smooth["anomaly_map"], gaussian_smooth(amap, 2.0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(smooth["score"], gaussian_smooth(amap, 2.0).flatten(1).amax(1), rtol=1e-6, atol=1e-7)
    chunked = trained.predict(x, batch_size=2)
    torch.testing.assert_close(chunked["score"], score, rtol=1e-6, atol=1e-7)


def test_bad_arguments_are_named(trained):
    for kwargs, name in [({"input_size": 50}, "input_size"), ({"flow_steps": 0}, "flow_steps"),
                         ({"hidden_ratio": 0.05}, "hidden_ratio"), ({"seed": 1.5}, "seed")]:
        with pytest.raises(ValueError, match=name):
            FastFlowBaseline(**{"input_size": SIZE, **kwargs}, pretrained=False)
    with pytest.raises(ValueError, match="images"):
        trained.predict(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="smooth_sigma"):
        trained.predict(_images(1), smooth_sigma=-1)
    model = FastFlowBaseline(SIZE, flow_steps=1, pretrained=False)
    with pytest.raises(ValueError, match="epochs"):
        model.fit(_images(2), epochs=0)
    with pytest.raises(ValueError, match="train_data"):
        model.fit(torch.zeros(2, 3, 32, 32))


def test_evaluate_takes_it(tmp_path):
    from dadf_fast.data import MVTecAD
    from dadf_fast.data.synthetic import make_dataset
    from dadf_fast.engine.evaluation import evaluate

    make_dataset(tmp_path, categories=["coins"], n_train=4, n_test_good=2, n_test_defect=3, image_size=SIZE)
    train = MVTecAD(tmp_path, "coins", "train", image_size=SIZE)
    test = MVTecAD(tmp_path, "coins", "test", image_size=SIZE)
    model = FastFlowBaseline(SIZE, flow_steps=2, seed=0)
    model.fit(train, epochs=1, batch_size=8, log=None)
    res = evaluate(model, test, category="coins")
    assert res["n_images"] == 5 and set(res["per_defect"]) == {"scratch", "patch", "spot"}
    assert 0 <= res["image_auroc"] <= 1 and 0 < res["pixel_auroc"] < 1 and 0 <= res["aupro"] <= 1
    torch.testing.assert_close(torch.as_tensor(res["_scores"]),
                               model.predict(torch.stack([test[i]["image"] for i in range(5)]))["score"])


# ---------------------------------------------------------------------- the harness
def _res(image, pixel):
    return {"image_auroc": image, "pixel_auroc": pixel, "aupro": 0.5, "fit_seconds": 1.0, "eval_seconds": 0.5,
            "per_defect": {"spot": image}}


def test_summary_worst_category_and_bar_check():
    runs = {
        "dadf": {"a": {"0": _res(0.90, 0.95), "1": _res(0.80, 0.93)}, "b": {"0": _res(0.99, 0.97), "1": _res(0.97, 0.97)}},
        "knn": {"a": {"0": _res(0.88, 0.96), "1": _res(0.84, 0.96)}, "b": {"0": _res(0.90, 0.90), "1": _res(0.90, 0.90)}},
        "fastflow": {"a": {"0": _res(0.70, 0.90), "1": _res(0.70, 0.90)},
                     "b": {"0": _res(0.95, 0.99), "1": _res(0.95, 0.99)}},
    }
    s = accuracy.summarise(runs, ["a", "b"], [0, 1])
    assert s["results"]["dadf"]["a"]["image_auroc"] == pytest.approx(0.85)
    assert s["results"]["dadf"]["a"]["image_auroc_std"] == pytest.approx(0.05)
    assert s["mean"]["dadf"]["image_auroc"] == pytest.approx((0.85 + 0.98) / 2)
    assert s["mean"]["knn"]["fit_seconds"] == pytest.approx(4.0)
    assert s["worst"]["dadf"]["image_auroc"] == {"category": "a", "value": pytest.approx(0.85)}
    assert s["worst"]["fastflow"]["pixel_auroc"]["category"] == "a"
    assert s["per_defect"]["knn"]["spot"] == pytest.approx((0.86 + 0.90) / 2)
    bar = s["bar"]
    # image: a: dadf 0.85 vs best 0.86 (short 0.01); b: 0.98 vs 0.95 (ahead)
    assert bar["image_auroc"]["largest_shortfall"] == pytest.approx(0.01)
    assert bar["image_auroc"]["shortfall_category"] == "a" and bar["image_auroc"]["fraction_ahead"] == 0.5
    assert bar["image_auroc"]["beats_mean"] and bar["image_auroc"]["shortfall_ok"]
    # pixel: a: 0.94 vs 0.96 (short 0.02, at the limit); b: 0.97 vs 0.99 (short 0.02); yet the
    # mean 0.955 beats each baseline's (0.93, 0.945): behind everywhere, ahead on the mean
    assert bar["pixel_auroc"]["largest_shortfall"] == pytest.approx(0.02)
    assert bar["pixel_auroc"]["fraction_ahead"] == 0.0 and bar["pixel_auroc"]["beats_mean"]
    assert bar["pixel_auroc"]["shortfall_ok"] and bar["passed"] is True
    assert bar["fraction_ahead_both"] == 0.0
    md = accuracy.markdown({"seeds": [0, 1], "categories": ["a", "b"], "runs": runs, **s})
    assert "0.850 ± 0.050" in md and "0.850 (a)" in md and "**passed**" in md
    runs["fastflow"]["b"]["1"]["pixel_auroc"] = 1.01  # b's mean 1.0: DADF 0.03 short there
    bar = accuracy.summarise(runs, ["a", "b"], [0, 1])["bar"]
    assert bar["pixel_auroc"]["largest_shortfall"] == pytest.approx(0.03)
    assert bar["pixel_auroc"]["shortfall_category"] == "b" and bar["passed"] is False
    assert accuracy.bar_check({"knn": s["results"]["knn"]}) is None


def test_every_units_data_is_made_before_any_training(tmp_path, monkeypatch):
    """A category that cannot hold the defects stops the run by name before any unit trains
    (it used to surface after every other unit had trained, and took their results with it)."""
    import dadf_fast.data.synthetic as synthetic

    made = []

    def make_dataset(root, categories, **kw):
        made.append((categories[0], kw["seed"]))
        if categories[0] == "coin":
            raise ValueError("the image has too little detail for this defect")

    monkeypatch.setattr(synthetic, "make_dataset", make_dataset)
    monkeypatch.setattr(accuracy, "run_unit", lambda *a: pytest.fail("a unit ran before every unit's data was made"))
    args = accuracy._build_parser().parse_args(["--set", "dev", "--categories", "fabric", "coin", "--seeds", "0", "1",
                                                "--methods", "knn", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no data for coin at seed 0: the image has too little detail"):
        accuracy.run(args)
    assert made == [("fabric", 0), ("coin", 0)]


def test_merge_joins_runs_apart_and_refuses_gaps(tmp_path):
    """Seeds and methods run in separate invocations report as one run; a (method, category,
    seed) twice, a missing one or another set is refused by name."""
    def report(runs, set_name="dev"):
        return {"set": set_name, "categories": ["a", "b"], "defects": ["spot"], "runs": runs}

    seed0 = {"dadf": {"a": {"0": _res(0.90, 0.95)}, "b": {"0": _res(0.99, 0.97)}},
             "knn": {"a": {"0": _res(0.88, 0.96)}, "b": {"0": _res(0.90, 0.90)}}}
    seed1 = {"dadf": {"a": {"1": _res(0.80, 0.93)}, "b": {"1": _res(0.97, 0.97)}},
             "knn": {"a": {"1": _res(0.84, 0.96)}, "b": {"1": _res(0.90, 0.90)}}}
    paths = []
    for i, runs in enumerate((seed0, seed1, seed1, {"dadf": seed1["dadf"]})):
        paths.append(str(tmp_path / f"r{i}.json"))
        with open(paths[-1], "w") as fh:
            json.dump(report(runs), fh)
    merged = accuracy.merge(paths[:2])
    assert merged["seeds"] == [0, 1] and merged["methods"] == ["dadf", "knn"]
    assert merged["results"]["dadf"]["a"]["image_auroc"] == pytest.approx(0.85)
    assert merged["results"]["dadf"]["a"]["image_auroc_std"] == pytest.approx(0.05)
    assert merged["bar"]["image_auroc"]["largest_shortfall"] == pytest.approx(0.01)
    assert "0.850 ± 0.050" in accuracy.markdown(merged)
    with pytest.raises(SystemExit, match="dadf on a at seed 1 is in"):
        accuracy.merge(paths[1:3])
    with pytest.raises(SystemExit, match="missing knn/a/seed 1, knn/b/seed 1"):
        accuracy.merge([paths[0], paths[3]])
    with open(paths[3], "w") as fh:
        json.dump(report(seed1, "validation"), fh)
    with pytest.raises(SystemExit, match="has set 'validation'"):
        accuracy.merge([paths[0], paths[3]])
    with pytest.raises(SystemExit, match="cannot read"):
        accuracy.merge([str(tmp_path / "nowhere.json")])


def test_harness_options_resolve():
    args = accuracy._resolve(accuracy._build_parser().parse_args(["--set", "old", "--seed", "3"]))
    assert args.seeds == [3] and args.categories == list(accuracy.HARNESS_CATEGORIES)
    assert args.defects == ["scratch", "patch", "spot"] and args.methods == ["dadf", "knn", "fastflow"]
    with pytest.raises(SystemExit, match="--defects"):
        accuracy._resolve(accuracy._build_parser().parse_args(["--set", "old", "--defects", "dent"]))
    with pytest.raises(SystemExit, match="--seeds"):
        accuracy._resolve(accuracy._build_parser().parse_args(["--set", "old", "--seeds", "1", "1"]))
    with pytest.raises(SystemExit, match="--categories"):
        accuracy._resolve(accuracy._build_parser().parse_args(["--set", "old", "--categories", "nowhere"]))
    if "validation" not in accuracy.category_sets():
        with pytest.raises(SystemExit, match="HARNESS_VALIDATION"):
            accuracy._resolve(accuracy._build_parser().parse_args(["--set", "validation"]))


@pytest.mark.slow
def test_jobs_reproduce_the_serial_run(tmp_path, capsys):
    """Two (seed, category) units in two spawned processes give the serial run's numbers
    (the imports in the workers make this ~30 s on the 2-core machine)."""
    import json

    common = ["--set", "old", "--categories", "coins", "--seeds", "0", "1", "--image-size", str(SIZE),
              "--n-train", "4", "--n-test-good", "2", "--n-test-defect", "3", "--epochs-recon", "1",
              "--epochs-flow", "1", "--iters-flow", "1", "--fastflow-epochs", "1", "--threads", "1", "--quiet"]
    reports = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert accuracy.main(common + ["--jobs", jobs, "--out", str(out)]) == 0
        reports.append(json.loads((out / "results.json").read_text()))
    serial, parallel = reports
    assert serial["machine"]["jobs"] == 1 and parallel["machine"]["jobs"] == 2
    for m in ("dadf", "knn", "fastflow"):
        for s in ("0", "1"):
            a, b = serial["runs"][m]["coins"][s], parallel["runs"][m]["coins"][s]
            for k in ("image_auroc", "pixel_auroc", "aupro", "per_defect"):
                assert a[k] == b[k], (m, s, k)
    assert serial["mean"]["fastflow"]["pixel_auroc"] == parallel["mean"]["fastflow"]["pixel_auroc"]
    assert serial["runs"]["fastflow"]["coins"]["0"]["steps"] == 1
    # the data is made once, up front, and each unit reports the time that took
    assert all(r["runs"]["dadf"]["coins"][s]["data_seconds"] > 0 for r in reports for s in ("0", "1"))
    assert "data_seconds" not in serial["settings"]
    assert serial["bar"]["baselines"] == ["knn", "fastflow"]
    assert "| coins | FastFlow (anomalib) |" in capsys.readouterr().out
