"""The recorded series rules write and dashboards read (level:metric:operation names), and the
expressions both share: one catalog of recorded names, as exporter/catalog.py is of the metrics."""

from __future__ import annotations

from exporter import catalog as c

# Recording rule names (level:metric:operation).
BUSY = "instance_gpu:gpuscope_gpu_utilization_ratio:busy"
SM_CLOCK_MEDIAN = "instance:gpuscope_gpu_sm_clock_hertz:median_busy"
SM_ACTIVE_MEDIAN = "instance:gpuscope_gpu_sm_active_ratio:median_busy"
BUSY_GPUS = "instance:gpuscope_gpus_busy:count"
GPUS = "instance:gpuscope_gpus:count"
EFA_RATE = "instance:gpuscope_efa_bytes:rate1m"
EFA_MEDIAN = "cluster:gpuscope_efa_bytes:median_node_rate1m"
EFA_NOW = "instance:gpuscope_efa_bytes:irate1m"
EFA_NOW_MEDIAN = "cluster:gpuscope_efa_bytes:median_node_irate1m"
NODE_CLOCK_MEDIAN = "cluster:gpuscope_gpu_sm_clock_hertz:median_node"
NODE_ACTIVE_MEDIAN = "cluster:gpuscope_gpu_sm_active_ratio:median_node"
# Job-scoped peers, where job attribution exists (gpuscope_gpu_job_info): each busy GPU's value with
# its job_id, recorded once and read by the job medians and the job straggler alert.
JOB_SM_CLOCK = "instance_gpu_job_id:gpuscope_gpu_sm_clock_hertz:busy"
JOB_SM_ACTIVE = "instance_gpu_job_id:gpuscope_gpu_sm_active_ratio:busy"
JOB_CLOCK_MEDIAN = "job_id:gpuscope_gpu_sm_clock_hertz:median_busy"
JOB_ACTIVE_MEDIAN = "job_id:gpuscope_gpu_sm_active_ratio:median_busy"
NODE_IN_JOB_CLOCK_MEDIAN = "instance_job_id:gpuscope_gpu_sm_clock_hertz:median_busy"
JOB_NODE_CLOCK_MEDIAN = "job_id:gpuscope_gpu_sm_clock_hertz:median_node"
JOB_NODES = "job_id:gpuscope_nodes:count"
# The job view's spreads: one series per job, so a panel over a half-fleet job reads a few series,
# not one per GPU (bench/scale.py: 11 s for the SM clock of 8,192 GPUs over 6 h, read per GPU).
JOB_CLOCK_MIN = "job_id:gpuscope_gpu_sm_clock_hertz:min_busy"
JOB_CLOCK_MAX = "job_id:gpuscope_gpu_sm_clock_hertz:max_busy"
JOB_ACTIVE_MIN = "job_id:gpuscope_gpu_sm_active_ratio:min_busy"
JOB_POWER = "job_id:gpuscope_gpu_power_watts:sum"
# The rank a job waits for (issue 15): each job's GPUs, busy GPUs and the recent high of its median
# SM activity; each communicator's median collective time and bus bandwidth and their recent low/high.
JOB_GPUS = "job_id:gpuscope_gpus:count"
JOB_BUSY_GPUS = "job_id:gpuscope_gpus_busy:count"
JOB_ACTIVE_BASELINE = "job_id:gpuscope_gpu_sm_active_ratio:median_busy_baseline"
JOB_BUSIEST = "job_id:gpuscope_gpu_sm_active_ratio:max_busy"
JOB_NEAR_BUSIEST = "job_id:gpuscope_gpus_near_busiest:count"
NCCL_EXEC_MEDIAN = "job_id_comm_collective:gpuscope_nccl_collective_exec_time_seconds:median"
NCCL_EXEC_BASELINE = "job_id_comm_collective:gpuscope_nccl_collective_exec_time_seconds:median_baseline"
NCCL_BW_MEDIAN = "job_id_comm_collective:gpuscope_nccl_bus_bandwidth_bytes_per_second:median"
NCCL_BW_BASELINE = "job_id_comm_collective:gpuscope_nccl_bus_bandwidth_bytes_per_second:median_baseline"
# Each node's slowest rank per communicator and collective (a third of the per-rank series): read by
# NcclBandwidthDegraded instead of every rank, twice.
NCCL_BW_NODE_MIN = "instance_job_id_comm_collective:gpuscope_nccl_bus_bandwidth_bytes_per_second:min"
# The ranks whose collectives are far shorter than their risen communicator median (usually none):
# the GpuStraggler NCCL evidence and the goodput wait share read these instead of every rank.
NCCL_EARLY_RANKS = "instance_gpu_job_id:gpuscope_nccl_collective_exec_time_seconds:early_ratio"
COMM = "job_id, comm, collective"
# NCCL RAS (issue 26): the share of a job's GPUs spinning in NCCL kernels (pinned utilization at
# near-idle power), the hardware's half of a hang.
JOB_SPINNING = "job_id:gpuscope_gpus_spinning:ratio"
# The freshest NCCL Inspector file of each running job: how long ago any of its GPUs completed a collective.
JOB_INSPECTOR_AGE = "job_id:gpuscope_nccl_snapshot_age_seconds:min"
# The GPU health systems DCGM warns about or fails (usually none), recorded so the DCGM alerts read
# the 8 health series of every GPU once (in halves: GPU_HALVES).
DCGM_NOT_PASSING = "instance_gpu_system:gpuscope_gpu_dcgm_health:not_passing"
# GPUs whose clocks a hardware or thermal reason holds down: usually none, so the thermal alerts and
# the fleet's throttled-GPU table read a handful of series instead of every GPU's reasons.
THROTTLED = "instance_gpu_reason:gpuscope_gpu_clock_event_active:throttling"
THROTTLE_REASONS = {"hardware": "hw_slowdown|hw_thermal_slowdown|hw_power_brake", "software": "sw_thermal_slowdown"}
# Fleet dashboard series. A 6 h panel costs about 0.1 ms per series on this machine's Prometheus, so
# a fleet-wide panel reads these aggregates (one series per cluster, filesystem or target), never
# one series per node or GPU (bench/scale.py).
FLEET_QUANTILES = {c.GPU_POWER.name: "cluster:gpuscope_gpu_power_watts:quantile",
                   c.GPU_TEMPERATURE.name: "cluster:gpuscope_gpu_temperature_celsius:quantile"}
FLEET_AVERAGES = {metric.name: f"cluster:{metric.name}:avg"
                  for metric in (c.GPU_UTILIZATION, c.GPU_SM_ACTIVE, c.GPU_TENSOR_ACTIVE)}
EFA_NODE_QUANTILES = "cluster:gpuscope_efa_bytes:quantile_node_rate1m"
EFA_ERROR_COUNTERS = ("rx_drops", "retrans_pkts", "retrans_timeout_events", "unresponsive_remote_events",
                      "impaired_remote_conn_events")
FLEET_EFA = {name: f"cluster:{c.EFA_NODE_COUNTERS[name].name.removesuffix('_total')}:rate1m"
             for name in ("tx_bytes", "rx_bytes", *EFA_ERROR_COUNTERS)}
NODE_NVLINK_ERRORS = "instance_type:gpuscope_gpu_nvlink_errors:rate5m"
NVLINK_ERROR_CLASSES = {"retries": "replay|recovery", "crc": "crc_flit|crc_data"}
FLEET_NVLINK_ERRORS = "cluster_type:gpuscope_gpu_nvlink_errors:rate5m"
FS_RATES = {metric.name: f"cluster_fs:{metric.name.removesuffix('_total')}:rate1m"
            for metric in (c.LUSTRE_READ_BYTES, c.LUSTRE_WRITE_BYTES)}
FS_OPERATION_RATES = {metric.name: f"cluster_fs_operation:{metric.name.removesuffix('_total')}:rate1m"
                      for metric in (c.LUSTRE_OPERATIONS, c.LUSTRE_OPERATION_SECONDS)}
TARGET_CLIENTS_UNHEALTHY = "cluster_fs_target:gpuscope_lustre_import_unhealthy:count"
TARGET_RPCS_IN_FLIGHT = "cluster_fs_target:gpuscope_lustre_import_rpcs_in_flight:sum"
TARGET_RECONNECTS = "cluster_fs_target:gpuscope_lustre_import_connection_attempts:increase5m"
QUANTILES = (0.05, 0.5, 0.95)
# Goodput (issue 18, docs/goodput.md): GPU-seconds lost per second, i.e. GPUs' worth of time lost, by
# cause. The node-level records exist for every node and job of the moment (0 when nothing is lost),
# so their 5-minute averages are true averages.
NODE_JOB_GPUS = "instance_job_id:gpuscope_gpus:count"
NODE_GPU_LOST = "instance:gpuscope_gpu_lost:bool"
NODE_STALLED = "instance:gpuscope_node_stalled:bool"
JOB_GPU_LOST = "job_id:gpuscope_job_gpu_lost:bool"
JOB_STALLED = "job_id:gpuscope_job_stalled:bool"
JOB_WAIT_SHARE = "job_id:gpuscope_job_waiting:ratio"
LOST_NOW = "instance_job_id_cause:gpuscope_gpu_seconds_lost:sum"
LOST_JOB = "job_id_cause:gpuscope_gpu_seconds_lost:rate5m"
LOST_CLUSTER = "cluster_cause:gpuscope_gpu_seconds_lost:rate5m"
ALLOCATED = "cluster:gpuscope_gpus_allocated:count"
GOODPUT = "cluster:gpuscope_goodput:ratio5m"
GPU_PRICE = "instance:gpuscope_gpu_hour_price:dollars"
JOB_PRICE = "job_id:gpuscope_gpu_hour_price:dollars"
COST_JOB = "job_id_cause:gpuscope_gpu_lost:dollars_per_hour"
COST_CLUSTER = "cluster_cause:gpuscope_gpu_lost:dollars_per_hour"
CAUSES = ("lost_gpu", "stall", "straggler", "throttle", "idle_allocated")  # in precedence order


def counter_rise(counter: str, window: str) -> str:
    """How much `counter` rose within the window: the same answer on Prometheus and VictoriaMetrics.

    Not `increase()`: MetricsQL's counts a new series' first sample as an increase when it is small
    (VictoriaMetrics 1.79: a Lustre target's connection counter starts at 1, so every healthy target
    looked evicted at startup), and both engines count the value after a reset as new (a remount's
    first connection, an error counter back from a driver reload). The rise above the window's
    lowest sample has neither trap: a new, restarted or reset series rises only from where it was
    first seen again.
    """
    return f"({counter} - min_over_time({counter}[{window}]))"


def ras_rank(expr: str, hosts: str = c.NCCL_RAS_HOST.name) -> str:
    """`expr` (series naming a rank by `host` and `nvml_dev`) as one series per GPU on the node that
    holds it: `instance` from the node whose exporter lists that address in `hosts`, `gpu` the NVML index."""
    per_gpu = f"max by (job_id, host, nvml_dev) ({expr})"
    return (f'label_replace({per_gpu}, "gpu", "$1", "nvml_dev", "(.*)")'
            f" * on (host) group_left (cluster, instance) {hosts}")


def fleet_quantiles(metric: str) -> str:
    """The 5th, 50th and 95th percentile of `metric` per cluster, one series each, told apart by `quantile`."""
    return " or ".join(f'label_replace(quantile by (cluster) ({q}, {metric}), "quantile", "{q}", "", "")'
                       for q in QUANTILES)


def fleet_rate(metric: str, by: str, window: str = "1m") -> str:
    """A counter's rate summed over the fleet, `by` the labels kept."""
    return f"sum by ({by}) (rate({metric}[{window}]))"
