"""Simulated node profiles, one YAML file per AWS instance type (and a DGX H100 on InfiniBand).

Found from the files here (adding one is its file), by name only, so the command line lists them
without loading the simulator."""

import os

PROFILES = tuple(sorted(name.removesuffix(".yaml") for name in os.listdir(os.path.dirname(os.path.abspath(__file__)))
                        if name.endswith(".yaml")))
DEFAULT_PROFILE = "p5.48xlarge"
