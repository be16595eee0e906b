"""`python -m exporter` runs the daemon, like `gpuscope exporter`."""

import sys

from exporter.cli import main

sys.exit(main(["exporter", *sys.argv[1:]]))
