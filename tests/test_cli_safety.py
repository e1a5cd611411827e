"""Output safety: no command overwrites an input or an earlier run's files, output
folders are checked before any work, numeric arguments are validated, files get normal
permissions.  Each case drives ``dadf_fast.cli.commands.main`` (or the Python API) on tiny data and
compares the bytes and mtimes of every file involved before and after."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from dadf_fast import DADF
from dadf_fast.utils.io import (LOCK_NAME, OutputInUseError, OutputPathError, atomic_write_text, prepare_output_dir,
                           protect_inputs)
from dadf_fast.cli.commands import main

SIZE = 64


def _write_images(folder, names, seed=0):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _tiny_model():
    torch.manual_seed(0)
    m = DADF("lite", pretrained=False, input_size=SIZE, depth=1, flow_steps=2, backend="torch")
    m.calibrate_cues(torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)))  # what fit() does last
    return m


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """An (untrained) tiny DADF checkpoint: scoring needs no training."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    _tiny_model().save(path)
    return str(path)


@pytest.fixture(scope="module")
def loaded(ckpt):
    return DADF.load(ckpt, backend="torch").eval()


def _snapshot(*folders):
    """{path: (bytes, mtime_ns)} of every file under ``folders`` (the lock file included)."""
    out = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                out[str(p)] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def _one_line_error(capsys, command, *needles):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"dadf-fast {command}: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ----------------------------------------------------------------------------- 1. predict over its inputs
def test_predict_into_the_input_folder_is_refused(ckpt, tmp_path, capsys):
    imgs = _write_images(tmp_path / "imgs", ["img.png"])
    before = _snapshot(imgs)
    rc = main(["predict", "--checkpoint", ckpt, str(imgs), "--out", str(imgs)])
    assert rc == 2
    _one_line_error(capsys, "predict", "--out", "already holds files", "img.png", "--overwrite")
    assert _snapshot(imgs) == before
    # --overwrite allows writing into a full folder, never over an input
    rc = main(["predict", "--checkpoint", ckpt, str(imgs), "--out", str(imgs), "--overwrite"])
    assert rc == 2
    _one_line_error(capsys, "predict", "img.png", "input file")
    assert _snapshot(imgs) == before


def test_predict_api_refuses_to_overwrite_an_input(loaded, tmp_path):
    from dadf_fast.engine.evaluation import predict_files

    imgs = _write_images(tmp_path / "imgs", ["a.png"])
    before = _snapshot(imgs)
    model = loaded
    with pytest.raises(OutputPathError, match="already holds files.*overwrite=True"):
        predict_files(model, [str(imgs / "a.png")], out_dir=str(imgs))
    with pytest.raises(OutputPathError, match="input file"):
        predict_files(model, [str(imgs / "a.png")], out_dir=str(imgs), overwrite=True)
    assert _snapshot(imgs) == before
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got -1"):
        predict_files(model, [str(imgs / "a.png")], batch_size=-1)


# ----------------------------------------------------------------------------- 2. colliding output names
def test_predict_same_names_in_two_folders_get_distinct_outputs(ckpt, loaded, tmp_path, capsys):
    from dadf_fast.data import FolderDataset

    _write_images(tmp_path / "d1", ["same.png"], seed=1)
    _write_images(tmp_path / "d2", ["same.png"], seed=2)
    out = tmp_path / "o"
    old = os.umask(0o022)  # item 5 as well: outputs are 0o644 (0o666 & ~umask), not mkstemp's 0o600
    try:
        rc = main(["predict", "--checkpoint", ckpt, str(tmp_path / "d1" / "same.png"),
                   str(tmp_path / "d2" / "same.png"), "--out", str(out)])
    finally:
        os.umask(old)
    assert rc == 0
    assert sorted(os.listdir(out)) == ["predictions.csv", "same.png", "same.tiff", "same_1.png", "same_1.tiff"]
    if os.name == "posix":
        assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    # each map belongs to its own input: compare with the model's map of that image alone
    for folder, stem in (("d1", "same"), ("d2", "same_1")):
        image = FolderDataset(test_dir=tmp_path / folder, split="test", image_size=SIZE)[0]["image"]
        expected = loaded.predict(image[None])["anomaly_map"][0, 0].numpy()
        # (batch of 2 there, of 1 here: convolution rounding, scaled up by the cue calibration)
        np.testing.assert_allclose(tifffile.imread(out / f"{stem}.tiff"), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(tifffile.imread(out / "same.tiff") - tifffile.imread(out / "same_1.tiff")).max() > 1e-4
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith(str(tmp_path / "d1" / "same.png")) and lines[1].endswith(str(tmp_path / "d2" / "same.png"))


def test_predict_folder_skips_hidden_files_and_image_named_folders(ckpt, tmp_path, capsys):
    imgs = _write_images(tmp_path / "imgs", ["a.png"])
    (imgs / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork, not a PNG")
    (imgs / "sub.png").mkdir()
    out = tmp_path / "o"
    rc = main(["predict", "--checkpoint", ckpt, str(imgs), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    scored = [line for line in capsys.readouterr().out.strip().splitlines() if line.endswith(".png")]
    assert len(scored) == 1 and scored[0].endswith(str(imgs / "a.png"))
    assert sorted(os.listdir(out)) == ["a.png", "a.tiff", "predictions.csv"]
    # a folder with no image at all is an error naming it
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", ckpt, str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "predict", "no images", str(tmp_path / "empty"))


# ----------------------------------------------------------------------------- 3. a second run on one --out
TRAIN = ["--input-size", str(SIZE), "--epochs-recon", "1", "--iters-flow", "1", "--quiet", "--backend", "torch",
         "--no-pretrained", "--batch-size", "2"]


@pytest.fixture(scope="module")
def normal_dir(tmp_path_factory):
    return str(_write_images(tmp_path_factory.mktemp("normal"), [f"{i}.png" for i in range(3)], seed=3))


IMAGES = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _fit_api(out_dir, images=IMAGES, model=None, **kw):
    model = model or _tiny_model()
    kw = {"epochs_recon": 1, "epochs_flow": 1, "progress": False, "log": lambda *a: None, **kw}
    return model, model.fit(images, out_dir=str(out_dir), **kw)


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """The stage1.pt and model.pt of one finished training run (copy it before use)."""
    out = tmp_path_factory.mktemp("earlier") / "run"
    _fit_api(out)
    return out


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_second_train_on_the_same_out_is_refused_then_overwrite_starts_a_new_run(normal_dir, earlier_run, tmp_path,
                                                                                   capsys, monkeypatch):
    import dadf_fast.models.training as training

    out = _copy_run(earlier_run, tmp_path / "run")
    before = _snapshot(out)
    old_id = DADF.read_checkpoint(out / "model.pt")["run"]["id"]
    calls = []
    real = training._train_epochs
    monkeypatch.setattr(training, "_train_epochs", lambda *a, **k: calls.append(a[7]) or real(*a, **k))
    rc = main(["train", "--normal-dir", normal_dir, "--out", str(out), *TRAIN])
    assert rc == 2 and calls == []
    _one_line_error(capsys, "train", str(out), "already holds files", "--overwrite", "--resume")
    assert _snapshot(out) == before
    rc = main(["train", "--normal-dir", normal_dir, "--out", str(out), *TRAIN, "--overwrite"])
    assert rc == 0 and calls == [1, 2]
    s1, final = DADF.read_checkpoint(out / "stage1.pt"), DADF.read_checkpoint(out / "model.pt")
    assert s1["run"]["id"] == final["run"]["id"] != old_id
    assert sorted(os.listdir(out)) == ["model.pt", "stage1.pt"]  # no lock file left behind
    assert main(["train", "--normal-dir", normal_dir, "--out", str(out), *TRAIN, "--overwrite", "--resume"]) == 2
    _one_line_error(capsys, "train", "--resume", "--overwrite")


def test_fit_api_refuses_a_used_out_dir_and_overwrite_never_keeps_the_old_model(earlier_run, tmp_path,
                                                                                 monkeypatch):
    from dadf_fast.models.training import TrainingDiverged

    out = _copy_run(earlier_run, tmp_path / "run")
    before = _snapshot(out)
    old_id = DADF.read_checkpoint(out / "stage1.pt")["run"]["id"]
    model = _tiny_model()
    with pytest.raises(OutputPathError, match="already holds files.*overwrite=True.*resume=True"):
        _fit_api(out, model=model)
    assert _snapshot(out) == before
    # an overwriting run that dies in stage 2 leaves its own stage1.pt and no model.pt: the
    # earlier run's model.pt can never pass for this run's result
    monkeypatch.setattr(model, "flow_loss", lambda inputs: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(TrainingDiverged):
        _fit_api(out, model=model, overwrite=True)
    assert sorted(os.listdir(out)) == ["stage1.pt"]
    assert DADF.read_checkpoint(out / "stage1.pt")["run"]["id"] != old_id


def _rewrite_checkpoint(path, edit):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    edit(payload)
    torch.save(payload, path)


def test_resume_only_continues_the_same_run(earlier_run, tmp_path):
    a = _copy_run(earlier_run, tmp_path / "a")
    snap_a = _snapshot(a)
    model = _tiny_model()
    # another config, model or images: refused, naming what differs
    with pytest.raises(ValueError, match="different training run.*epochs_flow 1 then, 2 now"):
        _fit_api(a, model=model, resume=True, epochs_flow=2)
    with pytest.raises(ValueError, match="training images differ"):
        _fit_api(a, IMAGES + 1, model=model, resume=True)
    with pytest.raises(ValueError, match="model flow_steps 2 then, 3 now"):
        _fit_api(a, model=DADF("lite", pretrained=False, input_size=SIZE, depth=1, flow_steps=3), resume=True)
    assert _snapshot(a) == snap_a
    # the same run: model.pt is complete, nothing trains, the weights and run id are model.pt's
    _, res = _fit_api(a, model=model, resume=True)
    assert res["loss_recon"] == [] and res["loss_flow"] == [] and res["resumed_from"] == str(a / "model.pt")
    saved = DADF.read_checkpoint(a / "model.pt")
    assert res["run_id"] == saved["run"]["id"]
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in model.state_dict().items())
    # stage1.pt of one run beside model.pt of another: never mixed
    _rewrite_checkpoint(a / "model.pt", lambda p: p["run"].update(id="another-run"))
    with pytest.raises(ValueError, match="two different runs"):
        _fit_api(a, model=model, resume=True)
    # a checkpoint that records no run (DADF.save, older versions) cannot be resumed
    os.remove(a / "model.pt")
    _rewrite_checkpoint(a / "stage1.pt", lambda p: p.pop("run"))
    with pytest.raises(ValueError, match="records no training run"):
        _fit_api(a, model=model, resume=True)


# ----------------------------------------------------------------------------- 4. unusable --out, found first
def _no_training(monkeypatch):
    import dadf_fast.models.training as training

    def fail(*a, **k):
        raise AssertionError("training started although --out is unusable")

    monkeypatch.setattr(training, "_train_epochs", fail)


def test_train_out_that_is_a_file_or_under_a_file_fails_before_training(normal_dir, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me\n")
    before = _snapshot(tmp_path)
    assert main(["train", "--normal-dir", normal_dir, "--out", str(afile), *TRAIN]) == 2
    _one_line_error(capsys, "train", str(afile), "is an existing file")
    assert main(["train", "--normal-dir", normal_dir, "--out", str(afile / "sub"), *TRAIN]) == 2
    _one_line_error(capsys, "train", str(afile / "sub"), "cannot be created")
    assert _snapshot(tmp_path) == before
    with pytest.raises(OutputPathError, match="is an existing file"):
        _fit_api(afile)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_train_out_that_cannot_be_written_fails_before_training(normal_dir, capsys, monkeypatch):
    _no_training(monkeypatch)  # /proc refuses new folders even to root
    assert main(["train", "--normal-dir", normal_dir, "--out", "/proc/dadf-fast-out", *TRAIN]) == 2
    _one_line_error(capsys, "train", "/proc/dadf-fast-out", "cannot be created")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_folder_fails_before_training(normal_dir, tmp_path, capsys, monkeypatch):
    _no_training(monkeypatch)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["train", "--normal-dir", normal_dir, "--out", str(ro), *TRAIN]) == 2
        _one_line_error(capsys, "train", str(ro), "not writable")
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- concurrent runs (lock)
HOLDER = textwrap.dedent("""
    import importlib.util, os, sys
    # _io alone (standard library only): the package would import torch, seconds per process
    spec = importlib.util.spec_from_file_location("dadf_io", sys.argv[3])
    io = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(io)
    d = io.prepare_output_dir(sys.argv[1])
    print("locked", flush=True)
    if sys.argv[2] == "die":
        os._exit(0)  # a crash: the lock file stays behind
    sys.stdin.read()
    d.close()
""")


def test_a_folder_in_use_by_another_process_is_refused_and_a_dead_holder_is_taken_over(ckpt, tmp_path, capsys):
    import dadf_fast.utils.io

    imgs = _write_images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "wait", dadf_fast.utils.io.__file__],
                              stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["predict", "--checkpoint", ckpt, str(imgs), "--out", str(out)]) == 2
        _one_line_error(capsys, "predict", "in use by another dadf-fast run", f"pid {holder.pid}")
        with pytest.raises(OutputInUseError):
            _fit_api(out)
        assert os.listdir(out) == [LOCK_NAME]
    finally:
        holder.communicate("", timeout=60)
    assert os.listdir(out) == []  # released on exit
    # a holder that died without cleaning up leaves a lock file nobody holds: taken over
    dead = subprocess.run([sys.executable, "-c", HOLDER, str(out), "die", dadf_fast.utils.io.__file__],
                          capture_output=True, text=True, timeout=60)
    assert dead.stdout.strip() == "locked" and os.listdir(out) == [LOCK_NAME]
    with prepare_output_dir(out):
        assert open(out / LOCK_NAME).read().strip() == str(os.getpid())
    assert os.listdir(out) == []


# ----------------------------------------------------------------------------- 5. file permissions
@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        torch_path = tmp_path / "m.pt"
        _tiny_model().save(torch_path)
    finally:
        os.umask(old)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == mode
    assert torch_path.stat().st_mode & 0o777 == mode
    (tmp_path / "kept.txt").write_text("old")
    os.chmod(tmp_path / "kept.txt", 0o640)
    atomic_write_text(tmp_path / "kept.txt", "new")
    assert (tmp_path / "kept.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "kept.txt").read_text() == "new"


def test_writes_never_replace_a_protected_input(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("input")
    link = tmp_path / "alias.txt"
    os.symlink(src, link)
    with protect_inputs([str(src)]):
        for target in (src, link, tmp_path / "." / "in.txt"):
            with pytest.raises(OutputPathError, match="input file"):
                atomic_write_text(target, "output")
        atomic_write_text(tmp_path / "other.txt", "fine")
    assert src.read_text() == "input" and os.path.islink(link)
    atomic_write_text(src, "replaced after the block")  # the protection ends with the block
    assert src.read_text() == "replaced after the block"


# ----------------------------------------------------------------------------- 11. numeric arguments
@pytest.mark.parametrize("argv,option", [
    (["predict", "--checkpoint", "m.pt", "x.png", "--batch-size", "-1"], "--batch-size"),
    (["predict", "--checkpoint", "m.pt", "x.png", "--batch-size", "0"], "--batch-size"),
    (["predict", "--checkpoint", "m.pt", "x.png", "--workers", "-1"], "--workers"),
    (["predict", "--checkpoint", "m.pt", "x.png", "--smooth", "inf"], "--smooth"),
    (["predict", "--checkpoint", "m.pt", "x.png", "--smooth", "-1"], "--smooth"),
    (["predict", "--checkpoint", "m.pt", "x.png", "--smooth", "nan"], "--smooth"),
    (["test", "--checkpoint", "m.pt", "--test-dir", "t", "--smooth", "nan"], "--smooth"),
    (["test", "--checkpoint", "m.pt", "--test-dir", "t", "--batch-size", "two"], "--batch-size"),
    (["train", "--normal-dir", "n", "--out", "o", "--epochs-recon", "0"], "--epochs-recon"),
    (["train", "--normal-dir", "n", "--out", "o", "--epochs-flow", "-3"], "--epochs-flow"),
    (["train", "--normal-dir", "n", "--out", "o", "--iters-flow", "0"], "--iters-flow"),
    (["train", "--normal-dir", "n", "--out", "o", "--input-size", "100"], "--input-size"),
    (["train", "--normal-dir", "n", "--out", "o", "--input-size", "0"], "--input-size"),
    (["train", "--normal-dir", "n", "--out", "o", "--seed", "-1"], "--seed"),
    (["demo", "--out", "o", "--seed", "x"], "--seed"),
    (["bench", "--reps", "0"], "--reps"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--batch-sizes", "1", "0"], "--batch-sizes"),
    (["bench", "--threads", "0"], "--threads"),
])
def test_bad_numbers_are_usage_errors(argv, option, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not into the repository
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err  # one line, no usage dump
    assert err[-1].startswith(f"dadf-fast {argv[0]}: error: argument {option}"), err[-1]
    assert "expected" in err[-1] and "Traceback" not in "\n".join(err)
    assert os.listdir(tmp_path) == []


def test_bench_api_validates_numbers():
    from dadf_fast.cli.bench import run_bench

    for kw, msg in ((dict(reps=0), "reps must be an int >= 1"), (dict(warmup=-1), "warmup must be an int >= 0"),
                    (dict(batch_sizes=[0]), "batch_sizes must be ints >= 1"), (dict(threads=0), "threads must be")):
        with pytest.raises(ValueError, match=msg):
            run_bench(print_fn=lambda *_: None, **kw)


# ----------------------------------------------------------------------------- bench and demo outputs
def _bench_must_not_run(monkeypatch):
    import dadf_fast.cli.bench as bench

    def fail(*a, **k):
        raise AssertionError("the benchmark ran although an output path is unusable")

    monkeypatch.setattr(bench, "run_task", fail)
    monkeypatch.setattr(bench, "stage_flops", fail)


BENCH = ["bench", "--quick", "--batch-sizes", "1", "--tasks", "infer", "--variants", "torch", "--no-split",
         "--reps", "1", "--warmup", "0"]


def test_bench_checks_every_output_path_before_running(tmp_path, capsys, monkeypatch):
    _bench_must_not_run(monkeypatch)
    afile = tmp_path / "f.txt"
    afile.write_text("keep")
    old_csv = tmp_path / "old.csv"
    old_csv.write_text("a,b\n1,2\n")
    before = _snapshot(tmp_path)
    cases = [
        (["--csv", str(afile / "x.csv")], "--csv", "not writable"),
        (["--plot", str(tmp_path)], "--plot", "is a folder"),
        (["--csv", str(old_csv)], "--csv", "already exists"),
        (["--csv", str(tmp_path / "r.csv"), "--json", str(tmp_path / "r.csv")], "--json", "same file"),
        (["--flops", "--json", str(afile / "x.json")], "--json", "not writable"),
    ]
    for extra, name, needle in cases:
        assert main(BENCH + extra) == 2, extra
        _one_line_error(capsys, "bench", name, needle)
    assert _snapshot(tmp_path) == before


def test_demo_refuses_a_used_out_folder(tmp_path, capsys, monkeypatch):
    import dadf_fast.data.synthetic as synthetic

    def fail(*a, **k):
        raise AssertionError("the demo started although --out holds files")

    monkeypatch.setattr(synthetic, "make_dataset", fail)
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_metrics.json").write_text("{}\n")
    before = _snapshot(out)
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "demo", str(out), "already holds files", "--overwrite")
    assert _snapshot(out) == before


# ----------------------------------------------------------------------------- test --out
def test_test_out_that_holds_files_is_refused_before_scoring(ckpt, tmp_path, capsys, monkeypatch):
    import dadf_fast.engine.evaluation as evaluation

    def fail(*a, **k):
        raise AssertionError("scoring started although --out holds files")

    monkeypatch.setattr(evaluation, "score_images", fail)
    tests = _write_images(tmp_path / "t", ["a.png", "b.png"])
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"image_auroc": 0.9}\n')
    before = _snapshot(out, tests)
    assert main(["test", "--checkpoint", ckpt, "--test-dir", str(tests), "--out", str(out)]) == 2
    _one_line_error(capsys, "test", str(out), "already holds files", "--overwrite")
    assert _snapshot(out, tests) == before
    with prepare_output_dir(out, overwrite=True) as d:  # the lock is released when the block ends
        assert os.fspath(d) == str(out) and LOCK_NAME in os.listdir(out)
    assert LOCK_NAME not in os.listdir(out)


def test_map_path_takes_a_unique_stem():
    from dadf_fast.utils.io import unique_output_stems
    from dadf_fast.engine.visualize import map_path

    paths = ["t/good/a.png", "u/good/a.png"]
    got = [map_path("o", "c", "good", p, "tiff", stem=s) for p, s in zip(paths, unique_output_stems(paths))]
    assert got == [os.path.join("o", "c", "test", "good", "a.tiff"), os.path.join("o", "c", "test", "good", "a_1.tiff")]
    assert map_path("o", "c", "good", "t/good/a.png", "png") == os.path.join("o", "c", "test", "good", "a.png")


def test_bench_overwrite_allows_replacing_its_own_files(tmp_path):
    from dadf_fast.cli.bench import _check_outputs

    old = tmp_path / "b.csv"
    old.write_text("x\n")
    with pytest.raises(OutputPathError, match="csv .*already exists.*overwrite=True"):
        _check_outputs({"csv": str(old), "plot": None}, overwrite=False)
    _check_outputs({"csv": str(old), "plot": str(tmp_path / "new" / "b.png")}, overwrite=True)
    assert old.read_text() == "x\n" and (tmp_path / "new").is_dir() and os.listdir(tmp_path / "new") == []


def test_knn_cannot_resume(normal_dir, tmp_path, capsys):
    rc = main(["train", "--method", "knn", "--normal-dir", normal_dir, "--out", str(tmp_path / "k"), "--resume"])
    assert rc == 2 and not (tmp_path / "k").exists()
    _one_line_error(capsys, "train", "--resume is for --method dadf")


def test_knn_overwrite_replaces_a_folder_that_holds_other_files(normal_dir, tmp_path, capsys):
    out = tmp_path / "k"
    assert main(["train", "--method", "knn", "--normal-dir", normal_dir, "--out", str(out), "--no-pretrained",
                 "--input-size", str(SIZE), "--quiet"]) == 0
    (out / "metrics.json").write_text("{}\n")  # e.g. an earlier evaluation beside the model
    first = (out / "model.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--method", "knn", "--normal-dir", normal_dir, "--out", str(out), "--no-pretrained",
                 "--input-size", str(SIZE), "--quiet", "--seed", "1"]) == 2
    _one_line_error(capsys, "train", "--overwrite")
    assert (out / "model.pt").read_bytes() == first
    assert main(["train", "--method", "knn", "--normal-dir", normal_dir, "--out", str(out), "--no-pretrained",
                 "--input-size", str(SIZE), "--quiet", "--overwrite"]) == 0, capsys.readouterr().err
