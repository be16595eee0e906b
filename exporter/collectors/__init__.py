"""The collectors, each registered by its own module with its options (collectors/base.py).

Adding a collector is its module (ending in one `register(...)` call), its catalog entries and its
import line below, whose place is its place in the scrape.
"""

from __future__ import annotations

from collections.abc import Iterable

from exporter.collectors.base import REGISTERED, Collector, Roots

# isort: off
from exporter.collectors import gpu  # noqa: F401 (importing a collector's module registers it)
from exporter.collectors import rdma  # noqa: F401
from exporter.collectors import lustre  # noqa: F401
from exporter.collectors import host  # noqa: F401
from exporter.collectors import nccl  # noqa: F401
from exporter.collectors import identity  # noqa: F401
from exporter.collectors import kmsg  # noqa: F401
from exporter.collectors import train  # noqa: F401
# isort: on

MODULES = tuple(REGISTERED)  # in the order of the imports above


def close(collectors: Iterable[Collector]) -> None:
    """Stops the background threads of the collectors that have them."""
    for collector in collectors:
        stop = getattr(collector, "close", None)
        if stop:
            stop()


def build(names: Iterable[str], roots: Roots) -> list[Collector]:
    """The collectors named, wired together: NCCL files name GPUs by UUID and the kernel log by PCI
    address, and the GPU collector knows each one's NVML index (and job)."""
    built = {name: REGISTERED[name].build(roots, roots.of(name)) for name in names}
    if "nccl" in built and "gpu" in built:
        built["nccl"].identify_with(built["gpu"].identities)
    if "kmsg" in built and "gpu" in built:
        built["kmsg"].identify_with(built["gpu"].gpus_by_pci)
    if "train" in built and "gpu" in built:
        built["train"].identify_with(built["gpu"].identities, built["gpu"].gpus_by_pci)
    return list(built.values())


__all__ = ["MODULES", "REGISTERED", "Collector", "Roots", "build", "close"]
