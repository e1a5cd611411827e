"""The PatchCore-style kNN baseline: fit, exact nearest-neighbour scores, coreset, save/load,
checkpoint dispatch and the CLI, on a tiny synthetic dataset."""
import pytest
import torch
import torch.nn.functional as F

from dadf_fast import DADF
from dadf_fast.models.knn import KNNDetector, greedy_coreset, load_detector, nearest_distances
from dadf_fast.cli.commands import main
from dadf_fast.data import MVTecAD
from dadf_fast.engine.evaluation import evaluate
from dadf_fast.data.synthetic import make_dataset

S = 64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec_knn")
    make_dataset(root, categories=["brick"], n_train=6, n_test_good=3, n_test_defect=3, image_size=S, seed=0)
    return str(root)


@pytest.fixture(scope="module")
def fitted(tiny_root):
    train = MVTecAD(tiny_root, "brick", "train", image_size=S)
    model = KNNDetector(input_size=S)
    res = model.fit(train, progress=False, log=lambda *a: None)
    return model, res


@pytest.fixture(scope="module")
def test_images(tiny_root):
    test = MVTecAD(tiny_root, "brick", "test", image_size=S)
    return torch.stack([test[i]["image"] for i in range(len(test))])


def test_fit_shapes_and_scores(fitted, test_images, tiny_root):
    model, res = fitted
    g = S // 8
    assert res["memory_size"] == res["n_patches"] == 6 * g * g
    assert model.memory.shape == (6 * g * g, 40 + 112)
    out = model.predict(test_images)
    assert out["anomaly_map"].shape == (len(test_images), 1, S, S)
    assert out["score"].shape == (len(test_images),)
    assert torch.allclose(out["score"], out["anomaly_map"].flatten(1).amax(1))
    # batched prediction is the same computation
    out2 = model.predict(test_images, batch_size=4)
    assert torch.allclose(out2["score"], out["score"], rtol=1e-5, atol=1e-5)
    # the harness' evaluation path works on it and separates the obvious synthetic defects
    res_eval = evaluate(model, MVTecAD(tiny_root, "brick", "test", image_size=S))
    assert 0.0 <= res_eval["pixel_auroc"] <= 1.0 and res_eval["image_auroc"] >= 0.5


def test_scores_are_nearest_neighbour_distances(fitted, test_images):
    model, _ = fitted
    emb = model.embed(test_images[:2])                   # [2, D, g, g]
    dist = model.patch_scores(test_images[:2])          # [2, g, g]
    mem = model.memory.double()
    for b, y, x in [(0, 0, 0), (0, 3, 5), (1, 7, 7), (1, 2, 1)]:
        v = emb[b, :, y, x].double()
        brute = ((mem - v) ** 2).sum(1).sqrt().min()
        assert abs(float(dist[b, y, x]) - float(brute)) <= 1e-3 * max(1.0, float(brute))
    # a training patch is its own nearest neighbour
    assert float(nearest_distances(model.memory[:50], model.memory).max()) == 0.0
    # blocked cdist == one-shot cdist
    q = torch.randn(300, 16)
    m = torch.randn(1000, 16)
    ref = torch.cdist(q, m).amin(1)
    assert torch.allclose(nearest_distances(q, m, max_elements=1000), ref, atol=1e-5)
    # without smoothing the map is the bilinearly upsampled patch-distance grid
    raw = model.predict(test_images[:2], smooth_sigma=0)["anomaly_map"]
    up = F.interpolate(dist[:, None], size=(S, S), mode="bilinear", align_corners=False)
    assert torch.allclose(raw, up, rtol=1e-5, atol=1e-5)


def test_coreset_size_and_determinism(tiny_root, fitted):
    full, _ = fitted
    train = MVTecAD(tiny_root, "brick", "train", image_size=S)
    a = KNNDetector(input_size=S, coreset_ratio=0.25, seed=3)
    a.fit(train, progress=False, log=lambda *a: None)
    n = 6 * (S // 8) ** 2
    k = round(0.25 * n)
    assert a.memory.shape[0] == k
    # the same selection again (seeded), a subset of the full bank without repeats
    idx = greedy_coreset(full.memory, k, seed=3)
    assert torch.equal(a.memory, full.memory[idx])
    assert len(set(idx.tolist())) == k
    assert float(nearest_distances(a.memory, full.memory).max()) == 0.0
    assert not torch.equal(idx, greedy_coreset(full.memory, k, seed=4))
    # the greedy selection itself: deterministic per seed, farthest-point on simple data
    x = torch.randn(200, 300, generator=torch.Generator().manual_seed(0))
    i1, i2 = greedy_coreset(x, 20, seed=1), greedy_coreset(x, 20, seed=1)
    assert torch.equal(i1, i2) and len(set(i1.tolist())) == 20
    line = torch.arange(10.0)[:, None]
    assert set(greedy_coreset(line, 2, seed=0).tolist()) & {0, 9}
    with pytest.raises(ValueError):
        KNNDetector(input_size=S, coreset_ratio=0.0)


def test_save_load_and_dispatch(fitted, test_images, tmp_path):
    model, _ = fitted
    path = tmp_path / "knn.pt"
    model.save(path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "dadf-fast-knn" and payload["version"] == 1
    assert torch.equal(payload["memory"], model.memory)
    loaded = KNNDetector.load(path)
    assert loaded.config == model.config
    a, b = model.predict(test_images), loaded.predict(test_images)
    assert torch.equal(a["anomaly_map"], b["anomaly_map"]) and torch.equal(a["score"], b["score"])
    assert isinstance(load_detector(path), KNNDetector)
    # a DADF checkpoint opens as DADF
    dadf = DADF("lite", input_size=S, depth=1, flow_steps=2, backend="torch", pretrained=False)
    dadf.save(tmp_path / "dadf.pt")
    assert isinstance(load_detector(tmp_path / "dadf.pt"), DADF)
    # foreign and corrupt files: clear errors
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    for bad in ("foreign.pt", "corrupt.pt"):
        with pytest.raises(ValueError):
            load_detector(tmp_path / bad)
        with pytest.raises(ValueError):
            KNNDetector.load(tmp_path / bad)
    with pytest.raises(ValueError):
        KNNDetector.load(tmp_path / "dadf.pt")
    with pytest.raises(FileNotFoundError):
        load_detector(tmp_path / "missing.pt")
    with pytest.raises(RuntimeError):
        KNNDetector(input_size=S).predict(test_images[:1])


def test_cli_train_knn_then_test(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--method", "knn", "--data", tiny_root, "--category", "brick", "--out", str(out),
               "--input-size", str(S), "--quiet"])
    assert rc == 0
    assert (out / "model.pt").is_file()
    assert isinstance(load_detector(out / "model.pt"), KNNDetector)
    rc = main(["test", "--checkpoint", str(out / "model.pt"), "--data", tiny_root, "--category", "brick"])
    assert rc == 0
    assert "image_auroc" in capsys.readouterr().out


def test_fit_out_dir_is_checked_before_work_and_never_clobbered(tiny_root, tmp_path):
    from dadf_fast.utils.io import OutputPathError

    train = MVTecAD(tiny_root, "brick", "train", image_size=S)
    out = tmp_path / "knn"
    KNNDetector(input_size=S).fit(train, progress=False, log=None, out_dir=str(out))
    first = (out / "model.pt").read_bytes()
    # a second run on the same folder is refused before any feature is computed ...
    with pytest.raises(OutputPathError, match="already holds files"):
        KNNDetector(input_size=S, coreset_ratio=0.5).fit(train, progress=False, log=None, out_dir=str(out))
    assert (out / "model.pt").read_bytes() == first
    # ... unless the caller says overwrite
    KNNDetector(input_size=S, coreset_ratio=0.5).fit(train, progress=False, log=None, out_dir=str(out),
                                                    overwrite=True)
    assert (out / "model.pt").read_bytes() != first
    # an out_dir naming a file is refused, the file kept
    f = tmp_path / "file.txt"
    f.write_text("mine")
    with pytest.raises(OutputPathError, match="existing file"):
        KNNDetector(input_size=S).fit(train, progress=False, log=None, out_dir=str(f))
    assert f.read_text() == "mine"
