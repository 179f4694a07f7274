"""`python -m specdec ...` runs the command line."""

import sys

from specdec.cli.main import main

sys.exit(main())
