"""``dadf-fast train --category all`` / ``a,b``: one model per category in ``--out/<category>``,
the same model as training that category alone, and a category that fails is reported
without stopping the others."""
import shutil

import torch

from dadf_fast import DADF
from dadf_fast.cli.commands import main
from dadf_fast.data.synthetic import make_dataset

ARGS = ["--no-pretrained", "--input-size", "64", "--epochs-recon", "1", "--iters-flow", "2", "--quiet",
        "--backend", "torch"]


def test_train_every_category_and_report_failures(tmp_path, capsys):
    root = tmp_path / "mvtec"
    make_dataset(root, categories=["brick", "grass"], n_train=5, n_test_good=2, n_test_defect=2, image_size=64,
                 seed=0)
    out = tmp_path / "all"
    assert main(["train", "--data", str(root), "--category", "all", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "== brick" in printed and "== grass" in printed
    assert "brick                    ok" in printed and "grass                    ok" in printed
    # the same weights as the category trained on its own
    alone = tmp_path / "grass_alone"
    assert main(["train", "--data", str(root), "--category", "grass", "--out", str(alone), *ARGS]) == 0
    a, b = DADF.load(out / "grass" / "model.pt"), DADF.load(alone / "model.pt")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.calibration == b.calibration

    # a broken category: its failure is in the summary, the other still trains; exit status 2
    shutil.rmtree(root / "brick" / "train")
    (root / "brick" / "train" / "good").mkdir(parents=True)
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--category", "brick,grass", "--out", str(tmp_path / "two"),
                 *ARGS]) == 2
    captured = capsys.readouterr()
    assert "brick: failed:" in captured.err and "1 of 2 categories failed: brick" in captured.err
    assert "brick                    FAILED" in captured.out
    assert (tmp_path / "two" / "grass" / "model.pt").exists()
    assert main(["train", "--data", str(root), "--category", "grass,nope", "--out", str(tmp_path / "x"), *ARGS]) == 2
    assert "nope not in" in capsys.readouterr().err


def _torchrun(args, tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dadf_fast.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_torchrun_spreads_the_categories_over_ranks(tmp_path):
    """Two gloo processes train one category each, then the third together (data-parallel); each
    model is the one a single process with one thread (as each rank runs) trains for that
    category (the data-parallel one to float rounding)."""
    root = tmp_path / "mvtec"
    make_dataset(root, categories=["brick", "grass", "gravel"], n_train=5, n_test_good=2, n_test_defect=2, image_size=64,
                 seed=0)
    out = tmp_path / "dist"
    done = _torchrun(["train", "--data", str(root), "--category", "all", "--out", str(out), *ARGS], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "== brick (rank 0)" in done.stdout and "== grass (rank 1)" in done.stdout
    assert done.stdout.count("== gravel (ranks 0-1, data-parallel)") == 1
    assert done.stdout.count("category                 result") == 1  # one summary, from rank 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran: the CPU kernels' rounding depends on the thread count
    try:
        for cat in ("brick", "grass", "gravel"):
            assert main(["train", "--data", str(root), "--category", cat, "--out", str(tmp_path / cat), *ARGS]) == 0
    finally:
        torch.set_num_threads(threads)
    for cat in ("brick", "grass"):
        a, b = DADF.load(out / cat / "model.pt"), DADF.load(tmp_path / cat / "model.pt")
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
        assert a.calibration == b.calibration
    a, b = DADF.load(out / "gravel" / "model.pt"), DADF.load(tmp_path / "gravel" / "model.pt")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    # more processes than categories: every rank stops with the same one-line error
    bad = _torchrun(["train", "--data", str(root), "--category", "grass,", "--out", str(tmp_path / "x"), *ARGS],
                    tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.count("2 processes for 1 categories: start at most 1") == 2
    assert not (tmp_path / "x").exists()
