"""gpuscope's dashboards: fleet, job, node, GPU, network, storage and goodput, from the fleet down to one GPU.

Metric names come from the exporter's catalog and the alert rules' recording rules, so a renamed
metric breaks the build, not a dashboard at 3 a.m. Panels listed as `empty_when_healthy` show
faults (throttling, XIDs, firing alerts) and have no data on a healthy cluster.
"""

from __future__ import annotations

from alerts import records
from dashboards.grafana import Panel, dashboard, derived, limit, q
from exporter import catalog as c

RATE = "$__rate_interval"
# Every view filters by cluster; labels are gpuscope's canonical ones, fitted to the settings at render.
CLUSTER = 'cluster=~"$cluster"'
NODE = f'{CLUSTER}, instance=~"$instance"'
GPU = f'{NODE}, gpu=~"$gpu"'
LINKS = (("gpuscope-fleet", "Fleet"), ("gpuscope-job", "Job"), ("gpuscope-node", "Node"), ("gpuscope-gpu", "GPU"),
         ("gpuscope-network", "Network"), ("gpuscope-storage", "Storage"), ("gpuscope-goodput", "Goodput"))
# The job's GPUs: those of the chosen Slurm job and of the chosen Kubernetes pods. A cluster has one
# kind of attribution, so the other picker is empty and matches nothing; max dedupes a GPU in both.
POD = f'{c.GPU_POD_INFO.name}{{{CLUSTER}, namespace="$namespace", pod=~"$pod"}}'
JOB = f'max by (instance, gpu, uuid) ({c.GPU_JOB_INFO.name}{{{CLUSTER}, job_id="$job_id"}} or {POD})'
# Selectors narrowed to the job's nodes ($job_nodes, resolved from JOB) before the join, so a job
# panel reads its own nodes' series, not the whole fleet's.
JOB_NODES = f'{CLUSTER}, instance=~"$job_nodes"'
XIDS = f"{c.GPU_XID_ERRORS.name}{{{CLUSTER}}}"
EFA_TX = c.EFA_PORT_COUNTERS["tx_bytes"].name
NCCL_EXEC = c.NCCL_EXEC_TIME.name
# Per-node panels read the exporter's EFA node totals (one series per node, not 32).
NODE_EFA = {name: metric.name for name, metric in c.EFA_NODE_COUNTERS.items()}
FS_READ, FS_WRITE = (records.FS_RATES[metric.name] for metric in (c.LUSTRE_READ_BYTES, c.LUSTRE_WRITE_BYTES))
FS_OPS, FS_OP_SECONDS = (records.FS_OPERATION_RATES[metric.name]
                         for metric in (c.LUSTRE_OPERATIONS, c.LUSTRE_OPERATION_SECONDS))


def efa_rate(name: str, selector: str, window: str = RATE) -> str:
    """Per-second rate of an EFA node total (by sysfs counter name) over the selected nodes."""
    return f"rate({NODE_EFA[name]}{{{selector}}}[{window}])"

# "EFA devices of GPU n": each device's traffic joined to the GPU under its PCIe switch.
EFA_BY_GPU = (f"rate({EFA_TX}{{{NODE}}}[{RATE}]) * on (instance, device) group_left (gpu_pci_address) "
              f"{c.RDMA_DEVICE_INFO.name}{{{NODE}}} * on (instance, gpu_pci_address) group_left (gpu) "
              f'label_replace({c.GPU_INFO.name}{{{NODE}}}, "gpu_pci_address", "$1", "pci_bus_id", "(.+)")')


def power(width: int) -> Panel:
    """Each GPU's draw; the highest enforced limit among them is the threshold line."""
    return Panel("timeseries", "Power against the enforced limit",
                 (q(f"{c.GPU_POWER.name}{{{GPU}}}", "GPU {{gpu}}"),
                  limit(f"max({c.GPU_POWER_LIMIT.name}{{{GPU}}})", "limit")), unit="watt", width=width)


def fleet():
    return dashboard("gpuscope-fleet", "gpuscope / Fleet", "Every node and GPU: health, activity, stragglers.",
                     ("cluster",), [
        Panel("stat", "Nodes reporting", (q(f"count({c.BUILD_INFO.name}{{{CLUSTER}}})"),), width=4, height=4),
        Panel("stat", "GPUs up", (q(f"sum({c.GPU_UP.name}{{{CLUSTER}}})"),), width=4, height=4),
        Panel("stat", "GPUs lost", (q(f"count({c.GPU_UP.name}{{{CLUSTER}}} == 0)"),), width=4, height=4,
              empty_when_healthy=True),
        Panel("table", "Firing alerts by kind", (q('count by (alertname, severity) (ALERTS{alertstate="firing"})'),),
              width=12, height=4, empty_when_healthy=True),
        Panel("timeseries", "GPU activity, whole cluster",
              tuple(q(f"{records.FLEET_AVERAGES[metric.name]}{{{CLUSTER}}}", legend) for metric, legend in (
                  (c.GPU_UTILIZATION, "utilization"), (c.GPU_SM_ACTIVE, "SM active"),
                  (c.GPU_TENSOR_ACTIVE, "tensor active"))), unit="percentunit", width=12),
        Panel("timeseries", "GPU power distribution",
              (q(f"{records.FLEET_QUANTILES[c.GPU_POWER.name]}{{{CLUSTER}}}", "q{{quantile}}"),), unit="watt", width=6),
        Panel("timeseries", "GPU temperature distribution",
              (q(f"{records.FLEET_QUANTILES[c.GPU_TEMPERATURE.name]}{{{CLUSTER}}}", "q{{quantile}}"),),
              unit="celsius", width=6),
        Panel("table", "Stragglers: GPUs furthest below their node's median SM clock",
              (q(f"bottomk(10, {c.GPU_SM_CLOCK.name}{{{CLUSTER}}} / on (instance) group_left "
                 f"{records.SM_CLOCK_MEDIAN})"),), unit="percentunit", width=12),
        Panel("table", "Throttled GPUs", (q(f"{records.THROTTLED}{{{CLUSTER}}}"),), width=12, empty_when_healthy=True),
        Panel("table", "XIDs in the last day",
              # the first ones count too
              (q(f"{records.counter_rise(XIDS, '1d')} > 0 or ({XIDS} unless {XIDS} offset 1d)"),),
              width=12, empty_when_healthy=True),
        Panel("timeseries", "EFA and Lustre throughput",
              (q(f"sum({records.FLEET_EFA['tx_bytes']}{{{CLUSTER}}})", "EFA transmit"),
               q(f"sum({FS_READ}{{{CLUSTER}}})", "Lustre read"),
               q(f"sum({FS_WRITE}{{{CLUSTER}}})", "Lustre write")),
              unit="Bps", width=12),
    ], LINKS)


def pod_gpus(metric: str) -> str:
    """`metric` of each GPU of the chosen Kubernetes pods, read at query time: pods carry no job id,
    so no per-job record holds them. A Slurm job leaves $pod_nodes empty and this reads nothing."""
    return (f'{metric}{{{CLUSTER}, instance=~"$pod_nodes"}} * on (instance, gpu, uuid) group_left '
            f"max by (instance, gpu, uuid) ({POD})")


def pod_spread(metric: str) -> tuple[str, str, str]:
    """The lowest, median and highest `metric` among the chosen pods' GPUs."""
    pods = pod_gpus(metric)
    return f"min({pods})", f"quantile(0.5, {pods})", f"max({pods})"


def spread(title: str, slurm: tuple[str, ...], pods: tuple[str, ...], unit: str, width: int,
           legends: tuple[str, ...] = ("lowest", "median", "highest")) -> Panel:
    """A job's edge GPUs (and median) over time: a few series whatever the job's size, from the
    per-job records for a Slurm job, at query time for pods."""
    return Panel("timeseries", title, tuple(q(expr, legend) for exprs in (slurm, pods)
                                            for expr, legend in zip(exprs, legends, strict=True)),
                 unit=unit, width=width, height=10)


def job():
    slurm = f'{{{CLUSTER}, job_id="$job_id"}}'
    clock = pod_spread(c.GPU_SM_CLOCK.name)
    active_vs_median = f"{records.JOB_SM_ACTIVE}{slurm} / on (job_id) group_left {records.JOB_ACTIVE_MEDIAN}"
    return dashboard("gpuscope-job", "gpuscope / Job",
                     "One job's nodes and GPUs side by side: a Slurm job, or Kubernetes pods by namespace. "
                     "Per-GPU panels show the job's lowest, median and highest GPU, so a job of any size "
                     "draws three lines; the tables name the GPUs at the edges.",
                     ("cluster", "job_id", "collective", "namespace", "pod", derived("job_nodes", JOB, "instance"),
                      derived("pod_nodes", POD, "instance")), [
        Panel("table", "Nodes and GPUs of the job", (q(JOB),), width=8, height=10),
        spread("SM activity of the job's busy GPUs: lowest, median, highest",
               tuple(f"{record}{slurm}" for record in (records.JOB_ACTIVE_MIN, records.JOB_ACTIVE_MEDIAN,
                                                       records.JOB_BUSIEST)),
               pod_spread(c.GPU_SM_ACTIVE.name), "percentunit", 16),
        spread("SM clock of the job's slowest and fastest GPU against its median",
               tuple(f"{record}{slurm} / {records.JOB_CLOCK_MEDIAN}{slurm}" for record in (records.JOB_CLOCK_MIN,
                                                                                        records.JOB_CLOCK_MAX)),
               (f"{clock[0]} / {clock[1]}", f"{clock[2]} / {clock[1]}"), "percentunit", 12, ("slowest", "fastest")),
        Panel("timeseries", "Power drawn by the job's GPUs",
              (q(f"{records.JOB_POWER}{slurm}", "job {{job_id}}"),
               q(f"sum({pod_gpus(c.GPU_POWER.name)})", "pods")),
              unit="watt", width=12,
              description="A drop across the whole job is a stall or a wait; each GPU's draw is on the node view."),
        Panel("timeseries", "EFA traffic per node",
              (q(efa_rate("tx_bytes", JOB_NODES), "{{instance}}"),),
              unit="Bps", width=12),
        Panel("timeseries", "Lustre reads per node",
              (q(f"sum by (instance) (rate({c.LUSTRE_READ_BYTES.name}{{{JOB_NODES}}}[{RATE}]))", "{{instance}}"),),
              unit="Bps", width=12),
        Panel("timeseries", "NCCL bus bandwidth per communicator and collective (median rank)",
              (q(f'{records.NCCL_BW_MEDIAN}{{{CLUSTER}, job_id="$job_id"}}', "{{comm}} {{collective}}"),),
              unit="Bps", width=12),
        Panel("table", "The job's busiest and least active GPUs now, against its median SM activity",
              (q(f"sort_desc(topk(5, {active_vs_median}) or bottomk(5, {active_vs_median}))"),),
              unit="percentunit", width=12,
              description="The rank a synchronous job waits for stays busiest while the others wait; a pipeline's "
                          "first and last stages are always above the median."),
        Panel("table", "The 20 ranks with the shortest $collective against their communicator's median "
                       "(the rank waited for on top)",
              (q(f'sort(bottomk(20, min by (instance, gpu, uuid) ({NCCL_EXEC}{{{CLUSTER}, job_id="$job_id", '
                 f'collective="$collective", message_size="all"}} / on (job_id, comm, collective) group_left '
                 f'{records.NCCL_EXEC_MEDIAN})))'),),
              unit="percentunit", width=24, height=10,
              description="A job of 8,192 GPUs would fill 8,192 rows; the rank the others wait for is among "
                          "the first, its collectives the shortest. It arrives late at every collective, so "
                          "any one shows it: the collective is a variable above."),
        Panel("timeseries", "Collectives launched per second per communicator (NCCL RAS; flat at 0: a hang)",
              (q(f'deriv({c.NCCL_RAS_PROGRESS.name}{{{CLUSTER}, job_id="$job_id"}}[{RATE}])',
                 "{{comm}} ({{ranks}} ranks)"),),
              unit="ops", width=12,
              description="From the node leading the job's RAS queries: each communicator's highest launch count."),
        Panel("table", "GPUs behind or gone while their communicator stands still (NCCL RAS)",
              (q(records.ras_rank(f'({c.NCCL_RAS_BEHIND.name}{{{CLUSTER}, job_id="$job_id"}} and on (job_id, comm) '
                                f'{c.NCCL_RAS_STALLED.name}{{{CLUSTER}}} > 0) or {c.NCCL_RAS_MISSING.name}{{{CLUSTER}, '
                                f'job_id="$job_id"}}', f"{c.NCCL_RAS_HOST.name}{{{CLUSTER}}}")),),
              width=12, empty_when_healthy=True,
              description="The GPUs a stuck collective waits for: operations behind (1 for a process RAS lost), "
                          "named by their node. A healthy job's ranks a launch behind while progress moves are "
                          "its queries racing its launches, not shown."),
        *training_panels(),
    ], LINKS)


def training_panels() -> list[Panel]:
    """The job's own loop, from the ranks' spool or OTLP (docs/training.md): step time across ranks
    (three lines whatever the job's size), tokens a second, where the step time went, and the slowest
    ranks with the GPU each drives."""
    train = f'{CLUSTER}, job_id="$job_id"'
    step_time = (f"rate({c.TRAIN_STEP_SECONDS.name}{{{train}}}[{RATE}]) / "
                 f"rate({c.TRAIN_STEPS.name}{{{train}}}[{RATE}])")
    phase_share = (f"sum by (job_id, phase) (rate({c.TRAIN_PHASE_SECONDS.name}{{{train}}}[{RATE}])) / ignoring "
                   f"(phase) group_left sum by (job_id) (rate({c.TRAIN_STEP_SECONDS.name}{{{train}}}[{RATE}]))")
    return [
        Panel("timeseries", "Step time across the job's ranks: lowest, median, highest",
              (q(f"min by (job_id) ({step_time})", "lowest"), q(f"quantile by (job_id) (0.5, {step_time})", "median"),
               q(f"max by (job_id) ({step_time})", "highest")), unit="s", width=12,
              description="The training loop's own step time (its ranks' spool or OTLP): a synchronous job's "
                          "ranks step together, so the slowest is the job's pace."),
        Panel("timeseries", "Tokens trained per second",
              (q(f"sum by (job_id) (rate({c.TRAIN_TOKENS.name}{{{train}}}[{RATE}]))", "job {{job_id}}"),),
              unit="short", width=12),
        Panel("timeseries", "Share of the step time waiting for data or on checkpoints",
              (q(phase_share, "{{phase}}"),), unit="percentunit", width=12),
        Panel("table", "The 20 slowest ranks now, with the GPU each drives",
              (q(f"sort_desc(topk(20, {step_time}))"),), unit="s", width=12),
    ]


def node():
    return dashboard("gpuscope-node", "gpuscope / Node", "The GPUs of a node side by side, its network and storage.",
                     ("cluster", "node", "gpu"), [
        Panel("timeseries", "SM activity", (q(f"{c.GPU_SM_ACTIVE.name}{{{GPU}}}", "GPU {{gpu}}"),),
              unit="percentunit", width=8),
        Panel("timeseries", "SM clock", (q(f"{c.GPU_SM_CLOCK.name}{{{GPU}}}", "GPU {{gpu}}"),), unit="hertz", width=8),
        power(width=8),
        Panel("timeseries", "Temperature against the slowdown limit",
              (q(f"{c.GPU_TEMPERATURE.name}{{{GPU}}}", "GPU {{gpu}}"),
               limit(f'min({c.GPU_TEMPERATURE_LIMIT.name}{{{GPU}, limit="slowdown"}})', "slowdown")),
              unit="celsius", width=12),
        Panel("state_timeline", "Throttle reasons",
              (q(f'{c.GPU_CLOCK_EVENT.name}{{{GPU}, reason!="gpu_idle"}}', "GPU {{gpu}} {{reason}}"),), width=12),
        Panel("timeseries", "NVLink traffic", (q(f"rate({c.GPU_NVLINK_TX.name}{{{GPU}}}[{RATE}])", "GPU {{gpu}}"),),
              unit="Bps", width=8),
        Panel("timeseries", "NVLink errors", (q(records.counter_rise(f"{c.GPU_NVLINK_ERRORS.name}{{{GPU}}}", RATE),
                                                "GPU {{gpu}} {{type}}"),), width=8),
        Panel("timeseries", "EFA traffic per device, by the GPU it serves",
              (q(f"sum by (gpu, device) ({EFA_BY_GPU})", "GPU {{gpu}} {{device}}"),), unit="Bps", width=8),
        Panel("timeseries", "Lustre per filesystem",
              (q(f"rate({c.LUSTRE_READ_BYTES.name}{{{NODE}}}[{RATE}])", "{{fs}} read"),
               q(f"rate({c.LUSTRE_WRITE_BYTES.name}{{{NODE}}}[{RATE}])", "{{fs}} write")), unit="Bps", width=12),
        Panel("state_timeline", "Lustre imports (8 FULL, 10 IDLE healthy)",
              (q(f"{c.LUSTRE_IMPORT_STATE.name}{{{NODE}}}", "{{fs}} {{target}}"),), width=12),
        Panel("timeseries", "Host CPU busy per NUMA node",
              (q(f"rate({c.HOST_CPU_BUSY.name}{{{NODE}}}[{RATE}]) / {c.HOST_CPUS.name}{{{NODE}}}",
                 "NUMA {{numa_node}}"),), unit="percentunit", width=12),
    ], LINKS)


def gpu():
    return dashboard("gpuscope-gpu", "gpuscope / GPU", "One GPU in depth.", ("cluster", "node", "gpu"), [
        Panel("timeseries", "Activity", (q(f"{c.GPU_UTILIZATION.name}{{{GPU}}}", "utilization"),
                                         q(f"{c.GPU_SM_ACTIVE.name}{{{GPU}}}", "SM active"),
                                         q(f"{c.GPU_TENSOR_ACTIVE.name}{{{GPU}}}", "tensor active"),
                                         q(f"{c.GPU_DRAM_ACTIVE.name}{{{GPU}}}", "DRAM active")),
              unit="percentunit", width=12),
        Panel("timeseries", "Clocks against their maximum",
              (q(f"{c.GPU_SM_CLOCK.name}{{{GPU}}}", "SM"), q(f"{c.GPU_SM_CLOCK_MAX.name}{{{GPU}}}", "SM max")),
              unit="hertz", width=12),
        Panel("timeseries", "Temperatures against the slowdown and shutdown limits",
              (q(f"{c.GPU_TEMPERATURE.name}{{{GPU}}}", "GPU {{gpu}}"),
               q(f"{c.GPU_MEMORY_TEMPERATURE.name}{{{GPU}}}", "GPU {{gpu}} HBM"),
               *(limit(f'min({c.GPU_TEMPERATURE_LIMIT.name}{{{GPU}, limit="{name}"}})', name)
                 for name in ("slowdown", "shutdown"))), unit="celsius", width=12),
        power(width=12),
        Panel("timeseries", "ECC errors", (q(f"{c.GPU_ECC_ERRORS.name}{{{GPU}}}", "{{type}} {{scope}}"),), width=8),
        Panel("timeseries", "Row remapping", (q(f"{c.GPU_REMAPPED_ROWS.name}{{{GPU}}}", "{{cause}}"),
                                              q(f"{c.GPU_REMAP_PENDING.name}{{{GPU}}}", "pending"),
                                              q(f"{c.GPU_REMAP_FAILURE.name}{{{GPU}}}", "failure")), width=8),
        Panel("timeseries", "PCIe", (q(f"rate({c.GPU_PCIE_TX.name}{{{GPU}}}[{RATE}])", "transmit"),
                                     q(f"rate({c.GPU_PCIE_RX.name}{{{GPU}}}[{RATE}])", "receive")),
              unit="Bps", width=8),
        Panel("table", "XIDs", (q(f"{c.GPU_XID_ERRORS.name}{{{GPU}}}"),), width=12, empty_when_healthy=True),
        Panel("table", "DCGM health incidents (1 warn, 2 fail; code: DCGM_FR_*)",
              (q(f"{c.GPU_DCGM_INCIDENT.name}{{{GPU}}}"),), width=12, empty_when_healthy=True),
    ], LINKS)


def network():
    """Fleet scope: distributions and cluster totals from recording rules over time, and the nodes
    to look at now as instant tables; one node's devices are on the node view."""
    errors_now = " or ".join(f'label_replace({efa_rate(name, CLUSTER, "5m")} > 0, "counter", "{name}", "", "")'
                             for name in records.EFA_ERROR_COUNTERS)
    return dashboard("gpuscope-network", "gpuscope / Network", "EFA and NVLink across the fleet.", ("cluster",), [
        Panel("timeseries", "EFA traffic per node: distribution",
              (q(f"{records.EFA_NODE_QUANTILES}{{{CLUSTER}}}", "q{{quantile}}"),), unit="Bps", width=12),
        Panel("timeseries", "EFA traffic, whole cluster",
              (q(f"sum({records.FLEET_EFA['tx_bytes']}{{{CLUSTER}}})", "transmit"),
               q(f"sum({records.FLEET_EFA['rx_bytes']}{{{CLUSTER}}})", "receive")), unit="Bps", width=12),
        Panel("timeseries", "EFA errors, whole cluster",
              tuple(q(f"sum({records.FLEET_EFA[name]}{{{CLUSTER}}})", name) for name in records.EFA_ERROR_COUNTERS),
              unit="cps", width=12),
        Panel("table", "Nodes moving the least EFA traffic", (q(f"bottomk(10, {records.EFA_RATE}{{{CLUSTER}}})"),),
              unit="Bps", width=12),
        Panel("table", "Nodes with EFA errors now (per second, 5 m)", (q(errors_now),), width=12,
              empty_when_healthy=True),
        Panel("timeseries", "NVLink errors, whole cluster",
              (q(f"sum by (type) ({records.FLEET_NVLINK_ERRORS}{{{CLUSTER}}})", "{{type}}"),), unit="cps", width=12),
        Panel("table", "Nodes with NVLink errors now (per second, 5 m)",
              (q(f"{records.NODE_NVLINK_ERRORS}{{{CLUSTER}}} > 0"),), width=12, empty_when_healthy=True),
    ], LINKS)


def storage():
    """Fleet scope like the network view: per filesystem and per target, summed over the clients."""
    def per_target(record: str) -> str:
        return f"sum by (fs, target) ({record}{{{CLUSTER}}})"

    return dashboard("gpuscope-storage", "gpuscope / Storage",
                     "Lustre across the clients: throughput, latency, targets.", ("cluster",), [
        Panel("timeseries", "Throughput per filesystem",
              (q(f"sum by (fs) ({FS_READ}{{{CLUSTER}}})", "{{fs}} read"),
               q(f"sum by (fs) ({FS_WRITE}{{{CLUSTER}}})", "{{fs}} write")), unit="Bps", width=12),
        Panel("timeseries", "Operation latency (Lustre 2.14+)",
              (q(f"sum by (fs, operation) ({FS_OP_SECONDS}{{{CLUSTER}}})"
                 f" / sum by (fs, operation) ({FS_OPS}{{{CLUSTER}}})", "{{fs}} {{operation}}"),),
              unit="s", width=12),
        Panel("timeseries", "Clients not connected, per target",
              (q(per_target(records.TARGET_CLIENTS_UNHEALTHY), "{{fs}} {{target}}"),), width=8),
        Panel("timeseries", "RPCs in flight per target, all clients",
              (q(per_target(records.TARGET_RPCS_IN_FLIGHT), "{{fs}} {{target}}"),), width=8),
        Panel("timeseries", "Reconnects per target, all clients (5 m)",
              (q(per_target(records.TARGET_RECONNECTS), "{{fs}} {{target}}"),), width=8),
        Panel("table", "Clients with a target not connected (state: 8 FULL, 10 IDLE healthy)",
              (q(f"{c.LUSTRE_IMPORT_STATE.name}{{{CLUSTER}}} and on (instance, fs, target)"
                 f" {c.LUSTRE_IMPORT_HEALTHY.name}{{{CLUSTER}}} == 0"),), width=16, empty_when_healthy=True),
        Panel("stat", "Clients failing health_check",
              (q(f"count({c.LUSTRE_HEALTH_CHECK.name}{{{CLUSTER}}} == 0) or vector(0)"),), width=8),
    ], LINKS)


def goodput():
    """What faults cost: GPU time and dollars lost by cause, for the cluster and per job (docs/goodput.md)."""
    stacked = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}
    cost, lost = f"{records.COST_CLUSTER}{{{CLUSTER}}}", f"{records.LOST_CLUSTER}{{{CLUSTER}}}"
    job_lost = f'{records.LOST_JOB}{{{CLUSTER}, job_id="$job_id"}}'
    return dashboard("gpuscope-goodput", "gpuscope / Goodput",
                     "GPU time and money lost to faults, by cause: which page to work first.", ("cluster", "job_id"), [
        Panel("stat", "Goodput: useful over allocated GPU time (5 min)", (q(f"{records.GOODPUT}{{{CLUSTER}}}"),),
              unit="percentunit", width=6, height=4),
        Panel("stat", "GPUs' worth of time lost now", (q(f"sum({lost})"),), width=6, height=4),
        Panel("stat", "Lost now, per hour", (q(f"sum({cost})"),), unit="currencyUSD", width=6, height=4),
        Panel("stat", "Lost in the last 24 hours", (q(f"sum(sum_over_time({cost}[1d:10s])) / 360"),),
              unit="currencyUSD", width=6, height=4,
              description="Dollars per hour sampled every 10 s over the last day (a 10 s sample is 1/360 hour)."),
        Panel("timeseries", "GPU time lost by cause (GPUs' worth)", (q(lost, "{{cause}}"),), width=16, extra=stacked),
        Panel("timeseries", "Goodput", (q(f"{records.GOODPUT}{{{CLUSTER}}}", "{{cluster}}"),), unit="percentunit",
              width=8),
        Panel("table", "Jobs losing most, dollars per hour",
              (q(f"topk(10, sum by (job_id) ({records.COST_JOB}{{{CLUSTER}}}))"),), unit="currencyUSD", width=12),
        Panel("table", "Jobs losing most GPU time, by cause",
              (q(f"topk(10, sum by (job_id, cause) ({records.LOST_JOB}{{{CLUSTER}}}))"),), width=12),
        Panel("timeseries", "Job $job_id: GPU time lost by cause", (q(job_lost, "{{cause}}"),), width=24,
              extra=stacked),
    ], LINKS)


DASHBOARDS = (fleet, job, node, gpu, network, storage, goodput)
