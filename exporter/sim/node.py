"""A whole simulated node on disk: what `gpuscope simulate` writes for the exporter to read."""

from __future__ import annotations

import os
import shutil

from exporter.sim.lustre_tree import LustreClient, write_lustre_tree
from exporter.sim.rdma_tree import p5_efa_devices, write_rdma_tree

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


def write_p5_node(root: str, layout: str = "split") -> str:
    """Writes a p5.48xlarge's EFA devices and an FSx for Lustre client under `root`; returns the sysfs root."""
    sysfs = os.path.join(root, "sys")
    if os.path.exists(sysfs):
        shutil.rmtree(sysfs)
    write_rdma_tree(sysfs, p5_efa_devices(P5_EFA_LEVELS), layout=layout)
    write_lustre_tree(sysfs, LustreClient(read_bytes=912_337_190_912, reads=1_844_117, write_bytes=120_334_110_720,
                                          writes=29_377))
    return sysfs
