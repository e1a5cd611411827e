"""End-to-end benchmark suite (a thin wrapper of ``dadf-fast bench``; see dadf_fast/cli/bench.py).

    python benchmarks/end_to_end.py --quick
    python benchmarks/end_to_end.py --preset lite paper --csv e2e.csv --plot e2e.png --flops
    python benchmarks/end_to_end.py --device cuda --preset paper --dtype bfloat16 --json e2e.json
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dadf_fast.cli.bench import add_arguments, main  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
