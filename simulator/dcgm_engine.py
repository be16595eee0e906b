"""A simulated DCGM host engine (nv-hostengine) for a simulated node, behind gpuscope's emulator of
DCGM's Python bindings (simulator/dcgm_bindings: `dcgm_agent`, `dcgm_structs`, `dcgm_fields`).

The emulator's functions keep the names, argument orders, value structures, blank sentinels and
`DCGMError_*` classes of NVIDIA/DCGM's published bindings (DCGM 4.6, `testing/python3`); what they
answer comes from here, with the rules of DCGM's own engine (dcgmlib/src, modules/profiling):
- the node's GPUs as the simulated NVML has them (UUIDs, activity), numbered DCGM's own way;
- profiling metric groups with a major and a minor id (`dcgmProfGetSupportedMetricGroups`): groups of
  different majors are counted at once, minors of one major take a pass each and are multiplexed, up
  to five passes (DLG_MAX_METRIC_GROUPS, NVIDIA's test_prof.py), -38 beyond; the passes are counted
  over every client's watches together (the emulator's reading: the engine has one set of counters,
  and test_prof.py's two-client test shares the watches; no published source states the sum);
- field-group names unique across all clients of the engine (-26, DcgmFieldGroup.cpp AddFieldGroup),
  at most 64 groups and 64 field groups engine-wide (-24, DCGM_MAX_NUM_GROUPS/_FIELD_GROUPS); group
  names may repeat (DcgmGroupManager.cpp AddNewGroup checks none); a client's groups, field groups and
  watches go with its connection (RemoveAllGroupsForConnection);
- refusals of profiling: another owner of the counters (-37), an engine not running as root (-29, at
  the watch: DcgmLopGpu::BeginSession), no profiling module (-33) or no support (-6) at every
  profiling call (test_prof.py's helper_check_profiling_environment meets both at
  dcgmProfGetSupportedMetricGroups); and no NVSwitch module (-33 from
  `dcgmGetEntityGroupEntities(DCGM_FE_SWITCH)`, as DcgmGroupManager.cpp expects of it);
- the faults injected: the engine stopped or restarted, health incidents.
Engines are found by the address a client connects to; "embedded" is the one `dcgmStartEmbedded` starts.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# DCGM return codes the engine answers with (dcgm_structs.DCGM_ST_*).
OK, BADPARAM, NOT_SUPPORTED, VER_MISMATCH, NO_DATA = 0, -1, -6, -12, -14
CONNECTION_NOT_VALID, MAX_LIMIT, DUPLICATE_KEY, REQUIRES_ROOT, MODULE_NOT_LOADED = -21, -24, -26, -29, -33
PROFILING_LIBRARY_ERROR, PROFILING_MULTI_PASS = -37, -38
PROFILING_FIELDS = range(1001, 1013)
MAX_PASSES = 5  # DLG_MAX_METRIC_GROUPS: multiplexed passes the profiling module takes
MAX_GROUPS = MAX_FIELD_GROUPS = 64  # DCGM_MAX_NUM_GROUPS, DCGM_MAX_NUM_FIELD_GROUPS
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


@dataclass(frozen=True)
class MetricGroup:
    """One of `dcgmProfGetSupportedMetricGroups`'s groups."""

    major: int
    minor: int
    fields: tuple[int, ...]


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
    field_groups: dict[int, tuple[str, list[int]]] = field(default_factory=dict)  # id -> (name, fields)
    watches: dict[tuple[int, int], set[tuple[tuple[int, int], int]]] = field(default_factory=dict)
    health: dict[int, int] = field(default_factory=dict)  # group -> systems watched

    def watched(self) -> set[tuple[tuple[int, int], int]]:
        """(entity, field) pairs of all this client's watches."""
        return set().union(*self.watches.values())


def metric_groups(dcgm: dict[str, Any]) -> list[MetricGroup]:
    """The profile's groups (`{major, minor, fields}`); without any, one group of every field."""
    return [MetricGroup(int(g["major"]), int(g["minor"]), tuple(g["fields"]))
            for g in dcgm.get("metric_groups", [{"major": 0, "minor": 0, "fields": list(PROFILING_FIELDS)}])]


class HostEngine:
    """One node's nv-hostengine. `nvml` is the node's SimulatedNvml; `dcgm` the profile's dcgm section."""

    def __init__(self, nvml: Any, dcgm: dict[str, Any], switches: int = 0) -> None:
        self._nvml = nvml
        self.version = str(dcgm.get("version", "4.2.3"))
        self.metric_groups = metric_groups(dcgm)
        self.max_passes = int(dcgm.get("max_passes", MAX_PASSES))
        self.switches = switches
        self.running = True
        self.root = True  # nv-hostengine's user: a profiling watch needs root (-29 otherwise)
        self.profiling_error = OK  # what every profiling call answers: -33 no profiling module, -6 unsupported
        self.nvswitch_module = True  # loaded: it lists the NVSwitches (-33 otherwise)
        self.profiling_owner = ""  # another client of the counters (Nsight, a second engine): -37
        self.other_clients: set[int] = set()  # profiling fields clients outside the test watch
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
        """The connection's groups, field groups and watches go with it."""
        self._sessions.pop(handle, None)

    def gpu_ids(self) -> list[int]:
        """DCGM's gpuIds: not NVML's order (a client must join by UUID)."""
        return [self._gpu_id(index) for index in range(self._nvml.profile["gpu"]["count"]) if index not in self.hidden]

    def switch_ids(self) -> list[int]:
        """The NVSwitches, which the NVSwitch module lists: -33 when it is not loaded."""
        if not self.nvswitch_module:
            raise EngineError(MODULE_NOT_LOADED)
        return list(range(self.switches))

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

    def add_group(self, session: _Session, entities: list[tuple[int, int]]) -> int:
        """dcgmGroupCreate: names need not be unique (DcgmGroupManager::AddNewGroup), the count is bounded."""
        if sum(len(s.groups) for s in self._sessions.values()) >= MAX_GROUPS:
            raise EngineError(MAX_LIMIT)
        group = self.new_id()
        session.groups[group] = entities
        return group

    def add_field_group(self, session: _Session, name: str, fields: list[int]) -> int:
        """dcgmFieldGroupCreate: a name unique among all clients' field groups (DcgmFieldGroupManager)."""
        if not 0 < len(fields) <= 128:
            raise EngineError(BADPARAM)
        names = [fg_name for s in self._sessions.values() for fg_name, _ in s.field_groups.values()]
        if name in names:
            raise EngineError(DUPLICATE_KEY)
        if len(names) >= MAX_FIELD_GROUPS:
            raise EngineError(MAX_LIMIT)
        field_group = self.new_id()
        session.field_groups[field_group] = (name, list(fields))
        return field_group

    def supported_groups(self) -> list[MetricGroup]:
        """dcgmProfGetSupportedMetricGroups."""
        if self.profiling_error != OK:
            raise EngineError(self.profiling_error)
        return self.metric_groups

    def passes(self, fields: set[int]) -> int:
        """Passes the counters take for `fields`: per major, one for each of its minors needed."""
        minors: dict[int, set[int]] = {}
        for field_id in fields:
            group = next((g for g in self.metric_groups if field_id in g.fields), None)
            if group is None:
                raise EngineError(NOT_SUPPORTED)
            minors.setdefault(group.major, set()).add(group.minor)
        return max((len(found) for found in minors.values()), default=0)

    def watch(self, session: _Session, group: int, field_group: int) -> None:
        """dcgmWatchFields: profiling fields need a profiling module, root, the counters' single owner
        and at most `max_passes` passes for all clients' profiling watches together."""
        entities, (_, fields) = session.groups.get(group), session.field_groups.get(field_group, ("", None))
        if entities is None or fields is None:
            raise EngineError(BADPARAM)
        profiling = {f for f in fields if f in PROFILING_FIELDS}
        if profiling:
            if self.profiling_error != OK:
                raise EngineError(self.profiling_error)
            if not self.root:
                raise EngineError(REQUIRES_ROOT)  # DcgmLopGpu::BeginSession: the counters need privilege
            if self.profiling_owner:
                raise EngineError(PROFILING_LIBRARY_ERROR)
            watched = {f for s in self._sessions.values() for _, f in s.watched() if f in PROFILING_FIELDS}
            if self.passes(profiling | watched | self.other_clients) > self.max_passes:
                raise EngineError(PROFILING_MULTI_PASS)
        session.watches[(group, field_group)] = {(e, f) for e in entities for f in fields}

    def unwatch(self, session: _Session, group: int, field_group: int) -> None:
        session.watches.pop((group, field_group), None)

    def destroy_field_group(self, session: _Session, field_group: int) -> None:
        if session.field_groups.pop(field_group, None) is None:
            raise EngineError(BADPARAM)
        for key in [k for k in session.watches if k[1] == field_group]:
            del session.watches[key]

    def latest(self, session: _Session, pairs: list[tuple[tuple[int, int], int]]) -> list[tuple[int, float | None]]:
        """(status, value) of each (entity, field) asked; None where DCGM has a blank."""
        watched = session.watched()
        return [self._latest(entity, field_id) if (entity, field_id) in watched else (NO_DATA, None)
                for entity, field_id in pairs]

    def _latest(self, entity: tuple[int, int], field_id: int) -> tuple[int, float | None]:
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
