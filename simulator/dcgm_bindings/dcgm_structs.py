"""Emulated `dcgm_structs`: return codes, the DCGMError hierarchy and the structures gpuscope reads,
with the member types, array sizes and string handling of NVIDIA's published module (DCGM 4.6).

What a reader meets there and must meet here:
- every structure reads a `c_char` array as `str` (UTF-8) and writes a `str` as bytes;
- `c_dcgmFieldValue_v2.fieldType` is a `c_short` (a double reads as 100, not as 'd');
- `c_dcgmHealthResponse_v5` holds 1,024 incident slots (DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2), of which
  `incidentCount` are filled;
- `DCGMError(code)` is the code's own subclass (`DCGMError_ModuleNotLoaded` for -33, ...), equal to
  another error of the same code.
"""

import string
import sys
from ctypes import (
    Structure,
    Union,
    c_byte,
    c_char,
    c_double,
    c_int,
    c_int64,
    c_short,
    c_uint,
    c_uint32,
    c_ushort,
    sizeof,
)
from typing import ClassVar

DCGM_MAX_STR_LENGTH = 256
DCGM_MAX_NUM_DEVICES = 32
DCGM_MAX_CLOCKS = 256
DCGM_MAX_BLOB_LENGTH = 4096
DCGM_MAX_NUM_GROUPS = 64
DCGM_MAX_NUM_FIELD_GROUPS = 64
DCGM_MAX_FIELD_IDS_PER_FIELD_GROUP = 128
DCGM_GROUP_MAX_ENTITIES_V2 = 1024
DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2 = DCGM_GROUP_MAX_ENTITIES_V2
DCGM_PROF_MAX_NUM_GROUPS_V2 = 10
DCGM_PROF_MAX_FIELD_IDS_PER_GROUP_V2 = 64

DCGM_ST_OK = 0
DCGM_ST_BADPARAM = -1
DCGM_ST_GENERIC_ERROR = -3
DCGM_ST_MEMORY = -4
DCGM_ST_NOT_CONFIGURED = -5
DCGM_ST_NOT_SUPPORTED = -6
DCGM_ST_INIT_ERROR = -7
DCGM_ST_UNINITIALIZED = -10
DCGM_ST_VER_MISMATCH = -12
DCGM_ST_NO_DATA = -14
DCGM_ST_NOT_WATCHED = -16
DCGM_ST_NO_PERMISSION = -17
DCGM_ST_CONNECTION_NOT_VALID = -21
DCGM_ST_MAX_LIMIT = -24
DCGM_ST_LIBRARY_NOT_FOUND = -25
DCGM_ST_DUPLICATE_KEY = -26
DCGM_ST_REQUIRES_ROOT = -29
DCGM_ST_MODULE_NOT_LOADED = -33
DCGM_ST_GROUP_IS_EMPTY = -35
DCGM_ST_PROFILING_NOT_SUPPORTED = -36
DCGM_ST_PROFILING_LIBRARY_ERROR = -37
DCGM_ST_PROFILING_MULTI_PASS = -38

DCGM_GROUP_DEFAULT = 0
DCGM_GROUP_EMPTY = 1
DCGM_OPERATION_MODE_AUTO = 1

DCGM_HEALTH_WATCH_PCIE = 0x1
DCGM_HEALTH_WATCH_NVLINK = 0x2
DCGM_HEALTH_WATCH_MEM = 0x10
DCGM_HEALTH_WATCH_SM = 0x20
DCGM_HEALTH_WATCH_INFOROM = 0x40
DCGM_HEALTH_WATCH_THERMAL = 0x80
DCGM_HEALTH_WATCH_POWER = 0x100
DCGM_HEALTH_WATCH_DRIVER = 0x200
DCGM_HEALTH_WATCH_NVSWITCH_NONFATAL = 0x400
DCGM_HEALTH_WATCH_NVSWITCH_FATAL = 0x800
DCGM_HEALTH_RESULT_PASS = 0
DCGM_HEALTH_RESULT_WARN = 10
DCGM_HEALTH_RESULT_FAIL = 20


def make_dcgm_version(struct, version):
    return sizeof(struct) | version << 24


class DCGMError(Exception):
    """`value` is the return code; DCGMError(code) makes the code's subclass."""

    _valClassMapping: ClassVar[dict] = {}

    def __new__(cls, value):
        if cls is DCGMError:
            cls = DCGMError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.info = None
        obj.value = value
        return obj

    def __init__(self, value=None):
        super().__init__(self.value)

    def __str__(self):
        return f"DCGM error {self.value}"

    def __eq__(self, other):
        return self.value == other.value

    def __hash__(self):
        return hash(self.value)


def dcgmExceptionClass(error_code):
    return DCGMError._valClassMapping.get(error_code)


def _error_classes():
    """DCGM_ST_MODULE_NOT_LOADED becomes DCGMError_ModuleNotLoaded, as the bindings name them; each
    class can be raised without arguments and carries its code."""
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("DCGM_ST_") and n != "DCGM_ST_OK"]:
        code = getattr(module, name)
        class_name = "DCGMError_" + string.capwords(name.replace("DCGM_ST_", ""), "_").replace("_", "")
        error = type(class_name, (DCGMError,), {"__new__": lambda cls, value=code: DCGMError.__new__(cls, value)})
        setattr(module, class_name, error)
        DCGMError._valClassMapping[code] = error


_error_classes()


def _dcgmCheckReturn(ret):
    if ret != DCGM_ST_OK:
        raise DCGMError(ret)
    return ret


def _dcgmInit(libDcgmPath=None):
    """Loads libdcgm.so.4 in the real bindings; the emulator has nothing to load."""


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value


class _Strings:
    """As the bindings' structures and unions: char arrays read as str, a str written is encoded."""

    def __getattribute__(self, key):
        return _text(super().__getattribute__(key))

    def __setattr__(self, key, value):
        super().__setattr__(key, value.encode("utf-8") if isinstance(value, str) else value)


class _DcgmStructure(_Strings, Structure):
    pass


class _DcgmUnion(_Strings, Union):
    pass


class c_dcgmConnectV2Params_v2(_DcgmStructure):
    _fields_ = [("version", c_uint), ("persistAfterDisconnect", c_uint), ("timeoutMs", c_uint),
                ("addressIsUnixSocket", c_uint)]


c_dcgmConnectV2Params_version2 = make_dcgm_version(c_dcgmConnectV2Params_v2, 2)
c_dcgmConnectV2Params_version = c_dcgmConnectV2Params_version2


class c_dcgmGroupEntityPair_t(_DcgmStructure):
    _fields_ = [("entityGroupId", c_uint32), ("entityId", c_uint32)]


class c_dcgmFieldValue_v1_value(_DcgmUnion):
    _fields_ = [("i64", c_int64), ("dbl", c_double), ("str", c_char * DCGM_MAX_STR_LENGTH),
                ("blob", c_byte * DCGM_MAX_BLOB_LENGTH)]


class c_dcgmFieldValue_v2(_DcgmStructure):
    _fields_ = [("version", c_uint), ("entityGroupId", c_uint), ("entityId", c_uint), ("fieldId", c_ushort),
                ("fieldType", c_short), ("status", c_int), ("unused", c_uint), ("ts", c_int64),
                ("value", c_dcgmFieldValue_v1_value)]


dcgmFieldValue_version2 = make_dcgm_version(c_dcgmFieldValue_v2, 2)


class c_dcgmClockSet_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("memClock", c_uint), ("smClock", c_uint)]


class c_dcgmDeviceSupportedClockSets_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("count", c_uint), ("clockSet", c_dcgmClockSet_v1 * DCGM_MAX_CLOCKS)]


class c_dcgmDeviceThermals_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("slowdownTemp", c_uint), ("shutdownTemp", c_uint)]


class c_dcgmDevicePowerLimits_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("curPowerLimit", c_uint), ("defaultPowerLimit", c_uint),
                ("enforcedPowerLimit", c_uint), ("minPowerLimit", c_uint), ("maxPowerLimit", c_uint)]


class c_dcgmDeviceIdentifiers_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("brandName", c_char * DCGM_MAX_STR_LENGTH),
                ("deviceName", c_char * DCGM_MAX_STR_LENGTH), ("pciBusId", c_char * DCGM_MAX_STR_LENGTH),
                ("serial", c_char * DCGM_MAX_STR_LENGTH), ("uuid", c_char * DCGM_MAX_STR_LENGTH),
                ("vbios", c_char * DCGM_MAX_STR_LENGTH), ("inforomImageVersion", c_char * DCGM_MAX_STR_LENGTH),
                ("pciDeviceId", c_uint32), ("pciSubSystemId", c_uint32),
                ("driverVersion", c_char * DCGM_MAX_STR_LENGTH), ("virtualizationMode", c_uint32)]


class c_dcgmDeviceMemoryUsage_v1(_DcgmStructure):
    _fields_ = [("version", c_uint), ("bar1Total", c_uint), ("fbTotal", c_uint), ("fbUsed", c_uint),
                ("fbFree", c_uint)]


class c_dcgmDeviceSettings_v2(_DcgmStructure):
    _fields_ = [("version", c_uint), ("persistenceModeEnabled", c_uint), ("migModeEnabled", c_uint),
                ("confidentialComputeMode", c_uint)]


class c_dcgmDeviceAttributes_v3(_DcgmStructure):
    _fields_ = [("version", c_uint), ("clockSets", c_dcgmDeviceSupportedClockSets_v1),
                ("thermalSettings", c_dcgmDeviceThermals_v1), ("powerLimits", c_dcgmDevicePowerLimits_v1),
                ("identifiers", c_dcgmDeviceIdentifiers_v1), ("memoryUsage", c_dcgmDeviceMemoryUsage_v1),
                ("settings", c_dcgmDeviceSettings_v2)]


dcgmDeviceAttributes_version3 = make_dcgm_version(c_dcgmDeviceAttributes_v3, 3)


class c_dcgmProfMetricGroupInfo_v2(_DcgmStructure):
    _fields_ = [("majorId", c_ushort), ("minorId", c_ushort), ("numFieldIds", c_uint32),
                ("fieldIds", c_ushort * DCGM_PROF_MAX_FIELD_IDS_PER_GROUP_V2)]


class c_dcgmProfGetMetricGroups_v3(_DcgmStructure):
    _fields_ = [("version", c_uint32), ("unused", c_uint32), ("gpuId", c_uint32), ("numMetricGroups", c_uint32),
                ("metricGroups", c_dcgmProfMetricGroupInfo_v2 * DCGM_PROF_MAX_NUM_GROUPS_V2)]


dcgmProfGetMetricGroups_version3 = make_dcgm_version(c_dcgmProfGetMetricGroups_v3, 3)


class c_dcgmDiagErrorDetail_t(_DcgmStructure):
    _fields_ = [("msg", c_char * 1024), ("code", c_uint)]


class c_dcgmIncidentInfo_t(_DcgmStructure):
    _fields_ = [("system", c_uint), ("health", c_uint32), ("error", c_dcgmDiagErrorDetail_t),
                ("entityInfo", c_dcgmGroupEntityPair_t)]


class c_dcgmHealthResponse_v5(_DcgmStructure):
    _fields_ = [("version", c_uint32), ("overallHealth", c_uint32), ("incidentCount", c_uint32),
                ("incidents", c_dcgmIncidentInfo_t * DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2)]


dcgmHealthResponse_version5 = make_dcgm_version(c_dcgmHealthResponse_v5, 5)


class c_dcgmVersionInfo_v2(_DcgmStructure):
    _fields_ = [("version", c_uint32), ("rawBuildInfoString", c_char * (DCGM_MAX_STR_LENGTH * 2))]


dcgmVersionInfo_version2 = make_dcgm_version(c_dcgmVersionInfo_v2, 2)
