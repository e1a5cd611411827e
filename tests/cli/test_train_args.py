"""``dadf-fast train`` options that select the compute dtype and the flow recipe."""
import pytest


def test_cli_train_parses_dtype_and_flow_steps():
    from dadf_fast.cli.commands import build_parser

    args = build_parser().parse_args(["train", "--out", "x", "--dtype", "bfloat16", "--iters-flow", "50"])
    assert args.dtype == "bfloat16" and args.iters_flow == 50
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--out", "x", "--dtype", "int8"])
