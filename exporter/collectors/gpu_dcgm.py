"""Profiling and health from NVIDIA DCGM's host engine, for GPUs without NVML GPM (A100: p4d).

Before Hopper, SM activity and the other profiling ratios come only from DCGM, and the counters
have one owner per node: gpuscope reads them from the site's nv-hostengine (the GPU Operator's,
the DLAMI's) as one more client and never starts an engine of its own unless asked
(`--collector.gpu.dcgm-address=embedded`): a second engine would take the counters from the site's.

Everything runs on one background thread (a scrape never waits on DCGM):
1. load the bindings the DCGM package installed (`dcgm_structs`, `dcgm_fields`, `dcgm_agent`, flat
   modules in its python3 bindings folder; they load the library of the same major version);
2. connect, list DCGM's GPUs and join them to NVML's by UUID (DCGM's gpuIds are its own);
3. set health watches on the systems that matter for training, then watch the profiling fields:
   of every metric group major that holds gpuscope's fields (`dcgmProfGetSupportedMetricGroups`),
   its best minor, all in one request (majors are counted at once; minors of one major would be
   multiplexed), group by group where the engine answers -38; a small keep age and sample count;
4. every interval read the latest values and run `dcgmHealthCheck`.
DCGM absent or the engine not running or restarting: one log line, no DCGM series, retried. The
engine refusing profiling (another owner of the counters -37, too many passes -38, not root -29, no
profiling module -33, unsupported -6/-36) or listing no NVSwitches (-33 without its NVSwitch
module): one log line, those series go with the reason in `gpuscope_dcgm_profiling_blocked` or
`gpuscope_dcgm_nvswitch_blocked`, health goes on, and profiling is tried again every minute. The
rest of the GPU collector is untouched. Calls made: see docs/gpu.md "A100 and DCGM".
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from exporter import catalog
from exporter.catalog import Metric

log = logging.getLogger("gpuscope")

# Where the DCGM packages put their Python bindings: DCGM 4 (datacenter-gpu-manager-4-*), then 3.
DEFAULT_BINDINGS = ("/usr/share/datacenter-gpu-manager-4/bindings/python3", "/usr/local/dcgm/bindings/python3")
# DCGM profiling field -> gpuscope metric. DCGM reports ratios (0-1), GPM percentages: the same series.
# In the order they matter, which decides between groups: SM activity feeds the straggler rules.
PROFILING_FIELDS: dict[int, Metric] = {
    1002: catalog.GPU_SM_ACTIVE, 1004: catalog.GPU_TENSOR_ACTIVE, 1005: catalog.GPU_DRAM_ACTIVE,
    1003: catalog.GPU_SM_OCCUPANCY, 1001: catalog.GPU_GRAPHICS_ACTIVE, 1007: catalog.GPU_FP32_ACTIVE,
    1006: catalog.GPU_FP64_ACTIVE, 1008: catalog.GPU_FP16_ACTIVE,
}
RANK = {field_id: rank for rank, field_id in enumerate(PROFILING_FIELDS)}
# dcgmHealthSet systems (DCGM_HEALTH_WATCH_*) watched, by the name the series carry.
GPU_SYSTEMS = {"pcie": 0x1, "nvlink": 0x2, "memory": 0x10, "sm": 0x20, "inforom": 0x40, "thermal": 0x80,
               "power": 0x100, "driver": 0x200}
SWITCH_SYSTEMS = {"nvswitch_nonfatal": 0x400, "nvswitch_fatal": 0x800}
SYSTEM_NAMES = {bit: name for name, bit in {**GPU_SYSTEMS, **SWITCH_SYSTEMS}.items()}
HEALTH_RESULTS = {0: 0.0, 10: 1.0, 20: 2.0}  # DCGM_HEALTH_RESULT_PASS/WARN/FAIL -> 0/1/2
FE_GPU, FE_SWITCH = 1, 3  # dcgm_fields.DCGM_FE_GPU, DCGM_FE_SWITCH
FP64_BLANK, INT64_BLANK = 2.0 ** 47, 0x7FFFFFFFFFFFFFF0  # a value at or above these is DCGM's "no value"
CONNECTION_NOT_VALID, MULTI_PASS = -21, -38  # DCGM_ST_*
# Why the engine refuses a part of what gpuscope asks, by DCGM return code (any other: "error").
BLOCKED_BY_CODE = {-37: "locked", -38: "multi_pass", -36: "not_supported", -6: "not_supported",
                   -29: "requires_root", -33: "module_not_loaded"}
RETRY_SECONDS = (5.0, 60.0)  # reconnect backoff: from, to
KEEP_SAMPLES = 2  # DCGM keeps this many samples per field: memory stays flat


@dataclass(frozen=True)
class DcgmOptions:
    address: str = "127.0.0.1:5555"  # nv-hostengine's default; a path (or unix:path) for a unix socket
    bindings: tuple[str, ...] = DEFAULT_BINDINGS
    interval: float = 10.0


@dataclass
class DcgmView:
    """What the last round read, for a scrape: per NVML index, profiling values and health."""

    up: bool = False
    profiled: frozenset[int] = frozenset()  # NVML indexes DCGM profiles now
    values: dict[int, list[tuple[Metric, float]]] = field(default_factory=dict)
    health: dict[int, dict[str, float]] = field(default_factory=dict)  # index -> system -> 0/1/2
    incidents: list[tuple[int, str, str, float]] = field(default_factory=list)  # (index, system, code, 0/1/2)
    switches: dict[int, dict[str, float]] = field(default_factory=dict)  # DCGM's NVSwitch id -> system -> 0/1/2
    blocked: str = ""  # why some or all profiling groups are not watched
    switches_blocked: str = ""  # why DCGM lists no NVSwitches


def load_bindings(folders: tuple[str, ...]) -> tuple[ModuleType, ModuleType, ModuleType] | str:
    """(dcgm_structs, dcgm_fields, dcgm_agent) from the first folder that has them, or why not."""
    for folder in folders:
        if not os.path.isfile(os.path.join(folder, "dcgm_agent.py")):
            continue
        try:
            sys.path.insert(0, folder)
            modules = tuple(importlib.import_module(name) for name in ("dcgm_structs", "dcgm_fields", "dcgm_agent"))
        except ImportError:
            sys.path.remove(folder)
            continue
        return modules  # the bindings import each other by their flat names: the folder stays on the path
    return (f"no DCGM Python bindings in {', '.join(folders)} "
            "(install the DCGM package, or point --collector.gpu.dcgm-bindings at its bindings/python3)")


class DcgmSampler:
    """The background thread: connection, watches, and the latest view, rebuilt after any failure."""

    def __init__(self, options: DcgmOptions, gpus: dict[str, int], profile: frozenset[int]) -> None:
        """`gpus`: NVML UUID -> index of every GPU (health); `profile`: the indexes DCGM profiles."""
        self._options = options
        self._gpus = {uuid.lower(): index for uuid, index in gpus.items()}
        self._profile = profile
        self._lock = threading.Lock()
        self._view = DcgmView()
        self._stop = threading.Event()
        self._logged: set[str] = set()
        self._backoff = RETRY_SECONDS[0]
        threading.Thread(target=self._run, name="gpu-dcgm", daemon=True).start()

    def view(self) -> DcgmView:
        with self._lock:
            return self._view

    def stop(self) -> None:
        self._stop.set()

    def _publish(self, view: DcgmView) -> None:
        with self._lock:
            self._view = view

    def _note(self, message: str, **extra: Any) -> None:
        """One log line per distinct condition (not one per retry), until DCGM serves everything again."""
        key = message + repr(sorted(extra.items()))
        if key not in self._logged:
            self._logged.add(key)
            log.warning(message, extra=extra)

    def _run(self) -> None:
        bindings = load_bindings(self._options.bindings)
        if isinstance(bindings, str):
            self._note("DCGM unavailable; profiling and health from DCGM off", reason=bindings)
            return
        structs, _, agent = bindings
        try:
            structs._dcgmInit()  # the library of the bindings' major version, or DCGMError_LibraryNotFound
            agent.dcgmInit()
        except structs.DCGMError as exc:
            self._note("DCGM unavailable; profiling and health from DCGM off", reason=type(exc).__name__)
            return
        try:
            self._serve_sessions(bindings)
        finally:
            agent.dcgmShutdown()

    def _serve_sessions(self, bindings: tuple[ModuleType, ModuleType, ModuleType]) -> None:
        """One connection after another until stopped, backing off between failed ones."""
        while not self._stop.is_set():
            session = _Session(bindings, self._options, self._gpus, self._profile, self._note)
            if session.open():
                self._backoff = RETRY_SECONDS[0]
                if self._logged and not (session.blocked or session.switches_blocked):  # failures are news again
                    log.info("DCGM host engine usable again", extra={"address": self._options.address})
                    self._logged.clear()
                session.serve(self._publish, self._stop)
            session.close()
            self._publish(DcgmView(blocked=session.blocked, switches_blocked=session.switches_blocked))
            self._stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, RETRY_SECONDS[1])


class _Session:
    """One connection to the engine and what gpuscope set up on it."""

    def __init__(self, bindings: tuple[ModuleType, ModuleType, ModuleType], options: DcgmOptions,
                 gpus: dict[str, int], profile: frozenset[int], note: Any) -> None:
        self._structs, self._fields, self._agent = bindings
        self._options = options
        self._gpus = gpus
        self._profile = profile
        self._note = note
        # Field-group names are unique across all clients of an engine: this process's own, so a
        # second gpuscope on the engine (a rolling update, two instances) sets up beside it.
        self._name = f"gpuscope-{os.getpid()}-{secrets.token_hex(4)}"
        self._handle: Any = None
        self._health_group: Any = None
        self._entities: list[Any] = []  # profiled GPUs as c_dcgmGroupEntityPair_t
        self._index_of: dict[int, int] = {}  # DCGM gpuId -> NVML index
        self._fields_watched: list[int] = []
        self._switches: list[int] = []
        self.blocked = ""
        self.switches_blocked = ""

    def open(self) -> bool:
        """Connects and sets up watches; False (logged once) when the engine cannot be used now. What
        DCGM refuses of profiling or NVSwitches leaves health running, with the reason in `blocked` or
        `switches_blocked`."""
        try:
            self._connect()
            self._join()
            self._watch_health()
            self._watch_profiling()
        except self._structs.DCGMError as exc:
            self._note("DCGM host engine not usable; retrying", address=self._options.address,
                       error=type(exc).__name__)
            return False
        return True

    def _connect(self) -> None:
        address = self._options.address
        if address == "embedded":
            self._handle = self._agent.dcgmStartEmbedded(self._structs.DCGM_OPERATION_MODE_AUTO)
            return
        params = self._structs.c_dcgmConnectV2Params_v2()
        params.persistAfterDisconnect, params.timeoutMs = 0, 2000
        socket = address.startswith(("/", "unix:"))
        params.addressIsUnixSocket = 1 if socket else 0
        # bytes: the bindings hand strings to libdcgm as char* (older releases do not encode a str for you)
        target = address.removeprefix("unix:") if socket else address
        self._handle = self._agent.dcgmConnect_v2(target.encode(), params)

    def _join(self) -> None:
        """DCGM's GPUs joined to NVML's by UUID; a GPU NVML has and DCGM lacks is logged, never guessed."""
        for gpu_id in self._agent.dcgmGetAllSupportedDevices(self._handle):
            uuid = self._agent.dcgmGetDeviceAttributes(self._handle, gpu_id).identifiers.uuid
            index = self._gpus.get((uuid.decode() if isinstance(uuid, bytes) else uuid).lower())
            if index is not None:
                self._index_of[gpu_id] = index
        missing = sorted(set(self._gpus.values()) - set(self._index_of.values()))
        if missing:
            self._note("GPUs NVML lists are missing in DCGM; no DCGM data for them", gpus=missing)

    def _group(self, name: str, entities: list[tuple[int, int]]) -> Any:
        group = self._agent.dcgmGroupCreate(self._handle, self._structs.DCGM_GROUP_EMPTY,
                                            f"{self._name}-{name}".encode())
        for entity_group, entity in entities:
            self._agent.dcgmGroupAddEntity(self._handle, group, entity_group, entity)
        return group

    def _refused(self, exc: Exception) -> str:
        """Why DCGM refused a part of the setup, or re-raises what ends the session (a lost connection)."""
        code = getattr(exc, "value", None)
        if code == CONNECTION_NOT_VALID:
            raise exc
        return BLOCKED_BY_CODE.get(code, "error")

    def _watch_health(self) -> None:
        self._switches = self._list_switches()
        entities = [(FE_GPU, gpu_id) for gpu_id in sorted(self._index_of)] + [(FE_SWITCH, s) for s in self._switches]
        self._health_group = self._group("health", entities)
        systems = sum(GPU_SYSTEMS.values()) + (sum(SWITCH_SYSTEMS.values()) if self._switches else 0)
        self._agent.dcgmHealthSet(self._handle, self._health_group, systems)

    def _list_switches(self) -> list[int]:
        """DCGM's NVSwitches; none where its NVSwitch module is not loaded (-33), which GPU health survives."""
        try:
            return list(self._agent.dcgmGetEntityGroupEntities(self._handle, FE_SWITCH, 0))
        except self._structs.DCGMError as exc:
            self.switches_blocked = self._refused(exc)
            self._note("DCGM lists no NVSwitches; NVSwitch health off", reason=self.switches_blocked,
                       code=exc.value)
            return []

    def _watch_profiling(self) -> None:
        """The best minor group of every major holding gpuscope's fields, on every profiled GPU."""
        profiled = sorted(gpu_id for gpu_id, index in self._index_of.items() if index in self._profile)
        if not profiled:
            return
        try:
            choices = self._best_groups(profiled[0])  # DCGM profiles groups of one SKU only
            group = self._group("profiling", [(FE_GPU, gpu_id) for gpu_id in profiled])
            self._fields_watched = self._watch_groups(group, choices)
        except self._structs.DCGMError as exc:
            self.blocked = self._refused(exc)
        if self.blocked:
            self._note("DCGM refuses a profiling watch; those series off, retried later", reason=self.blocked)
        for gpu_id in profiled if self._fields_watched else ():
            pair = self._structs.c_dcgmGroupEntityPair_t()
            pair.entityGroupId, pair.entityId = FE_GPU, gpu_id
            self._entities.append(pair)

    def _best_groups(self, gpu_id: int) -> list[list[int]]:
        """gpuscope's fields in the best minor of each major, best first: majors are counted at once,
        minors of one major would be multiplexed (estimates, and -38 past five passes)."""
        groups = self._agent.dcgmProfGetSupportedMetricGroups(self._handle, gpu_id)
        best: dict[int, list[int]] = {}
        for index in range(groups.numMetricGroups):
            group = groups.metricGroups[index]
            wanted = sorted((f for f in group.fieldIds[:group.numFieldIds] if f in PROFILING_FIELDS), key=RANK.get)
            if wanted and _rank(wanted) > _rank(best.get(group.majorId, [])):
                best[group.majorId] = wanted
        if not best:
            raise self._structs.DCGMError(self._structs.DCGM_ST_PROFILING_NOT_SUPPORTED)
        return sorted(best.values(), key=lambda fields: RANK[fields[0]])

    def _watch_groups(self, group: Any, choices: list[list[int]]) -> list[int]:
        """All groups in one watch; where the engine answers -38 (other clients' passes count too),
        group by group, best first, keeping each it takes."""
        try:
            return self._watch([f for fields in choices for f in fields], group)
        except self._structs.DCGMError as exc:
            if exc.value != MULTI_PASS or len(choices) == 1:
                raise
        watched: list[int] = []
        for fields in choices:
            try:
                watched += self._watch(fields, group)
            except self._structs.DCGMError as exc:
                if exc.value != MULTI_PASS:
                    raise
                self.blocked = "multi_pass"
        if not watched:
            raise self._structs.DCGMError(MULTI_PASS)
        return watched

    def _watch(self, fields: list[int], group: Any) -> list[int]:
        """One field group of `fields` watched on `group`; a refused one is destroyed (field groups
        are bounded engine-wide)."""
        field_group = self._agent.dcgmFieldGroupCreate(self._handle, fields,
                                                       f"{self._name}-profiling-{fields[0]}".encode())
        interval = self._options.interval
        try:
            self._agent.dcgmWatchFields(self._handle, group, field_group, int(interval * 1e6), 3 * interval,
                                        KEEP_SAMPLES)
        except self._structs.DCGMError:
            self._destroy(field_group)
            raise
        return fields

    def _destroy(self, field_group: Any) -> None:
        with contextlib.suppress(self._structs.DCGMError):  # the connection's field groups go with it anyway
            self._agent.dcgmFieldGroupDestroy(self._handle, field_group)

    def serve(self, publish: Any, stop: threading.Event) -> None:
        """Reads every interval until the engine fails or a refusal is due for a retry."""
        rounds = 0
        while not stop.is_set():
            try:
                view = self._read()
            except self._structs.DCGMError as exc:
                self._note("DCGM host engine lost; reconnecting", address=self._options.address,
                           error=type(exc).__name__)
                return
            publish(view)
            rounds += 1
            if (self.blocked or self.switches_blocked) and rounds * self._options.interval >= RETRY_SECONDS[1]:
                return  # try what was refused again on a new connection
            stop.wait(self._options.interval)

    def _read(self) -> DcgmView:
        view = DcgmView(up=True, blocked=self.blocked, switches_blocked=self.switches_blocked)
        if self._entities:
            values = self._agent.dcgmEntitiesGetLatestValues(self._handle, self._entities, self._fields_watched, 0)
            view.values = self._profiling(values)
            view.profiled = frozenset(view.values)
        response = self._agent.dcgmHealthCheck(self._handle, self._health_group)
        self._health(response, view)
        return view

    def _profiling(self, values: Any) -> dict[int, list[tuple[Metric, float]]]:
        out: dict[int, list[tuple[Metric, float]]] = {}
        for value in values:
            index = self._index_of.get(value.entityId)
            if value.status != 0 or index is None or value.fieldId not in PROFILING_FIELDS:
                continue
            number = field_number(value, self._fields)
            if number is not None:
                out.setdefault(index, []).append((PROFILING_FIELDS[value.fieldId], number))
        return out

    def _health(self, response: Any, view: DcgmView) -> None:
        """Every watched system of every GPU passes unless an incident says otherwise."""
        view.health = {index: dict.fromkeys(GPU_SYSTEMS, 0.0) for index in self._index_of.values()}
        view.switches = {switch: dict.fromkeys(SWITCH_SYSTEMS, 0.0) for switch in self._switches}
        for incident in filled_incidents(response):
            system = SYSTEM_NAMES.get(incident.system, str(incident.system))
            result = HEALTH_RESULTS.get(incident.health, 2.0)
            entity = incident.entityInfo
            if entity.entityGroupId == FE_SWITCH and entity.entityId in view.switches:
                systems = view.switches[entity.entityId]
            elif entity.entityGroupId == FE_GPU and entity.entityId in self._index_of:
                systems = view.health[self._index_of[entity.entityId]]
                view.incidents.append((self._index_of[entity.entityId], system, str(incident.error.code), result))
            else:
                continue
            systems[system] = max(systems.get(system, 0.0), result)

    def close(self) -> None:
        """Disconnects (the engine drops this client's groups, field groups and watches with the connection)."""
        if self._handle is None:
            return
        try:
            if self._options.address == "embedded":
                self._agent.dcgmStopEmbedded(self._handle)
            else:
                self._agent.dcgmDisconnect(self._handle)
        except self._structs.DCGMError:
            pass
        self._handle = None


def _rank(fields: list[int]) -> tuple[int, int]:
    """How much a group's fields are worth: how many, then how early the best of them ranks."""
    return (len(fields), -min((RANK[f] for f in fields), default=len(RANK)))


def field_number(value: Any, fields: ModuleType) -> float | None:
    """A c_dcgmFieldValue_v2's number, or None for a blank (DCGM has no value yet, or the counters were
    taken) or a non-numeric type. `fieldType` is a c_short holding the code of a `dcgm_fields.DCGM_FT_*`
    character."""
    kind = chr(value.fieldType)
    if kind == fields.DCGM_FT_DOUBLE:
        number = value.value.dbl
        return None if number >= FP64_BLANK else number
    if kind == fields.DCGM_FT_INT64:
        integer = value.value.i64
        return None if integer >= INT64_BLANK else float(integer)
    return None


def filled_incidents(response: Any) -> Iterator[Any]:
    """The `incidentCount` filled incidents of a health response, of its 1,024 slots."""
    for slot in range(response.incidentCount):
        yield response.incidents[slot]
