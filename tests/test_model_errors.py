"""Bad input to the detectors and bad checkpoint files: every case raises one line that names
the argument or the file, and nothing returns NaN silently."""
import math
import os
import zipfile

import pytest
import torch

from dadf_fast import DADF
from dadf_fast.models.knn import KNNDetector, load_detector
from dadf_fast.cli.commands import main
from dadf_fast.models.postprocess import gaussian_smooth

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw):
    torch.manual_seed(0)
    args = dict(input_size=S, depth=1, flow_steps=2, backend="torch", pretrained=False)
    args.update(kw)
    m = DADF("lite", **args).eval()
    # the kNN cue's memory and the cue calibration (what fit() does last)
    m.calibrate_cues(torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(5)))
    return m


@pytest.fixture(scope="module")
def model():
    return _tiny()


@pytest.fixture(scope="module")
def knn():
    torch.manual_seed(0)
    det = KNNDetector(input_size=S, pretrained=False)
    det.fit(torch.randn(2, 3, S, S), progress=False, log=None)
    return det


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model.save(path)
    return path


def _one_line(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# ----------------------------------------------------------------------------- training data
BAD_TRAIN = [
    (lambda: torch.zeros(0, 3, S, S), ValueError, "train_data is empty"),
    (lambda: [], ValueError, "train_data is empty"),
    (lambda: torch.randn(3, S, S), ValueError, "train_data must be 4-D [B, 3, 64, 64]"),
    (lambda: torch.randn(2, 1, S, S), ValueError, "train_data must have 3 (RGB) channels, got 1"),
    (lambda: torch.randn(2, 3, 32, 32), ValueError, "train_data must be 64x64"),
    (lambda: torch.zeros(2, 3, S, S, dtype=torch.uint8), TypeError, "train_data must be a floating-point"),
    (lambda: torch.randn(2, 3, S, S).index_fill_(0, torch.tensor([1]), float("nan")), ValueError,
     "train_data contain NaN or Inf values (first in image 1)"),
    (lambda: torch.full((1, 3, S, S), float("inf")), ValueError, "NaN or Inf"),
    (lambda: [{"image": torch.randn(3, S, S)}, {"image": torch.randn(3, 48, 48)}], ValueError,
     "train_data[1] must be 64x64"),
    (lambda: [{"mask": torch.zeros(1, S, S)}], ValueError, "train_data[0] is a dict without an 'image'"),
    (lambda: [(torch.randn(3, S, S).double(), 0)] * 2, None, None),  # any float dtype is fine
    (lambda: "images/", TypeError, "train_data must be a tensor"),
]


def test_dadf_fit_with_one_image_is_refused_up_front(tmp_path):
    """The kNN cue calibrates each training image against the others: one image cannot."""
    with pytest.raises(ValueError) as ei:
        _tiny().fit(torch.randn(1, 3, S, S), recipe="lite", progress=False, log=None, out_dir=tmp_path / "run")
    _one_line(ei, "train_data holds 1 image; the model's kNN score cue")
    assert not os.path.exists(tmp_path / "run" / "stage1.pt")
    res = _tiny(score_cues=("flow", "recon")).fit(torch.randn(1, 3, S, S), recipe="lite", epochs_recon=1,
                                                 iters_flow=1, progress=False, log=None)
    assert len(res["loss_flow"]) == 1


@pytest.mark.parametrize("make,exc,needle", BAD_TRAIN)
def test_dadf_fit_validates_train_data_up_front(make, exc, needle, tmp_path):
    model = _tiny()
    if exc is None:
        res = model.fit(make(), recipe="lite", epochs_recon=1, iters_flow=1, progress=False, log=lambda *a: None)
        assert len(res["loss_recon"]) == 1 and all(math.isfinite(v) for v in res["loss_recon"] + res["loss_flow"])
        return
    with pytest.raises(exc) as ei:
        model.fit(make(), recipe="lite", epochs_recon=1, iters_flow=1, progress=False, log=lambda *a: None,
                  out_dir=tmp_path / "run")
    _one_line(ei, needle)
    assert not os.path.exists(tmp_path / "run" / "stage1.pt")  # nothing trained, nothing written


@pytest.mark.parametrize("make,exc,needle", [c for c in BAD_TRAIN if c[1] is not None])
def test_knn_fit_validates_train_data_up_front(make, exc, needle):
    det = KNNDetector(input_size=S, pretrained=False)
    with pytest.raises(exc) as ei:
        det.fit(make(), progress=False, log=None)
    _one_line(ei, needle)
    assert det.memory.shape[0] == 0


# ----------------------------------------------------------------------------- predict inputs
def test_predict_accepts_any_float_dtype(model, knn):
    x = torch.randn(2, 3, S, S)
    for det in (model, knn):
        ref = det.predict(x)
        out64 = det.predict(x.double())
        assert out64["anomaly_map"].dtype == torch.float32
        assert torch.equal(out64["anomaly_map"], ref["anomaly_map"]) and torch.equal(out64["score"], ref["score"])
        half = x.half()
        torch.testing.assert_close(det.predict(half)["score"], det.predict(half.float())["score"], rtol=0, atol=0)


@pytest.mark.parametrize("images,exc,needle", [
    (torch.zeros(1, 3, S, S, dtype=torch.uint8), TypeError, "dadf_fast.data.normalize"),
    (torch.zeros(1, 3, S, S, dtype=torch.int64), TypeError, "images must be a floating-point tensor"),
    (torch.randn(1, 4, S, S), ValueError, "images must have 3 (RGB) channels, got 4"),
    (torch.randn(2, 1, 3, S, S), ValueError, "images must be 4-D"),
    (torch.randn(1, 3, 2 * S, 2 * S), ValueError, "images must be 64x64 for this model (input_size=64), got 128x128"),
    (torch.randn(0, 3, S, S), ValueError, "images is an empty batch"),
    (torch.randn(1, 3, S, S).numpy(), TypeError, "images must be a torch.Tensor"),
])
def test_predict_rejects_bad_images(model, knn, images, exc, needle):
    for det in (model, knn):
        with pytest.raises(exc) as ei:
            det.predict(images)
        _one_line(ei, needle)


@pytest.mark.parametrize("sigma,exc", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("4", TypeError), (True, TypeError)])
def test_smooth_sigma_must_be_finite_and_non_negative(model, knn, sigma, exc):
    x = torch.randn(1, 3, S, S)
    for call in (lambda: model.predict(x, smooth_sigma=sigma), lambda: knn.predict(x, smooth_sigma=sigma),
                 lambda: _tiny(smooth_sigma=sigma), lambda: KNNDetector(input_size=S, pretrained=False,
                                                                         smooth_sigma=sigma),
                 lambda: gaussian_smooth(torch.zeros(1, 1, 8, 8), sigma)):
        with pytest.raises(exc) as ei:
            call()
        _one_line(ei, "sigma must be a finite number >= 0")


def test_predict_batch_size_must_be_positive(model, knn):
    for det in (model, knn):
        for bad in (0, -2, 1.5):
            with pytest.raises(ValueError) as ei:
                det.predict(torch.randn(2, 3, S, S), batch_size=bad)
            _one_line(ei, "batch_size must be None or a positive int")


def test_predict_never_returns_nan(model):
    broken = _tiny()
    with torch.no_grad():
        broken.flows[2].norm.weight.fill_(float("nan"))
    with pytest.raises(RuntimeError) as ei:
        broken.predict(torch.randn(3, 3, S, S), batch_size=2)  # all chunks scored, then one check
    _one_line(ei, "non-finite anomaly_map for 3 image(s) (first: image 0)")
    # repaired weights predict finite maps again
    with torch.no_grad():
        broken.flows[2].norm.weight.copy_(model.flows[2].norm.weight)
    assert torch.isfinite(broken.predict(torch.randn(3, 3, S, S))["score"]).all()


# ----------------------------------------------------------------------------- constructor
@pytest.mark.parametrize("kwargs,needle", [
    (dict(preset="huge"), "preset must be one of ['lite', 'paper'], got 'huge'"),
    (dict(preset=["lite"]), "preset must be one of"),
    (dict(input_size=100), "input_size must be an int >= 32 and a multiple of 16, got 100"),
    (dict(input_size=16), "input_size must be an int >= 32"),
    (dict(input_size=256.0), "input_size must be an int"),
    (dict(input_size=True), "input_size must be an int"),
    (dict(depth=True), "depth must be a positive int, got True"),
    (dict(num_heads=0), "num_heads must be a positive int, got 0"),
    (dict(clamp=float("nan")), "clamp must be a finite number > 0, got nan"),
    (dict(clamp=0), "clamp must be a finite number > 0"),
    (dict(backend="cuda"), "backend must be one of ('auto', 'torch', 'triton', 'cpp'), got 'cuda'"),
    (dict(dtype="int8"), "dtype must be one of"),
    (dict(dtype=torch.float64), "dtype must be one of"),
    (dict(score_scales=1), "score_scales must be distinct scale indices from (0, 1, 2), got 1"),
    (dict(score_scales=[1, 1]), "score_scales must be distinct"),
    (dict(score_scales=[3]), "score_scales must be distinct"),
])
def test_bad_constructor_arguments(kwargs, needle):
    args = dict(preset="lite", input_size=S, pretrained=False, depth=1, flow_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError) as ei:
        DADF(**args)
    _one_line(ei, needle)


def test_set_backend_rejects_unknown_names(model):
    with pytest.raises(ValueError) as ei:
        _tiny().set_backend("fast")
    _one_line(ei, "backend must be one of")


# ----------------------------------------------------------------------------- checkpoints
def _payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("where", ["flows.1.norm.weight", "reconstructor.memory", "backbone.body.conv_stem.weight"])
def test_checkpoint_with_nan_or_inf_weights_is_refused(ckpt, tmp_path, where):
    p = _payload(ckpt)
    key = next(k for k in p["state_dict"] if k.startswith(where))
    p["state_dict"][key] = p["state_dict"][key].clone().view(-1).index_fill_(0, torch.tensor([0]), float("inf")) \
        .view_as(p["state_dict"][key])
    bad = tmp_path / "nan.pt"
    torch.save(p, bad)
    for load in (DADF.load, load_detector):
        with pytest.raises(ValueError) as ei:
            load(bad)
        _one_line(ei, str(bad), repr(key), "NaN or Inf")
    # the same weights handed to load_state_dict directly
    with pytest.raises(ValueError) as ei:
        _tiny().load_state_dict(p["state_dict"])
    _one_line(ei, repr(key))


def test_knn_checkpoint_with_nan_memory_is_refused(knn, tmp_path):
    path = tmp_path / "knn.pt"
    knn.save(path)
    p = _payload(path)
    p["memory"][3, 5] = float("nan")
    torch.save(p, path)
    for load in (KNNDetector.load, load_detector):
        with pytest.raises(ValueError) as ei:
            load(path)
        _one_line(ei, str(path), "'memory' holds NaN or Inf")


def test_checkpoint_whose_weights_are_of_another_backbone(ckpt, tmp_path):
    p = _payload(ckpt)
    other = _tiny(backbone="resnet18")
    p["state_dict"] = other.state_dict()
    path = tmp_path / "mixed.pt"
    torch.save(p, path)
    with pytest.raises(ValueError) as ei:
        DADF.load(path)
    msg = _one_line(ei, str(path), "do not fit its own config", "backbone='efficientnet_lite0'",
                    "the backbone weights are not those of 'efficientnet_lite0'")
    assert len(msg) < 600
    # the lite checkpoint loaded into a resnet18 model: one line too, not torch's listing
    with pytest.raises(ValueError) as ei:
        other.load_state_dict(_payload(ckpt)["state_dict"])
    _one_line(ei, "backbone='resnet18'", "not those of 'resnet18'")


def test_checkpoint_of_another_backbone_builds_that_model(tmp_path):
    m = _tiny(backbone="resnet18")
    m.save(tmp_path / "r18.pt")
    loaded = load_detector(tmp_path / "r18.pt", backend="torch")
    assert loaded.config["backbone"] == "resnet18" and loaded.backbone.channels == (64, 128, 256)
    x = torch.randn(1, 3, S, S)
    assert torch.equal(loaded.predict(x)["score"], m.predict(x)["score"])


def test_checkpoint_with_an_invalid_config(ckpt, tmp_path):
    cases = {
        "unknown": ({"flux_capacitor": 1}, "unknown config entries ['flux_capacitor']"),
        "preset": ({"preset": "huge"}, "has an invalid config: preset must be one of"),
        "size": ({"input_size": 100}, "has an invalid config: input_size must be"),
    }
    for name, (change, needle) in cases.items():
        p = _payload(ckpt)
        p["config"].update(change)
        path = tmp_path / f"{name}.pt"
        torch.save(p, path)
        with pytest.raises(ValueError) as ei:
            load_detector(path)
        _one_line(ei, str(path), needle)


def _damaged_files(ckpt, folder):
    """name -> (path, expected exception type, text the one-line message must hold)."""
    data = ckpt.read_bytes()
    files = {}

    def put(name, content):
        p = folder / name
        p.write_bytes(content)
        return p

    files["zero"] = (put("zero.pt", b""), ValueError, "is empty (0 bytes)")
    files["truncated"] = (put("trunc.pt", data[: len(data) // 2]), ValueError, "is truncated")
    files["tail-cut"] = (put("tail.pt", data[:-10]), ValueError, "is truncated")
    files["text"] = (put("notes.txt", b"hello, I am not a checkpoint"), ValueError, "is not a dadf-fast checkpoint")
    zpath = folder / "plain.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("readme.txt", "a zip archive, not a torch file")
    files["zip"] = (zpath, ValueError, "is corrupt or not a torch checkpoint")
    torch.save({"weights": torch.zeros(3)}, folder / "foreign.pt")
    files["foreign"] = (folder / "foreign.pt", ValueError, "it has no 'format' entry")
    files["dir"] = (folder, IsADirectoryError, "is a directory, not a checkpoint file")
    files["missing"] = (folder / "nope.pt", FileNotFoundError, "checkpoint not found")
    return files


def test_damaged_and_foreign_checkpoint_files(ckpt, tmp_path):
    for name, (path, exc, needle) in _damaged_files(ckpt, tmp_path).items():
        for load in (DADF.load, KNNDetector.load, load_detector):
            with pytest.raises(exc) as ei:
                load(path)
            msg = _one_line(ei, repr(str(path)), needle)
            assert "weights_only" not in msg, (name, msg)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_untrusted_pickle_never_suggests_unpickling(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dadf-fast", "version": 1, "payload": _Evil()}, path)
    for load in (DADF.load, load_detector):
        with pytest.raises(ValueError) as ei:
            load(path)
        msg = _one_line(ei, str(path), "is not a dadf-fast checkpoint", "never unpickles")
        assert "weights_only" not in msg and "trust the source" not in msg
        assert "weights_only" not in str(ei.value.__cause__ or "")
    assert "must never run" not in capsys.readouterr().out


def test_knn_and_dadf_checkpoints_are_told_apart(ckpt, knn, tmp_path):
    kpath = tmp_path / "knn.pt"
    knn.save(kpath)
    assert isinstance(load_detector(kpath), KNNDetector)
    assert isinstance(load_detector(ckpt), DADF)
    with pytest.raises(ValueError) as ei:
        KNNDetector.load(ckpt)
    _one_line(ei, "is a DADF checkpoint, not a kNN one")
    with pytest.raises(ValueError) as ei:
        DADF.load(kpath)
    _one_line(ei, "its format is 'dadf-fast-knn'", "load_detector")


def test_cli_reports_a_damaged_checkpoint_in_one_line(ckpt, tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (S, S), (120, 80, 40)).save(img)
    p = _payload(ckpt)
    p["state_dict"]["flows.2.norm.bias"] = torch.full_like(p["state_dict"]["flows.2.norm.bias"], float("nan"))
    torch.save(p, tmp_path / "nan.pt")
    (tmp_path / "trunc.pt").write_bytes(ckpt.read_bytes()[:1000])
    for name, needle in (("nan.pt", "'flows.2.norm.bias' holds NaN or Inf"), ("trunc.pt", "is truncated")):
        rc = main(["predict", "--checkpoint", str(tmp_path / name), str(img), "--out", str(tmp_path / "pred")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert len(err) == 1 and err[0].startswith("dadf-fast predict: error: checkpoint") and needle in err[0], err
