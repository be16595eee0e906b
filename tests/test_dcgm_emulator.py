"""gpuscope's emulator of DCGM's Python bindings held to the published API, not to the collector:
each assertion is a fact of NVIDIA/DCGM's `testing/python3` modules (dcgm_structs.py, dcgm_fields.py,
dcgm_agent.py; DCGM 4.6) or of the engine they talk to (dcgmlib/src/DcgmFieldGroup.cpp,
DcgmGroupManager.cpp, testing/python3/tests/test_prof.py).
A collector that reads the bindings wrongly must fail against this emulator as it would on a node."""

from __future__ import annotations

import ctypes

import pytest

from exporter.collectors import gpu_dcgm
from simulator import dcgm_engine
from simulator.dcgm_engine import HostEngine
from simulator.nvml import SimulatedNvml, load_profile

ADDRESS = "127.0.0.1:15556"
STRUCTS, FIELDS, AGENT = gpu_dcgm.load_bindings((dcgm_engine.BINDINGS,))


@pytest.fixture
def engine():
    engine = HostEngine(SimulatedNvml("p4d.24xlarge"), load_profile("p4d.24xlarge")["dcgm"], switches=6)
    dcgm_engine.ENGINES[dcgm_engine.key(ADDRESS)] = engine
    AGENT.dcgmInit()
    yield engine
    dcgm_engine.unregister(ADDRESS)


def connect() -> ctypes.c_void_p:
    return AGENT.dcgmConnect_v2(ADDRESS, STRUCTS.c_dcgmConnectV2Params_v2())  # a str, as the bindings allow


def gpu_group(handle, name: str = "g"):
    group = AGENT.dcgmGroupCreate(handle, STRUCTS.DCGM_GROUP_EMPTY, name)
    for gpu_id in AGENT.dcgmGetAllSupportedDevices(handle):
        AGENT.dcgmGroupAddEntity(handle, group, FIELDS.DCGM_FE_GPU, gpu_id)
    return group


def test_field_types_are_characters_and_a_value_holds_the_code_in_a_c_short(engine):
    assert (FIELDS.DCGM_FT_DOUBLE, FIELDS.DCGM_FT_INT64, FIELDS.DCGM_FT_STRING) == ("d", "i", "s")
    assert dict(STRUCTS.c_dcgmFieldValue_v2._fields_)["fieldType"] is ctypes.c_short
    handle = connect()
    AGENT.dcgmWatchFields(handle, gpu_group(handle), AGENT.dcgmFieldGroupCreate(handle, [1002], "f"), 10**6, 30, 2)
    pair = STRUCTS.c_dcgmGroupEntityPair_t()
    pair.entityGroupId, pair.entityId = FIELDS.DCGM_FE_GPU, 0
    value = AGENT.dcgmEntitiesGetLatestValues(handle, [pair], [1002], 0)[0]
    assert value.fieldType == 100 and value.fieldType != FIELDS.DCGM_FT_DOUBLE  # compare chr(fieldType)
    assert chr(value.fieldType) == FIELDS.DCGM_FT_DOUBLE and value.value.dbl == pytest.approx(0.88)


def test_char_arrays_read_as_str_and_the_health_response_has_1024_slots(engine):
    handle = connect()
    uuid = AGENT.dcgmGetDeviceAttributes(handle, 7).identifiers.uuid
    assert isinstance(uuid, str) and uuid.startswith("GPU-")
    assert len(STRUCTS.c_dcgmHealthResponse_v5().incidents) == STRUCTS.DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2 == 1024
    assert dict(STRUCTS.c_dcgmDeviceIdentifiers_v1._fields_)["uuid"]._type_ is ctypes.c_char


def test_errors_are_the_codes_own_classes(engine):
    assert STRUCTS.DCGMError(-33).__class__ is STRUCTS.DCGMError_ModuleNotLoaded
    assert STRUCTS.dcgmExceptionClass(-26) is STRUCTS.DCGMError_DuplicateKey
    assert STRUCTS.DCGMError_RequiresRoot().value == -29
    assert STRUCTS.DCGMError(-38) == STRUCTS.DCGMError_ProfilingMultiPass()


def test_field_group_names_are_unique_across_clients_and_go_with_the_connection(engine):
    first, second = connect(), connect()
    AGENT.dcgmFieldGroupCreate(first, [1002], "profiling")
    with pytest.raises(STRUCTS.DCGMError_DuplicateKey):
        AGENT.dcgmFieldGroupCreate(second, [1005], "profiling")
    AGENT.dcgmGroupCreate(first, STRUCTS.DCGM_GROUP_EMPTY, "same")  # group names may repeat
    AGENT.dcgmGroupCreate(second, STRUCTS.DCGM_GROUP_EMPTY, "same")
    AGENT.dcgmDisconnect(first)
    AGENT.dcgmFieldGroupCreate(second, [1005], "profiling")


def test_metric_groups_have_majors_and_minors_as_an_a100_lists_them(engine):
    groups = AGENT.dcgmProfGetSupportedMetricGroups(connect(), 0)
    listed = {(g.majorId, g.minorId): list(g.fieldIds[:g.numFieldIds])
              for g in groups.metricGroups[:groups.numMetricGroups]}
    assert listed[(0, 1)] == [1002, 1003, 1004, 1007] and listed[(1, 0)] == [1005] and listed[(3, 0)] == [1001]


def test_majors_are_counted_at_once_and_minors_multiplexed_up_to_five_passes(engine):
    handle = connect()
    group = gpu_group(handle)
    AGENT.dcgmWatchFields(handle, group, AGENT.dcgmFieldGroupCreate(handle, [1001, 1002, 1005], "a"), 10**6, 30, 2)
    AGENT.dcgmWatchFields(handle, group, AGENT.dcgmFieldGroupCreate(handle, [1006, 1008], "b"), 10**6, 30, 2)
    assert engine.passes({1002, 1006, 1008}) == 3  # accepted: multiplexed
    engine.max_passes = 2
    with pytest.raises(STRUCTS.DCGMError_ProfilingMultiPass):
        AGENT.dcgmWatchFields(handle, group, AGENT.dcgmFieldGroupCreate(handle, [1003], "c"), 10**6, 30, 2)


@pytest.mark.parametrize(("setup", "refused"), [
    (lambda engine: setattr(engine, "root", False), "DCGMError_RequiresRoot"),
    (lambda engine: setattr(engine, "profiling_error", -33), "DCGMError_ModuleNotLoaded"),
    (lambda engine: setattr(engine, "profiling_owner", "nsight"), "DCGMError_ProfilingLibraryError"),
])
def test_a_profiling_watch_is_refused_by_the_engine_as_dcgm_refuses_it(engine, setup, refused):
    setup(engine)
    handle = connect()
    with pytest.raises(getattr(STRUCTS, refused)):
        AGENT.dcgmWatchFields(handle, gpu_group(handle), AGENT.dcgmFieldGroupCreate(handle, [1002], "p"), 10**6, 30, 2)


def test_switches_are_listed_by_the_nvswitch_module(engine):
    handle = connect()
    assert AGENT.dcgmGetEntityGroupEntities(handle, FIELDS.DCGM_FE_SWITCH, 0) == [0, 1, 2, 3, 4, 5]
    engine.nvswitch_module = False
    with pytest.raises(STRUCTS.DCGMError_ModuleNotLoaded):
        AGENT.dcgmGetEntityGroupEntities(handle, FIELDS.DCGM_FE_SWITCH, 0)
