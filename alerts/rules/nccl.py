"""NCCL and the rank a synchronous job waits for: job and communicator baselines, the hardware's
and NCCL Inspector's evidence, NCCL RAS."""

from __future__ import annotations

from alerts.records import (
    COMM,
    JOB_ACTIVE_BASELINE,
    JOB_ACTIVE_MEDIAN,
    JOB_ACTIVE_MIN,
    JOB_BUSIEST,
    JOB_BUSY_GPUS,
    JOB_GPUS,
    JOB_INSPECTOR_AGE,
    JOB_NEAR_BUSIEST,
    JOB_SM_ACTIVE,
    JOB_SPINNING,
    NCCL_BW_BASELINE,
    NCCL_BW_MEDIAN,
    NCCL_BW_NODE_MIN,
    NCCL_EARLY_RANKS,
    NCCL_EXEC_BASELINE,
    NCCL_EXEC_MEDIAN,
    ras_rank,
)
from alerts.rules.base import COLLECTIVE_HALVES, FAST_EVALUATION, GPU_QUARTERS, Alert, Group, Part, Record
from alerts.settings import Settings
from exporter import catalog as c


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
