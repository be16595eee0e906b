"""Built-in fault scenarios for simulated clusters, one YAML file each; users write their own alike.

Found from the files here (adding one is its file), by name only, so the command line lists them
without loading the simulator."""

import os

SCENARIOS = tuple(sorted(name.removesuffix(".yaml") for name in os.listdir(os.path.dirname(os.path.abspath(__file__)))
                         if name.endswith(".yaml")))
