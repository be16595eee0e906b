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

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from simulator.nvml import Fault
from toolkit import durations

# How much longer the ranks that wait spend in each collective, and how much shorter the rank waited for.
WAITING_EXEC, WAITED_FOR_EXEC = 1.7, 0.45


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


Effect = Callable[["NodeEffects", dict[str, Any], dict[str, Any], "int | None"], None]


@dataclass(frozen=True)
class Kind:
    """A fault kind, declared once: where it strikes (`gpu`: one GPU of a node, `node`: a node, `job`:
    every node of a job), the fields it needs (checked in this order: `node`, `gpu`, `xid`), a check of
    its other fields (the message when wrong, else ""), its effect on one node (effects, the fault, the
    node's profile, the node's index in its job), and whether NCCL RAS sees it as a hang."""

    scope: str
    effect: Effect
    needs: tuple[str, ...] = ()
    check: Callable[[dict[str, Any]], str] = lambda fault: ""
    hang: bool = False


KINDS: dict[str, Kind] = {}


def kind(name: str, scope: str, needs: tuple[str, ...] = (), check: Callable[[dict[str, Any]], str] = Kind.check,
         hang: bool = False) -> Callable[[Effect], Effect]:
    """Declares fault kind `name` with the effect it decorates."""
    def declare(effect: Effect) -> Effect:
        KINDS[name] = Kind(scope, effect, ("gpu", *needs) if scope == "gpu" else needs, check, hang)
        return effect
    return declare


def check_fault(fault: Any, where: str, gpus: int) -> dict[str, Any]:
    """A fault mapping, validated; ScenarioError naming `where` and the field otherwise."""
    if not isinstance(fault, dict) or "kind" not in fault:
        raise ScenarioError(f"{where}: a fault needs a 'kind' (one of {', '.join(KINDS)})")
    name = fault["kind"]
    if name not in KINDS:
        raise ScenarioError(f"{where}: unknown fault kind {name!r} (one of {', '.join(KINDS)})")
    declared = KINDS[name]
    for needed in sorted(declared.needs, key=("node", "gpu", "xid").index):
        value = fault.get(needed)
        if needed == "gpu" and not (isinstance(value, int) and 0 <= value < gpus):
            raise ScenarioError(f"{where}: fault {name} needs 'gpu', an index from 0 to {gpus - 1}")
        if needed == "node" and not isinstance(value, int):
            raise ScenarioError(f"{where}: fault {name} needs 'node', the index of the node it hits")
        if needed == "xid" and not isinstance(value, int):
            raise ScenarioError(f"{where}: fault {name} needs 'xid', the XID number")
    problem = declared.check(fault)
    if problem:
        raise ScenarioError(f"{where}: {problem}")
    return fault


def node_effects(faults: list[dict[str, Any]], profile: dict[str, Any], node: int | None = None) -> NodeEffects:
    """What the faults active on a node change, given the node's profile and its index."""
    effects = NodeEffects()
    for fault in faults:
        KINDS[fault["kind"]].effect(effects, fault, profile, node)
    return effects


# --- one GPU ---------------------------------------------------------------------------------------

def _gpu_fault(make: Callable[[dict[str, Any], dict[str, Any]], Fault]) -> Effect:
    """An effect that gives the fault's GPU the NVML Fault `make(gpu profile, busy profile)` returns."""
    def effect(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
        effects.gpus[fault["gpu"]] = make(profile["gpu"], profile["busy"])
    return effect


def _slowdown_temperature(gpu: dict[str, Any]) -> float:
    limits = gpu["temperature_limits"]
    return limits["slowdown"] if limits["mode"] == "absolute" else limits["tlimit"] - limits["slowdown"]


# slower than its peers with no throttle reason to show for it
kind("straggler", "gpu")(_gpu_fault(lambda gpu, busy: Fault(
    sm_clock_mhz=round(0.72 * gpu["sm_clock_max_mhz"]), activity_scale=0.75, power_watts=0.78 * busy["power_watts"])))
kind("thermal_throttle", "gpu")(_gpu_fault(lambda gpu, busy: Fault(
    reasons=0x40, temperature=_slowdown_temperature(gpu), sm_clock_mhz=round(0.6 * gpu["sm_clock_max_mhz"]),
    violation_rates={"thermal": 1.0}, power_watts=0.7 * busy["power_watts"])))
kind("power_brake", "gpu")(_gpu_fault(lambda gpu, busy: Fault(
    reasons=0x80, sm_clock_mhz=round(0.4 * gpu["sm_clock_max_mhz"]), power_watts=0.35 * gpu["power_limit_watts"],
    violation_rates={"power": 1.0})))
kind("nvlink_errors", "gpu")(_gpu_fault(lambda gpu, busy: Fault(nvlink_error_rates={"replay": 2.0, "recovery": 0.2})))
kind("gpu_lost", "gpu")(_gpu_fault(lambda gpu, busy: Fault(lost=True)))  # the simulated NVML raises XID 79 itself
kind("ecc_uncorrectable", "gpu")(_gpu_fault(lambda gpu, busy: Fault(ecc={4: 1, 6: 1}, remap={143: 1, 144: 1},
                                                                    recovery_action=1)))
kind("row_remap_failure", "gpu")(_gpu_fault(lambda gpu, busy: Fault(ecc={4: 2, 6: 2}, remap={143: 2, 145: 1},
                                                                    recovery_action=1)))


@kind("xid", "gpu", needs=("xid",))
def _xid(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.xids.append((fault["gpu"], fault["xid"]))


@kind("kernel_xid", "gpu", needs=("xid",))
def _kernel_xid(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """Logged by the driver, never reported by NVML events (79, 119, 120)."""
    effects.kernel_xids.append((fault["gpu"], fault["xid"]))


@kind("nvlink_down", "gpu")
def _nvlink_down(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.gpus[fault["gpu"]] = Fault(nvlinks_down=int(fault.get("links", 1)))


@kind("gpu_missing_at_boot", "gpu")
def _missing_at_boot(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.missing_at_boot.add(fault["gpu"])


def _dcgm_health_fields(fault: dict[str, Any]) -> str:
    if fault.get("system", "memory") in DCGM_SYSTEMS and fault.get("result", "fail") in DCGM_RESULTS:
        return ""
    return f"fault dcgm_health takes 'system' ({', '.join(DCGM_SYSTEMS)}) and 'result' (warn or fail)"


@kind("dcgm_health", "gpu", check=_dcgm_health_fields)
def _dcgm_health(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """DCGM_FR_VOLATILE_DBE_DETECTED (4) unless the fault names a code."""
    effects.dcgm.incidents.setdefault(fault["gpu"], []).append(
        (DCGM_SYSTEMS[fault.get("system", "memory")], DCGM_RESULTS[fault.get("result", "fail")],
         int(fault.get("code", 4))))


# --- a node ----------------------------------------------------------------------------------------

@kind("efa_stall", "node")
def _efa_stall(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.efa.traffic_scale = 0.0


@kind("efa_retransmit_storm", "node")
def _efa_retransmit_storm(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                          node: int | None) -> None:
    effects.efa.error_rates.update(retrans_pkts=2000.0, retrans_bytes=2000.0 * 8192, retrans_timeout_events=2.0,
                                   unresponsive_remote_events=1.0, impaired_remote_conn_events=1.0)


@kind("lustre_eviction", "node")
def _lustre_eviction(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.lustre.stalled_targets.add(fault.get("target", "OST0001"))
    effects.lustre.state = fault.get("state", "DISCONN")


@kind("efa_device_missing", "node")
def _efa_device_missing(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                        node: int | None) -> None:
    effects.efa.missing_devices += int(fault.get("count", 1))


def _sxid_fields(fault: dict[str, Any]) -> str:
    if isinstance(fault.get("switch"), int) and isinstance(fault.get("sxid"), int):
        return ""
    return "fault sxid needs 'switch' (an NVSwitch index) and 'sxid', the SXID number"


@kind("sxid", "node", check=_sxid_fields)
def _sxid(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.sxids.append((fault["switch"], fault["sxid"], bool(fault.get("fatal", False))))


def _port_fields(fault: dict[str, Any]) -> str:
    device = fault.get("device", 0)
    if isinstance(device, int) and device >= 0:
        return ""
    return "fault rdma_port_down takes 'device', the index of an InfiniBand HCA (0, 1, ...)"


@kind("rdma_port_down", "node", check=_port_fields)
def _rdma_port_down(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    effects.ports_down.add(int(fault.get("device", 0)))


@kind("dcgm_engine_down", "node")
def _dcgm_engine_down(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                      node: int | None) -> None:
    effects.dcgm.down = True


@kind("dcgm_profiling_locked", "node")
def _dcgm_profiling_locked(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                           node: int | None) -> None:
    """Nsight or a second engine holds the counters."""
    effects.dcgm.locked = True


# --- every node of a job ---------------------------------------------------------------------------

def _hung(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """A hung collective: every waiting GPU spins in NCCL. NCCL RAS tells the hangs apart (ras.py);
    on the hardware each looks like a collective stall."""
    gpu = profile["gpu"]
    effects.nccl.paused = fault["kind"] != "collective_stall"  # Inspector records completions: none come
    stalled = Fault(utilization=100, power_watts=0.11 * gpu["power_limit_watts"], activity_scale=0.02,
                    nvlink_scale=0.0)
    effects.gpus.update({index: stalled for index in range(gpu["count"]) if index not in effects.gpus})
    effects.efa.traffic_scale = 0.0


kind("collective_stall", "job")(_hung)
kind("nccl_hang", "job", needs=("node", "gpu"), hang=True)(_hung)
kind("nccl_hang_launched", "job", hang=True)(_hung)
kind("nccl_process_dead", "job", needs=("node", "gpu"), hang=True)(_hung)


def _waited_for(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """One rank the job waits for (`node`, `gpu`): its collectives shorter, everyone else's longer; a
    compute straggler also changes what the GPUs do (the waiting ones spin in NCCL kernels)."""
    target = fault["gpu"] if fault["node"] == node else None
    busy_power = profile["busy"]["power_watts"]
    for index in range(profile["gpu"]["count"]):
        waited_for = index == target
        effects.nccl.scale_exec(index, WAITED_FOR_EXEC if waited_for else WAITING_EXEC)
        if fault["kind"] == "compute_straggler" and waited_for:  # never waits: busy at its full level
            effects.gpus[index] = replace(effects.gpus.get(index, Fault()), activity_scale=1.03,
                                          power_watts=busy_power)
        elif fault["kind"] == "compute_straggler":  # fewer SMs busy, less power
            _compose(effects, index, 0.66, 0.72 * busy_power)


kind("compute_straggler", "job", needs=("node", "gpu"))(_waited_for)
kind("nccl_late_arrival", "job", needs=("node", "gpu"))(_waited_for)


@kind("nccl_bandwidth_drop", "job", needs=("node",))
def _bandwidth_drop(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """A ring runs at its slowest link: everyone slows, that node most."""
    effects.nccl.network_bandwidth_scale *= 0.3 if fault["node"] == node else 0.45


@kind("checkpoint", "job")
def _checkpoint(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any], node: int | None) -> None:
    """The job writes its state: GPUs idle, no collectives."""
    effects.nccl.paused = True
    for index in range(profile["gpu"]["count"]):
        _compose(effects, index, 0.02, 0.15 * profile["gpu"]["power_limit_watts"], utilization=3)


@kind("pipeline_imbalance", "job")
def _pipeline_imbalance(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                        node: int | None) -> None:
    """First and last pipeline stages always busier: healthy."""
    last = profile["gpu"]["count"] - 1
    for index in range(profile["gpu"]["count"]):
        if index in (0, last):
            effects.nccl.scale_exec(index, 0.55)
        else:
            _compose(effects, index, 0.78, None)


def _nothing_on_the_node(effects: NodeEffects, fault: dict[str, Any], profile: dict[str, Any],
                         node: int | None) -> None:
    """What only NCCL RAS's answers show (ras.py)."""


kind("ras_slow", "job")(_nothing_on_the_node)
kind("ras_off", "job")(_nothing_on_the_node)

JOB_KINDS = tuple(name for name, declared in KINDS.items() if declared.scope == "job")
HANG_KINDS = tuple(name for name, declared in KINDS.items() if declared.hang)


def _compose(effects: NodeEffects, index: int, activity: float, power: float | None,
             utilization: float | None = None) -> None:
    current = effects.gpus.get(index, Fault())
    scale = (current.activity_scale if current.activity_scale is not None else 1.0) * activity
    effects.gpus[index] = replace(current, activity_scale=scale,
                                  power_watts=power if power is not None else current.power_watts,
                                  utilization=utilization if utilization is not None else current.utilization)


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
