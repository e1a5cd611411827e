"""The wider synthetic harness (issue 17): the extra defect types, the category registry
(photos at two crop scales, procedural textures, aligned objects) and the promise that
datasets written before it existed are reproduced unchanged."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from dadf_fast.data import MVTecAD
from dadf_fast.data import defects as D
from dadf_fast.data import harness as H
from dadf_fast.data import procedural as P
from dadf_fast.data import synthetic as syn

SIZE = 96


def _clean(category: str, seed: int, size: int = SIZE):
    """A clean test sample of a harness category and its silhouette (None for non-objects)."""
    rng = np.random.default_rng(seed)
    render = H.renderer(category)
    if render is not None:
        img, where, _ = render(rng, size)
        return img, where, rng
    name, scale = H.parse_scale(category)
    src = syn.load_source(name)
    _, test_box = syn.split_regions(src.shape)
    img, _ = syn._random_crop(src, test_box, int(round(syn._crop_side(test_box) * scale)), rng, size)
    return img, None, rng


# ----------------------------------------------------------------------------- defects

@pytest.mark.parametrize("defect", D.EXTRA_DEFECT_TYPES)
@pytest.mark.parametrize("category", ["coins", "fabric", "pill"])
def test_extra_defects_have_exact_masks(defect, category):
    area = SIZE * SIZE
    lo = D.MIN_AREA_FRAC * area / (3 if defect == "contamination" else 1)
    for seed in range(3):
        clean, where, rng = _clean(category, seed)
        bad, mask = D.make_defect(clean, defect, rng, where=where)
        assert bad.shape == clean.shape and bad.dtype == np.uint8 and mask.dtype == bool
        diff = D.change_map(clean, bad)
        assert (diff[~mask] == 0).all()                        # nothing outside the mask changes
        assert lo <= mask.sum() <= D.MAX_AREA_FRAC * area
        if defect in D.MIN_CONTRAST_BY_TYPE:
            assert diff[mask].min() >= D.MIN_CONTRAST_BY_TYPE[defect]
        else:                                                  # blur / missing / crack
            assert diff[mask].mean() >= D.MIN_MEAN_CHANGE
        if defect == "colour":                                 # subtle: 12 at least, 28 at most
            assert diff[mask].max() <= 28


def test_per_type_contrast_table():
    assert D.MIN_CONTRAST_BY_TYPE["colour"] == 12 and D.MIN_CONTRAST_BY_TYPE["contamination"] == 30
    assert all(D.MIN_CONTRAST_BY_TYPE[t] == D.MIN_CONTRAST == 40 for t in D.DEFECT_TYPES)
    assert D.ALL_DEFECT_TYPES == D.DEFECT_TYPES + D.EXTRA_DEFECT_TYPES
    assert syn.DEFECT_TYPES == ("scratch", "patch", "spot") and len(syn.ALL_DEFECT_TYPES) == 8


def test_crack_shifts_texture_and_blur_smooths_it():
    clean, _, rng = _clean("fabric", 0, 128)
    bad, mask = D.make_defect(clean, "crack", rng)
    # the mask is the changed band dilated by one pixel: thin, and most of it really changed
    assert 0.5 < (D.change_map(clean, bad)[mask] >= 3).mean() < 1
    clean, _, rng = _clean("fabric", 1, 128)
    bad, mask = D.make_defect(clean, "blur", rng)
    # a blurred region has less local contrast than the same region before
    grad = lambda a: np.abs(np.diff(a.astype(float).mean(-1), axis=1))[mask[:, 1:]].mean()  # noqa: E731
    assert grad(bad) < 0.7 * grad(clean)


def test_defects_prefer_the_object():
    on = 0
    for seed in range(12):
        clean, where, rng = _clean("screw", seed)
        for defect in ("spot", "contamination", "colour"):
            _, mask = D.make_defect(clean, defect, rng, where=where)
            on += (mask & where).sum() > 0.3 * mask.sum()
    assert where.mean() < 0.2 and on >= 0.75 * 36     # a small object, yet most defects hit it


def test_flat_images_and_bad_arguments_are_refused():
    flat = np.full((64, 64, 3), 120, np.uint8)
    for defect in ("blur", "missing"):        # invisible on a flat surface: refused, not faked
        with pytest.raises(ValueError, match="too little detail"):
            D.make_defect(flat, defect, np.random.default_rng(0))
    bad, mask = D.make_defect(flat, "crack", np.random.default_rng(0))   # its dark gap still shows
    assert D.change_map(flat, bad)[mask].mean() >= D.MIN_MEAN_CHANGE and (bad[~mask] == 120).all()
    with pytest.raises(ValueError, match="where"):
        D.make_defect(flat, "colour", np.random.default_rng(0), where=np.ones((8, 8), bool))
    with pytest.raises(ValueError, match="clean"):
        D.make_defect(flat.astype(np.float32), "colour", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect"):
        D.make_defect(flat, "dent", np.random.default_rng(0))


# ----------------------------------------------------------------------------- registry

def test_registry_dev_and_validation_are_disjoint_and_mixed():
    dev, val = H.HARNESS_DEV, H.HARNESS_VALIDATION
    assert 8 <= len(dev) <= 12 and 5 <= len(val) <= 8
    assert H.harness_categories() == list(dev + val)
    dev_src = {H.category_source(c) for c in dev}
    val_src = {H.category_source(c) for c in val}
    assert not dev_src & val_src
    assert not val_src & set(syn.DEMO_CATEGORIES + syn.PATCH_SOURCES)
    assert not dev_src & set(syn.DEMO_CATEGORIES + syn.PATCH_SOURCES)
    for group in (dev, val):
        kinds = [H.category_kind(c) for c in group]
        assert {"photo", "texture", "object"} <= set(kinds)
    assert any(H.parse_scale(c)[1] < 1 for c in dev)          # two crop scales of one photo
    assert all(H.harness_defects(c) == D.ALL_DEFECT_TYPES for c in H.harness_categories())


def test_parse_scale():
    assert H.parse_scale("moon@0.5") == ("moon", 0.5) and H.parse_scale("moon") == ("moon", 1.0)
    for bad in ("moon@0", "moon@1.5"):
        with pytest.raises(ValueError, match="crop scale"):
            H.parse_scale(bad)
    with pytest.raises(ValueError, match="category"):
        H.harness_defects("")


def _pixels(root, category):
    cat = root / category
    return {p.relative_to(cat).as_posix(): np.asarray(Image.open(p)) for p in sorted(cat.rglob("*.png"))}


@pytest.mark.parametrize("category", H.harness_categories())
def test_every_category_generates_all_defects_deterministically(tmp_path, category):
    kw = dict(categories=[category], n_train=2, n_test_good=1, n_test_defect=8, image_size=64,
              defects=syn.ALL_DEFECT_TYPES)
    a = _pixels(syn.make_dataset(tmp_path / "a", seed=1, **kw), category)
    b = _pixels(syn.make_dataset(tmp_path / "b", seed=1, **kw), category)
    c = _pixels(syn.make_dataset(tmp_path / "c", seed=2, **kw), category)
    assert a.keys() == b.keys() and len(a) == 2 + 1 + 8 + 8
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train/good/000.png"], c["train/good/000.png"])
    for d in syn.ALL_DEFECT_TYPES:
        m = a[f"ground_truth/{d}/000_mask.png"]
        assert set(np.unique(m)) == {0, 255} and (m > 0).mean() >= D.MIN_AREA_FRAC / 3
    assert len(MVTecAD(tmp_path / "a", category, "test", image_size=64)) == 9


def test_scaled_photo_crops_are_smaller_and_stay_in_their_regions(tmp_path):
    kw = dict(n_train=3, n_test_good=2, n_test_defect=0, image_size=32, seed=0)
    syn.make_dataset(tmp_path, categories=["coins", "coins@0.5"], **kw)
    full = json.loads((tmp_path / "coins" / "SYNTHETIC.json").read_text())
    half = json.loads((tmp_path / "coins@0.5" / "SYNTHETIC.json").read_text())
    assert half["source"] == "coins" and half["scale"] == 0.5 and "scale" not in full
    base = min(full["test_region"][2] - full["test_region"][0], full["test_region"][3] - full["test_region"][1])
    for name, (top, left, bottom, right) in half["crops"].items():
        assert bottom - top == right - left and 0.85 * base / 2 - 1 <= bottom - top <= base / 2 + 1
        reg = half["train_region"] if name.startswith("train") else half["test_region"]
        assert reg[0] <= top and reg[1] <= left and bottom <= reg[2] and right <= reg[3]
    with pytest.raises(ValueError, match="crop scale"):
        syn.make_dataset(tmp_path / "x", categories=["coins@2"], **kw)
    with pytest.raises(ValueError, match="too small"):
        syn.make_dataset(tmp_path / "x", categories=["coins@0.05"], **kw)


# ----------------------------------------------------------------------------- aligned objects

OBJECTS = [c for c in H.harness_categories() if H.category_kind(c) == "object"]


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("category", OBJECTS)
def test_aligned_objects_move_by_at_most_the_jitter(category, monkeypatch):
    render = H.renderer(category)
    size = 96
    poses = [P.random_pose(np.random.default_rng(s)) for s in range(10)]
    centres = []
    for pose in poses:
        assert abs(pose["dx"]) <= P.MAX_SHIFT and abs(pose["dy"]) <= P.MAX_SHIFT
        assert abs(pose["angle"]) <= P.MAX_ANGLE and abs(pose["gain"] - 1) <= P.MAX_GAIN
        monkeypatch.setattr(P, "random_pose", lambda rng, pose=pose: pose)
        img, where, info = render(np.random.default_rng(0), size)
        assert info == pose and img.shape == (size, size, 3) and 0.05 < where.mean() < 0.9
        centres.append(_centroid(where))
    monkeypatch.setattr(P, "random_pose", lambda rng: {"dx": 0.0, "dy": 0.0, "angle": 0.0, "gain": 1.0})
    c0 = _centroid(render(np.random.default_rng(0), size)[1])
    for pose, c in zip(poses, centres):
        # the silhouette's centre follows the shift (rotation about the object's centre adds < 1 px)
        assert np.abs(c - c0 - size * np.array([pose["dx"], pose["dy"]])).max() <= 1.5
    spread = np.ptp(np.array(centres), axis=0)
    assert (spread <= 2 * P.MAX_SHIFT * size + 1.5).all() and spread.max() > 1   # jittered, but little


def test_object_metadata(tmp_path):
    syn.make_dataset(tmp_path, categories=["pill"], n_train=2, n_test_good=1, n_test_defect=2,
                     image_size=48, defects=["crack", "colour"])
    meta = json.loads((tmp_path / "pill" / "SYNTHETIC.json").read_text())
    assert meta["source"] == "procedural:pill" and meta["kind"] == "object"
    assert meta["jitter"] == {"shift": P.MAX_SHIFT, "angle": P.MAX_ANGLE, "gain": P.MAX_GAIN}
    assert sorted(meta["samples"]) == ["test/colour/000.png", "test/crack/000.png", "test/good/000.png",
                                       "train/good/000.png", "train/good/001.png"]
    assert set(meta["samples"]["train/good/000.png"]) == {"dx", "dy", "angle", "gain"}


# ----------------------------------------------------------------------------- old outputs

def test_old_defaults_are_reproduced(tmp_path):
    kw = dict(categories=["brick", "coins"], n_train=2, n_test_good=1, n_test_defect=3, image_size=64, seed=0)
    root = syn.make_dataset(tmp_path / "default", **kw)
    explicit = syn.make_dataset(tmp_path / "explicit", defects=syn.DEFECT_TYPES, **kw)
    digest = hashlib.sha256()
    for cat in ("brick", "coins"):
        a, b = _pixels(root, cat), _pixels(explicit, cat)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for p in sorted(root.rglob("*.png")):
        digest.update(p.relative_to(root).as_posix().encode())
        digest.update(np.asarray(Image.open(p)).tobytes())
    # the decoded pixels of this dataset as written by the generator before issue 17 (its code
    # run on the same inputs); a change here changes the demo and every recorded number
    assert digest.hexdigest() == "2efae5a6b91f90d486bef3c040730d2df9333217f51b8522e6de1a97027f668e"


def test_make_dataset_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="defects"):
        syn.make_dataset(tmp_path, categories=["brick"], defects=["dent"])
    with pytest.raises(ValueError, match="defects"):
        syn.make_dataset(tmp_path, categories=["brick"], defects="crack")
    with pytest.raises(ValueError, match="image_size"):
        syn.make_dataset(tmp_path, categories=["brick"], image_size=8)
    with pytest.raises(ValueError, match="categories"):
        syn.make_dataset(tmp_path, categories="brick")
