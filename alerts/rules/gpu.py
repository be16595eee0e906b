"""GPU rules: peer baselines and fleet series, stragglers, thermal throttling, GPU health (XIDs,
ECC, lost GPUs, DCGM health)."""

from __future__ import annotations

from alerts.records import (
    BUSY,
    BUSY_GPUS,
    DCGM_NOT_PASSING,
    EFA_MEDIAN,
    EFA_RATE,
    FLEET_AVERAGES,
    FLEET_QUANTILES,
    GPUS,
    JOB_ACTIVE_MEDIAN,
    JOB_CLOCK_MAX,
    JOB_CLOCK_MEDIAN,
    JOB_CLOCK_MIN,
    JOB_GPUS,
    JOB_NODE_CLOCK_MEDIAN,
    JOB_NODES,
    JOB_POWER,
    JOB_SM_ACTIVE,
    JOB_SM_CLOCK,
    NODE_ACTIVE_MEDIAN,
    NODE_CLOCK_MEDIAN,
    NODE_IN_JOB_CLOCK_MEDIAN,
    SM_ACTIVE_MEDIAN,
    SM_CLOCK_MEDIAN,
    THROTTLE_REASONS,
    THROTTLED,
    counter_rise,
    fleet_quantiles,
)
from alerts.rules.base import FAST_EVALUATION, GPU_HALVES, Alert, Group, Part, Record
from alerts.settings import Settings
from exporter import catalog as c
from toolkit.durations import seconds


def _xids(xids: tuple[int, ...]) -> str:
    return "|".join(str(x) for x in xids)


def gpu_records(s: Settings) -> list[Group]:
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
    ]


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
