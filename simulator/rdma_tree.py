"""Writes RDMA sysfs trees shaped like real nodes: a p5.48xlarge's 32 EFA devices, or Mellanox HCAs.

The layout mirrors the kernel's: `class/infiniband/<dev>` is a relative symlink into
`devices/pci…/infiniband/<dev>`, `<dev>/device` points back at the PCI function, whose `driver`
links to `bus/pci/drivers/<driver>`. Trees are relocatable, so tests can copy or move them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from simulator.files import relative_symlink, rewrite_in_place, write_file

# Counter names the EFA driver exports (amzn-drivers kernel/linux/efa/src/efa_verbs.c).
EFA_PORT_COUNTERS = (
    "tx_bytes", "tx_pkts", "rx_bytes", "rx_pkts", "rx_drops", "send_bytes", "send_wrs", "recv_bytes",
    "recv_wrs", "rdma_read_wrs", "rdma_read_bytes", "rdma_read_wr_err", "rdma_read_resp_bytes",
    "rdma_write_wrs", "rdma_write_bytes", "rdma_write_wr_err", "rdma_write_recv_bytes", "retrans_bytes",
    "retrans_pkts", "retrans_timeout_events", "unresponsive_remote_events", "impaired_remote_conn_events",
)
EFA_DEVICE_COUNTERS = (
    "submitted_cmds", "completed_cmds", "cmds_err", "no_completion_cmds", "keep_alive_rcvd", "alloc_pd_err",
    "create_qp_err", "create_cq_err", "reg_mr_err", "alloc_ucontext_err", "create_ah_err", "mmap_err",
)
# PCI bus numbers (decimal, as rdma-core's rdmap<bus>s<slot> names show them) of a p5.48xlarge's EFA
# devices, four per GPU; from a real P5 scrape (fixtures/awslabs-awsome-distributed-ai). Each group
# of four shares a PCIe switch with the GPU on the next bus (0x53 for 0x4f-0x52, ...).
P5_EFA_BUSES = (79, 80, 81, 82, 96, 97, 98, 99, 113, 114, 115, 116, 130, 131, 132, 133,
                147, 148, 149, 150, 164, 165, 166, 167, 181, 182, 183, 184, 198, 199, 200, 201)
P5_GPU_BUSES = tuple(P5_EFA_BUSES[4 * g + 3] + 1 for g in range(8))
NVIDIA_PCI_VENDOR = "0x10de"
# ports/<n>/state and phys_state as the kernel writes them (include/rdma/ib_verbs.h enum ib_port_state,
# ib_port_phys_state): a working port, and one whose link went down (cable out, switch port disabled).
PORT_ACTIVE = ("4: ACTIVE", "5: LinkUp")
PORT_DOWN = ("1: DOWN", "3: Disabled")
# Names mlx5 exposes under ports/1/counters and ports/1/hw_counters (ConnectX-6/7).
MLX5_PORT_COUNTERS = (
    "VL15_dropped", "excessive_buffer_overrun_errors", "link_downed", "link_error_recovery",
    "local_link_integrity_errors", "multicast_rcv_packets", "multicast_xmit_packets", "port_rcv_constraint_errors",
    "port_rcv_data", "port_rcv_errors", "port_rcv_packets", "port_rcv_remote_physical_errors",
    "port_rcv_switch_relay_errors", "port_xmit_constraint_errors", "port_xmit_data", "port_xmit_discards",
    "port_xmit_packets", "port_xmit_wait", "symbol_error", "unicast_rcv_packets", "unicast_xmit_packets",
    "port_rcv_data_64", "port_xmit_data_64", "port_rcv_packets_64", "port_xmit_packets_64",
)
MLX5_HW_COUNTERS = (
    "duplicate_request", "implied_nak_seq_err", "local_ack_timeout_err", "np_cnp_sent", "np_ecn_marked_roce_packets",
    "out_of_buffer", "out_of_sequence", "packet_seq_err", "req_cqe_error", "req_cqe_flush_error",
    "req_remote_access_errors", "req_remote_invalid_request", "req_rnr_retries_exceeded",
    "req_transport_retries_exceeded", "resp_cqe_error", "resp_cqe_flush_error", "resp_local_length_error",
    "resp_remote_access_errors", "rnr_nak_retry_err", "roce_adp_retrans", "roce_adp_retrans_to",
    "roce_slow_restart", "roce_slow_restart_cnps", "roce_slow_restart_trans", "rp_cnp_handled", "rp_cnp_ignored",
    "rx_atomic_requests", "rx_dct_connect", "rx_icrc_encapsulated", "rx_read_requests", "rx_write_requests",
    "lifespan", "resp_rnr_nak", "rx_atomic_req_err", "duplicate_request_err",
)


@dataclass
class RdmaDevice:
    """One RDMA device to write: its name, PCI placement and counter values."""

    name: str
    pci_bus: int
    numa_node: int
    port_counters: dict[str, int] = field(default_factory=dict)
    device_counters: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # IB PMA ports/1/counters (Mellanox)
    switch_bus: int | None = None  # the PCIe switch it sits under; None: a root port of its own

    @property
    def pci_address(self) -> str:
        return f"0000:{self.pci_bus:02x}:00.0"


def p5_efa_devices(values: Mapping[str, int] | None = None) -> list[RdmaDevice]:
    """The 32 EFA devices of a p5.48xlarge; counter i of device d is `values[name] + d` (or a default)."""
    devices = []
    for index, bus in enumerate(P5_EFA_BUSES):
        port = {name: (values or {}).get(name, 1000 * (i + 1)) + index for i, name in enumerate(EFA_PORT_COUNTERS)}
        dev = {name: (values or {}).get(name, i) + index for i, name in enumerate(EFA_DEVICE_COUNTERS)}
        devices.append(RdmaDevice(f"rdmap{bus}s0", bus, index // 16, port, dev,
                                  switch_bus=P5_EFA_BUSES[index // 4 * 4] - 1))
    return devices


def _pci_parent(sysfs: str, bus: int, switch_bus: int | None) -> str:
    """The directory a PCI function hangs under: a switch's upstream port, or a root port of its own."""
    root = (switch_bus if switch_bus is not None else bus) - 1
    parent = os.path.join(sysfs, "devices", f"pci0000:{root:02x}", f"0000:{root:02x}:01.0")
    return os.path.join(parent, f"0000:{switch_bus:02x}:00.0") if switch_bus is not None else parent


def write_gpu_functions(sysfs: str, gpus: Iterable[tuple[int, int, int | None]]) -> None:
    """NVIDIA GPUs as PCI functions (bus, NUMA node, switch bus), for the EFA-to-GPU topology."""
    for bus, numa_node, switch_bus in gpus:
        pci = os.path.join(_pci_parent(sysfs, bus, switch_bus), f"0000:{bus:02x}:00.0")
        write_file(os.path.join(pci, "vendor"), NVIDIA_PCI_VENDOR)
        write_file(os.path.join(pci, "class"), "0x030200")
        write_file(os.path.join(pci, "numa_node"), str(numa_node))


def mlx5_devices(count: int) -> list[RdmaDevice]:
    """`count` single-port ConnectX HCAs with every counter set to a distinct value."""
    return [RdmaDevice(f"mlx5_{n}", 0x10 + n, n * 2 // max(count, 1), {name: n * 1000 + i for i, name in
                       enumerate(MLX5_HW_COUNTERS)}, {}, {name: n * 1000 + i for i, name in
                       enumerate(MLX5_PORT_COUNTERS)}) for n in range(count)]


def write_rdma_tree(sysfs: str, devices: Iterable[RdmaDevice], *, driver: str = "efa", vendor: str = "0x1d0f",
                    layout: str = "split", driver_version: str = "2.17.1g", firmware: str = "0.0.0.0",
                    rate: str = "100 Gb/sec (4X EDR)") -> None:
    """Write the devices under `sysfs`. layout "split" is kernel >= 5.15 (port and device counters
    apart); "combined" is older kernels, where both directories list every counter."""
    if layout not in ("split", "combined"):
        raise ValueError(f"unknown layout {layout!r}")
    write_file(os.path.join(sysfs, "module", driver, "version"), driver_version)
    os.makedirs(os.path.join(sysfs, "bus", "pci", "drivers", driver), exist_ok=True)
    for dev in devices:
        pci = os.path.join(_pci_parent(sysfs, dev.pci_bus, dev.switch_bus), dev.pci_address)
        write_file(os.path.join(pci, "vendor"), vendor)
        write_file(os.path.join(pci, "numa_node"), str(dev.numa_node))
        relative_symlink(os.path.join(sysfs, "bus", "pci", "drivers", driver), os.path.join(pci, "driver"))
        ib = os.path.join(pci, "infiniband", dev.name)
        relative_symlink(pci, os.path.join(ib, "device"))
        relative_symlink(ib, os.path.join(sysfs, "class", "infiniband", dev.name))
        write_file(os.path.join(ib, "fw_ver"), firmware)
        write_file(os.path.join(ib, "board_id"), "EFA" if driver == "efa" else "MT_0000000838")
        write_file(os.path.join(ib, "hca_type"), "" if driver == "efa" else "MT4129")
        write_file(os.path.join(ib, "node_type"), "1: CA")
        port_dir = os.path.join(ib, "ports", "1")
        write_file(os.path.join(port_dir, "link_layer"), "Unspecified" if driver == "efa" else "InfiniBand")
        write_file(os.path.join(port_dir, "rate"), rate)
        write_port_state(sysfs, dev.name, PORT_ACTIVE)
        write_counters(sysfs, dev, layout)


def write_port_state(sysfs: str, device: str, state: tuple[str, str], staging: str | None = None) -> None:
    """Port 1's `state` and `phys_state`, e.g. PORT_ACTIVE or PORT_DOWN."""
    port_dir = os.path.join(sysfs, "class", "infiniband", device, "ports", "1")
    write_file(os.path.join(port_dir, "state"), state[0], staging)
    write_file(os.path.join(port_dir, "phys_state"), state[1], staging)


def write_counters(sysfs: str, dev: RdmaDevice, layout: str = "split", staging: str | None = None,
                   unchanged: Mapping[str, int] | None = None) -> None:
    """Writes a device's counter files with its current values, skipping those equal to `unchanged`."""
    ib = os.path.join(sysfs, "class", "infiniband", dev.name)
    everything = {**dev.port_counters, **dev.device_counters}
    port_values = everything if layout == "combined" else dev.port_counters
    device_values = everything if layout == "combined" else dev.device_counters
    _write_counters(os.path.join(ib, "ports", "1", "hw_counters"), port_values, staging, unchanged)
    if device_values:
        _write_counters(os.path.join(ib, "hw_counters"), device_values, staging, unchanged)
    if dev.counters:
        _write_counters(os.path.join(ib, "ports", "1", "counters"), dev.counters, staging, unchanged)


def _write_counters(directory: str, values: Mapping[str, int], staging: str | None = None,
                    unchanged: Mapping[str, int] | None = None) -> None:
    """A live node (`staging` given) changes its files in place, as sysfs does; a new tree writes them."""
    write = rewrite_in_place if staging is not None else write_file
    for name, value in values.items():
        if unchanged is None or unchanged.get(name) != value:
            write(os.path.join(directory, name), str(value), staging)
