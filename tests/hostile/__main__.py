"""``python -m tests.hostile DIR``: build the corpus in DIR, run it, print the table (see check.py)."""

import sys

from tests.hostile.check import main

sys.exit(main())
