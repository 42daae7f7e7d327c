"""`python -m memrun.cli`: the same as the `memrun` command."""

import sys

from memrun.cli import main

sys.exit(main())
