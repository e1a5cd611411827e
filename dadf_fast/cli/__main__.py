"""``python -m dadf_fast.cli`` (and ``torchrun -m dadf_fast.cli``): the ``dadf-fast`` command."""
import sys

from dadf_fast.cli.commands import main

sys.exit(main())
