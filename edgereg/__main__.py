"""`python -m edgereg` runs the CLI."""

import sys

from edgereg.cli.main import main

sys.exit(main())
