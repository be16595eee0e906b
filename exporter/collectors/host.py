"""The little host data a slow training step needs: CPU busy time per NUMA node, memory, PSI.

node_exporter stays the host exporter of record; this collector adds only what it does not
aggregate for us (busy time per NUMA node instead of ~1,500 per-CPU series on a 192-CPU node).
It parses procfs itself rather than through psutil, whose procfs root is a process-wide global
and so cannot honour `--path.procfs` per collector.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from exporter import catalog
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.files import list_dir, read_text

# /proc/stat columns after the cpu name: user nice system idle iowait irq softirq steal ...
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_PSI_RESOURCES = ("cpu", "memory", "io")


def parse_cpulist(text: str) -> list[int]:
    """`0-3,8,10-11` -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def parse_cpu_busy_ticks(text: str) -> dict[int, int]:
    """{cpu: busy ticks} from /proc/stat, busy being everything but idle and iowait."""
    busy: dict[int, int] = {}
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *columns = line.split()
        busy[int(name[3:])] = sum(int(columns[i]) for i in _BUSY_COLUMNS if i < len(columns))
    return busy


def parse_meminfo(text: str) -> dict[str, int]:
    """{field: bytes} from /proc/meminfo."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def parse_pressure(text: str) -> dict[str, float]:
    """{"some"|"full": stalled seconds} from a /proc/pressure file (`total=` is in microseconds)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for field in fields:
            if field.startswith("total="):
                out[kind] = int(field[len("total="):]) * 1e-6
    return out


class HostCollector:
    """Reads /proc/stat, /proc/meminfo, /proc/pressure and the NUMA node CPU lists."""

    name = "host"

    def __init__(self, sysfs: str, procfs: str) -> None:
        self._node_dir = os.path.join(sysfs, "devices", "system", "node")
        self._procfs = procfs
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK")

    def collect(self) -> Iterator[Family]:
        scrape = Scrape()
        self._collect_cpu(scrape)
        meminfo = parse_meminfo(read_text(os.path.join(self._procfs, "meminfo")))
        for metric, field in ((catalog.HOST_MEMORY_AVAILABLE, "MemAvailable"),
                              (catalog.HOST_MEMORY_TOTAL, "MemTotal")):
            if field in meminfo:
                scrape.add(metric, float(meminfo[field]))
        for resource in _PSI_RESOURCES:
            try:
                text = read_text(os.path.join(self._procfs, "pressure", resource))
            except OSError:
                continue  # kernels without PSI, or with it disabled
            for kind, seconds in parse_pressure(text).items():
                scrape.add(catalog.HOST_PRESSURE, seconds, resource, kind)
        yield from scrape.families.values()

    def _collect_cpu(self, scrape: Scrape) -> None:
        busy = parse_cpu_busy_ticks(read_text(os.path.join(self._procfs, "stat")))
        for node, cpus in self._numa_nodes(busy).items():
            online = [cpu for cpu in cpus if cpu in busy]
            scrape.add(catalog.HOST_CPU_BUSY, sum(busy[cpu] for cpu in online) * self._tick, node)
            scrape.add(catalog.HOST_CPUS, float(len(online)), node)

    def _numa_nodes(self, busy: dict[int, int]) -> dict[str, list[int]]:
        """{node number: CPUs}; a kernel without NUMA information gets one node "0"."""
        nodes = {}
        for entry in list_dir(self._node_dir):
            if entry.startswith("node") and entry[4:].isdigit():
                nodes[entry[4:]] = parse_cpulist(read_text(os.path.join(self._node_dir, entry, "cpulist")))
        return nodes or {"0": sorted(busy)}


register(Registration("host", "CPU busy time per NUMA node, available memory, pressure stall information",
                      lambda roots, _: HostCollector(roots.sysfs, roots.procfs)))
