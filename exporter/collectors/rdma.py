"""RDMA devices from `<sysfs>/class/infiniband`: EFA counters under their own names, the rest raw.

EFA is recognised by PCI vendor 0x1d0f or the `efa` driver, never by its name: rdma-core renames
`efa_0` to `rdmap79s0`. Kernels before 5.15 list every EFA counter in both the port and the
device `hw_counters/`; each name is taken only from the directory where it belongs, so the
combined layout exports exactly what the split layout does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from exporter import catalog
from exporter.catalog import Scrape
from exporter.files import InFlight, list_dir, read_counter, read_optional

EFA_PCI_VENDOR = "0x1d0f"
EFA_DRIVER = "efa"
# Not counters: the kernel's stats cache period in milliseconds.
_NOT_COUNTERS = frozenset({"lifespan"})
_RATE = re.compile(r"^\s*([0-9.]+)\s*Gb/sec")


class RdmaCollector:
    """Reads every RDMA device's port and device counters once per scrape."""

    name = "rdma"

    def __init__(self, sysfs: str) -> None:
        self._class_dir = os.path.join(sysfs, "class", "infiniband")
        self._module_dir = os.path.join(sysfs, "module")
        self._in_flight = InFlight()

    def collect(self) -> Iterator[catalog.Family]:
        scrape = Scrape()
        for device in list_dir(self._class_dir):
            ok = False
            if not self._in_flight.busy(device):
                with self._in_flight.hold(device):
                    ok = self._read_device(device, scrape)
            scrape.add(catalog.RDMA_DEVICE_READ_SUCCESS, 1.0 if ok else 0.0, device)
        yield from scrape.families.values()

    def _read_device(self, device: str, scrape: Scrape) -> bool:
        """Adds the device's samples; False if any file failed (the rest still count)."""
        path = os.path.join(self._class_dir, device)
        pci = os.path.join(path, "device")
        driver = _link_name(os.path.join(pci, "driver"))
        is_efa = read_optional(os.path.join(pci, "vendor")) == EFA_PCI_VENDOR or driver == EFA_DRIVER
        scrape.add(catalog.RDMA_DEVICE_INFO, 1.0, device, driver,
                   os.path.basename(os.path.realpath(pci)) if os.path.islink(pci) else "",
                   read_optional(os.path.join(pci, "numa_node")),
                   read_optional(os.path.join(path, "fw_ver")),
                   read_optional(os.path.join(self._module_dir, driver, "version")) if driver else "",
                   "true" if is_efa else "false")
        ok = self._read_device_counters(device, os.path.join(path, "hw_counters"), is_efa, scrape)
        ports_dir = os.path.join(path, "ports")
        for port in list_dir(ports_dir):
            ok = self._read_port(device, port, os.path.join(ports_dir, port), is_efa, scrape) and ok
        return ok

    def _read_port(self, device: str, port: str, path: str, is_efa: bool, scrape: Scrape) -> bool:
        rate_text = read_optional(os.path.join(path, "rate"))
        scrape.add(catalog.RDMA_PORT_INFO, 1.0, device, port,
                   read_optional(os.path.join(path, "link_layer")), rate_text)
        rate = _RATE.match(rate_text)
        if rate:
            scrape.add(catalog.RDMA_PORT_RATE, float(rate.group(1)) * 1e9 / 8, device, port)
        ok = True
        for sub in ("counters", "counters_ext"):
            for name, value in _read_counters(os.path.join(path, sub)):
                if value is None:
                    ok = False
                else:
                    scrape.add(catalog.RDMA_PORT_COUNTER, value, device, port, name)
        for name, value in _read_counters(os.path.join(path, "hw_counters")):
            if value is None:
                ok = False
            elif is_efa and name in catalog.EFA_PORT_COUNTERS:
                scrape.add(catalog.EFA_PORT_COUNTERS[name], value, device, port)
            elif not (is_efa and name in catalog.EFA_DEVICE_COUNTERS):
                scrape.add(catalog.RDMA_PORT_HW_COUNTER, value, device, port, name)
        return ok

    def _read_device_counters(self, device: str, path: str, is_efa: bool, scrape: Scrape) -> bool:
        ok = True
        for name, value in _read_counters(path):
            if value is None:
                ok = False
            elif is_efa and name in catalog.EFA_DEVICE_COUNTERS:
                metric, label = catalog.EFA_DEVICE_COUNTERS[name]
                scrape.add(metric, value, device, *((label,) if label else ()))
            elif not (is_efa and name in catalog.EFA_PORT_COUNTERS):
                scrape.add(catalog.RDMA_DEVICE_HW_COUNTER, value, device, name)
        return ok


def _link_name(path: str) -> str:
    """The last part of a symlink's target (a driver or PCI address); empty when absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def _read_counters(path: str) -> Iterator[tuple[str, float | None]]:
    """(name, value) for each counter file; value None when the file could not be read or parsed.

    `N/A (no PMA)` means the hardware has no such counter: skipped, not an error.
    """
    for name in list_dir(path):
        if name in _NOT_COUNTERS:
            continue
        try:
            data = read_counter(os.path.join(path, name))
        except OSError:
            yield name, None
            continue
        if data.startswith(b"N/A"):
            continue
        try:
            yield name, float(int(data))
        except ValueError:
            yield name, None
