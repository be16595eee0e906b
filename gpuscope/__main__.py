"""`python -m gpuscope ARGS`, as the `gpuscope` console script."""

import sys

from gpuscope.cli import main

sys.exit(main())
