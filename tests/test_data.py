"""Datasets (dadf_fast.data) and the synthetic dataset generator (dadf_fast.data.synthetic).

Tiny layouts of 32x32 images are written into tmp_path with PIL.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dadf_fast import data as D
from dadf_fast.data import synthetic as syn

MEAN = np.array(D.IMAGENET_MEAN)
STD = np.array(D.IMAGENET_STD)


# ----------------------------------------------------------------------------- helpers

def _save(path: Path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr), mode=mode).save(path)
    return path


def _const(rgb, size=32):
    return np.broadcast_to(np.array(rgb, np.uint8), (size, size, len(rgb))).copy()


def _block_mask(value=255, size=32):
    m = np.zeros((size, size), np.uint8)
    m[8:16, 8:16] = value
    return m


def _expected_normalised(rgb):
    return (np.array(rgb[:3]) / 255.0 - MEAN) / STD


@pytest.fixture
def mvtec(tmp_path):
    """<root>/widget with RGB, grayscale and RGBA training images and a 'crack' defect."""
    cat = tmp_path / "mvtec" / "widget"
    _save(cat / "train/good/000.png", _const((200, 100, 50)))
    _save(cat / "train/good/001.png", np.full((32, 32), 77, np.uint8))           # grayscale L
    _save(cat / "train/good/002.png", _const((10, 20, 30, 0)), mode="RGBA")       # RGBA
    _save(cat / "test/good/000.png", _const((1, 2, 3)))
    _save(cat / "test/good/001.jpg", _const((4, 5, 6)))
    _save(cat / "test/crack/000.png", _const((7, 8, 9)))
    _save(cat / "test/crack/001.png", _const((9, 8, 7)))
    _save(cat / "ground_truth/crack/000_mask.png", _block_mask(255))
    _save(cat / "ground_truth/crack/001_mask.png", _block_mask(1))               # nonzero != 255
    (tmp_path / "mvtec" / "gadget" / "train" / "good").mkdir(parents=True)   # empty train set
    return tmp_path / "mvtec"


@pytest.fixture
def loco(tmp_path):
    cat = tmp_path / "loco" / "box"
    for split in ("train", "validation"):
        for i in range(2):
            _save(cat / f"{split}/good/{i:03d}.png", _const((50 + i, 60, 70)))
    _save(cat / "test/good/000.png", _const((1, 1, 1)))
    _save(cat / "test/logical_anomalies/000.png", _const((2, 2, 2)))
    _save(cat / "test/structural_anomalies/000.png", _const((3, 3, 3)))
    m0 = np.zeros((32, 32), np.uint8)
    m0[0:8, 0:16] = 255                         # 128 px, logical (pixel value 255)
    m1 = np.zeros((32, 32), np.uint8)
    m1[16:32, 16:32] = 254                      # 256 px, structural (pixel value 254)
    _save(cat / "ground_truth/logical_anomalies/000/000.png", m0)
    _save(cat / "ground_truth/logical_anomalies/000/001.png", m1)
    _save(cat / "ground_truth/structural_anomalies/000/000.png", m1)
    cfg = [
        {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 0.5,
         "relative_saturation": True},
        {"defect_name": "scratch", "pixel_value": 254, "saturation_threshold": 100,
         "relative_saturation": False},
    ]
    (cat / "defects_config.json").write_text(json.dumps(cfg))
    return tmp_path / "loco"


# ----------------------------------------------------------------------------- MVTec AD

def test_mvtec_train_items_and_normalisation(mvtec):
    ds = D.MVTecAD(mvtec, "widget", "train", image_size=32)
    assert len(ds) == 3 and ds.labels == [0, 0, 0]
    items = [ds[i] for i in range(3)]
    for it in items:
        assert it["image"].shape == (3, 32, 32) and it["image"].dtype == torch.float32
        assert it["mask"].shape == (1, 32, 32) and it["mask"].sum() == 0
        assert it["label"] == 0 and it["defect"] == "good"
    for it, rgb in zip(items, [(200, 100, 50), (77, 77, 77), (10, 20, 30)]):
        got = it["image"][:, 5, 7].double().numpy()
        np.testing.assert_allclose(got, _expected_normalised(rgb), atol=1e-5)
    assert items[2]["path"].endswith("002.png")
    # resize keeps a constant image constant; denormalize inverts to the pixels
    small = D.MVTecAD(mvtec, "widget", "train", image_size=(16, 24))[0]
    assert small["image"].shape == (3, 16, 24)
    assert (D.denormalize(small["image"]) == np.array([200, 100, 50], np.uint8)).all()
    assert D.denormalize(small["image"][None]).shape == (1, 16, 24, 3)


def test_mvtec_test_items_masks_labels(mvtec):
    ds = D.MVTecAD(mvtec, "widget", "test", image_size=16)
    assert [Path(p).relative_to(mvtec / "widget/test").as_posix() for p in ds.paths] == \
        ["crack/000.png", "crack/001.png", "good/000.png", "good/001.jpg"]
    assert ds.labels == [1, 1, 0, 0] and ds.skipped == []
    expected = torch.zeros(1, 16, 16)
    expected[:, 4:8, 4:8] = 1
    for i in (0, 1):
        it = ds[i]
        assert it["defect"] == "crack"
        assert set(it["mask"].unique().tolist()) == {0.0, 1.0}  # binary after nearest resize
        assert torch.equal(it["mask"], expected)
    assert ds[2]["mask"].sum() == 0 and ds[3]["defect"] == "good"
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].tolist() == [1, 1, 0, 0]


def test_mvtec_layout_errors(mvtec, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        D.MVTecAD(tmp_path / "nowhere", "widget")
    with pytest.raises(ValueError, match="gadget, widget"):   # lists the categories present
        D.MVTecAD(mvtec, "bottle")
    with pytest.raises(ValueError, match=r"no images.*gadget"):  # empty train set
        D.MVTecAD(mvtec, "gadget", "train")
    with pytest.raises(D.MissingFolderError, match="test"):
        D.MVTecAD(mvtec, "gadget", "test")
    with pytest.raises(ValueError, match="split"):
        D.MVTecAD(mvtec, "widget", "val")

    gt = mvtec / "widget/ground_truth/crack"
    orphan = _save(gt / "005_mask.png", _block_mask())
    with pytest.raises(D.DatasetError, match="005_mask.png"):   # mask without an image
        D.MVTecAD(mvtec, "widget", "test")
    orphan.unlink()
    (gt / "001_mask.png").unlink()
    with pytest.raises(D.DatasetError, match=r"crack[/\\]001.png"):  # image without a mask
        D.MVTecAD(mvtec, "widget", "test")


def test_unreadable_test_image_is_skipped_with_warning(mvtec):
    bad = mvtec / "widget/test/good/002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    trunc = mvtec / "widget/test/good/003.png"
    _save(trunc, _const((5, 5, 5)))
    trunc.write_bytes(trunc.read_bytes()[:-20])   # truncated PNG
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = D.MVTecAD(mvtec, "widget", "test", image_size=16)
    messages = [str(w.message) for w in caught if issubclass(w.category, D.SkippedImageWarning)]
    assert len(messages) == 2 and "002.png" in messages[0] and "003.png" in messages[1]
    assert ds.skipped == [str(bad), str(trunc)]
    assert len(ds) == 4 and str(bad) not in ds.paths
    for i in range(len(ds)):   # everything left loads
        ds[i]


def test_unreadable_train_image_raises_naming_it(mvtec):
    bad = mvtec / "widget/train/good/001.png"
    bad.write_bytes(b"garbage")
    ds = D.MVTecAD(mvtec, "widget", "train", image_size=16)   # construction only lists
    assert len(ds) == 3
    ds[0]
    with pytest.raises(D.ImageReadError, match="001.png"):
        ds[1]
    with pytest.raises(D.ImageReadError, match="001.png"):
        ds.validate()
    # skipping can be asked for explicitly on a train split too
    with pytest.warns(D.SkippedImageWarning):
        assert len(D.MVTecAD(mvtec, "widget", "train", skip_unreadable=True)) == 2


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    cat = tmp_path / "r" / "c"
    (cat / "train/good").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(cat / "train/good/a.png")  # 128*257
    img = D.MVTecAD(tmp_path / "r", "c", image_size=8)[0]["image"]
    np.testing.assert_allclose(img[:, 0, 0].double().numpy(), _expected_normalised((128,) * 3), atol=1e-5)


def test_augment(mvtec):
    cat = mvtec / "widget/train/good"
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[:, :16] = 255
    _save(cat / "000.png", arr)
    ds = D.MVTecAD(mvtec, "widget", "train", image_size=32, augment=D.flip_augment(p=1.0))
    img = D.denormalize(ds[0]["image"])
    assert (img[:, 16:] == 255).all() and (img[:, :16] == 0).all()
    rot = np.asarray(D.flip_augment(hflip=False, rot90=True, p=1.0)(Image.fromarray(arr)))
    assert any(np.array_equal(rot, np.rot90(arr, k)) for k in (1, 2, 3))
    with pytest.raises(ValueError, match="augment"):
        D.MVTecAD(mvtec, "widget", "test", augment=D.flip_augment())


# ----------------------------------------------------------------------------- LOCO

def test_loco_splits_masks_and_config(loco):
    assert len(D.MVTecLOCO(loco, "box", "train")) == 2
    val = D.MVTecLOCO(loco, "box", "validation", image_size=16)
    assert len(val) == 2 and val[0]["masks"].shape == (0, 16, 16)

    ds = D.MVTecLOCO(loco, "box", "test", image_size=16)
    assert [r.defect for r in ds.records] == ["good", "logical_anomalies", "structural_anomalies"]
    assert ds.labels == [0, 1, 1]
    assert [e["defect_name"] for e in ds.defects_config] == ["missing_part", "scratch"]
    it = ds[1]
    assert it["masks"].shape == (2, 16, 16)
    assert it["masks"][0].sum() == 32 and it["masks"][1].sum() == 64     # 128/4, 256/4 px
    assert torch.equal(it["mask"][0], it["masks"].amax(0))               # union
    # relative: 0.5 * region area; absolute: 100 px at 32x32 -> 25 px at 16x16
    torch.testing.assert_close(it["saturation"], torch.tensor([16.0, 25.0]))
    gt = loco / "box/ground_truth/logical_anomalies/000"
    assert ds.defect_entry(gt / "000.png")["defect_name"] == "missing_part"
    assert ds.defect_entry(gt / "001.png")["defect_name"] == "scratch"

    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=D.MVTecLOCO.collate)))
    assert batch["image"].shape == (3, 3, 16, 16) and batch["mask"].shape == (3, 1, 16, 16)
    assert [m.shape[0] for m in batch["masks"]] == [0, 2, 1]
    assert batch["defect"] == ["good", "logical_anomalies", "structural_anomalies"]


def test_loco_errors(loco):
    cat = loco / "box"
    (cat / "defects_config.json").write_text(json.dumps([{"defect_name": "x", "pixel_value": 7,
                                                          "saturation_threshold": 1,
                                                          "relative_saturation": True}]))
    ds = D.MVTecLOCO(loco, "box", "test")
    with pytest.raises(D.DatasetError, match="pixel value 255"):
        ds.defect_entry(cat / "ground_truth/logical_anomalies/000/000.png")
    _save(cat / "ground_truth/structural_anomalies/009/000.png", _block_mask())
    with pytest.raises(D.DatasetError, match=r"structural_anomalies[/\\]009"):
        D.MVTecLOCO(loco, "box", "test")
    (cat / "ground_truth/structural_anomalies/009/000.png").unlink()
    (cat / "ground_truth/structural_anomalies/009").rmdir()
    for f in (cat / "ground_truth/structural_anomalies/000").iterdir():
        f.unlink()
    (cat / "ground_truth/structural_anomalies/000").rmdir()
    with pytest.raises(D.DatasetError, match=r"structural_anomalies[/\\]000.png"):
        D.MVTecLOCO(loco, "box", "test")
    for f in (cat / "validation/good").iterdir():
        f.unlink()
    (cat / "validation/good").rmdir()
    with pytest.raises(D.MissingFolderError, match="validation"):
        D.MVTecLOCO(loco, "box", "validation")


# ----------------------------------------------------------------------------- folders

def test_folder_dataset_labels_rule(tmp_path):
    normal, test, masks = tmp_path / "normal", tmp_path / "test", tmp_path / "masks"
    for i in range(3):
        _save(normal / f"n{i}.bmp", _const((i, i, i)))
    for name in ("a", "b", "c"):
        _save(test / f"{name}.png", _const((9, 9, 9)))
    _save(masks / "a_mask.png", _block_mask())
    _save(masks / "b.png", np.zeros((32, 32), np.uint8))      # all zero -> good

    train = D.FolderDataset(normal_dir=normal, image_size=16)
    assert len(train) == 3 and train[0]["image"].shape == (3, 16, 16)
    ds = D.FolderDataset(test_dir=test, mask_dir=masks, split="test", image_size=16)
    assert ds.labels == [1, 0, 0]
    assert [ds[i]["defect"] for i in range(3)] == ["anomalous", "good", "good"]
    assert ds[0]["mask"].sum() == 16 and ds[1]["mask"].sum() == 0
    unlabelled = D.FolderDataset(test_dir=test, split="test", image_size=16)
    assert unlabelled.labels == [-1, -1, -1] and unlabelled[0]["defect"] == "unknown"

    _save(masks / "zzz_mask.png", _block_mask())
    with pytest.raises(D.DatasetError, match="zzz_mask.png"):
        D.FolderDataset(test_dir=test, mask_dir=masks, split="test")
    with pytest.raises(D.MissingFolderError, match="missing_masks"):
        D.FolderDataset(test_dir=test, mask_dir=tmp_path / "missing_masks", split="test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DatasetError, match="empty"):
        D.FolderDataset(normal_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="normal_dir"):
        D.FolderDataset(test_dir=test)


# ----------------------------------------------------------------------------- synthetic

def test_available_sources_include_demo():
    names = syn.available_sources()
    assert set(syn.DEMO_CATEGORIES) <= set(names)
    assert syn.load_source("brick").shape == (512, 512, 3)   # grayscale source -> RGB
    with pytest.raises(ValueError, match="offline sources"):
        syn.load_source("no_such_picture")


@pytest.mark.parametrize("defect", syn.DEFECT_TYPES)
def test_defect_masks_are_exact(defect):
    src = syn.load_source("gravel")
    train_box, test_box = syn.split_regions(src.shape)
    foreign = syn.load_source("coffee")
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clean, bad, mask, box = syn.make_sample(src, test_box, rng, 128, defect=defect, foreign=foreign)
        assert clean.shape == bad.shape == (128, 128, 3) and mask.dtype == bool
        diff = np.abs(bad.astype(int) - clean.astype(int)).max(-1)
        assert (diff[~mask] == 0).all()                       # nothing outside the mask changes
        assert diff[mask].min() >= syn.MIN_CONTRAST           # every masked pixel changes visibly
        assert mask.mean() >= syn.MIN_AREA_FRAC
        top, left, bottom, right = box
        assert test_box[0] <= top and test_box[1] <= left and bottom <= test_box[2] and right <= test_box[3]


def test_make_dataset_layout_determinism_and_regions(tmp_path):
    kw = dict(categories=["brick"], n_train=4, n_test_good=2, n_test_defect=4, image_size=64)
    root = syn.make_dataset(tmp_path / "a", seed=3, **kw)
    cat = root / "brick"
    files = sorted(p.relative_to(cat).as_posix() for p in cat.rglob("*.png"))
    assert files == sorted(
        [f"train/good/{i:03d}.png" for i in range(4)] + ["test/good/000.png", "test/good/001.png"]
        + ["test/scratch/000.png", "test/scratch/001.png", "test/patch/000.png", "test/spot/000.png"]
        + ["ground_truth/scratch/000_mask.png", "ground_truth/scratch/001_mask.png",
           "ground_truth/patch/000_mask.png", "ground_truth/spot/000_mask.png"])
    img = Image.open(cat / "train/good/000.png")
    assert img.size == (64, 64) and img.mode == "RGB"

    # same seed -> identical pixels; another seed -> different ones; regenerating in place works
    again = syn.make_dataset(tmp_path / "b", seed=3, **kw)
    other = syn.make_dataset(tmp_path / "c", seed=4, **kw)
    syn.make_dataset(tmp_path / "a", seed=3, **kw)
    for f in files:
        a = np.asarray(Image.open(cat / f))
        assert np.array_equal(a, np.asarray(Image.open(again / "brick" / f)))
    assert not np.array_equal(np.asarray(Image.open(cat / files[-1])),
                              np.asarray(Image.open(other / "brick" / files[-1])))

    # train and test crops come from disjoint regions
    meta = json.loads((cat / "SYNTHETIC.json").read_text())
    tr, te = meta["train_region"], meta["test_region"]
    assert tr[3] <= te[1] or tr[2] <= te[0]
    for name, (top, left, bottom, right) in meta["crops"].items():
        reg = tr if name.startswith("train") else te
        assert reg[0] <= top < bottom <= reg[2] and reg[1] <= left < right <= reg[3], name

    # it is a valid MVTec AD dataset: defect masks non-empty, good masks empty
    ds = D.MVTecAD(root, "brick", "test", image_size=64)
    assert ds.labels == [0, 0, 1, 1, 1, 1]
    for i in range(len(ds)):
        it = ds[i]
        assert (it["mask"].sum() > 0) == (it["label"] == 1)

    (tmp_path / "user" / "brick").mkdir(parents=True)   # never overwrite foreign folders
    with pytest.raises(FileExistsError):
        syn.make_dataset(tmp_path / "user", **kw)


def test_make_dataset_validation_images_come_from_a_third_disjoint_region(tmp_path):
    kw = dict(categories=["brick", "fabric"], n_train=3, n_test_good=2, n_test_defect=2, image_size=64,
              defects=["spot"], seed=5)
    plain = syn.make_dataset(tmp_path / "plain", **kw)
    root = syn.make_dataset(tmp_path / "val", n_val=3, **kw)
    assert not (plain / "brick" / "val").exists()
    for cat in ("brick", "fabric"):
        assert sorted(p.name for p in (root / cat / "val" / "good").glob("*.png")) == ["000.png", "001.png", "002.png"]
    meta = json.loads((root / "brick" / "SYNTHETIC.json").read_text())
    tr, va, te = meta["train_region"], meta["val_region"], meta["test_region"]
    src = syn.load_source("brick")
    # brick is 512 x 512: train region 512 rows x 307 columns (60 %), test 205 columns; the
    # validation band takes the train region's last 205 rows (one crop side)
    assert te == [0, 307, 512, 512] and tr == [0, 0, 307, 307] and va == [307, 0, 512, 307]
    assert src.shape[:2] == (512, 512)

    def disjoint(a, b):
        return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]

    assert disjoint(tr, va) and disjoint(tr, te) and disjoint(va, te)
    for name, (top, left, bottom, right) in meta["crops"].items():
        reg = {"train": tr, "val": va, "test": te}[name.split("/")[0]]
        assert reg[0] <= top < bottom <= reg[2] and reg[1] <= left < right <= reg[3], name
    # the validation images are drawn from their own stream: the test crops of a procedural
    # category (no regions) do not change, and the validation images differ from training ones
    for f in ("test/good/000.png", "test/spot/001.png", "train/good/002.png"):
        assert np.array_equal(np.asarray(Image.open(plain / "fabric" / f)), np.asarray(Image.open(root / "fabric" / f)))
    assert not np.array_equal(np.asarray(Image.open(root / "fabric/val/good/000.png")),
                              np.asarray(Image.open(root / "fabric/train/good/000.png")))
    # a valid MVTec AD dataset still: the val folder is not a test defect type
    assert D.MVTecAD(root, "brick", "test", image_size=64).labels == [0, 0, 1, 1]

    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="n_val"):
            syn.make_dataset(tmp_path / "bad", n_val=bad, **kw)
    with pytest.raises(ValueError, match="too small to give a validation band"):
        syn.validation_region((0, 0, 300, 200), 160)


def test_make_dataset_array_source(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (200, 300), dtype=np.uint8)   # grayscale array
    root = syn.make_dataset(tmp_path, categories={"noise": arr}, n_train=2, n_test_good=1,
                            n_test_defect=1, image_size=32, defects=["spot"])
    assert (root / "noise/test/spot/000.png").is_file()
    assert len(D.MVTecAD(root, "noise", "train", image_size=32)) == 2


# ----------------------------------------------------------------------------- bit depth

def _png16_rgb(path: Path, a: np.ndarray):
    """A 16-bit colour PNG written by hand (Pillow cannot write one): [H, W, 3] uint16."""
    import struct
    import zlib

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    h, w, _ = a.shape
    rows = b"".join(b"\x00" + a[i].astype(">u2").tobytes() for i in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


SIXTEEN = np.array([[0, 255, 256, 4095, 32896, 65535]], np.uint16)
TOP_BYTE = np.array([[0, 0, 1, 15, 128, 255]], np.uint8)   # 16-bit -> top 8 bits


def test_sixteen_bit_every_loader_path_follows_one_rule(tmp_path):
    import tifffile

    rgb = np.repeat(SIXTEEN[..., None], 3, axis=-1)
    files = {
        "gray.png": _save(tmp_path / "gray.png", SIXTEEN),                  # Pillow I;16
        "gray.pgm": _save(tmp_path / "gray.pgm", SIXTEEN),                  # Pillow I (16-bit data)
        "rgb.png": _png16_rgb(tmp_path / "rgb.png", rgb),                   # Pillow RGB (top byte)
    }
    tifffile.imwrite(tmp_path / "gray.tif", SIXTEEN)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    tifffile.imwrite(tmp_path / "chw.tif", np.moveaxis(rgb, -1, 0).copy(), photometric="rgb",
                     planarconfig="separate")
    files.update({n: tmp_path / n for n in ("gray.tif", "rgb.tif", "chw.tif")})
    for name, path in files.items():
        got = np.asarray(D.load_rgb(path))
        assert got.shape == (1, 6, 3), name
        np.testing.assert_array_equal(got[..., 0], TOP_BYTE, err_msg=name)
        np.testing.assert_array_equal(got[..., 2], TOP_BYTE, err_msg=name)


def test_sixteen_bit_pixel_does_not_depend_on_the_rest_of_the_image(tmp_path):
    # 0..255 held in 16 bits is nearly black (it is 0..0.4% of the range), whatever the
    # image's maximum; it used to load as mid-grey, or as 0..1 once one pixel was 256
    low = _save(tmp_path / "low.png", np.array([[200, 255]], np.uint16))
    one_high = _save(tmp_path / "high.png", np.array([[200, 256]], np.uint16))
    assert np.asarray(D.load_rgb(low))[0, :, 0].tolist() == [0, 0]
    assert np.asarray(D.load_rgb(one_high))[0, :, 0].tolist() == [0, 1]
    mid = _save(tmp_path / "mid.png", np.array([[25700, 51400]], np.uint16))
    assert np.asarray(D.load_rgb(mid))[0, :, 0].tolist() == [100, 200]


def test_twelve_bit_data_with_bit_depth(tmp_path):
    twelve = np.array([[0, 16, 2048, 4095]], np.uint16)
    p = _save(tmp_path / "cam.png", twelve)
    assert np.asarray(D.load_rgb(p))[0, :, 0].tolist() == [0, 0, 8, 15]      # 16-bit rule
    assert np.asarray(D.load_rgb(p, bit_depth=12))[0, :, 0].tolist() == [0, 1, 128, 255]
    with pytest.raises(ValueError, match=r"cam\.png.*4095.*11-bit"):
        D.load_rgb(p, bit_depth=11)
    with pytest.raises(ValueError, match="bit_depth=20 is more than the 16 bits"):
        D.load_rgb(p, bit_depth=20)
    for bad in (7, 33, "12", 12.0, True):
        with pytest.raises(ValueError, match="bit_depth must be None or an integer from 8 to 32"):
            D.load_rgb(p, bit_depth=bad)
    # 8-bit images are taken as they are, bit_depth or not
    p8 = _save(tmp_path / "eight.png", np.full((2, 2), 77, np.uint8))
    assert np.asarray(D.load_rgb(p8, bit_depth=12))[0, 0, 0] == 77
    # a colour PNG of 16 bits reaches us as 8 bits: bit_depth=12 cannot be honoured
    rgb = _png16_rgb(tmp_path / "rgb.png", np.repeat(twelve[..., None], 3, axis=-1))
    with pytest.raises(ValueError, match=r"rgb\.png is a 16-bit colour PNG.*bit_depth=12"):
        D.load_rgb(rgb, bit_depth=12)
    # the datasets pass bit_depth on
    cat = tmp_path / "r" / "c"
    _save(cat / "train/good/a.png", np.full((8, 8), 2048, np.uint16))
    img = D.MVTecAD(tmp_path / "r", "c", image_size=8, bit_depth=12)[0]["image"]
    np.testing.assert_allclose(img[:, 0, 0].double().numpy(), _expected_normalised((128,) * 3), atol=1e-5)
    with pytest.raises(ValueError, match="bit_depth"):
        D.MVTecAD(tmp_path / "r", "c", bit_depth=4)


def test_float_images_are_intensities_in_unit_range(tmp_path):
    import tifffile

    vals = np.array([[0.0, 0.25, 0.5, 1.0]])
    tifffile.imwrite(tmp_path / "f32.tif", vals.astype(np.float32))      # Pillow mode F
    tifffile.imwrite(tmp_path / "f64.tif", vals)                         # tifffile fallback
    for name in ("f32.tif", "f64.tif"):
        assert np.asarray(D.load_rgb(tmp_path / name))[0, :, 1].tolist() == [0, 64, 128, 255], name
    # outside [0, 1]: an error, not a per-image min-max (which gave 0..255 for any range)
    tifffile.imwrite(tmp_path / "big.tif", (vals * 1000).astype(np.float32))
    with pytest.raises(ValueError, match=r"big\.tif is a float image with values outside \[0, 1\]"):
        D.load_rgb(tmp_path / "big.tif")


def test_thirty_two_bit_tiff_uses_its_own_range(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "u32.tif", np.array([[0, 1 << 24, 0xFFFFFFFF]], np.uint32))
    assert np.asarray(D.load_rgb(tmp_path / "u32.tif"))[0, :, 0].tolist() == [0, 1, 255]
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[-5, 3]], np.int16))
    with pytest.raises(ValueError, match=r"neg\.tif holds negative pixel values"):
        D.load_rgb(tmp_path / "neg.tif")


# ----------------------------------------------------------------------------- LOCO saturation

def _loco_small(tmp_path, size=(40, 56)):
    """A LOCO category of 40x56 images: one logical image with a 4-pixel region of an
    absolute defect (t=40) and a 7-pixel region of a relative one (t=0.5)."""
    cat = tmp_path / "loco" / "box"
    h, w = size
    for split in ("train", "validation"):
        _save(cat / f"{split}/good/000.png", np.zeros((h, w, 3), np.uint8))
    _save(cat / "test/good/000.png", np.zeros((h, w, 3), np.uint8))
    _save(cat / "test/logical_anomalies/000.png", np.zeros((h, w, 3), np.uint8))
    small = np.zeros((h, w), np.uint8)
    small[10:12, 20:22] = 255                       # 4 px
    seven = np.zeros((h, w), np.uint8)
    seven[30, 5:12] = 254                           # 7 px
    _save(cat / "ground_truth/logical_anomalies/000/000.png", small)
    _save(cat / "ground_truth/logical_anomalies/000/001.png", seven)
    (cat / "defects_config.json").write_text(json.dumps([
        {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 40,
         "relative_saturation": False},
        {"defect_name": "colour", "pixel_value": 254, "saturation_threshold": 0.5,
         "relative_saturation": True}]))
    return tmp_path / "loco"


def test_loco_saturation_follows_the_official_rule(tmp_path):
    root = _loco_small(tmp_path, size=(32, 32))
    ds = D.MVTecLOCO(root, "box", "test", image_size=32)   # no resize: the official numbers
    item = ds[1]
    assert item["masks"].sum((1, 2)).tolist() == [4.0, 7.0]
    # absolute 40 capped at the 4-pixel area; relative 0.5 * 7 truncated to 3 pixels
    assert item["saturation"].tolist() == [4.0, 3.0]
    gt = ds.ground_truth(1)
    assert gt["saturation"].tolist() == [4.0, 3.0]


def test_loco_ground_truth_at_original_size(tmp_path):
    root = _loco_small(tmp_path)
    ds = D.MVTecLOCO(root, "box", "test", image_size=32)
    gt = ds.ground_truth(1)
    assert gt["size"] == (40, 56) and gt["mask"].shape == (40, 56) and gt["mask"].dtype == bool
    assert [int(m.sum()) for m in gt["masks"]] == [4, 7] and int(gt["mask"].sum()) == 11
    assert gt["saturation"].tolist() == [4.0, 3.0]
    good = ds.ground_truth(0)
    assert good["size"] == (40, 56) and not good["mask"].any() and good["masks"] == []
    # at the input size (32x32 of 40x56): the official area times the pixel ratio, capped
    # at the resized region's area
    item = ds[1]
    ratio = 32 * 32 / (40 * 56)
    areas = item["masks"].sum((1, 2)).tolist()
    expect = [min(4.0 * ratio, areas[0]), min(3.0 * ratio, areas[1])]
    np.testing.assert_allclose(item["saturation"].numpy(), expect, rtol=1e-6)
    # a mask whose size differs from its image's is refused, naming both
    _save(root / "box/ground_truth/logical_anomalies/000/001.png", np.full((20, 20), 254, np.uint8))
    with pytest.raises(D.DatasetError, match=r"001\.png is 20x20 pixels but its image .*000\.png is 56x40"):
        D.MVTecLOCO(root, "box", "test", image_size=32).ground_truth(1)


def test_mvtec_ground_truth_at_original_size(mvtec):
    ds = D.MVTecAD(mvtec, "widget", "test", image_size=16)
    gt = ds.ground_truth(0)
    assert gt["size"] == (32, 32) and int(gt["mask"].sum()) == 64 and "masks" not in gt
    assert ds.ground_truth(2)["mask"].sum() == 0
