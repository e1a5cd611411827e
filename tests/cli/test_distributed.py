"""The commands under ``torchrun`` (2 gloo processes on the CPU): data-parallel ``train`` gives
the model of one process with the same global batches, ``--resume`` works under torchrun,
sharded ``test`` / ``predict`` write what one process writes, and a rank that fails or sees
other data stops every rank with its message."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from dadf_fast import DADF
from dadf_fast.cli.commands import main
from dadf_fast.data.synthetic import make_dataset

# 6 normal images: one held out for the thresholds, 5 to train on, so the global batches of 5
# split 3 / 2 over the ranks (the uneven case of the loss weighting)
ARGS = ["--no-pretrained", "--input-size", "64", "--epochs-recon", "2", "--iters-flow", "3", "--quiet",
        "--backend", "torch"]

# a launcher that can make rank 1 misbehave before running the command
LAUNCHER = """
import os, sys
rank = int(os.environ["RANK"])
{patch}
from dadf_fast.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(args, cwd, patch: str | None = None, nproc: int = 2):
    target = ["-m", "dadf_fast.cli"]
    if patch is not None:
        script = cwd / "launch.py"
        script.write_text(LAUNCHER.format(patch=patch))
        target = [str(script)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           *target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=240)


@pytest.fixture(autouse=True)
def one_thread():
    """The in-process runs with one thread, as each rank runs (less rounding noise to compare)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "mvtec"
    make_dataset(root, categories=["grass"], n_train=6, n_test_good=3, n_test_defect=4, image_size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def alone(dataset, tmp_path_factory):
    """The model one process with one thread trains (what each rank runs with)."""
    out = tmp_path_factory.mktemp("alone") / "model"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(dataset), "--category", "grass", "--out", str(out), *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _assert_same_model(a, b, exact=False):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        if exact:
            assert torch.equal(x, y), name
        else:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


def test_data_parallel_train_is_the_single_process_model_and_resumes(dataset, alone, tmp_path):
    out = tmp_path / "ddp"
    done = _torchrun(["train", "--data", str(dataset), "--category", "grass", "--out", str(out), *ARGS], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained on 5 images (1 held out for the thresholds)") == 1  # rank 0 reports
    assert sorted(os.listdir(out)) == ["model.pt", "stage1.pt"]
    ddp, one = DADF.load(out / "model.pt"), DADF.load(alone / "model.pt")
    _assert_same_model(ddp, one)
    assert ddp.calibration["method"] == one.calibration["method"]
    assert ddp.calibration["image_threshold"] == pytest.approx(one.calibration["image_threshold"], rel=1e-4)
    # that comparison can fail: test_uneven_weighting_matters

    # --resume under torchrun: from stage1.pt, stage 2 again, as one process resumes it
    os.remove(out / "model.pt")
    shutil.copytree(out, tmp_path / "resume_alone")
    again = _torchrun(["train", "--data", str(dataset), "--category", "grass", "--out", str(out), "--resume", *ARGS],
                      tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("resuming from") == 1
    assert main(["train", "--data", str(dataset), "--category", "grass", "--out", str(tmp_path / "resume_alone"),
                 "--resume", *ARGS]) == 0
    _assert_same_model(DADF.load(out / "model.pt"), DADF.load(tmp_path / "resume_alone" / "model.pt"))


def test_global_batch_loss_weights_uneven_parts(monkeypatch):
    """DDP averages the ranks' gradients: the parts' weighted losses average to the global
    batch's mean also for parts of 3 and 2 (unweighted means would give (m0 + m1) / 2). Without
    the weighting the comparison with one process above fails (checked by hand: a launcher
    that divides the weighting out gives a model outside its tolerance)."""
    from dadf_fast.models import parallel

    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t)  # each rank's own value
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])
    idx = torch.arange(5)

    def step(part):
        return values[part].mean()

    parts = [parallel.global_batch_loss(step, idx, rank, 2)[0] for rank in range(2)]
    assert float(sum(parts) / 2) == pytest.approx(float(values.mean()))
    assert float(parallel.global_batch_loss(step, idx, 0, 1)[0]) == pytest.approx(float(values.mean()))


def test_sharded_test_and_predict_write_what_one_process_writes(dataset, alone, tmp_path, capsys):
    ckpt = str(alone / "model.pt")
    test_args = ["test", "--checkpoint", ckpt, "--data", str(dataset), "--category", "grass", "--batch-size", "2"]
    assert main([*test_args, "--out", str(tmp_path / "one")]) == 0  # one process, one thread
    two = _torchrun([*test_args, "--out", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "metrics.json").read_bytes() == (tmp_path / "two" / "metrics.json").read_bytes()
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["n_images"] == 7
    assert two.stdout.count("image_auroc") == 1  # one report, from rank 0

    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    assert files(tmp_path / "one") == files(tmp_path / "two")
    # predict: each rank writes its images' files, rank 0 the table; the same as one process
    images = [str(p) for p in sorted((dataset / "grass" / "test").rglob("*.png"))][:5]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", ckpt, "--batch-size", "2", "--out", str(tmp_path / "p1"), *images]) == 0
    one = capsys.readouterr()
    two = _torchrun(["predict", "--checkpoint", ckpt, "--batch-size", "2", "--out", str(tmp_path / "p2"), *images],
                    tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "p1" / "predictions.csv").read_text() == (tmp_path / "p2" / "predictions.csv").read_text()
    assert files(tmp_path / "p1") == files(tmp_path / "p2")
    assert len(files(tmp_path / "p2")) == 1 + 3 * 5
    assert one.out.replace(str(tmp_path / "p1"), "OUT") == two.stdout.replace(str(tmp_path / "p2"), "OUT")


def test_a_failing_rank_stops_the_job_with_its_message(dataset, tmp_path):
    patch = ("if rank == 1:\n"
             "    import dadf_fast.models.training as t\n"
             "    def boom(*a, **k):\n"
             "        raise RuntimeError('injected failure on rank 1')\n"
             "    t._train_epochs = boom\n")
    t0 = time.perf_counter()
    done = _torchrun(["train", "--data", str(dataset), "--category", "grass", "--out", str(tmp_path / "f"), *ARGS],
                     tmp_path, patch=patch)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stderr
    assert time.perf_counter() - t0 < 120  # no hang: torchrun stops the waiting rank
    assert not (tmp_path / "f" / "model.pt").exists()


def test_a_rank_that_cannot_read_its_images_stops_every_rank(dataset, tmp_path):
    patch = ("if rank == 1:\n"
             "    import dadf_fast.models.training as t\n"
             "    def unreadable(*a, **k):\n"
             "        raise OSError('cannot read good/000.png')\n"
             "    t.stack_train_images = unreadable\n")
    done = _torchrun(["train", "--data", str(dataset), "--category", "grass", "--out", str(tmp_path / "u"), *ARGS],
                     tmp_path, patch=patch)
    assert done.returncode != 0
    assert "dadf-fast train: error: cannot read good/000.png" in done.stderr  # rank 1
    assert "reading the training images failed on rank 1: OSError: cannot read good/000.png" in done.stderr  # rank 0
    assert not (tmp_path / "u").exists() or not os.listdir(tmp_path / "u")


def test_ranks_that_see_other_data_or_too_few_images_stop_together(dataset, alone, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    os.remove(sorted((other / "grass" / "train" / "good").iterdir())[0])
    patch = f"if rank == 1:\n    sys.argv = [a.replace({str(dataset)!r}, {str(other)!r}) for a in sys.argv]\n"
    done = _torchrun(["train", "--data", str(dataset), "--category", "grass", "--out", str(tmp_path / "m"), *ARGS],
                     tmp_path, patch=patch)
    assert done.returncode != 0
    assert done.stderr.count("the ranks see different training images") == 2, done.stderr[-3000:]
    assert not (tmp_path / "m").exists()
    # more processes than test images: one line on every rank, before any scoring
    one = tmp_path / "one_image"
    shutil.copytree(dataset / "grass" / "test" / "good", one / "good")
    for extra in sorted((one / "good").iterdir())[1:]:
        os.remove(extra)
    done = _torchrun(["predict", "--checkpoint", str(alone / "model.pt"), str(one / "good")], tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("2 processes for 1 images: start at most 1") == 2, done.stderr[-3000:]


def test_commands_that_run_in_one_process_refuse_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets: each rank stops at this check
    monkeypatch.setenv("RANK", "1")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert "demo runs in one process: launch it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_local_device(monkeypatch):
    from dadf_fast.utils.distributed import local_device, shard, shard_batches

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert local_device("cuda") == "cuda:3"
    assert local_device("cuda:1") == "cuda:1" and local_device("cpu") == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert local_device("cuda") == "cuda"
    assert [list(shard_batches(7, 2, r, 2)) for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6]]
    assert [list(shard_batches(5, 16, r, 2)) for r in range(2)] == [[0, 1, 2, 3, 4], []]
    parts = [shard(10, r, 4) for r in range(4)]
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
