"""The ``dadf-fast`` command: train, test, predict, bench, demo."""
from dadf_fast.cli.commands import build_parser, main

__all__ = ["main", "build_parser"]
