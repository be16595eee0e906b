"""Emulated `dcgm_agent`: the calls gpuscope's DCGM source makes, answered by a simulated host engine.

Same names, argument orders and conversions as NVIDIA/DCGM's `dcgm_agent.py`: a `str` argument is
passed on as UTF-8 bytes (its `ensure_byte_strings`), entity and field lists go through the same
ctypes arrays, handles are `c_void_p`, structures are those of `dcgm_structs`, and every failure is
the `dcgm_structs.DCGMError_*` class of its return code.
"""

from ctypes import c_uint16, c_void_p
from functools import wraps

import dcgm_fields
import dcgm_structs

from simulator import dcgm_engine

MAJOR = 4  # these emulate DCGM 4's bindings, which load libdcgm.so.4
_CONNECTED: dict[int, tuple[dcgm_engine.HostEngine, int]] = {}  # handle value -> (engine, engine's handle)
_initialized = [0]


def _api(fn):
    """str arguments as bytes, as the bindings pass them to libdcgm; the engine's codes as exceptions."""
    @wraps(fn)
    def call(*args, **kwargs):
        args = tuple(a.encode() if isinstance(a, str) else a for a in args)
        kwargs = {k: v.encode() if isinstance(v, str) else v for k, v in kwargs.items()}
        try:
            return fn(*args, **kwargs)
        except dcgm_engine.EngineError as exc:
            raise dcgm_structs.DCGMError(exc.code) from None
    return call


def _id(handle):
    """A c_void_p handle (group, field group, connection) as the integer the engine keys it by."""
    return handle.value if isinstance(handle, c_void_p) else handle


def _session(handle, call):
    engine, inner = _CONNECTED.get(_id(handle), (None, 0))
    if engine is None:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_CONNECTION_NOT_VALID)
    return engine, engine.session(inner, call)


def _handle(engine, inner):
    key = id(engine) * 1000 + inner
    _CONNECTED[key] = (engine, inner)
    return c_void_p(key)


@_api
def dcgmInit():
    _initialized[0] += 1
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmShutdown():
    _initialized[0] = max(0, _initialized[0] - 1)
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmStartEmbedded(opMode):
    engine = dcgm_engine.find("embedded")
    return _handle(engine, engine.connect(MAJOR))


@_api
def dcgmStopEmbedded(dcgm_handle):
    return dcgmDisconnect(dcgm_handle)


@_api
def dcgmConnect_v2(ip_address, connectParams, version=dcgm_structs.c_dcgmConnectV2Params_version):
    connectParams.version = version
    if not _initialized[0]:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_UNINITIALIZED)
    address = ip_address.decode()
    engine = dcgm_engine.find(dcgm_engine.key("unix:" + address if connectParams.addressIsUnixSocket else address))
    return _handle(engine, engine.connect(MAJOR))


@_api
def dcgmDisconnect(dcgm_handle):
    engine, inner = _CONNECTED.pop(_id(dcgm_handle), (None, 0))
    if engine is not None:
        engine.disconnect(inner)
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmGetAllSupportedDevices(dcgm_handle):
    engine, _ = _session(dcgm_handle, "dcgmGetAllSupportedDevices")
    return list(engine.gpu_ids())


@_api
def dcgmGetDeviceAttributes(dcgm_handle, gpuId, version=dcgm_structs.dcgmDeviceAttributes_version3):
    if version != dcgm_structs.dcgmDeviceAttributes_version3:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_VER_MISMATCH)
    engine, _ = _session(dcgm_handle, "dcgmGetDeviceAttributes")
    attributes = dcgm_structs.c_dcgmDeviceAttributes_v3()
    attributes.version = version
    attributes.identifiers.uuid = engine.uuid(gpuId)
    return attributes


@_api
def dcgmGetEntityGroupEntities(dcgm_handle, entityGroup, flags):
    engine, _ = _session(dcgm_handle, "dcgmGetEntityGroupEntities")
    if entityGroup == dcgm_fields.DCGM_FE_GPU:
        return engine.gpu_ids()
    return engine.switch_ids() if entityGroup == dcgm_fields.DCGM_FE_SWITCH else []


@_api
def dcgmGroupCreate(dcgm_handle, type, groupName):
    engine, session = _session(dcgm_handle, "dcgmGroupCreate")
    everything = [(dcgm_fields.DCGM_FE_GPU, g) for g in engine.gpu_ids()]
    return c_void_p(engine.add_group(session, everything if type == dcgm_structs.DCGM_GROUP_DEFAULT else []))


@_api
def dcgmGroupDestroy(dcgm_handle, group_id):
    _, session = _session(dcgm_handle, "dcgmGroupDestroy")
    if session.groups.pop(_id(group_id), None) is None:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_NOT_CONFIGURED)
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmGroupAddEntity(dcgm_handle, group_id, entityGroupId, entityId):
    _, session = _session(dcgm_handle, "dcgmGroupAddEntity")
    if _id(group_id) not in session.groups:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_NOT_CONFIGURED)
    session.groups[_id(group_id)].append((entityGroupId, entityId))
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmFieldGroupCreate(dcgm_handle, fieldIds, fieldGroupName):
    engine, session = _session(dcgm_handle, "dcgmFieldGroupCreate")
    fields = list((c_uint16 * len(fieldIds))(*fieldIds))
    return c_void_p(engine.add_field_group(session, fieldGroupName.decode(), fields))


@_api
def dcgmFieldGroupDestroy(dcgm_handle, fieldGroupId):
    engine, session = _session(dcgm_handle, "dcgmFieldGroupDestroy")
    engine.destroy_field_group(session, _id(fieldGroupId))
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmWatchFields(dcgm_handle, groupId, fieldGroupId, updateFreq, maxKeepAge, maxKeepSamples):
    engine, session = _session(dcgm_handle, "dcgmWatchFields")
    engine.watch(session, _id(groupId), _id(fieldGroupId))
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmUnwatchFields(dcgm_handle, groupId, fieldGroupId):
    engine, session = _session(dcgm_handle, "dcgmUnwatchFields")
    engine.unwatch(session, _id(groupId), _id(fieldGroupId))
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmEntitiesGetLatestValues(dcgmHandle, entities, fieldIds, flags):
    engine, session = _session(dcgmHandle, "dcgmEntitiesGetLatestValues")
    pairs = (dcgm_structs.c_dcgmGroupEntityPair_t * len(entities))(*entities)
    field_ids = list((c_uint16 * len(fieldIds))(*fieldIds))
    asked = [((pair.entityGroupId, pair.entityId), field_id) for pair in pairs for field_id in field_ids]
    values = (dcgm_structs.c_dcgmFieldValue_v2 * len(asked))()
    answers = engine.latest(session, asked)
    for slot, ((entity, field_id), (status, number)) in enumerate(zip(asked, answers, strict=True)):
        value = values[slot]
        value.version, value.fieldId = dcgm_structs.dcgmFieldValue_version2, field_id
        value.fieldType = ord(dcgm_fields.DCGM_FT_DOUBLE)  # libdcgm writes the type's character code
        value.entityGroupId, value.entityId = entity
        value.status = status
        value.value.dbl = float(2 ** 47) if number is None else number  # DCGM_FP64_BLANK
    return values


@_api
def dcgmProfGetSupportedMetricGroups(dcgmHandle, gpuId):
    engine, _ = _session(dcgmHandle, "dcgmProfGetSupportedMetricGroups")
    engine.uuid(gpuId)  # BADPARAM for a GPU it does not have
    answer = dcgm_structs.c_dcgmProfGetMetricGroups_v3()
    answer.version, answer.gpuId = dcgm_structs.dcgmProfGetMetricGroups_version3, gpuId
    groups = engine.supported_groups()
    answer.numMetricGroups = len(groups)
    for slot, found in enumerate(groups):
        group = answer.metricGroups[slot]
        group.majorId, group.minorId, group.numFieldIds = found.major, found.minor, len(found.fields)
        for position, field_id in enumerate(found.fields):
            group.fieldIds[position] = field_id
    return answer


@_api
def dcgmHealthSet(dcgm_handle, groupId, systems):
    _, session = _session(dcgm_handle, "dcgmHealthSet")
    session.health[_id(groupId)] = systems
    return dcgm_structs.DCGM_ST_OK


@_api
def dcgmHealthCheck(dcgm_handle, groupId, version=dcgm_structs.dcgmHealthResponse_version5):
    if version != dcgm_structs.dcgmHealthResponse_version5:
        raise dcgm_engine.EngineError(dcgm_structs.DCGM_ST_VER_MISMATCH)
    engine, session = _session(dcgm_handle, "dcgmHealthCheck")
    response = dcgm_structs.c_dcgmHealthResponse_v5()
    response.version = version
    found = engine.health(session, _id(groupId))[:dcgm_structs.DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2]
    response.incidentCount = len(found)
    response.overallHealth = max((incident.health for _, incident in found), default=0)
    for slot, ((group, entity), incident) in enumerate(found):
        info = response.incidents[slot]
        info.system, info.health = incident.system, incident.health
        info.error.code, info.error.msg = incident.code, incident.message
        info.entityInfo.entityGroupId, info.entityInfo.entityId = group, entity
    return response


@_api
def dcgmVersionInfo():
    engine = next(iter(dcgm_engine.ENGINES.values()), None)
    info = dcgm_structs.c_dcgmVersionInfo_v2()
    info.version = dcgm_structs.dcgmVersionInfo_version2
    version = engine.version if engine else "4.2.3"
    info.rawBuildInfoString = f"version:{version};arch:x86_64;buildtype:Release"
    return info
