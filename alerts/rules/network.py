"""Network rules: NVLink and EFA fleet series, collective and EFA stalls, link errors and
degradation."""

from __future__ import annotations

from alerts.records import (
    BUSY,
    BUSY_GPUS,
    EFA_NODE_QUANTILES,
    EFA_NOW,
    EFA_NOW_MEDIAN,
    EFA_RATE,
    FLEET_EFA,
    FLEET_NVLINK_ERRORS,
    NODE_NVLINK_ERRORS,
    NVLINK_ERROR_CLASSES,
    counter_rise,
    fleet_quantiles,
    fleet_rate,
)
from alerts.rules.base import FAST_EVALUATION, GPU_HALVES, Alert, Group, Record
from alerts.settings import Settings
from exporter import catalog as c


def network_records(s: Settings) -> list[Group]:
    """NVLink and EFA fleet series for the dashboards, in small groups (as gpu_records says why)."""
    return [
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
    ]


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
