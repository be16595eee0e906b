"""The one place collectors are registered.

Each collector is a leaf: it takes its roots at construction and yields catalog families from
`collect()`. Adding a collector means one module and one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.catalog import Family
from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.host import HostCollector
from exporter.collectors.identity import IdentityCollector
from exporter.collectors.kmsg import KmsgCollector, KmsgOptions
from exporter.collectors.lustre import LustreCollector
from exporter.collectors.nccl import NcclCollector, NcclOptions
from exporter.collectors.rdma import RdmaCollector


@dataclass(frozen=True)
class Roots:
    """Where the host's data comes from, and the collectors' few options; tests and the simulator
    point the roots at trees and a simulated NVML.

    `nvml` is the pynvml module to use; None means the real one, imported when the GPU collector starts.
    """

    sysfs: str = "/sys"
    procfs: str = "/proc"
    nvml: Any = None
    gpu: GpuOptions = field(default_factory=GpuOptions)
    efa_device_detail: bool = False
    instance_type: str = ""  # overrides DMI's
    kmsg: KmsgOptions = field(default_factory=KmsgOptions)
    nccl: NcclOptions = field(default_factory=NcclOptions)


class Collector(Protocol):
    name: str

    def collect(self) -> Iterable[Family]: ...


def close(collectors: Iterable[Collector]) -> None:
    """Stops the background threads of the collectors that have them."""
    for collector in collectors:
        stop = getattr(collector, "close", None)
        if stop:
            stop()


FACTORIES: dict[str, Callable[[Roots], Collector]] = {
    "gpu": lambda roots: GpuCollector(roots.nvml or importlib.import_module("pynvml"), roots.gpu),
    "rdma": lambda roots: RdmaCollector(roots.sysfs, roots.efa_device_detail),
    "lustre": lambda roots: LustreCollector(roots.sysfs, roots.procfs),
    "host": lambda roots: HostCollector(roots.sysfs, roots.procfs),
    "nccl": lambda roots: NcclCollector(roots.nccl),
    "identity": lambda roots: IdentityCollector(roots.sysfs, roots.instance_type),
    "kmsg": lambda roots: KmsgCollector(roots.kmsg.path, roots.kmsg.boot_procfs or roots.procfs),
}

DESCRIPTIONS: dict[str, str] = {
    "gpu": "NVIDIA GPUs through NVML: utilization, memory, temperatures and limits, power, clocks, throttle "
           "reasons, ECC and row remapping, XIDs, PCIe, NVLink, GPM profiling",
    "rdma": "RDMA/EFA device and port counters from sysfs class/infiniband",
    "lustre": "Lustre client I/O and per-target import health (procfs, sysfs, debugfs)",
    "host": "CPU busy time per NUMA node, available memory, pressure stall information",
    "nccl": "NCCL Inspector's per-rank collective bandwidth and time, joined to the NVML GPU and its job "
            "(when --collector.nccl.inspector-dir names a directory), and NCCL RAS's job-wide view: each "
            "communicator's progress, the ranks behind, missing or dead (--collector.nccl.ras-address)",
    "identity": "the instance type from DMI (no network call) and what that type should have: GPUs, EFA "
                "devices, NVLinks per GPU, NVSwitches",
    "kmsg": "the kernel log since boot: NVIDIA XIDs per GPU (with 'fallen off the bus' as XID 79) and NVSwitch "
            "SXIDs (needs CAP_SYSLOG)",
}


def build(names: Iterable[str], roots: Roots) -> list[Collector]:
    """The collectors named, wired together: NCCL files name GPUs by UUID and the kernel log by PCI
    address, and the GPU collector knows each one's NVML index (and job)."""
    built = {name: FACTORIES[name](roots) for name in names}
    if "nccl" in built and "gpu" in built:
        built["nccl"].identify_with(built["gpu"].identities)
    if "kmsg" in built and "gpu" in built:
        built["kmsg"].identify_with(built["gpu"].gpus_by_pci)
    return list(built.values())
