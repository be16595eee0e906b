"""Emulated `dcgm_agent`: the calls gpuscope's DCGM source makes, answered by a simulated host engine.

Same names and argument orders as NVIDIA/DCGM's `dcgm_agent.py`; handles are `c_void_p` as there;
every failure is the `dcgm_structs.DCGMError_*` class of its return code.
"""

from ctypes import c_void_p
from functools import wraps

import dcgm_fields
import dcgm_structs

from exporter.sim import dcgm_engine

MAJOR = 4  # these emulate DCGM 4's bindings, which load libdcgm.so.4
_CONNECTED: dict[int, tuple[dcgm_engine.HostEngine, int]] = {}  # handle value -> (engine, engine's handle)
_initialized = [0]


def _raising(fn):
    """The engine's return codes as the bindings' exceptions."""
    @wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except dcgm_engine.EngineError as exc:
            raise dcgm_structs.DCGMError(exc.code) from None
    return call


def _session(handle, call):
    engine, inner = _CONNECTED.get(handle.value if isinstance(handle, c_void_p) else handle, (None, 0))
    if engine is None:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_CONNECTION_NOT_VALID)
    return engine, engine.session(inner, call)


def _handle(engine, inner):
    key = id(engine) * 1000 + inner
    _CONNECTED[key] = (engine, inner)
    return c_void_p(key)


def dcgmInit():
    _initialized[0] += 1
    return dcgm_structs.DCGM_ST_OK


def dcgmShutdown():
    _initialized[0] = max(0, _initialized[0] - 1)
    return dcgm_structs.DCGM_ST_OK


@_raising
def dcgmStartEmbedded(opMode):
    engine = dcgm_engine.find("embedded")
    return _handle(engine, engine.connect(MAJOR))


@_raising
def dcgmStopEmbedded(dcgm_handle):
    return dcgmDisconnect(dcgm_handle)


@_raising
def dcgmConnect_v2(ip_address, connectParams, version=dcgm_structs.c_dcgmConnectV2Params_version):
    if not _initialized[0]:
        raise dcgm_engine.EngineError(-10)  # DCGM_ST_UNINITIALIZED
    if not isinstance(ip_address, bytes):  # as libdcgm takes it: a char*
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_BADPARAM)
    address = ip_address.decode()
    engine = dcgm_engine.find(dcgm_engine.key("unix:" + address if connectParams.addressIsUnixSocket else address))
    return _handle(engine, engine.connect(MAJOR))


def dcgmDisconnect(dcgm_handle):
    engine, inner = _CONNECTED.pop(dcgm_handle.value, (None, 0))
    if engine is not None:
        engine.disconnect(inner)
    return dcgm_structs.DCGM_ST_OK


@_raising
def dcgmGetAllSupportedDevices(dcgm_handle):
    engine, _ = _session(dcgm_handle, "dcgmGetAllSupportedDevices")
    return engine.gpu_ids()


@_raising
def dcgmGetDeviceAttributes(dcgm_handle, gpuId, version=dcgm_structs.dcgmDeviceAttributes_version3):
    engine, _ = _session(dcgm_handle, "dcgmGetDeviceAttributes")
    attributes = dcgm_structs.c_dcgmDeviceAttributes_v3()
    attributes.version = version
    attributes.identifiers.uuid = engine.uuid(gpuId).encode()
    return attributes


@_raising
def dcgmGetEntityGroupEntities(dcgm_handle, entityGroup, flags):
    engine, _ = _session(dcgm_handle, "dcgmGetEntityGroupEntities")
    if entityGroup == dcgm_fields.DCGM_FE_GPU:
        return engine.gpu_ids()
    return list(range(engine.switches)) if entityGroup == dcgm_fields.DCGM_FE_SWITCH else []


@_raising
def dcgmGroupCreate(dcgm_handle, type, groupName):
    engine, session = _session(dcgm_handle, "dcgmGroupCreate")
    group = engine.new_id()
    session.groups[group] = ([(dcgm_fields.DCGM_FE_GPU, g) for g in engine.gpu_ids()]
                             if type == dcgm_structs.DCGM_GROUP_DEFAULT else [])
    return c_void_p(group)


@_raising
def dcgmGroupAddEntity(dcgm_handle, group_id, entityGroupId, entityId):
    _, session = _session(dcgm_handle, "dcgmGroupAddEntity")
    if group_id.value not in session.groups:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_BADPARAM)
    session.groups[group_id.value].append((entityGroupId, entityId))
    return dcgm_structs.DCGM_ST_OK


@_raising
def dcgmFieldGroupCreate(dcgm_handle, fieldIds, fieldGroupName):
    engine, session = _session(dcgm_handle, "dcgmFieldGroupCreate")
    field_group = engine.new_id()
    session.field_groups[field_group] = list(fieldIds)
    return c_void_p(field_group)


@_raising
def dcgmWatchFields(dcgm_handle, groupId, fieldGroupId, updateFreq, maxKeepAge, maxKeepSamples):
    engine, session = _session(dcgm_handle, "dcgmWatchFields")
    engine.watch(session, groupId.value, fieldGroupId.value)
    return dcgm_structs.DCGM_ST_OK


@_raising
def dcgmEntitiesGetLatestValues(dcgmHandle, entities, fieldIds, flags):
    engine, session = _session(dcgmHandle, "dcgmEntitiesGetLatestValues")
    values = (dcgm_structs.c_dcgmFieldValue_v2 * (len(entities) * len(fieldIds)))()
    slot = 0
    for entity in entities:
        for field_id in fieldIds:
            value = values[slot]
            value.version, value.fieldId, value.fieldType = 2, field_id, dcgm_fields.DCGM_FT_DOUBLE
            value.entityGroupId, value.entityId = entity.entityGroupId, entity.entityId
            status, number = engine.latest(session, (entity.entityGroupId, entity.entityId), field_id)
            value.status = status
            value.value.dbl = float(2 ** 47) if number is None else number  # DCGM_FP64_BLANK
            slot += 1
    return values


@_raising
def dcgmProfGetSupportedMetricGroups(dcgmHandle, gpuId):
    engine, _ = _session(dcgmHandle, "dcgmProfGetSupportedMetricGroups")
    engine.uuid(gpuId)  # BADPARAM for a GPU it does not have
    answer = dcgm_structs.c_dcgmProfGetMetricGroups_v3()
    answer.version, answer.gpuId = dcgm_structs.dcgmProfGetMetricGroups_version3, gpuId
    answer.numMetricGroups = len(engine.metric_groups)
    for slot, fields in enumerate(engine.metric_groups):
        group = answer.metricGroups[slot]
        group.majorId, group.minorId, group.numFieldIds = slot + 1, 0, len(fields)
        for position, field_id in enumerate(fields):
            group.fieldIds[position] = field_id
    return answer


@_raising
def dcgmHealthSet(dcgm_handle, groupId, systems):
    _, session = _session(dcgm_handle, "dcgmHealthSet")
    session.health[groupId.value] = systems
    return dcgm_structs.DCGM_ST_OK


@_raising
def dcgmHealthCheck(dcgm_handle, groupId, version=dcgm_structs.dcgmHealthResponse_version5):
    engine, session = _session(dcgm_handle, "dcgmHealthCheck")
    response = dcgm_structs.c_dcgmHealthResponse_v5()
    response.version = version
    found = engine.health(session, groupId.value)[:dcgm_structs.DCGM_HEALTH_WATCH_MAX_INCIDENTS]
    response.incidentCount = len(found)
    response.overallHealth = max((incident.health for _, incident in found), default=0)
    for slot, ((group, entity), incident) in enumerate(found):
        info = response.incidents[slot]
        info.system, info.health = incident.system, incident.health
        info.error.code, info.error.msg = incident.code, incident.message.encode()
        info.entityInfo.entityGroupId, info.entityInfo.entityId = group, entity
    return response


def dcgmVersionInfo():
    engine = next(iter(dcgm_engine.ENGINES.values()), None)
    info = dcgm_structs.c_dcgmVersionInfo_v2()
    info.version = dcgm_structs.dcgmVersionInfo_version2
    version = engine.version if engine else "4.2.3"
    info.rawBuildInfoString = f"version:{version};arch:x86_64;buildtype:Release".encode()
    return info
