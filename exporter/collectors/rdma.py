"""RDMA devices from `<sysfs>/class/infiniband`: EFA counters under their own names, the rest raw.

EFA is recognised by PCI vendor 0x1d0f or the `efa` driver, never by its name: rdma-core renames
`efa_0` to `rdmap79s0`. Kernels before 5.15 list every EFA counter in both the port and the
device `hw_counters/`; each name is taken only from the directory where it belongs, so the
combined layout exports exactly what the split layout does.

A device's set of counter files is fixed while it exists, so the first scrape lists the
directories, works out which series each file feeds and opens the files (its plan); later scrapes
only re-read the kept files. Any failed read drops the plan and closes its files, and the next
scrape lists the device again; so does a device directory with a new inode (a re-probed device).

A few EFA counters are also summed over the node's devices (a target without label values), so
fleet-wide rules read one series per node instead of one per device; the totals appear only when
every device was read, since a partial sum would look like a counter reset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from exporter import catalog
from exporter.catalog import Family, Metric, Scrape
from exporter.collectors.base import Registration, register
from exporter.files import CounterFiles, InFlight, list_dir, read_optional
from exporter.options import Option
from toolkit.configfile import parse_bool

EFA_PCI_VENDOR = "0x1d0f"
NVIDIA_PCI_VENDOR = "0x10de"
_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
EFA_DRIVER = "efa"
# Not a counter: the kernel's stats cache period in milliseconds.
_SKIP = frozenset({"lifespan"})
_RATE = re.compile(r"^\s*([0-9.]+)\s*Gb/sec")
_STATE = re.compile(r"^\s*(\d+)\s*:")  # "4: ACTIVE", "5: LinkUp"
_PORT_STATES = ((catalog.RDMA_PORT_STATE, "state"), (catalog.RDMA_PORT_PHYSICAL_STATE, "phys_state"))


Target = tuple[Metric, tuple[str, ...]]  # a metric and the label values of one series


@dataclass(frozen=True)
class _CounterDir:
    """One counter directory: its kept files and, for each file, the plan's series it adds to."""

    files: CounterFiles
    slots: tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class _Plan:
    key: tuple[int, int]
    info: tuple[str, ...]
    is_efa: bool
    ports: tuple[tuple[str, str], ...]  # (port, port dir)
    counter_dirs: tuple[_CounterDir, ...]
    series: tuple[Target, ...]  # what the slots index; a target without label values is a node total

    def close(self) -> None:
        for counter_dir in self.counter_dirs:
            counter_dir.files.close()


class RdmaCollector:
    """Reads every RDMA device's port and device counters once per scrape."""

    name = "rdma"

    def __init__(self, sysfs: str, efa_device_detail: bool = False) -> None:
        self._class_dir = os.path.join(sysfs, "class", "infiniband")
        self._efa_device = catalog.EFA_DEVICE_DETAIL_COUNTERS if efa_device_detail else catalog.EFA_DEVICE_COUNTERS
        self._module_dir = os.path.join(sysfs, "module")
        self._in_flight = InFlight()
        self._plans: dict[str, _Plan] = {}

    def collect(self) -> Iterator[Family]:
        scrape = Scrape()
        devices = list_dir(self._class_dir)
        totals: dict[Metric, int] = {}
        every_device_read = True
        for device in devices:
            ok = False
            if not self._in_flight.busy(device):
                with self._in_flight.hold(device):
                    ok = self._read_device(device, scrape, totals)
            scrape.add(catalog.RDMA_DEVICE_READ_SUCCESS, 1 if ok else 0, device)
            every_device_read &= ok
        if every_device_read:
            for metric, value in totals.items():
                scrape.add(metric, value)
        for gone in set(self._plans) - set(devices):
            self._drop(gone)
        yield from scrape.families.values()

    def _read_device(self, device: str, scrape: Scrape, totals: dict[Metric, int]) -> bool:
        """Adds the device's samples; False if any file failed (the rest still count)."""
        path = f"{self._class_dir}/{device}"
        try:
            plan = self._plan(device, path)
        except OSError:  # removed between listing and reading, or a directory it may not list
            self._drop(device)
            return False
        scrape.add(catalog.RDMA_DEVICE_INFO, 1, *plan.info)
        for port, port_dir in plan.ports:
            rate = _RATE.match(read_optional(f"{port_dir}/rate"))
            if rate:
                scrape.add(catalog.RDMA_PORT_RATE, float(rate.group(1)) * 1e9 / 8, device, port)
            if not plan.is_efa:  # EFA hard-codes ACTIVE/LinkUp: nothing to learn there
                for metric, name in _PORT_STATES:
                    state = _STATE.match(read_optional(f"{port_dir}/{name}"))
                    if state:
                        scrape.add(metric, int(state.group(1)), device, port)
        sums = [0] * len(plan.series)
        failed: set[int] = set()  # slots a failed file feeds: a partial sum would look like a counter reset
        for counter_dir in plan.counter_dirs:
            for slots, value in zip(counter_dir.slots, counter_dir.files.read(), strict=True):
                if value is None:
                    failed.update(slots)
                    continue
                for slot in slots:
                    sums[slot] += value
        for slot, ((metric, labels), value) in enumerate(zip(plan.series, sums, strict=True)):
            if slot in failed:
                continue
            if labels:
                scrape.family(metric).samples.append((labels, value))
            else:  # a node total
                totals[metric] = totals.get(metric, 0) + value
        if failed:
            self._drop(device)
        return not failed

    def _drop(self, device: str) -> None:
        plan = self._plans.pop(device, None)
        if plan:
            plan.close()

    def _plan(self, device: str, path: str) -> _Plan:
        """The device's plan, rebuilt when the device directory is new (a re-probed device has a new inode)."""
        stat = os.stat(path)
        key = (stat.st_dev, stat.st_ino)
        plan = self._plans.get(device)
        if plan is None or plan.key != key:
            self._drop(device)
            plan = self._plans[device] = self._make_plan(device, path, key)
        return plan

    def close(self) -> None:
        """Closes every kept file (the exporter is stopping)."""
        for device in list(self._plans):
            self._drop(device)

    def _make_plan(self, device: str, path: str, key: tuple[int, int]) -> _Plan:
        pci = f"{path}/device"
        driver = _link_name(f"{pci}/driver")
        is_efa = read_optional(f"{pci}/vendor") == EFA_PCI_VENDOR or driver == EFA_DRIVER
        port_names = list_dir(f"{path}/ports")
        pci_path = os.path.realpath(pci) if os.path.islink(pci) else ""
        info = (device, driver,
                os.path.basename(pci_path),
                read_optional(f"{pci}/numa_node"),
                read_optional(f"{path}/fw_ver"),
                read_optional(f"{self._module_dir}/{driver}/version") if driver else "",
                "true" if is_efa else "false",
                read_optional(f"{path}/ports/{port_names[0]}/link_layer") if port_names else "",
                nearest_gpu(pci_path) if pci_path else "")
        efa_device = self._efa_device if is_efa else {}
        listed = [(f"{path}/hw_counters", lambda name: _device_targets(device, name, is_efa, efa_device))]
        ports = []
        for port in port_names:
            port_dir = f"{path}/ports/{port}"
            ports.append((port, port_dir))
            for sub in ("counters", "counters_ext"):
                listed.append((f"{port_dir}/{sub}",
                               lambda name, p=port: ((catalog.RDMA_PORT_COUNTER, (device, p, name)),)))
            listed.append((f"{port_dir}/hw_counters", lambda name, p=port: _port_targets(device, p, name, is_efa)))
        series: dict[Target, int] = {}
        dirs = []
        for directory, targets_of in listed:
            names, targets = _counters(directory, targets_of)
            if names:
                slots = tuple(tuple(series.setdefault(t, len(series)) for t in feeds) for feeds in targets)
                dirs.append(_CounterDir(CounterFiles(directory, names), slots))
        return _Plan(key, info, is_efa, tuple(ports), tuple(dirs), tuple(series))


def _counters(path: str, targets_of: Callable[[str], tuple[Target, ...]]) -> tuple[list[str], list[tuple[Target, ...]]]:
    """A counter directory's files and the series each feeds, leaving out non-counters, files the
    hardware reports as N/A and files that feed no series."""
    names = [name for name in list_dir(path) if name not in _SKIP and not _not_available(f"{path}/{name}")]
    targets = [targets_of(name) for name in names]
    keep = [i for i, t in enumerate(targets) if t]
    return [names[i] for i in keep], [targets[i] for i in keep]


def _not_available(path: str) -> bool:
    """`N/A (no PMA)`: the port has no such counter, permanently."""
    return read_optional(path).startswith("N/A")


def _port_targets(device: str, port: str, name: str, is_efa: bool) -> tuple[Target, ...]:
    if is_efa and name in catalog.EFA_NODE_COUNTERS:
        return (catalog.EFA_PORT_COUNTERS[name], (device, port)), (catalog.EFA_NODE_COUNTERS[name], ())
    if is_efa and name in catalog.EFA_PORT_COUNTERS:
        return ((catalog.EFA_PORT_COUNTERS[name], (device, port)),)
    if is_efa and name in catalog.EFA_DEVICE_DETAIL_COUNTERS:
        return ()  # the combined layout repeats device counters here; they are read at device level
    return ((catalog.RDMA_PORT_HW_COUNTER, (device, port, name)),)


def _device_targets(device: str, name: str, is_efa: bool, efa_device: dict) -> tuple[Target, ...]:
    if is_efa and name in catalog.EFA_DEVICE_DETAIL_COUNTERS:
        return tuple((metric, (device, *extra)) for metric, extra in efa_device.get(name, ()))
    if is_efa and name in catalog.EFA_PORT_COUNTERS:
        return ()  # the combined layout repeats port counters here; they are read per port
    return ((catalog.RDMA_DEVICE_HW_COUNTER, (device, name)),)


def nearest_gpu(pci_path: str) -> str:
    """PCI address of the NVIDIA GPU under the same PCIe switch as the function at `pci_path`.

    Walks up the PCI hierarchy (never to the root complex) and returns the first GPU found below a
    bridge: the GPU whose traffic this device carries on a p5 (4 EFA devices per GPU). Empty when
    no GPU shares a switch or root port with it.
    """
    ancestor = os.path.dirname(pci_path)
    while _PCI_ADDRESS.match(os.path.basename(ancestor)):
        gpus = sorted(_gpus_below(ancestor))
        if gpus:
            return gpus[0]
        ancestor = os.path.dirname(ancestor)
    return ""


def _gpus_below(bridge: str) -> Iterator[str]:
    for name in list_dir(bridge):
        if _PCI_ADDRESS.match(name):
            child = os.path.join(bridge, name)
            if read_optional(f"{child}/vendor") == NVIDIA_PCI_VENDOR and read_optional(f"{child}/class").startswith(
                    ("0x0302", "0x0300")):
                yield name
            yield from _gpus_below(child)


def _link_name(path: str) -> str:
    """The last part of a symlink's target (a driver name); empty when absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


register(Registration(
    "rdma", "RDMA/EFA device and port counters from sysfs class/infiniband",
    lambda roots, detail: RdmaCollector(roots.sysfs, detail),
    (Option("collector.rdma.efa-device-detail", False, parse_bool,
            "also export EFA admin command, keep-alive and per-operation verbs error counters (11 series a device)",
            is_flag=True),),
    lambda values: values["collector.rdma.efa-device-detail"]))
