"""A simulated DCGM host engine (nv-hostengine) for a simulated node, behind gpuscope's emulator of
DCGM's Python bindings (exporter/sim/dcgm_bindings: `dcgm_agent`, `dcgm_structs`, `dcgm_fields`).

The emulator's functions keep the names, argument orders, value structures, blank sentinels and
`DCGMError_*` classes of NVIDIA/DCGM's published bindings (REFERENCE.md section 15); what they
answer comes from here: the node's GPUs as the simulated NVML has them (UUIDs, activity), the
profiling metric groups of the profile, and the faults injected (the engine stopped or restarted,
another owner of the profiling counters, health incidents). Engines are found by the address a
client connects to, so the collector's own connect call reaches them; "embedded" is the engine
`dcgmStartEmbedded` starts.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# DCGM return codes the engine answers with (dcgm_structs.DCGM_ST_*).
OK, BADPARAM, VER_MISMATCH, CONNECTION_NOT_VALID = 0, -1, -12, -21
NO_DATA, PROFILING_LIBRARY_ERROR, PROFILING_MULTI_PASS = -14, -37, -38
PROFILING_FIELDS = range(1001, 1013)
FE_GPU = 1  # dcgm_fields.DCGM_FE_GPU
# What each profiling field reads of the simulated GPU's activity (the NVML simulator's keys).
ACTIVITY_OF_FIELD = {1001: "graphics_active", 1002: "sm_active", 1003: "sm_occupancy", 1004: "tensor_active",
                     1005: "dram_active", 1006: "fp64_active", 1007: "fp32_active", 1008: "fp16_active"}
ENGINES: dict[str, HostEngine] = {}
BINDINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dcgm_bindings")  # the emulator's folder
_LOCK = threading.Lock()


class EngineError(Exception):
    """A DCGM return code; the emulated dcgm_agent raises the matching DCGMError_* class."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Incident:
    """One health incident: DCGM's system bit, result (10 warn, 20 fail), dcgmError_t code, message."""

    system: int
    health: int
    code: int
    message: str


@dataclass
class _Session:
    generation: int
    groups: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    field_groups: dict[int, list[int]] = field(default_factory=dict)
    watched: set[tuple[int, int]] = field(default_factory=set)  # (entity group, entity id) x profiling
    health: dict[int, int] = field(default_factory=dict)  # group -> systems watched


class HostEngine:
    """One node's nv-hostengine. `nvml` is the node's SimulatedNvml; `dcgm` the profile's dcgm section."""

    def __init__(self, nvml: Any, dcgm: dict[str, Any], switches: int = 0) -> None:
        self._nvml = nvml
        self.version = str(dcgm.get("version", "4.2.3"))
        self.metric_groups = [list(group) for group in dcgm.get("metric_groups", [list(PROFILING_FIELDS)])]
        self.switches = switches
        self.running = True
        self.profiling_owner = ""  # another client of the counters (Nsight, a second engine): -37
        self.other_clients: set[int] = set()  # profiling fields other clients of this engine watch
        self.hidden: set[int] = set()  # NVML indexes DCGM does not list (a GPU it cannot handle)
        self.incidents: dict[tuple[int, int], list[Incident]] = {}  # (entity group, id) -> incidents
        self.calls: Counter[str] = Counter()
        self._generation = 0
        self._sessions: dict[int, _Session] = {}
        self._next = 1

    # --- the node's side: faults ---------------------------------------------------------------------

    def restart(self) -> None:
        """nv-hostengine restarted: every connection, group and watch of its clients is gone."""
        self._generation += 1
        self._sessions.clear()

    def apply(self, down: bool, locked: bool, incidents: dict[int, list[tuple[int, int, int]]]) -> None:
        """The node's faults: the engine stopped (it comes back as a restart: clients set up again),
        the counters' other owner, and each GPU's incidents as (system bit, result, dcgmError_t code)."""
        if down and self.running:
            self.running = False
            self.restart()
        self.running = not down
        self.profiling_owner = "nsight" if locked else ""
        self.incidents = {(FE_GPU, self._gpu_id(index)): [Incident(system, health, code, f"simulated incident {code}")
                                                          for system, health, code in found]
                          for index, found in incidents.items()}

    # --- the clients' side ---------------------------------------------------------------------------

    def connect(self, client_major: int) -> int:
        """A client of the library's major version `client_major`; another major than the engine's is
        refused, as libdcgm refuses an engine of another major."""
        self.calls["connect"] += 1
        if not self.running:
            raise EngineError(CONNECTION_NOT_VALID)
        if int(self.version.split(".")[0]) != client_major:
            raise EngineError(VER_MISMATCH)
        handle, self._next = self._next, self._next + 1
        self._sessions[handle] = _Session(self._generation)
        return handle

    def session(self, handle: int, call: str) -> _Session:
        self.calls[call] += 1
        session = self._sessions.get(handle)
        if not self.running or session is None or session.generation != self._generation:
            raise EngineError(CONNECTION_NOT_VALID)
        return session

    def disconnect(self, handle: int) -> None:
        self._sessions.pop(handle, None)

    def gpu_ids(self) -> list[int]:
        """DCGM's gpuIds: not NVML's order (a client must join by UUID)."""
        return [self._gpu_id(index) for index in range(self._nvml.profile["gpu"]["count"]) if index not in self.hidden]

    def _gpu_id(self, index: int) -> int:
        return self._nvml.profile["gpu"]["count"] - 1 - index

    def _index(self, gpu_id: int) -> int:
        index = self._gpu_id(gpu_id)  # the reversal is its own inverse
        if not 0 <= index < self._nvml.profile["gpu"]["count"] or index in self.hidden:
            raise EngineError(BADPARAM)
        return index

    def uuid(self, gpu_id: int) -> str:
        return self._nvml.uuid_of(self._index(gpu_id))

    def new_id(self) -> int:
        self._next += 1
        return self._next

    def watch(self, session: _Session, group: int, field_group: int) -> None:
        """dcgmWatchFields: profiling fields need the counters' single owner and one pass."""
        entities, fields = session.groups.get(group), session.field_groups.get(field_group)
        if entities is None or fields is None:
            raise EngineError(BADPARAM)
        profiling = [f for f in fields if f in PROFILING_FIELDS]
        if profiling:
            if self.profiling_owner:
                raise EngineError(PROFILING_LIBRARY_ERROR)
            together = set(profiling) | self.other_clients  # one engine counts all its clients' fields at once
            if not any(together <= set(group_fields) for group_fields in self.metric_groups):
                raise EngineError(PROFILING_MULTI_PASS)
        session.watched |= {(e, f) for e in entities for f in fields}

    def latest(self, session: _Session, entity: tuple[int, int], field_id: int) -> tuple[int, float | None]:
        """(status, value) of a watched field of one entity; None where DCGM has a blank."""
        if (entity, field_id) not in session.watched:
            return NO_DATA, None
        if field_id in PROFILING_FIELDS and self.profiling_owner:
            return OK, None  # the counters were taken after the watch: blank values
        if entity[0] != FE_GPU or field_id not in ACTIVITY_OF_FIELD:
            return OK, None
        return OK, self._nvml.activity_of(self._index(entity[1]))[ACTIVITY_OF_FIELD[field_id]]

    def health(self, session: _Session, group: int) -> list[tuple[tuple[int, int], Incident]]:
        """The incidents of the group's entities in the systems the group watches."""
        systems = session.health.get(group, 0)
        return [(entity, incident) for entity in session.groups.get(group, [])
                for incident in self.incidents.get(entity, []) if incident.system & systems]


def key(address: str) -> str:
    """How an address is looked up: a unix socket path as "unix:<path>" (the collector connects to a
    path with addressIsUnixSocket), anything else as given."""
    return "unix:" + address.removeprefix("unix:") if address.startswith(("/", "unix:")) else address


def serve(nvml: Any, profile: dict[str, Any], address: str) -> HostEngine | None:
    """The node's engine at `address` when its profile runs one (a `dcgm` section), else None."""
    if "dcgm" not in profile:
        return None
    engine = HostEngine(nvml, profile["dcgm"], int(profile["dcgm"].get("nvswitches", 0)))
    with _LOCK:
        ENGINES[key(address)] = engine
    return engine


def unregister(address: str) -> None:
    with _LOCK:
        ENGINES.pop(key(address), None)


def find(address: str) -> HostEngine:
    """The engine listening at `address`; CONNECTION_NOT_VALID where none does (nv-hostengine not running)."""
    with _LOCK:
        engine = ENGINES.get(address)
    if engine is None:
        raise EngineError(CONNECTION_NOT_VALID)
    return engine
