"""Simulated node profiles, one YAML file per AWS instance type (and a DGX H100 on InfiniBand).

Names only, so the command line lists them without loading the simulator."""

PROFILES = ("p5.48xlarge", "p5en.48xlarge", "p6-b200.48xlarge", "p4d.24xlarge", "dgx-h100")
DEFAULT_PROFILE = "p5.48xlarge"
