"""A whole simulated node on disk: the sysfs tree `gpuscope simulate` writes and `--simulate` keeps live.

Counters advance at the rates of a busy training node (EFA traffic of tens of GB/s across the
node, steady Lustre reads, checkpoint writes), so rate() in Prometheus shows a working node.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any

from exporter.sim.lustre_tree import LustreClient, write_lustre_tree
from exporter.sim.rdma_tree import P5_EFA_BUSES, RdmaDevice, p5_efa_devices, write_counters, write_rdma_tree

# Counter levels of a p5.48xlarge some hours into a training job (bytes and packets since boot).
P5_EFA_LEVELS = {
    "tx_bytes": 48_213_556_011_008, "rx_bytes": 48_190_113_290_240, "tx_pkts": 5_891_002_113,
    "rx_pkts": 5_888_140_556, "send_bytes": 1_211_884_032, "send_wrs": 3_150_220, "recv_bytes": 1_209_774_080,
    "recv_wrs": 3_148_901, "rdma_read_bytes": 40_117_239_808_000, "rdma_read_wrs": 611_880_223,
    "rdma_read_resp_bytes": 40_102_557_696_000, "rdma_write_bytes": 7_884_220_334_080,
    "rdma_write_wrs": 120_303_442, "rdma_write_recv_bytes": 7_880_441_290_752, "submitted_cmds": 2_214,
    "completed_cmds": 2_214, "keep_alive_rcvd": 86_113,
}
for _name in ("rx_drops", "rdma_read_wr_err", "rdma_write_wr_err", "retrans_bytes", "retrans_pkts",
              "retrans_timeout_events", "unresponsive_remote_events", "impaired_remote_conn_events", "cmds_err",
              "no_completion_cmds", "alloc_pd_err", "create_qp_err", "create_cq_err", "reg_mr_err",
              "alloc_ucontext_err", "create_ah_err", "mmap_err"):
    P5_EFA_LEVELS[_name] = 0
# Per-device rates while training: ~1.5 GB/s each way per device, 48 GB/s per p5 node.
EFA_RATES = {"tx_bytes": 1.5e9, "rx_bytes": 1.5e9, "tx_pkts": 1.5e9 / 8192, "rx_pkts": 1.5e9 / 8192,
             "rdma_read_bytes": 1.2e9, "rdma_read_wrs": 1.2e9 / 65536, "rdma_read_resp_bytes": 1.2e9,
             "rdma_write_bytes": 0.3e9, "rdma_write_wrs": 0.3e9 / 65536, "rdma_write_recv_bytes": 0.3e9,
             "send_bytes": 2e5, "send_wrs": 50, "recv_bytes": 2e5, "recv_wrs": 50, "keep_alive_rcvd": 1}
LUSTRE_READ_RATE = 400e6  # steady data loading, bytes/s
CHECKPOINT_EVERY, CHECKPOINT_SECONDS, CHECKPOINT_RATE = 600.0, 30.0, 2e9  # write bursts


def efa_devices(count: int) -> list[RdmaDevice]:
    """The node's EFA devices: p5's 32, or the first `count` bus numbers of that layout."""
    return p5_efa_devices(P5_EFA_LEVELS)[:count] if count <= len(P5_EFA_BUSES) else []


def write_p5_node(root: str, layout: str = "split") -> str:
    """Writes a p5.48xlarge's EFA devices and an FSx for Lustre client under `root`; returns the sysfs root."""
    node = SimulatedNode(root, {"efa_devices": 32}, layout=layout, clock=lambda: 0.0)
    return node.sysfs


class SimulatedNode:
    """Writes a node's tree once, then `advance()` (or the thread from `start()`) moves its counters on."""

    def __init__(self, root: str, profile: dict[str, Any], layout: str = "split",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sysfs = os.path.join(root, "sys")
        self._staging = os.path.join(root, ".staging")
        self._layout = layout
        self._clock = clock
        self._start = clock()
        self._stop = threading.Event()
        if os.path.exists(self.sysfs):
            shutil.rmtree(self.sysfs)
        os.makedirs(self._staging, exist_ok=True)
        self.devices = efa_devices(int(profile.get("efa_devices", 32)))
        self._base = [(dict(d.port_counters), dict(d.device_counters)) for d in self.devices]
        write_rdma_tree(self.sysfs, self.devices, layout=layout)
        self.lustre = LustreClient(read_bytes=912_337_190_912, reads=1_844_117, write_bytes=120_334_110_720,
                                   writes=29_377)
        self._lustre_base = (self.lustre.read_bytes, self.lustre.reads, self.lustre.write_bytes, self.lustre.writes)
        write_lustre_tree(self.sysfs, self.lustre)

    def advance(self) -> None:
        """Rewrites every counter for the time elapsed since the start."""
        elapsed = self._clock() - self._start
        for device, (port, dev) in zip(self.devices, self._base, strict=True):
            device.port_counters = {k: int(v + EFA_RATES.get(k, 0) * elapsed) for k, v in port.items()}
            device.device_counters = {k: int(v + EFA_RATES.get(k, 0) * elapsed) for k, v in dev.items()}
            write_counters(self.sysfs, device, self._layout, self._staging)
        read_bytes, reads, write_bytes, writes = self._lustre_base
        written = _checkpoint_bytes(elapsed)
        self.lustre.read_bytes = int(read_bytes + LUSTRE_READ_RATE * elapsed)
        self.lustre.reads = int(reads + LUSTRE_READ_RATE * elapsed / 1_048_576)
        self.lustre.write_bytes = int(write_bytes + written)
        self.lustre.writes = int(writes + written / 4_194_304)
        write_lustre_tree(self.sysfs, self.lustre, time.time(), self._staging)

    def start(self, interval: float = 5.0) -> None:
        def run() -> None:
            while not self._stop.wait(interval):
                self.advance()

        threading.Thread(target=run, name="simulated-node", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def _checkpoint_bytes(elapsed: float) -> float:
    """Bytes written by periodic checkpoints up to `elapsed` seconds: 30 s bursts every 10 minutes."""
    full, rest = divmod(elapsed, CHECKPOINT_EVERY)
    return (full * CHECKPOINT_SECONDS + min(rest, CHECKPOINT_SECONDS)) * CHECKPOINT_RATE
