"""Goodput: GPU time and dollars lost per second by cause, and the `cost` annotation of the alerts
about faults that cost the jobs on their node."""

from __future__ import annotations

from alerts.records import (
    ALLOCATED,
    COST_CLUSTER,
    COST_JOB,
    EFA_MEDIAN,
    EFA_RATE,
    GOODPUT,
    GPU_PRICE,
    JOB_ACTIVE_BASELINE,
    JOB_ACTIVE_MEDIAN,
    JOB_GPU_LOST,
    JOB_PRICE,
    JOB_STALLED,
    JOB_WAIT_SHARE,
    LOST_CLUSTER,
    LOST_JOB,
    LOST_NOW,
    NCCL_EARLY_RANKS,
    NCCL_EXEC_BASELINE,
    NCCL_EXEC_MEDIAN,
    NODE_GPU_LOST,
    NODE_JOB_GPUS,
    NODE_STALLED,
    THROTTLED,
)
from alerts.rules.base import Group, Record
from alerts.rules.nccl import busiest_rank
from alerts.rules.network import collective_stall, efa_stall
from alerts.settings import Settings
from exporter import catalog as c

# Alerts about faults that cost the jobs on their node: their `cost` annotation says how much.
COSTLY_ALERTS = frozenset({"CollectiveStall", "EfaTrafficStalled", "GpuStraggler", "NodeStraggler",
                           "NcclBandwidthDegraded", "GpuThermalThrottling", "GpuPowerBrakeSlowdown", "GpuLost",
                           "GpuXidCritical", "GpuMissing", "EfaDeviceMissing", "NvlinkInactive", "LustreIoStalled"})


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
