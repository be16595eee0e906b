"""`python -m exporter` runs the node agent alone, on the host's hardware (`gpuscope exporter`
adds the simulator's --simulate)."""

import sys

from exporter.cli import main

sys.exit(main())
