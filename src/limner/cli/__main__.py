"""`python -m limner.cli` (and `torchrun -m limner.cli train ...`) runs the console script."""
import sys

from . import main

sys.exit(main())
