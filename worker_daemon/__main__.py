"""`python -m worker_daemon`: one worker daemon (worker_daemon/cli.py)."""

import sys

from worker_daemon.cli import main

sys.exit(main())
