"""Fault kinds a simulated node can suffer, and the scenario files that schedule them.

A fault is a small mapping, `{kind: thermal_throttle, gpu: 3}`, as it appears in a scenario file
and in a node's `faults.yaml`. `node_effects()` turns the faults active on one node into what
the simulation changes: a `Fault` per GPU for the simulated NVML, and the node's EFA and Lustre
behaviour. The effects follow the signatures in REFERENCE.md §4 (an NCCL hang: utilization pinned,
power near idle, no tensor activity, network flat; a thermal throttle: the HW thermal bit,
temperature at the slowdown limit, violation time rising).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from exporter.sim.nvml import Fault

GPU_KINDS = ("straggler", "thermal_throttle", "power_brake", "nvlink_errors", "gpu_lost", "ecc_uncorrectable",
             "row_remap_failure", "xid")
NODE_KINDS = ("efa_stall", "efa_retransmit_storm", "lustre_eviction")
JOB_KINDS = ("collective_stall",)
KINDS = GPU_KINDS + NODE_KINDS + JOB_KINDS
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ScenarioError(ValueError):
    """A scenario or fault that cannot be simulated, phrased for the person who wrote it."""


@dataclass
class EfaEffect:
    traffic_scale: float = 1.0
    error_rates: dict[str, float] = field(default_factory=dict)  # counter name -> per second per device


@dataclass
class LustreEffect:
    stalled_targets: set[str] = field(default_factory=set)
    state: str = "FULL"


@dataclass
class NodeEffects:
    gpus: dict[int, Fault] = field(default_factory=dict)
    xids: list[tuple[int, int]] = field(default_factory=list)  # (gpu, xid) raised when the fault starts
    efa: EfaEffect = field(default_factory=EfaEffect)
    lustre: LustreEffect = field(default_factory=LustreEffect)


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
    if kind == "xid" and not isinstance(fault.get("xid"), int):
        raise ScenarioError(f"{where}: fault xid needs 'xid', the XID number")
    return fault


def node_effects(faults: list[dict[str, Any]], profile: dict[str, Any]) -> NodeEffects:
    """What the faults active on a node change, given the node's profile."""
    effects = NodeEffects()
    gpu, busy = profile["gpu"], profile["busy"]
    for fault in faults:
        kind = fault["kind"]
        if kind == "xid":
            effects.xids.append((fault["gpu"], fault["xid"]))
        elif kind == "gpu_lost":
            effects.gpus[fault["gpu"]] = Fault(lost=True)  # the simulated NVML raises XID 79 itself
        elif kind in GPU_KINDS:
            effects.gpus[fault["gpu"]] = _gpu_fault(kind, gpu, busy)
        elif kind == "collective_stall":
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
        elif kind == "lustre_eviction":
            effects.lustre.stalled_targets.add(fault.get("target", "OST0001"))
            effects.lustre.state = fault.get("state", "DISCONN")
    return effects


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
    node: int | str  # a node index, or "job" for every node of the job
    fault: dict[str, Any] | None  # None clears
    clear: str = ""  # with fault None: the kind to clear, or "all"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int
    job_nodes: tuple[int, ...]
    steps: tuple[Step, ...]
    job_id: str = "4242"


def parse_duration(value: Any, where: str) -> float:
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ScenarioError(f"{where}: invalid duration {value!r} (examples: 30s, 2m)")
    return float(match[1]) * _UNITS[match[2]]


def parse_scenario(data: Any, source: str, gpus: int, nodes: int | None = None) -> Scenario:
    """A scenario from its YAML mapping; ScenarioError naming the file and field otherwise."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a mapping with 'name' and 'steps'")
    count = int(nodes or data.get("nodes", 4))
    job_spec = data.get("job") if isinstance(data.get("job"), dict) else {}
    job = job_spec.get("nodes", "all")
    job_nodes = tuple(range(count)) if job == "all" else tuple(int(n) for n in job)
    steps = []
    for number, raw in enumerate(data.get("steps") or []):
        where = f"{source}: steps[{number}]"
        if not isinstance(raw, dict):
            raise ScenarioError(f"{where}: a step is a mapping with 'at', 'node' and 'fault' or 'clear'")
        node = raw.get("node", 0)
        if node != "job" and (not isinstance(node, int) or not 0 <= node < count):
            raise ScenarioError(f"{where}: 'node' must be 'job' or an index from 0 to {count - 1}")
        at = parse_duration(raw.get("at", "0s"), f"{where}.at")
        if "clear" in raw:
            steps.append(Step(at, node, None, str(raw["clear"])))
            continue
        fault = check_fault(raw.get("fault"), f"{where}.fault", gpus)
        if fault["kind"] in JOB_KINDS and node != "job":
            raise ScenarioError(f"{where}: {fault['kind']} affects a whole job: use node: job")
        steps.append(Step(at, node, dict(fault)))
        if "duration" in raw:
            steps.append(Step(at + parse_duration(raw["duration"], f"{where}.duration"), node, None,
                              fault["kind"]))
    return Scenario(str(data.get("name", source)), str(data.get("description", "")), count, job_nodes,
                    tuple(sorted(steps, key=lambda s: s.at)), str(job_spec.get("id", "4242")))
