"""``dadf-fast train`` options that select the compute dtype and the flow recipe."""
import pytest


def test_cli_train_parses_dtype_and_flow_steps():
    from dadf_fast.cli.commands import build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--dtype", "bfloat16", "--iters-flow", "50"])
    assert args.dtype == "bfloat16" and args.iters_flow == 50
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--dtype", "int8"])


@pytest.mark.parametrize("flag,want", [([], {}), (["--no-flips"], {"hflip": False, "vflip": False})])
def test_cli_train_no_flips_reaches_fit(tmp_path, monkeypatch, flag, want):
    import numpy as np
    from PIL import Image

    import dadf_fast
    from dadf_fast.cli.commands import main

    normal = tmp_path / "normal"
    normal.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(normal / f"{i}.png")
    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(self, train, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(dadf_fast.DADF, "fit", fake_fit)
    with pytest.raises(Stop):
        main(["train", "--normal-dir", str(normal), "--out", str(tmp_path / "run"), "--input-size", "32",
              "--no-pretrained", "--quiet", "--backend", "torch", *flag])
    # without the flag the recipe decides (the lite recipe: flips on); with it fit gets both off
    assert {k: seen[k] for k in ("hflip", "vflip") if k in seen} == want
