"""Simulated nodes: sysfs/procfs trees and NVML state that the real collectors read unchanged."""
