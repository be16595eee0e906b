"""Built-in fault scenarios for simulated clusters, one YAML file each; users write their own alike.

Names only, so the command line lists them without loading the simulator."""

SCENARIOS = ("healthy", "straggler", "thermal_throttle", "power_brake", "collective_stall", "efa_stall",
             "efa_retransmit_storm", "nvlink_errors", "gpu_lost", "ecc_uncorrectable", "row_remap_failure",
             "lustre_eviction", "compute_straggler", "nccl_late_arrival", "nccl_bandwidth_drop", "job_waits",
             "efa_device_missing", "rdma_port_down", "kernel_xid", "sxid_fatal", "nvlink_down", "nccl_hang",
             "nccl_hang_launched", "nccl_process_dead", "nccl_hang_inspector", "nccl_ras_slow", "a100_stragglers",
             "dcgm_health_fail", "demo")
