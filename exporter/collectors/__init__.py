"""The one place collectors are registered.

Each collector is a leaf: it takes its roots at construction and yields catalog families from
`collect()`. Adding a collector means one module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from exporter.catalog import Family
from exporter.collectors.host import HostCollector
from exporter.collectors.lustre import LustreCollector
from exporter.collectors.rdma import RdmaCollector


@dataclass(frozen=True)
class Roots:
    """Where the host's filesystems are mounted; tests and the simulator point these at trees."""

    sysfs: str = "/sys"
    procfs: str = "/proc"


class Collector(Protocol):
    name: str

    def collect(self) -> Iterable[Family]: ...


FACTORIES: dict[str, Callable[[Roots], Collector]] = {
    "rdma": lambda roots: RdmaCollector(roots.sysfs),
    "lustre": lambda roots: LustreCollector(roots.sysfs, roots.procfs),
    "host": lambda roots: HostCollector(roots.sysfs, roots.procfs),
}

DESCRIPTIONS: dict[str, str] = {
    "rdma": "RDMA/EFA device and port counters from sysfs class/infiniband",
    "lustre": "Lustre client I/O and per-target import health (procfs, sysfs, debugfs)",
    "host": "CPU busy time per NUMA node, available memory, pressure stall information",
}


def build(names: Iterable[str], roots: Roots) -> list[Collector]:
    return [FACTORIES[name](roots) for name in names]
