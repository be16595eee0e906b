"""Simulated node profiles, one YAML file per AWS instance type.

Names only, so the command line lists them without loading the simulator."""

PROFILES = ("p5.48xlarge", "p5en.48xlarge", "p6-b200.48xlarge", "p4d.24xlarge")
