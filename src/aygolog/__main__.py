"""`python -m aygolog` runs the command line."""

import sys

from aygolog.cli import main

sys.exit(main())
