"""Every gpuscope alert and recording rule, defined once in Python from the metric catalog.

`groups(settings)` returns the rule groups; `alerts/render.py` writes them as a Prometheus rules
file, a Kubernetes PrometheusRule and a Grafana provisioning file. Peer baselines (medians over the
busy GPUs of a node, and over the nodes) are recording rules, so alerts and dashboards read a few
pre-aggregated series instead of recomputing medians over every GPU of the fleet.

Node identity is `instance`; GPU alerts carry `gpu` and `uuid`, EFA alerts `device`, Lustre alerts
`fs` and `target`, because each alert keeps the labels of the series it is about. The expressions
are written in these canonical labels; `groups()` fits them to the settings (selector, cluster and
node label names, alerts switched off or given another severity).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from alerts.settings import Settings, load_settings
from exporter import catalog as c
from toolkit.durations import seconds


@dataclass(frozen=True)
class Record:
    record: str
    expr: str


@dataclass(frozen=True)
class Alert:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    labels: tuple[tuple[str, str], ...] = ()  # tells apart two rules of one alert with the same severity
    cost: str = ""  # the `cost` annotation (Prometheus formats only: Grafana's templates cannot query)

    def runbook(self, settings: Settings) -> str:
        return f"{settings.runbook_base_url}/README.md#{self.alert.lower()}"


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Record | Alert, ...]
    selector: str = ""  # another job's series (the remediation receiver's); "" the exporters' selector
    # Evaluated this often instead of every scrape interval: the cheap per-node groups whose pages have
    # tight targets (docs/alerts.md, time to page), where waiting up to a whole interval for the next
    # evaluation would cost a third of the budget.
    interval: str = ""


# Faster than the shipped scrape interval, so a sample is evaluated within 5 s of its arrival.
FAST_EVALUATION = "5s"


@dataclass(frozen=True)
class Part:
    """One part of a family too large for one group's read: its group name's suffix and its matcher."""

    suffix: str
    matcher: str

    def of(self, series: str, *matchers: str) -> str:
        """`series` (a metric or record name) selected by `matchers` and to this part."""
        return f"{series}{{{', '.join((*matchers, self.matcher))}}}"


# NCCL's per-rank series and DCGM's health series are eight a GPU: at 2,048 nodes one read of such a
# family is about 1 s on 2 cores, a rule group's whole budget (docs/scale). Their groups read them in
# parts, a group each, split by a label the result keeps, so the parts write disjoint series of one
# record or alert: a result per GPU splits by the GPU index's last digit (even on any node size), a
# result per communicator by collective (every rank of a communicator stays in one read).
GPU_HALVES = (Part("even-gpus", 'gpu=~".*[02468]"'), Part("odd-gpus", 'gpu!~".*[02468]"'))
# The early ranks join every rank's time to its communicator's median: a half of the ranks took up to
# 1.06 s on Prometheus and 1.3 s on VictoriaMetrics at 2,048 nodes, so they are read in quarters.
GPU_QUARTERS = tuple(Part(f"gpus-{digits}", f'gpu=~".*[{digits}]"') for digits in ("048", "159", "26", "37"))
_REDUCTIONS = "AllReduce|ReduceScatter|Reduce"
COLLECTIVE_HALVES = (Part("reductions", f'collective=~"{_REDUCTIONS}"'),
                     Part("other-collectives", f'collective!~"{_REDUCTIONS}"'))


def _xids(xids: tuple[int, ...]) -> str:
    return "|".join(str(x) for x in xids)


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
# Alerts about faults that cost the jobs on their node: their `cost` annotation says how much.
COSTLY_ALERTS = frozenset({"CollectiveStall", "EfaTrafficStalled", "GpuStraggler", "NodeStraggler",
                           "NcclBandwidthDegraded", "GpuThermalThrottling", "GpuPowerBrakeSlowdown", "GpuLost",
                           "GpuXidCritical", "GpuMissing", "EfaDeviceMissing", "NvlinkInactive", "LustreIoStalled"})


def fleet_quantiles(metric: str) -> str:
    """The 5th, 50th and 95th percentile of `metric` per cluster, one series each, told apart by `quantile`."""
    return " or ".join(f'label_replace(quantile by (cluster) ({q}, {metric}), "quantile", "{q}", "", "")'
                       for q in QUANTILES)


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


def nccl_ranks(metric: str, s: Settings, part: Part) -> str:
    """A collective's per-rank series (message-size buckets aggregated) in communicators large enough
    to have peers, in one part."""
    small = "|".join(str(n) for n in range(1, s.straggler_min_gpus))
    return part.of(metric, 'message_size="all"', f'nranks!~"{small}"')


def near_busiest(s: Settings) -> str:
    """The busy GPUs of each job within busiest_ratio of the job's busiest."""
    return f"{JOB_SM_ACTIVE} >= on (job_id) group_left {JOB_BUSIEST} / {s.busiest_ratio}"


def job_wait_records(s: Settings) -> list[Group]:
    """What the waited-for-rank alerts compare: a job's GPUs and busy GPUs, its median SM activity's
    recent high; each communicator's median collective time and bandwidth, their recent low and high.
    One series per job or communicator, so the look back over hours stays cheap."""
    window = s.job_baseline_window
    return [
        Group("gpuscope-job-waits", (
            Record(JOB_GPUS, f"count by (job_id) ({c.GPU_JOB_INFO.name})"),
            Record(JOB_BUSY_GPUS, f"count by (job_id) ({JOB_SM_ACTIVE})"),
            Record(JOB_ACTIVE_BASELINE, f"max_over_time({JOB_ACTIVE_MEDIAN}[{window}])"),
        )),
        # How many GPUs of a job are within busiest_ratio of its busiest: 1 when one GPU stands alone
        # (the rank waited for), several in a pipeline whose first and last stages are always busier.
        Group("gpuscope-job-busiest", (
            Record(JOB_BUSIEST, f"max by (job_id) ({JOB_SM_ACTIVE})"),
            Record(JOB_NEAR_BUSIEST, f"count by (job_id) ({near_busiest(s)})"),
            Record(JOB_ACTIVE_MIN, f"min by (job_id) ({JOB_SM_ACTIVE})"),
        )),
        # Each group reads half of NCCL's per-rank series once (COLLECTIVE_HALVES).
        *(group for half in COLLECTIVE_HALVES for group in (
            Group(f"gpuscope-nccl-exec-{half.suffix}", (
                Record(NCCL_EXEC_MEDIAN, f"quantile by ({COMM}) (0.5, {nccl_ranks(c.NCCL_EXEC_TIME.name, s, half)})"),
                Record(NCCL_EXEC_BASELINE, f"min_over_time({half.of(NCCL_EXEC_MEDIAN)}[{window}])"),
            )),
            Group(f"gpuscope-nccl-bandwidth-{half.suffix}", (
                Record(NCCL_BW_MEDIAN, f"quantile by ({COMM}) (0.5, {nccl_ranks(c.NCCL_BUS_BANDWIDTH.name, s, half)})"),
                Record(NCCL_BW_BASELINE, f"max_over_time({half.of(NCCL_BW_MEDIAN)}[{window}])"),
            )),
            Group(f"gpuscope-nccl-bandwidth-nodes-{half.suffix}", (
                Record(NCCL_BW_NODE_MIN,
                       f"min by (cluster, instance, {COMM}) ({nccl_ranks(c.NCCL_BUS_BANDWIDTH.name, s, half)})"),
            )),
        )),
    ]


def recording_rules(s: Settings) -> list[Group]:
    """Peer baselines and fleet dashboard series, in small groups: Prometheus evaluates groups in
    parallel and the rules of one group in turn. At 2,048 nodes reading one series of every GPU
    costs about 0.2 s on this machine (bench/scale.py), so a group reads at most about four, and a
    rule that reads more than two sits alone. A rule reading another group's output sees it up to
    one interval late."""
    busy = f"{c.GPU_UTILIZATION.name} > {s.busy_utilization}"

    def busy_median(metric: str) -> str:
        return f"quantile by (instance) (0.5, {metric} and on (instance, gpu, uuid) {BUSY})"

    def in_job(metric: str) -> str:
        """The busy GPUs' values with the job_id of the job that holds them."""
        return (f"{metric} * on (instance, gpu, uuid) group_left (job_id)"
                f" ({c.GPU_JOB_INFO.name} and on (instance, gpu, uuid) {BUSY})")

    def fleet_rate(metric: str, by: str, window: str = "1m") -> str:
        return f"sum by ({by}) (rate({metric}[{window}]))"

    efa_tx, efa_rx = c.EFA_NODE_COUNTERS["tx_bytes"].name, c.EFA_NODE_COUNTERS["rx_bytes"].name
    return [
        Group("gpuscope-node-busy", (
            Record(BUSY, f"{busy}"),
            Record(BUSY_GPUS, f"count by (instance) ({BUSY})"),
            Record(GPUS, f"count by (instance) ({c.GPU_UP.name})"),
        )),
        Group("gpuscope-node-clock", (Record(SM_CLOCK_MEDIAN, busy_median(c.GPU_SM_CLOCK.name)),)),
        Group("gpuscope-node-activity", (Record(SM_ACTIVE_MEDIAN, busy_median(c.GPU_SM_ACTIVE.name)),)),
        Group("gpuscope-fleet-baselines", (
            Record(EFA_RATE, f"sum by (cluster, instance) (rate({efa_tx}[1m]) + rate({efa_rx}[1m]))"),
            Record(EFA_MEDIAN, f"quantile(0.5, {EFA_RATE})"),
            Record(NODE_CLOCK_MEDIAN, f"quantile(0.5, {SM_CLOCK_MEDIAN})"),
            Record(NODE_ACTIVE_MEDIAN, f"quantile(0.5, {SM_ACTIVE_MEDIAN})"),
        )),
        Group("gpuscope-job-clock", (Record(JOB_SM_CLOCK, in_job(c.GPU_SM_CLOCK.name)),)),
        Group("gpuscope-job-activity", (Record(JOB_SM_ACTIVE, in_job(c.GPU_SM_ACTIVE.name)),)),
        Group("gpuscope-job-baselines", (
            Record(JOB_CLOCK_MEDIAN, f"quantile by (job_id) (0.5, {JOB_SM_CLOCK})"),
            Record(JOB_ACTIVE_MEDIAN, f"quantile by (job_id) (0.5, {JOB_SM_ACTIVE})"),
            Record(NODE_IN_JOB_CLOCK_MEDIAN, f"quantile by (instance, job_id) (0.5, {JOB_SM_CLOCK})"),
            Record(JOB_NODE_CLOCK_MEDIAN, f"quantile by (job_id) (0.5, {NODE_IN_JOB_CLOCK_MEDIAN})"),
            Record(JOB_NODES, f"count by (job_id) ({NODE_IN_JOB_CLOCK_MEDIAN})"),
            Record(JOB_CLOCK_MIN, f"min by (job_id) ({JOB_SM_CLOCK})"),
            Record(JOB_CLOCK_MAX, f"max by (job_id) ({JOB_SM_CLOCK})"),
        )),
        Group("gpuscope-job-power", (Record(JOB_POWER, f"sum by (job_id) ({c.GPU_POWER.name} * on (instance, gpu, uuid)"
                                                       f" group_left (job_id) {c.GPU_JOB_INFO.name})"),)),
        *(Group(f"gpuscope-fleet-{name}", (Record(record, fleet_quantiles(metric)),))
          for name, (metric, record) in zip(("power", "temperature"), FLEET_QUANTILES.items(), strict=True)),
        Group("gpuscope-fleet-activity", tuple(Record(record, f"avg by (cluster) ({metric})")
                                               for metric, record in FLEET_AVERAGES.items())),
        # One rule per class of NVLink error types, each in its own group: both read two series per GPU.
        *(Group(f"gpuscope-nvlink-{name}-dashboards", (
            Record(NODE_NVLINK_ERRORS, fleet_rate(f'{c.GPU_NVLINK_ERRORS.name}{{type=~"{types}"}}',
                                                  "cluster, instance, type", "5m")),))
          for name, types in NVLINK_ERROR_CLASSES.items()),
        Group("gpuscope-network-dashboards", (
            Record(EFA_NODE_QUANTILES, fleet_quantiles(EFA_RATE)),
            *(Record(record, fleet_rate(c.EFA_NODE_COUNTERS[name].name, "cluster"))
              for name, record in FLEET_EFA.items()),
            Record(FLEET_NVLINK_ERRORS, f"sum by (cluster, type) ({NODE_NVLINK_ERRORS})"),
        )),
        Group("gpuscope-storage-fs-dashboards", (
            *(Record(record, fleet_rate(metric, "cluster, fs")) for metric, record in FS_RATES.items()),
            *(Record(record, fleet_rate(metric, "cluster, fs, operation"))
              for metric, record in FS_OPERATION_RATES.items()),
        )),
        Group("gpuscope-storage-target-dashboards", (
            Record(TARGET_CLIENTS_UNHEALTHY,
                   f"sum by (cluster, fs, target) ({c.LUSTRE_IMPORT_HEALTHY.name} == bool 0)"),
            Record(TARGET_RPCS_IN_FLIGHT, f"sum by (cluster, fs, target) ({c.LUSTRE_RPCS_IN_FLIGHT.name})"),
            Record(TARGET_RECONNECTS,
                   f"sum by (cluster, fs, target) {counter_rise(c.LUSTRE_CONNECT_ATTEMPTS.name, '5m')}"),
        )),
    ]


def _cause(cause: str, expr: str) -> Record:
    """One cause's part of LOST_NOW: `expr` per node and job, 0 where nothing is lost to it."""
    return Record(LOST_NOW, f'label_replace({expr}, "cause", "{cause}", "", "")')


def _unless_jobs(expr: str, *jobs: str) -> str:
    """`expr` per node and job, 0 for the jobs in any of `jobs` (a cause that takes precedence)."""
    return f"({expr} unless on (job_id) ({' or '.join(jobs)}) or {NODE_JOB_GPUS} * 0)"


def goodput_records(s: Settings) -> list[Group]:
    """GPU time lost by cause, per job and cluster, its cost, and the fraction of allocated GPU time
    that was useful (docs/goodput.md). A GPU-second is lost to one cause at most, in CAUSES' order:
    a job with a lost GPU loses all its GPUs to it; a stalled job all its GPUs; a job waiting for
    one rank its GPUs times the share of time they wait; a throttled GPU what its clock lost; an
    allocated GPU doing nothing, all of it. Jobs are those of gpuscope_gpu_job_info (Slurm)."""
    per_gpu = "on (instance, gpu, uuid) group_left ()"  # () so the next ( is not a label list
    job = c.GPU_JOB_INFO.name

    def on_job_nodes(node_record: str) -> str:
        """1 for each job with a node where `node_record` holds."""
        return f"max by (job_id) ({NODE_JOB_GPUS} * 0 + on (instance) group_left {node_record})"

    hardware_share = f"clamp_min(1 - {JOB_ACTIVE_MEDIAN} / {JOB_ACTIVE_BASELINE}, 0)"
    nccl_share = f"max by (job_id) (clamp_min(1 - {NCCL_EXEC_BASELINE} / {NCCL_EXEC_MEDIAN}, 0))"
    # The early ranks as the alert's groups recorded them: a round later than the alert, which the
    # five-minute average of the loss does not notice, and no second read of every rank.
    waited_for = f"max by (job_id) ({busiest_rank(s)}) or max by (job_id) ({NCCL_EARLY_RANKS})"
    # The throttled GPUs' clocks only (a few), before the division: half the time of dividing every
    # GPU's (at 2,048 nodes). A node with no GPU throttling gets its 0 from _unless_jobs.
    clock_lost = (f"clamp_min(1 - ({c.GPU_SM_CLOCK.name} and on (instance, gpu, uuid) {THROTTLED})"
                  f" / {c.GPU_SM_CLOCK_MAX.name}, 0)")
    idle = f"avg_over_time({c.GPU_UTILIZATION.name}[5m]) < bool {s.idle_utilization}"
    groups = [
        Group("gpuscope-goodput-nodes", (
            Record(NODE_JOB_GPUS, f"count by (cluster, instance, job_id) ({job})"),
            Record(NODE_GPU_LOST, f"max by (instance) ({c.GPU_UP.name} == 0) + 1"),
        )),
        Group("gpuscope-goodput-stalls", (
            Record(NODE_STALLED, f"max by (instance) (({collective_stall(s)}) * 0 + 1"
                                 f" or ({efa_stall(s, EFA_RATE, EFA_MEDIAN)}) * 0 + 1)"),
        )),
        Group("gpuscope-goodput-jobs", (
            Record(JOB_GPU_LOST, on_job_nodes(NODE_GPU_LOST)),
            Record(JOB_STALLED, on_job_nodes(NODE_STALLED)),
        )),
        Group("gpuscope-goodput-waits", (
            # NCCL's measure where its files are, the hardware's otherwise; the larger when both.
            Record(JOB_WAIT_SHARE, f'max by (job_id) (label_replace({hardware_share}, "by", "sm", "", "")'
                                   f' or label_replace({nccl_share}, "by", "nccl", "", ""))'
                                   f" and on (job_id) ({waited_for})"),
        )),
        Group("gpuscope-goodput-causes", (
            _cause("lost_gpu", f"({NODE_JOB_GPUS} * on (job_id) group_left {JOB_GPU_LOST} or {NODE_JOB_GPUS} * 0)"),
            _cause("stall", _unless_jobs(f"{NODE_JOB_GPUS} * on (job_id) group_left {JOB_STALLED}", JOB_GPU_LOST)),
            _cause("straggler", _unless_jobs(f"{NODE_JOB_GPUS} * on (job_id) group_left {JOB_WAIT_SHARE}",
                                             JOB_GPU_LOST, JOB_STALLED)),
        )),
        Group("gpuscope-goodput-throttle", (
            _cause("throttle", _unless_jobs(
                f"sum by (cluster, instance, job_id) ({job} * {per_gpu} ({clock_lost}))", JOB_GPU_LOST, JOB_STALLED)),
        )),
        Group("gpuscope-goodput-idle", (
            _cause("idle_allocated", _unless_jobs(f"sum by (cluster, instance, job_id) ({job} * {per_gpu} ({idle}))",
                                                  JOB_GPU_LOST, JOB_STALLED)),
        )),
        Group("gpuscope-goodput", (
            Record(LOST_JOB, f"sum by (cluster, job_id, cause) (avg_over_time({LOST_NOW}[5m]))"),
            Record(LOST_CLUSTER, f"sum by (cluster, cause) ({LOST_JOB})"),
            Record(ALLOCATED, f"sum by (cluster) ({NODE_JOB_GPUS})"),
            Record(GOODPUT, f"clamp_min(1 - sum by (cluster) ({LOST_CLUSTER}) / {ALLOCATED}, 0)"),
        )),
    ]
    if s.gpu_hour_prices:
        prices = " or ".join(f'{price:g} * max by (cluster, instance) ({c.NODE_INFO.name}{{instance_type="{kind}"}})'
                             for kind, price in s.gpu_hour_prices)
        groups.append(Group("gpuscope-goodput-cost", (
            Record(GPU_PRICE, prices),
            # A job on nodes of several types pays their average.
            Record(JOB_PRICE, f"avg by (cluster, job_id) ({NODE_JOB_GPUS} * 0 + on (instance) group_left {GPU_PRICE})"),
            Record(COST_JOB, f"{LOST_JOB} * on (cluster, job_id) group_left {JOB_PRICE}"),
            Record(COST_CLUSTER, f"sum by (cluster, cause) ({COST_JOB})"),
        )))
    return groups


def cost_annotation(s: Settings) -> str:
    """What the jobs on the alert's node lose, all causes, averaged over 5 minutes: GPUs' worth of
    time and, where the node's type has a price, dollars per hour. Empty when they lose nothing."""
    node = s.template("$labels.instance")

    def lost(record: str) -> str:
        query = s.expr(f'sum({record} and on (cluster, job_id) {NODE_JOB_GPUS}{{instance="%s"}}) > 0')
        return f"{{{{ with printf `{query}` {node} | query }}}}{{{{ with first . }}}}"

    gpus, dollars = lost(LOST_JOB), lost(COST_JOB)
    return (f'{gpus}The jobs on {{{{ {node} }}}} lose {{{{ .Value | printf "%.1f" }}}} GPUs\' worth of time'
            f'{{{{ end }}}}{{{{ end }}}}{dollars}, ${{{{ .Value | printf "%.0f" }}}} an hour{{{{ end }}}}{{{{ end }}}}')


def straggler_alerts(s: Settings) -> list[Group]:
    """A GPU against its node's busy GPUs (a group of its own: it reads three series of every GPU), a
    node against the fleet, and both against the job's peers from the recorded job values.

    Slow means a lower SM clock or SM activity than the peers' median. Power is not a signal: it also
    drops in memory-bound phases and under a power cap, and each signal costs a read of every GPU's
    series per evaluation (16,384 at 2,048 nodes)."""
    ratio = s.straggler_ratio

    def below_peers(metric: str, median: str) -> str:
        return f"({metric} / on (instance) group_left {median} < {ratio})"

    return [
        Group("gpuscope-stragglers", (
            Alert("GpuStraggler",
                  f"({below_peers(c.GPU_SM_CLOCK.name, SM_CLOCK_MEDIAN)}"
                  f" or {below_peers(c.GPU_SM_ACTIVE.name, SM_ACTIVE_MEDIAN)})"
                  f" and on (instance, gpu, uuid) {BUSY}"
                  f" and on (instance) {BUSY_GPUS} >= {s.straggler_min_gpus}",
                  s.straggler_for, "warning", "A busy GPU is persistently slower than its peers on the node",
                  "GPU {{ $labels.gpu }} on {{ $labels.instance }} runs at {{ $value | humanizePercentage }} of its "
                  "busy peers' median (SM clock or SM activity) while it is busy itself; synchronous "
                  "training waits for it."),
        )),
        Group("gpuscope-node-stragglers", (
            Alert("NodeStraggler",
                  f"({SM_CLOCK_MEDIAN} / scalar({NODE_CLOCK_MEDIAN}) < {ratio}"
                  f" or {SM_ACTIVE_MEDIAN} / scalar({NODE_ACTIVE_MEDIAN}) < {ratio})"
                  f" and on (instance) {BUSY_GPUS} > 0 and on () count({SM_CLOCK_MEDIAN}) >= 3",
                  s.straggler_for, "warning", "All GPUs of a node lag the other nodes",
                  "The busy GPUs of {{ $labels.instance }} run at {{ $value | humanizePercentage }} of the median node "
                  "(SM clock or SM activity)."),
        )),
        Group("gpuscope-job-stragglers", (
            Alert("GpuStraggler",
                  f"({JOB_SM_CLOCK} / on (job_id) group_left {JOB_CLOCK_MEDIAN} < {ratio}"
                  f" or {JOB_SM_ACTIVE} / on (job_id) group_left {JOB_ACTIVE_MEDIAN} < {ratio})"
                  f" and on (job_id) {JOB_GPUS} >= {s.straggler_min_gpus}",
                  s.straggler_for, "warning", "A busy GPU is persistently slower than the other GPUs of its job",
                  "GPU {{ $labels.gpu }} on {{ $labels.instance }} runs at {{ $value | humanizePercentage }} of the "
                  "median GPU of job {{ $labels.job_id }} (SM clock or SM activity).", (("scope", "job"),)),
            Alert("NodeStraggler",
                  f"{NODE_IN_JOB_CLOCK_MEDIAN} / on (job_id) group_left {JOB_NODE_CLOCK_MEDIAN} < {ratio}"
                  f" and on (job_id) {JOB_NODES} >= 3",
                  s.straggler_for, "warning", "All GPUs of a node lag the other nodes of their job",
                  "The busy GPUs of {{ $labels.instance }} run at {{ $value | humanizePercentage }} of the median node "
                  "of job {{ $labels.job_id }}.", (("scope", "job"),)),
        )),
    ]


def _whole_job_busy(s: Settings) -> str:
    return f"on (job_id) ({JOB_BUSY_GPUS} == {JOB_GPUS} and {JOB_GPUS} >= {s.straggler_min_gpus})"


def busiest_rank(s: Settings) -> str:
    """Hardware evidence of the rank a job waits for: alone at the top of the job's SM activity while
    the job's median fell below its recent level, the whole job busy."""
    return (f"({near_busiest(s)}) / on (job_id) group_left {JOB_ACTIVE_MEDIAN} > {s.busiest_ratio}"
            f" and on (job_id) {JOB_NEAR_BUSIEST} == 1"
            f" and on (job_id) {JOB_ACTIVE_MEDIAN} < {s.job_slowdown_ratio} * {JOB_ACTIVE_BASELINE}"
            f" and {_whole_job_busy(s)}")


def early_rank(s: Settings, part: Part) -> str:
    """NCCL's evidence, for the GPUs of one part: a rank whose collectives are far shorter than its
    communicator's median while that median rose above its recent low (the others wait inside NCCL
    for it). The medians are narrowed to the risen ones before the join, so the ranks of a steady
    communicator match nothing (at 2,048 nodes: 1.3 s a round instead of 1.9)."""
    exec_time = nccl_ranks(c.NCCL_EXEC_TIME.name, s, part)
    risen = f"{NCCL_EXEC_MEDIAN} > {s.nccl_rise_ratio} * {NCCL_EXEC_BASELINE}"
    return (f"min by (cluster, instance, gpu, uuid, job_id) ({exec_time} / on ({COMM}) group_left () ({risen})"
            f" < {s.nccl_fast_rank_ratio}) and {_whole_job_busy(s)}")


def ras_rank(expr: str, hosts: str = c.NCCL_RAS_HOST.name) -> str:
    """`expr` (series naming a rank by `host` and `nvml_dev`) as one series per GPU on the node that
    holds it: `instance` from the node whose exporter lists that address in `hosts`, `gpu` the NVML index."""
    per_gpu = f"max by (job_id, host, nvml_dev) ({expr})"
    return (f'label_replace({per_gpu}, "gpu", "$1", "nvml_dev", "(.*)")'
            f" * on (host) group_left (cluster, instance) {hosts}")


def ras_alerts(s: Settings) -> list[Group]:
    """NCCL RAS (issue 26), two signals that agree instead of a long `for:`: a communicator's progress
    stood still across the leader's reports, and most of its job's GPUs spin. The page names the
    ranks behind or missing (NCCL's launch counts: the rank that never launched the collective the
    others wait in); where every rank launched it (a kernel that hangs), the job and the leader.
    Where RAS does not speak for the job (NCCL before 2.24, RAS off), NCCL Inspector's files going
    stale while the GPUs spin page on each of the job's nodes, naming no rank (Inspector records
    completions only)."""
    stalled = f"{c.NCCL_RAS_STALLED.name} >= {s.nccl_hang_seconds:g}"
    spinning = f"{JOB_SPINNING} >= {s.nccl_spinning_fraction:g}"
    behind = f"{c.NCCL_RAS_BEHIND.name} > 0"
    lost = f'{c.NCCL_RAS_MISSING.name}{{state=~"unresponsive|dead"}}'
    culprit = (f"({behind} or {lost}) and on (job_id, comm) ({stalled}) and on (job_id) ({spinning})")
    spin = (f"{c.GPU_POWER.name} / {c.GPU_POWER_LIMIT.name} < {s.stall_power_fraction}"
            f" and {c.GPU_UTILIZATION.name} >= {s.stall_utilization}")
    # The spinning share reads four series of every GPU: evaluated with the scrape. It filters before
    # it joins (`and`, not `bool` products), so a job with no spinning GPU has no share (read as none)
    # and the join is over the few GPUs at low power (at 2,048 nodes: 0.5 s a round instead of 0.8).
    # The alerts read a few series per communicator and node: evaluated every 5 s, which keeps the
    # page within 90 s.
    return [Group("gpuscope-nccl-ras", (
        Record(JOB_SPINNING, f"count by (job_id) ({c.GPU_JOB_INFO.name} and on (instance, gpu, uuid) ({spin}))"
                             f" / on (job_id) {JOB_GPUS}"),
    )), Group("gpuscope-nccl-ras-alerts", interval=FAST_EVALUATION, rules=(
        Alert("NcclCollectiveHang", ras_rank(culprit), "0m", "critical",
              "NCCL says the job's collectives hang waiting for this GPU",
              "Job {{ $labels.job_id }} made no collective progress for "
              f"{s.nccl_hang_seconds:g} s while its GPUs spin in NCCL; GPU "
              "{{ $labels.gpu }} on {{ $labels.instance }} is {{ $value }} operation(s) behind or gone (NCCL RAS): "
              "the others wait for it.", (("evidence", "ras_rank"),)),
        Alert("NcclCollectiveHang",
              f"max by (cluster, instance, job_id) ({stalled}) and on (job_id) ({spinning})"
              f" unless on (job_id) ({c.NCCL_RAS_LATE.name} > 0 or {behind} or {lost})", "0m", "critical",
              "NCCL says the job's collectives hang, every rank having launched them",
              "Job {{ $labels.job_id }} made no collective progress for "
              f"{s.nccl_hang_seconds:g} s while its GPUs spin in NCCL, and "
              "every rank launched the operation (NCCL RAS, asked by {{ $labels.instance }}): a kernel or the "
              "fabric hangs, not a late rank. The job's nodes' NVLink, EFA and XID alerts say where.",
              (("evidence", "ras_all_launched"),)),
        Alert("NcclRankDead", ras_rank(f'{c.NCCL_RAS_MISSING.name}{{state="dead"}}'), "0m", "critical",
              "An NCCL process of the job is dead (RAS lost it for a minute)",
              "NCCL RAS considers the process managing GPU {{ $labels.gpu }} on {{ $labels.instance }} dead (job "
              "{{ $labels.job_id }}): the job cannot progress without it."),
        Record(JOB_INSPECTOR_AGE, f"min by (job_id) ({c.NCCL_SNAPSHOT_AGE.name}"
                                  f" and on (instance, gpu, job_id) {c.GPU_JOB_INFO.name})"),
        Alert("NcclCollectiveHang",
              f"max by (cluster, instance, job_id) ({c.GPU_JOB_INFO.name}) * on (job_id) group_left () ("
              f"{JOB_INSPECTOR_AGE} >= {s.nccl_inspector_stale_seconds:g} and on (job_id) ({spinning})"
              f" unless on (job_id) {c.NCCL_RAS_STALLED.name})", "0m", "critical",
              "NCCL Inspector says the job's collectives stopped completing while its GPUs spin",
              "No GPU of job {{ $labels.job_id }} (here {{ $labels.instance }}) completed a collective for "
              "{{ $value }} s "
              "(NCCL Inspector rewrites its files only after completions) while its GPUs spin in NCCL: a hang. "
              "NCCL RAS does not answer for this job, so the rank it waits for is not named: the job's nodes' "
              "XID, NVLink and EFA alerts, and the job dashboard's ranks, say where.",
              (("evidence", "inspector_stale"),)),
    ))]


def job_wait_alerts(s: Settings) -> list[Group]:
    """The rank a synchronous job waits for, from the hardware and from NCCL, and a communicator's
    bandwidth collapse. Each needs the whole job busy (a checkpoint or an evaluation idles GPUs)
    and a change against the job's own recent level; a job whose ranks all wait is CollectiveStall,
    not this. The hardware evidence also needs the GPU to stand alone at the top: the busier first
    and last stages of a pipeline stay above the median through any slowdown, but they are many."""
    return [Group("gpuscope-job-waits-alerts", (
        Alert("GpuStraggler", busiest_rank(s), s.straggler_for,
              "critical", "The job waits for this GPU: it is the busiest while its peers idle",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} runs {{ $value | humanize }} times the median SM "
              "activity of job {{ $labels.job_id }}, whose other GPUs slowed down waiting for it (full clocks: "
              "look at HBM, ECC, row remapping, PCIe and the host, not thermals).",
              (("scope", "job"), ("evidence", "busiest_gpu"))),
    )), *(Group(f"gpuscope-nccl-early-rank-{part.suffix}", (  # a quarter of the ranks' exec time (GPU_QUARTERS)
        # The alert reads the record written just before it in the same round: no added delay.
        Record(NCCL_EARLY_RANKS, early_rank(s, part)),
        Alert("GpuStraggler", part.of(NCCL_EARLY_RANKS), s.straggler_for,
              "critical", "NCCL says the job waits for this GPU: its collectives are the shortest",
              "The collectives of GPU {{ $labels.gpu }} on {{ $labels.instance }} take {{ $value | humanizePercentage "
              "}} of their communicator's median in job {{ $labels.job_id }}: the other ranks wait in NCCL for it.",
              (("scope", "job"), ("evidence", "nccl_early_rank"))),
    )) for part in GPU_QUARTERS), *(Group(f"gpuscope-nccl-bandwidth-alerts-{half.suffix}", (
        # Reads each node's slowest rank twice: in the halves (COLLECTIVE_HALVES) its record is written in.
        Alert("NcclBandwidthDegraded",
              f"{half.of(NCCL_BW_NODE_MIN)} <= on ({COMM}) group_left 1.1 * min by ({COMM})"
              f" ({half.of(NCCL_BW_NODE_MIN)})"
              f" and on ({COMM}) {NCCL_BW_MEDIAN} < {s.nccl_bandwidth_drop_ratio} * {NCCL_BW_BASELINE}",
              s.straggler_for, "warning", "A communicator's bus bandwidth collapsed; this node has its slowest ranks",
              "{{ $labels.collective }} on communicator {{ $labels.comm }} of job {{ $labels.job_id }} moves less "
              "than half its recent bus bandwidth; the slowest ranks are on {{ $labels.instance }} "
              "({{ $value | humanize }}B/s): check its EFA devices and NVLinks."),
    )) for half in COLLECTIVE_HALVES)]


def thermal_alerts(s: Settings) -> list[Group]:
    """Throttling from the recorded throttled GPUs, hardware and software reasons in a group each (the
    record reads those reasons of every GPU); temperatures from each GPU's own limits."""
    margin, limit = c.GPU_TEMPERATURE_MARGIN.name, c.GPU_TEMPERATURE_LIMIT.name

    def throttled(kind: str) -> Record:
        return Record(THROTTLED, f'{c.GPU_CLOCK_EVENT.name}{{reason=~"{THROTTLE_REASONS[kind]}"}} == 1')

    return [Group("gpuscope-thermal-hardware", (
        throttled("hardware"),
        Alert("GpuThermalThrottling", f'{THROTTLED}{{reason=~"hw_thermal_slowdown|hw_slowdown"}}',
              s.hw_slowdown_for, "critical", "A GPU is slowed down by hardware (thermal or HW slowdown)",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has {{ $labels.reason }} active: its clocks are "
              "forced down and the whole job waits for it."),
        Alert("GpuPowerBrakeSlowdown", f'{THROTTLED}{{reason="hw_power_brake"}}',
              s.hw_slowdown_for, "critical", "A GPU is held down by the power brake",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has the HW power brake asserted (external power "
              "or PSU event)."),
    )), Group("gpuscope-thermal-software", (
        throttled("software"),
        Alert("GpuThermalThrottling", f'{THROTTLED}{{reason="sw_thermal_slowdown"}}',
              s.sw_thermal_for, "warning", "A GPU is held down by software thermal slowdown",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has been in SW thermal slowdown for "
              f"{s.sw_thermal_for}."),
    )), Group("gpuscope-thermal", (
        Alert("GpuTemperatureNearLimit", f"{margin} < {s.temperature_margin_celsius}",
              "5m", "warning", "A GPU is close to its own slowdown temperature",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is {{ $value }} C from the temperature at which "
              "it slows itself down."),
        Alert("GpuHbmTemperatureHigh",
              f"{c.GPU_MEMORY_TEMPERATURE.name} > on (instance, gpu, uuid) "
              f'({limit}{{limit="memory_max"}} - {s.hbm_margin_celsius})',
              "5m", "warning", "A GPU's HBM is close to its maximum temperature",
              "HBM of GPU {{ $labels.gpu }} on {{ $labels.instance }} is at {{ $value }} C, within "
              f"{s.hbm_margin_celsius:g} C of its limit."),
    ))]


def link_degraded(current: str, maximum: str, signal: str, s: Settings) -> Alert:
    """A busy GPU's PCIe link below its maximum generation or width (idle GPUs may downshift)."""
    return Alert("PcieLinkDegraded", f"{current} < {maximum} and on (instance, gpu, uuid) {BUSY}",
                 s.pcie_degraded_for, "warning", f"A busy GPU's PCIe link runs below its maximum {signal}",
                 "GPU {{ $labels.gpu }} on {{ $labels.instance }} trains its PCIe link at {{ $value }}, below the "
                 f"{signal} it supports (idle GPUs may downshift; this one is busy).", (("signal", signal),))


def collective_stall(s: Settings) -> str:
    """The NCCL hang signature on a node: every GPU pinned at 100 % utilization at near-idle power,
    and the node's EFA traffic flat."""
    return (f"min by (instance) ({c.GPU_UTILIZATION.name}) >= {s.stall_utilization}"
            f" and on (instance) max by (instance) ({c.GPU_POWER.name} / {c.GPU_POWER_LIMIT.name})"
            f" < {s.stall_power_fraction}"
            f" and on (instance) {EFA_RATE} < {s.stall_network_bytes_per_second:g}")


def efa_stall(s: Settings, rate: str = EFA_NOW, median: str = EFA_NOW_MEDIAN) -> str:
    """A busy node's EFA traffic collapsed while the median node's keeps moving. The alert reads the
    last scrape interval (irate): a rate over a minute would keep the traffic before the stall for
    most of that minute, and the page has a minute in all (docs/alerts.md); its `for:` asks two
    samples. Goodput reads the minute (EFA_RATE): one quiet interval costs no GPU time."""
    return (f"{rate} < {s.efa_stall_fraction} * scalar({median})"
            f" and on () {median} > {s.efa_busy_bytes_per_second:g}"
            f" and on (instance) {BUSY_GPUS} > 0")


def communication_alerts(s: Settings) -> list[Group]:
    """The network (collective and EFA, per node) and the GPU links (NVLink, PCIe, per GPU)."""
    efa = c.EFA_NODE_COUNTERS
    nvlink = c.GPU_NVLINK_ERRORS.name
    return [
        Group("gpuscope-collective", (
            Alert("CollectiveStall", collective_stall(s), s.stall_for,
                  "critical", "A collective operation hangs (NCCL hang signature)",
                  "Every GPU of {{ $labels.instance }} shows 100 % utilization at near-idle power and the node's "
                  "EFA traffic is flat: the job is stuck in a collective, not computing."),
        )),
        Group("gpuscope-network", interval=FAST_EVALUATION, rules=(
            Record(EFA_NOW, f"sum by (cluster, instance) (irate({efa['tx_bytes'].name}[1m])"
                            f" + irate({efa['rx_bytes'].name}[1m]))"),
            Record(EFA_NOW_MEDIAN, f"quantile(0.5, {EFA_NOW})"),
            Alert("EfaTrafficStalled", efa_stall(s), s.efa_stall_for,
                  "critical", "A busy node's EFA traffic collapsed while its peers keep going",
                  "{{ $labels.instance }} moves {{ $value | humanize }}B/s over EFA while the median node moves "
                  "more than a GB/s, and its GPUs are busy."),
            # EFA errors per node, from the exporter's node totals: one series per node instead of 32 keeps
            # these rules cheap at fleet scale; the node dashboard shows which device (runbook). Their rise,
            # not rate(): a device leaving the node lowers the totals, which rate() reads as a reset and
            # counts the rest as new errors (issue 26, the missing-device scenario).
            Alert("EfaRetransmitTimeouts", f"{counter_rise(efa['retrans_timeout_events'].name, '1m')} > 0",
                  s.efa_error_for, "warning", "EFA traffic times out and changes network paths",
                  "{{ $labels.instance }} saw {{ $value | humanize }} EFA retransmit timeouts in the last minute; "
                  "the node dashboard's EFA panels show which devices."),
            Alert("EfaRemoteConnectionImpaired",
                  f"{counter_rise(efa['unresponsive_remote_events'].name, '1m')}"
                  f" + {counter_rise(efa['impaired_remote_conn_events'].name, '1m')} > 0",
                  s.efa_error_for, "warning", "EFA connections to remote peers are unresponsive or impaired",
                  "{{ $labels.instance }} reported {{ $value | humanize }} unresponsive or impaired remote EFA "
                  "connection events in the last minute."),
            Alert("EfaPacketDrops", f"{counter_rise(efa['rx_drops'].name, '1m')} > 0",
                  s.efa_error_for, "warning", "EFA devices drop received packets",
                  "The EFA devices of {{ $labels.instance }} dropped {{ $value | humanize }} packets in the last "
                  "minute."),
            Alert("EfaWorkRequestErrors",
                  f"{counter_rise(efa['rdma_read_wr_err'].name, '1m')}"
                  f" + {counter_rise(efa['rdma_write_wr_err'].name, '1m')} > 0",
                  s.efa_error_for, "warning", "RDMA work requests fail on EFA",
                  "{{ $labels.instance }} failed {{ $value | humanize }} RDMA work requests over EFA in the last "
                  "minute."),
        )),
        # One rule a group from here on: each reads two or three series of every GPU. The retries read
        # two types of every GPU twice (the rise above the window's low): in halves (GPU_HALVES).
        *(Group(f"gpuscope-nvlink-retries-{half.suffix}", (
            Alert("NvlinkErrors",
                  counter_rise(half.of(nvlink, f'type=~"{NVLINK_ERROR_CLASSES["retries"]}"'), "5m") + " > 0",
                  "0m", "warning", "NVLink replay or recovery errors",
                  "GPU {{ $labels.gpu }} on {{ $labels.instance }} logged {{ $value }} NVLink {{ $labels.type }} "
                  "errors in 5 minutes.", (("signal", "link_retries"),)),
        )) for half in GPU_HALVES),
        Group("gpuscope-nvlink-crc", (
            Alert("NvlinkErrors",
                  f'rate({nvlink}{{type=~"{NVLINK_ERROR_CLASSES["crc"]}"}}[5m]) > {s.nvlink_crc_per_second:g}',
                  "5m", "warning", "NVLink CRC errors at a high rate",
                  "GPU {{ $labels.gpu }} on {{ $labels.instance }} sees {{ $value | humanize }} NVLink "
                  "{{ $labels.type }} errors per second.", (("signal", "crc_rate"),)),
        )),
        Group("gpuscope-pcie-replays", (
            Alert("PcieReplayRateHigh", f"rate({c.GPU_PCIE_REPLAYS.name}[5m]) * 60 > {s.pcie_replays_per_minute:g}",
                  "5m", "warning", "PCIe replays above what a healthy link shows",
                  "GPU {{ $labels.gpu }} on {{ $labels.instance }} replays {{ $value | humanize }} PCIe packets per "
                  "minute."),
        )),
        Group("gpuscope-pcie-generation", (
            link_degraded(c.GPU_PCIE_GENERATION.name, c.GPU_PCIE_GENERATION_MAX.name, "generation", s),
        )),
        Group("gpuscope-pcie-width", (
            link_degraded(c.GPU_PCIE_WIDTH.name, c.GPU_PCIE_WIDTH_MAX.name, "width", s),
        )),
    ]


def _new_xids(xids: tuple[int, ...], window: str) -> str:
    """XIDs in the window: from the kernel log where the kmsg collector runs on the node (events since
    boot, XIDs NVML misses), from NVML's events elsewhere; never both, so no event counts twice."""
    selected = f'{{xid=~"{_xids(xids)}"}}'
    nvml = f"{c.GPU_XID_ERRORS.name}{selected}"
    kernel = f"{c.KERNEL_LAST_XID.name}{selected}"
    kmsg_running = f'{c.COLLECTOR_SUCCESS.name}{{collector="kmsg"}} == 1'
    return (f"({_recent_event(kernel, window)})"
            f" or ({counter_rise(nvml, window)} > 0 or ({nvml} unless {nvml} offset {window}))"
            f" unless on (instance) ({kmsg_running})")


def _recent_event(last_timestamp: str, window: str) -> str:
    """An event whose time (a last-event timestamp series) changed or first appeared within the window
    and that happened within it by the kernel's clock: an exporter that starts, or restarts, reads
    the log since boot and must not page for events logged hours before."""
    return (f"(changes({last_timestamp}[{window}]) > 0 or ({last_timestamp} unless {last_timestamp} offset {window}))"
            f" and time() - {last_timestamp} < {seconds(window):g}")


def gpu_health_alerts(s: Settings) -> list[Group]:
    return [Group("gpuscope-xid", interval=FAST_EVALUATION, rules=(
        Alert("GpuXidCritical", _new_xids(s.xid_critical, s.xid_window), "0m", "critical",
              "A GPU reported an XID that needs action",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} reported XID {{ $labels.xid }}: drain the node and "
              "follow the runbook for this XID."),
        Alert("GpuXidWarning", _new_xids(s.xid_warning, s.xid_window), "0m", "warning",
              "A GPU reported an XID worth a look",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} reported XID {{ $labels.xid }}."),
        Alert("GpuXidWarning", _new_xids(s.xid_application, s.xid_window), "0m", "info",
              "A GPU reported an XID that is usually the application's fault",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} reported XID {{ $labels.xid }} (illegal memory "
              "access, exception or similar): tell the job owner."),
    )), Group("gpuscope-nvswitch", interval=FAST_EVALUATION, rules=(
        Alert("NvswitchFatalError",
              _recent_event(f'{c.NVSWITCH_LAST_SXID.name}{{severity="fatal"}}', s.xid_window), "0m", "critical",
              "An NVSwitch reported a fatal error",
              "NVSwitch {{ $labels.switch }} ({{ $labels.pci_address }}) on {{ $labels.instance }} logged fatal SXID "
              "{{ $labels.sxid }}: NVLink traffic through it is broken until the node is reset."),
        Alert("NvswitchErrors",
              counter_rise(f'{c.NVSWITCH_SXID_ERRORS.name}{{severity="non_fatal"}}', s.xid_window) + " > 0", "0m",
              "warning", "An NVSwitch logs non-fatal errors",
              "NVSwitch {{ $labels.switch }} on {{ $labels.instance }} logged non-fatal SXID {{ $labels.sxid }} "
              f"{{{{ $value | humanize }}}} times in {s.xid_window}."),
    )), Group("gpuscope-gpu-health", (
        Alert("GpuLost", f"{c.GPU_UP.name} == 0", s.gpu_lost_for, "critical", "A GPU stopped answering NVML",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} is lost (fallen off the bus, XID 79, or hung).",
              (("cause", "not_answering"),)),
        Alert("GpuLost", f"{GPUS} < max_over_time({GPUS}[6h])", s.gpu_lost_for, "critical",
              "A node has fewer GPUs than it had",
              "{{ $labels.instance }} now shows {{ $value }} GPUs, fewer than in the last 6 hours.",
              (("cause", "missing"),)),
        Alert("GpuRecoveryActionRequired", f"{c.GPU_RECOVERY_ACTION.name} > 0", "0m", "critical",
              "The driver asks for a GPU reset or node reboot",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} reports recovery action {{ $value }} "
              "(1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset)."),
    )), Group("gpuscope-gpu-memory", (
        Alert("GpuUncorrectableEccErrors",
              counter_rise(f'{c.GPU_ECC_ERRORS.name}{{type="uncorrected", scope="volatile"}}', "10m") + " > 0",
              "0m", "critical", "A GPU had uncorrectable memory errors",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} had {{ $value }} uncorrectable ECC errors in 10 "
              "minutes."),
        Alert("GpuRowRemapFailure", f"{c.GPU_REMAP_FAILURE.name} == 1", "0m", "critical",
              "A GPU could not remap a failing memory row",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} ran out of spare rows: it needs service."),
        Alert("GpuRowRemapPending", f"{c.GPU_REMAP_PENDING.name} == 1", s.remap_pending_for, "warning",
              "A GPU waits for a reset to remap a memory row",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has a row remap pending until its next reset."),
    )), *(dcgm_health(s, half) for half in GPU_HALVES), Group("gpuscope-dcgm-nvswitch", (
        Alert("NvswitchDcgmHealthFailing", f"{c.NVSWITCH_DCGM_HEALTH.name} == 2", s.dcgm_fail_for, "critical",
              "DCGM's health check fails an NVSwitch",
              "DCGM fails {{ $labels.system }} on NVSwitch {{ $labels.switch }} of {{ $labels.instance }}: "
              "the node's NVLink fabric is degraded."),
    ))]


def dcgm_health(s: Settings, half: Part) -> Group:
    """DCGM's health alerts for the GPUs of one half (GPU_HALVES): its 8 health series a GPU read once,
    the few not passing recorded, both alerts reading that record in the same round."""
    not_passing = half.of(DCGM_NOT_PASSING)
    return Group(f"gpuscope-dcgm-health-{half.suffix}", (
        Record(DCGM_NOT_PASSING, f"{half.of(c.GPU_DCGM_HEALTH.name)} > 0"),
        Alert("GpuDcgmHealthFailing", f"{not_passing} == 2", s.dcgm_fail_for, "critical",
              "DCGM's health check fails a GPU",
              "DCGM fails the {{ $labels.system }} health of GPU {{ $labels.gpu }} on {{ $labels.instance }}; "
              f"its incident codes are in {c.GPU_DCGM_INCIDENT.name}."),
        Alert("GpuDcgmHealthWarning", f"{not_passing} == 1", s.dcgm_warn_for, "warning",
              "DCGM's health check warns about a GPU",
              "DCGM has warned about the {{ $labels.system }} health of GPU {{ $labels.gpu }} on "
              f"{{{{ $labels.instance }}}} for {s.dcgm_warn_for}; its incident codes are in "
              f"{c.GPU_DCGM_INCIDENT.name}."),
    ))


def inventory_alerts(s: Settings) -> list[Group]:
    """What the node should have against what it shows, from the first scrape: no history needed, so
    a node that booted short of a GPU pages too. A type without expectations (not in the shipped
    inventory, or DMI unreadable) never pages here; a collector that fails is GpuscopeCollectorFailing."""
    def fewer(seen: str, component: str, collector: str) -> str:
        running = f'{c.COLLECTOR_SUCCESS.name}{{collector="{collector}"}} == 1'
        return (f"(count by (instance) ({seen}) or on (instance) 0 * ({running}))"
                f' < on (instance) {c.NODE_EXPECTED.name}{{component="{component}"}}'
                f" and on (instance) {running}")

    state = c.RDMA_PORT_STATE.name
    return [Group("gpuscope-inventory", (
        Alert("GpuMissing", fewer(c.GPU_UP.name, "gpus", "gpu"), s.gpu_lost_for, "critical",
              "A node has fewer GPUs than its instance type",
              "{{ $labels.instance }} shows {{ $value }} GPUs to NVML, fewer than its instance type has: a GPU "
              "fell off the bus or did not come up at boot."),
    )), Group("gpuscope-inventory-efa", (  # counts the 32 EFA devices of every node
        Alert("EfaDeviceMissing", fewer(f'{c.RDMA_DEVICE_INFO.name}{{efa="true"}}', "efa_devices", "rdma"),
              s.gpu_lost_for, "critical", "A node has fewer EFA devices than its instance type",
              "{{ $labels.instance }} shows {{ $value }} EFA devices, fewer than its instance type has: "
              "collectives over the missing ones fail or slow the job."),
    )), Group("gpuscope-inventory-links", (
        Alert("NvlinkInactive",
              f"{c.GPU_NVLINK_ACTIVE.name} < on (instance) group_left"
              f' {c.NODE_EXPECTED.name}{{component="nvlinks_per_gpu"}}',
              s.gpu_lost_for, "critical", "A GPU has fewer active NVLinks than its instance type",
              "GPU {{ $labels.gpu }} on {{ $labels.instance }} has {{ $value }} NVLinks up, fewer than its instance "
              "type's GPUs have: collectives over NVLink slow down or fail."),
        # Unused ports of a multi-port card are down from boot; a port that was ACTIVE is the one to page on.
        Alert("RdmaPortDown", f"{state} != 4 and on (instance, device, port) max_over_time({state}[6h]) == 4",
              s.rdma_port_down_for, "warning", "An RDMA port that was active is down",
              "Port {{ $labels.port }} of {{ $labels.device }} on {{ $labels.instance }} is in state "
              "{{ $value }} (4 is ACTIVE); its physical state is in gpuscope_rdma_port_physical_state."),
    ))]


def storage_alerts(s: Settings) -> list[Group]:
    read, write = c.LUSTRE_READ_BYTES.name, c.LUSTRE_WRITE_BYTES.name
    return [Group("gpuscope-storage", (
        Alert("LustreTargetDisconnected", f"{c.LUSTRE_IMPORT_HEALTHY.name} == 0", s.lustre_disconnected_for,
              "critical", "A Lustre target is not connected",
              "{{ $labels.instance }} has lost its connection to {{ $labels.fs }} {{ $labels.target }}: I/O to "
              "it blocks."),
        Alert("LustreClientEvicted",
              f"{c.LUSTRE_IMPORT_STATE.name} == 9"
              f" or {counter_rise(c.LUSTRE_CONNECT_ATTEMPTS.name, '10m')} > 0",
              "0m", "warning", "A Lustre client was evicted or had to reconnect",
              "{{ $labels.instance }} was evicted by or reconnected to {{ $labels.fs }} {{ $labels.target }}."),
        Alert("LustreHealthCheckFailed", f"{c.LUSTRE_HEALTH_CHECK.name} == 0", s.lustre_health_for, "warning",
              "The Lustre client reports itself unhealthy",
              "health_check on {{ $labels.instance }} is not 'healthy'."),
    )), Group("gpuscope-storage-io", (
        Alert("LustreIoStalled",
              f"({c.LUSTRE_RPCS_IN_FLIGHT.name} > 0 or {counter_rise(c.LUSTRE_RPC_TIMEOUTS.name, '5m')} > 0)"
              f" and on (instance, fs) (rate({read}[5m]) + rate({write}[5m])) == 0",
              s.lustre_stall_for, "critical", "Lustre I/O is stalled",
              "{{ $labels.instance }} has RPCs outstanding or timing out on {{ $labels.fs }} {{ $labels.target }} "
              "while no bytes move."),
    ))]


def agent_alerts(s: Settings) -> Group:
    return Group("gpuscope-agent", (
        Alert("GpuscopeExporterDown", f"up{{{s.selector}}} == 0", s.exporter_down_for, "critical",
              "The gpuscope exporter does not answer",
              "Prometheus cannot scrape gpuscope on {{ $labels.instance }}: nothing on this node is watched."),
        Alert("GpuscopeCollectorFailing", f"{c.COLLECTOR_SUCCESS.name} == 0", s.collector_failing_for, "warning",
              "A gpuscope collector keeps failing",
              "The {{ $labels.collector }} collector on {{ $labels.instance }} has failed for "
              f"{s.collector_failing_for}; its metrics are missing."),
    ))


def remediation_alerts(s: Settings) -> Group:
    """The receiver's rails at work: every refusal is something a person should look at (a storm held
    back, a node that failed its check after its alert resolved, a scheduler that said no). Every
    decision series starts at 0 in the receiver, so the first refusal is an increase."""
    refused = f'{c.REMEDIATION_DECISIONS.name}{{outcome="refused"}}'
    return Group("gpuscope-remediation", (
        Alert("GpuscopeRemediationRefused", f"sum by (instance, action, reason) {counter_rise(refused, '15m')} > 0",
              "0m", "warning", "The remediation receiver refused to act",
              "gpuscope remediate on {{ $labels.instance }} refused to {{ $labels.action }} "
              "{{ $value | humanize }} times in 15 minutes ({{ $labels.reason }}): its audit log says which nodes "
              "and why."),
        Alert("GpuscopeRemediationDown", f"up{{{s.remediation_selector}}} == 0", s.exporter_down_for, "warning",
              "The remediation receiver does not answer",
              "Prometheus cannot scrape gpuscope remediate at {{ $labels.instance }}: alerts that should drain a "
              "node are not acted on (they still page)."),
    ), s.remediation_selector)


def _canonical_groups(settings: Settings) -> list[Group]:
    return [*recording_rules(settings), *job_wait_records(settings), *straggler_alerts(settings),
            *job_wait_alerts(settings), *ras_alerts(settings), *thermal_alerts(settings),
            *communication_alerts(settings), *gpu_health_alerts(settings), *inventory_alerts(settings),
            *storage_alerts(settings),
            agent_alerts(settings), remediation_alerts(settings), *goodput_records(settings)]


def alert_names() -> frozenset[str]:
    """Every alert that exists, for checking a settings file's `alerts:` overrides."""
    return frozenset(rule.alert for group in _canonical_groups(Settings()) for rule in group.rules
                     if isinstance(rule, Alert))


def load(path: str) -> Settings:
    """The settings file at `path` (defaults if empty), its alert overrides checked against the alerts."""
    return load_settings(path, alert_names())


def _localized(rule: Record | Alert, s: Settings) -> Record | Alert:
    if isinstance(rule, Record):
        return replace(rule, expr=s.expr(rule.expr))
    return replace(rule, expr=s.expr(rule.expr), severity=s.severity(rule.alert, rule.severity),
                   summary=s.template(rule.summary), description=s.template(rule.description),
                   cost=cost_annotation(s) if rule.alert in COSTLY_ALERTS else "")


def groups(settings: Settings) -> list[Group]:
    """Every rule group for these settings: alerts switched off are left out (and a group left empty
    with them), the rest carry the user's selector, label names and severities."""
    out = []
    for group in _canonical_groups(settings):
        local = replace(settings, selector=group.selector) if group.selector else settings
        rules = tuple(_localized(rule, local) for rule in group.rules
                      if not (isinstance(rule, Alert) and rule.alert in settings.disabled_alerts))
        if rules:
            out.append(replace(group, rules=rules))
    return out
