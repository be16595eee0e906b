"""Fault kinds a simulated node can suffer, and the scenario files that schedule them.

A fault is a small mapping, `{kind: thermal_throttle, gpu: 3}`, as it appears in a scenario file and
in a node's `faults.yaml`. `node_effects()` turns the faults active on one node into what the
simulation changes: a `Fault` per GPU for the simulated NVML, and the node's EFA and Lustre
behaviour. The effects follow the signatures reported publicly (an NCCL hang: utilization pinned,
power near idle, no tensor activity, network flat, NVIDIA/nccl issues #968 and #2213; a thermal
throttle: the HW thermal bit, temperature at the slowdown limit, violation time rising) and the
measurements of issue 15 (one rank the job waits for: the others keep 100 % utilization and full
clocks but SM activity falls 88 % -> 61 % and power drops, while that rank stays busiest and
finishes its collectives first).

Job faults are written to every node of the job; those aimed at one rank or node name it with
`node` (and `gpu`), and each node works out its own part from its index.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from simulator.nvml import Fault
from toolkit import durations

GPU_KINDS = ("straggler", "thermal_throttle", "power_brake", "nvlink_errors", "gpu_lost", "ecc_uncorrectable",
             "row_remap_failure", "xid", "kernel_xid", "nvlink_down", "gpu_missing_at_boot", "dcgm_health")
NODE_KINDS = ("efa_stall", "efa_retransmit_storm", "lustre_eviction", "efa_device_missing", "sxid", "rdma_port_down",
              "dcgm_engine_down", "dcgm_profiling_locked")
# NCCL hangs as RAS sees them (simulator/ras.py); on the hardware each looks like collective_stall.
HANG_KINDS = ("nccl_hang", "nccl_hang_launched", "nccl_process_dead")
JOB_KINDS = ("collective_stall", "compute_straggler", "nccl_late_arrival", "nccl_bandwidth_drop", "checkpoint",
             "pipeline_imbalance", *HANG_KINDS, "ras_slow", "ras_off")
RANK_KINDS = ("compute_straggler", "nccl_late_arrival")  # aimed at one GPU: `node` and `gpu`
AIMED_KINDS = (*RANK_KINDS, "nccl_hang", "nccl_process_dead")
LINK_KINDS = ("nccl_bandwidth_drop",)  # aimed at one node's network: `node`
# How much longer the ranks that wait spend in each collective, and how much shorter the rank waited for.
WAITING_EXEC, WAITED_FOR_EXEC = 1.7, 0.45
KINDS = GPU_KINDS + NODE_KINDS + JOB_KINDS


class ScenarioError(ValueError):
    """A scenario or fault that cannot be simulated, phrased for the person who wrote it."""


@dataclass
class EfaEffect:
    traffic_scale: float = 1.0
    error_rates: dict[str, float] = field(default_factory=dict)  # counter name -> per second per device
    missing_devices: int = 0  # the node's last devices gone from class/infiniband (a card that did not come up)


@dataclass
class DcgmEffect:
    """The node's DCGM host engine: stopped, its profiling counters taken by another owner, health
    incidents per GPU as (DCGM system bit, result 10 warn / 20 fail, dcgmError_t code)."""

    down: bool = False
    locked: bool = False
    incidents: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)


# dcgm_health's `system` names -> DCGM_HEALTH_WATCH_* bits; `result` names -> DCGM_HEALTH_RESULT_*.
DCGM_SYSTEMS = {"pcie": 0x1, "nvlink": 0x2, "memory": 0x10, "sm": 0x20, "inforom": 0x40, "thermal": 0x80,
                "power": 0x100, "driver": 0x200}
DCGM_RESULTS = {"warn": 10, "fail": 20}


@dataclass
class LustreEffect:
    stalled_targets: set[str] = field(default_factory=set)
    state: str = "FULL"


@dataclass
class NcclEffect:
    """How the node's ranks' collectives change: exec time and bus bandwidth multipliers per GPU
    (bandwidth of cross-node communicators only), and whether collectives stopped (a checkpoint)."""

    exec_scale: dict[int, float] = field(default_factory=dict)
    network_bandwidth_scale: float = 1.0
    paused: bool = False

    def scale_exec(self, gpu: int, factor: float) -> None:
        self.exec_scale[gpu] = self.exec_scale.get(gpu, 1.0) * factor


@dataclass
class NodeEffects:
    gpus: dict[int, Fault] = field(default_factory=dict)
    nccl: NcclEffect = field(default_factory=NcclEffect)
    xids: list[tuple[int, int]] = field(default_factory=list)  # (gpu, xid) raised when the fault starts
    kernel_xids: list[tuple[int, int]] = field(default_factory=list)  # (gpu, xid) in the kernel log only
    missing_at_boot: set[int] = field(default_factory=set)  # GPUs that did not come up (effective at the next start)
    sxids: list[tuple[int, int, bool]] = field(default_factory=list)  # (switch, sxid, fatal) in the kernel log
    efa: EfaEffect = field(default_factory=EfaEffect)
    lustre: LustreEffect = field(default_factory=LustreEffect)
    ports_down: set[int] = field(default_factory=set)  # indexes of InfiniBand HCAs whose port went down
    dcgm: DcgmEffect = field(default_factory=DcgmEffect)


def check_fault(fault: Any, where: str, gpus: int) -> dict[str, Any]:
    """A fault mapping, validated; ScenarioError naming `where` and the field otherwise."""
    if not isinstance(fault, dict) or "kind" not in fault:
        raise ScenarioError(f"{where}: a fault needs a 'kind' (one of {', '.join(KINDS)})")
    kind = fault["kind"]
    if kind not in KINDS:
        raise ScenarioError(f"{where}: unknown fault kind {kind!r} (one of {', '.join(KINDS)})")
    if kind in GPU_KINDS:
        gpu = fault.get("gpu")
        if not isinstance(gpu, int) or not 0 <= gpu < gpus:
            raise ScenarioError(f"{where}: fault {kind} needs 'gpu', an index from 0 to {gpus - 1}")
    if kind in ("xid", "kernel_xid") and not isinstance(fault.get("xid"), int):
        raise ScenarioError(f"{where}: fault {kind} needs 'xid', the XID number")
    if kind == "sxid" and not (isinstance(fault.get("switch"), int) and isinstance(fault.get("sxid"), int)):
        raise ScenarioError(f"{where}: fault sxid needs 'switch' (an NVSwitch index) and 'sxid', the SXID number")
    if kind == "dcgm_health" and (fault.get("system", "memory") not in DCGM_SYSTEMS
                                  or fault.get("result", "fail") not in DCGM_RESULTS):
        raise ScenarioError(f"{where}: fault dcgm_health takes 'system' ({', '.join(DCGM_SYSTEMS)}) and "
                            f"'result' (warn or fail)")
    if kind == "rdma_port_down" and not (isinstance(fault.get("device", 0), int) and fault.get("device", 0) >= 0):
        raise ScenarioError(f"{where}: fault rdma_port_down takes 'device', the index of an InfiniBand HCA (0, 1, ...)")
    if kind in AIMED_KINDS + LINK_KINDS and not isinstance(fault.get("node"), int):
        raise ScenarioError(f"{where}: fault {kind} needs 'node', the index of the node it hits")
    if kind in AIMED_KINDS and not (isinstance(fault.get("gpu"), int) and 0 <= fault["gpu"] < gpus):
        raise ScenarioError(f"{where}: fault {kind} needs 'gpu', an index from 0 to {gpus - 1}")
    return fault


def node_effects(faults: list[dict[str, Any]], profile: dict[str, Any], node: int | None = None) -> NodeEffects:
    """What the faults active on a node change, given the node's profile and its index."""
    effects = NodeEffects()
    gpu, busy = profile["gpu"], profile["busy"]
    for fault in faults:
        kind = fault["kind"]
        if kind in JOB_KINDS and kind not in ("collective_stall", *HANG_KINDS):
            _job_effect(effects, fault, profile, node)
        elif kind == "xid":
            effects.xids.append((fault["gpu"], fault["xid"]))
        elif kind == "gpu_missing_at_boot":
            effects.missing_at_boot.add(fault["gpu"])
        elif kind == "nvlink_down":
            effects.gpus[fault["gpu"]] = Fault(nvlinks_down=int(fault.get("links", 1)))
        elif kind == "kernel_xid":  # logged by the driver, never reported by NVML events (79, 119, 120)
            effects.kernel_xids.append((fault["gpu"], fault["xid"]))
        elif kind == "sxid":
            effects.sxids.append((fault["switch"], fault["sxid"], bool(fault.get("fatal", False))))
        elif kind == "dcgm_health":  # DCGM_FR_VOLATILE_DBE_DETECTED (4) unless the fault names a code
            effects.dcgm.incidents.setdefault(fault["gpu"], []).append(
                (DCGM_SYSTEMS[fault.get("system", "memory")], DCGM_RESULTS[fault.get("result", "fail")],
                 int(fault.get("code", 4))))
        elif kind == "dcgm_engine_down":
            effects.dcgm.down = True
        elif kind == "dcgm_profiling_locked":  # Nsight or a second engine holds the counters
            effects.dcgm.locked = True
        elif kind == "gpu_lost":
            effects.gpus[fault["gpu"]] = Fault(lost=True)  # the simulated NVML raises XID 79 itself
        elif kind in GPU_KINDS:
            effects.gpus[fault["gpu"]] = _gpu_fault(kind, gpu, busy)
        elif kind in ("collective_stall", *HANG_KINDS):  # a hung collective: every waiting GPU spins in NCCL
            effects.nccl.paused = kind != "collective_stall"  # Inspector records completions: none come
            stalled = Fault(utilization=100, power_watts=0.11 * gpu["power_limit_watts"], activity_scale=0.02,
                            nvlink_scale=0.0)
            effects.gpus.update({index: stalled for index in range(gpu["count"]) if index not in effects.gpus})
            effects.efa.traffic_scale = 0.0
        elif kind == "efa_stall":
            effects.efa.traffic_scale = 0.0
        elif kind == "efa_retransmit_storm":
            effects.efa.error_rates.update(retrans_pkts=2000.0, retrans_bytes=2000.0 * 8192,
                                           retrans_timeout_events=2.0, unresponsive_remote_events=1.0,
                                           impaired_remote_conn_events=1.0)
        elif kind == "efa_device_missing":
            effects.efa.missing_devices += int(fault.get("count", 1))
        elif kind == "rdma_port_down":
            effects.ports_down.add(int(fault.get("device", 0)))
        elif kind == "lustre_eviction":
            effects.lustre.stalled_targets.add(fault.get("target", "OST0001"))
            effects.lustre.state = fault.get("state", "DISCONN")
    return effects


def _job_effect(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """This node's part of a job-wide fault; effects on one GPU compose (a straggler in an imbalanced job)."""
    kind, gpus = fault["kind"], range(profile["gpu"]["count"])
    busy_power, limit = profile["busy"]["power_watts"], profile["gpu"]["power_limit_watts"]
    target = fault.get("gpu") if fault.get("node") == node else None
    if kind in RANK_KINDS:
        for index in gpus:
            waited_for = index == target
            effects.nccl.scale_exec(index, WAITED_FOR_EXEC if waited_for else WAITING_EXEC)
            if kind == "compute_straggler" and waited_for:  # never waits: busy at its full level, whatever its stage
                effects.gpus[index] = replace(effects.gpus.get(index, Fault()), activity_scale=1.03,
                                              power_watts=busy_power)
            elif kind == "compute_straggler":  # the waiting GPUs spin in NCCL kernels: fewer SMs busy, less power
                _compose(effects, index, 0.66, 0.72 * busy_power)
    elif kind == "nccl_bandwidth_drop":  # a ring runs at its slowest link: everyone slows, that node most
        effects.nccl.network_bandwidth_scale *= 0.3 if fault["node"] == node else 0.45
    elif kind == "checkpoint":  # the job writes its state: GPUs idle, no collectives
        effects.nccl.paused = True
        for index in gpus:
            _compose(effects, index, 0.02, 0.15 * limit, utilization=3)
    elif kind == "pipeline_imbalance":  # first and last pipeline stages always busier: healthy
        last = profile["gpu"]["count"] - 1
        for index in gpus:
            if index in (0, last):
                effects.nccl.scale_exec(index, 0.55)
            else:
                _compose(effects, index, 0.78, None)


def _compose(effects: NodeEffects, index: int, activity: float, power: float | None,
             utilization: float | None = None) -> None:
    current = effects.gpus.get(index, Fault())
    scale = (current.activity_scale if current.activity_scale is not None else 1.0) * activity
    effects.gpus[index] = replace(current, activity_scale=scale,
                                  power_watts=power if power is not None else current.power_watts,
                                  utilization=utilization if utilization is not None else current.utilization)


def _gpu_fault(kind: str, gpu: dict[str, Any], busy: dict[str, Any]) -> Fault:
    max_clock = gpu["sm_clock_max_mhz"]
    limits = gpu["temperature_limits"]
    slowdown = limits["slowdown"] if limits["mode"] == "absolute" else limits["tlimit"] - limits["slowdown"]
    if kind == "straggler":  # slower than its peers with no throttle reason to show for it
        return Fault(sm_clock_mhz=round(0.72 * max_clock), activity_scale=0.75, power_watts=0.78 * busy["power_watts"])
    if kind == "thermal_throttle":
        return Fault(reasons=0x40, temperature=slowdown, sm_clock_mhz=round(0.6 * max_clock),
                     violation_rates={"thermal": 1.0}, power_watts=0.7 * busy["power_watts"])
    if kind == "power_brake":
        return Fault(reasons=0x80, sm_clock_mhz=round(0.4 * max_clock), power_watts=0.35 * gpu["power_limit_watts"],
                     violation_rates={"power": 1.0})
    if kind == "nvlink_errors":
        return Fault(nvlink_error_rates={"replay": 2.0, "recovery": 0.2})
    if kind == "ecc_uncorrectable":
        return Fault(ecc={4: 1, 6: 1}, remap={143: 1, 144: 1}, recovery_action=1)
    # row_remap_failure
    return Fault(ecc={4: 2, 6: 2}, remap={143: 2, 145: 1}, recovery_action=1)


@dataclass(frozen=True)
class Step:
    at: float
    node: int | str  # a node index, "job" for every node of the first job, "job:<id>" for that job's
    fault: dict[str, Any] | None  # None clears
    clear: str = ""  # with fault None: the kind to clear, or "all"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int
    jobs: tuple[tuple[str, tuple[int, ...]], ...]  # (job id, its nodes), the first one is "job"
    steps: tuple[Step, ...]
    profile: str = ""  # the node profile the scenario needs (InfiniBand ports, say); "" for any


def parse_duration(value: Any, where: str) -> float:
    """A scenario's duration, or ScenarioError naming where it stands."""
    try:
        return durations.seconds(value)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def parse_scenario(data: Any, source: str, gpus: int, nodes: int | None = None) -> Scenario:
    """A scenario from its YAML mapping; ScenarioError naming the file and field otherwise."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with 'name' and 'steps'")
    count = int(nodes or data.get("nodes", 4))
    jobs = _jobs(data, source, count)
    targets = ("job", *(f"job:{job_id}" for job_id, _ in jobs))
    steps = []
    for number, raw in enumerate(data.get("steps") or []):
        where = f"{source}: steps[{number}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: a step is a mapping with 'at', 'node' and 'fault' or 'clear'")
        node = raw.get("node", 0)
        if node not in targets and (not isinstance(node, int) or not 0 <= node < count):
            raise ScenarioError(f"{where}: 'node' must be one of {', '.join(targets)} or an index from 0 to "
                                f"{count - 1}")
        at = parse_duration(raw.get("at", "0s"), f"{where}.at")
        if "clear" in raw:
            steps.append(Step(at, node, None, str(raw["clear"])))
            continue
        fault = check_fault(raw.get("fault"), f"{where}.fault", gpus)
        if fault["kind"] in JOB_KINDS and node not in targets:
            raise ScenarioError(f"{where}: {fault['kind']} affects a whole job: use node: job (or job:<id>)")
        steps.append(Step(at, node, dict(fault)))
        if "duration" in raw:
            steps.append(Step(at + parse_duration(raw["duration"], f"{where}.duration"), node, None,
                              fault["kind"]))
    return Scenario(str(data.get("name", source)), str(data.get("description", "")), count, jobs,
                    tuple(sorted(steps, key=lambda s: s.at)), str(data.get("profile", "")))


def _jobs(data: dict[str, Any], source: str, count: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """`jobs: [{id, nodes}]`, or the one `job: {id, nodes}` (default: job 4242 on every node)."""
    specs = data.get("jobs") if "jobs" in data else [data.get("job") if isinstance(data.get("job"), dict) else {}]
    if not isinstance(specs, list) or not specs:
        raise ScenarioError(f"{source}: 'jobs' must be a list of {{id, nodes}}")
    jobs = []
    for number, spec in enumerate(specs):
        nodes = spec.get("nodes", "all") if isinstance(spec, dict) else None
        if nodes != "all" and not (isinstance(nodes, list) and all(isinstance(n, int) and 0 <= n < count
                                                                   for n in nodes)):
            raise ScenarioError(f"{source}: jobs[{number}].nodes must be 'all' or node indices from 0 to {count - 1}")
        jobs.append((str(spec.get("id", 4242 + number * 101)), tuple(range(count)) if nodes == "all" else tuple(nodes)))
    return tuple(jobs)
