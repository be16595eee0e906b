"""Which GPU each EFA device serves, from the PCI hierarchy of a p5.48xlarge-shaped sysfs tree.

The tree (simulator/rdma_tree.py, relative symlinks as in sysfs) puts each group of four EFA
devices and one GPU under a PCIe switch, as a p5.48xlarge has them; one extra device sits on a root
port of its own, under no common switch with any GPU.
"""

from __future__ import annotations

from exporter.collectors.gpu import pci_address
from exporter.collectors.rdma import RdmaCollector
from simulator.node import SimulatedNode
from simulator.nvml import SimulatedNvml, load_profile
from simulator.rdma_tree import P5_EFA_BUSES, P5_GPU_BUSES, RdmaDevice, write_rdma_tree
from tests.helpers import samples, scrape, series


def test_each_gpu_has_the_four_efa_devices_under_its_switch(tmp_path):
    node = SimulatedNode(str(tmp_path), load_profile("p5.48xlarge"))
    write_rdma_tree(node.sysfs, [RdmaDevice("rdmap16s0", 0x10, 0, {"tx_bytes": 1})])  # on a root port alone
    infos = series(samples(scrape([RdmaCollector(node.sysfs)])), "gpuscope_rdma_device_info")
    by_gpu: dict[str, list[str]] = {}
    for info in infos:
        # an empty label is not exposed, so a device with no GPU nearby has no gpu_pci_address
        by_gpu.setdefault(info.get("gpu_pci_address", ""), []).append(info["device"])
    assert by_gpu.pop("") == ["rdmap16s0"]
    expected = {f"0000:{P5_GPU_BUSES[g]:02x}:00.0": sorted(f"rdmap{bus}s0" for bus in P5_EFA_BUSES[4 * g:4 * g + 4])
                for g in range(8)}
    assert {gpu: sorted(devices) for gpu, devices in by_gpu.items()} == expected
    numa = {info["device"]: info["numa_node"] for info in infos}
    assert numa["rdmap79s0"] == "0" and numa["rdmap201s0"] == "1"


def test_gpu_pci_bus_id_joins_with_the_efa_devices(tmp_path):
    """gpuscope_gpu_info's pci_bus_id is written as sysfs writes it, so the two info metrics join."""
    nvml = SimulatedNvml("p5.48xlarge")
    nvml.nvmlInit()
    bus_ids = [pci_address(str(nvml.nvmlDeviceGetPciInfo(nvml.nvmlDeviceGetHandleByIndex(i)).busId))
               for i in range(8)]
    assert bus_ids == [f"0000:{bus:02x}:00.0" for bus in P5_GPU_BUSES]
    assert pci_address("00000000:9A:00.0") == "0000:9a:00.0"
