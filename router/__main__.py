"""`python -m router` runs the `router` command."""

import sys

from .cli import main

sys.exit(main())
