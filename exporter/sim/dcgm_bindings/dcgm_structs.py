"""Emulated `dcgm_structs`: return codes, the DCGMError hierarchy, the structures gpuscope reads."""

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
DCGM_MAX_BLOB_LENGTH = 4096
DCGM_GROUP_MAX_ENTITIES = 64
DCGM_DEVICE_UUID_BUFFER_SIZE = 80
DCGM_PROF_MAX_NUM_GROUPS_V2 = 10
DCGM_PROF_MAX_FIELD_IDS_PER_GROUP_V2 = 64
DCGM_HEALTH_WATCH_MAX_INCIDENTS = DCGM_GROUP_MAX_ENTITIES

DCGM_ST_OK = 0
DCGM_ST_BADPARAM = -1
DCGM_ST_GENERIC_ERROR = -3
DCGM_ST_NOT_SUPPORTED = -6
DCGM_ST_INIT_ERROR = -7
DCGM_ST_VER_MISMATCH = -12
DCGM_ST_NO_DATA = -14
DCGM_ST_NO_PERMISSION = -17
DCGM_ST_CONNECTION_NOT_VALID = -21
DCGM_ST_LIBRARY_NOT_FOUND = -25
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
    """As the bindings' DCGMError: `value` is the code; DCGMError(code) is the code's subclass."""

    _valClassMapping: ClassVar[dict] = {}

    def __new__(cls, value):
        if cls is DCGMError:
            cls = DCGMError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.info = None
        obj.value = value
        return obj

    def __init__(self, value):
        super().__init__(value)

    def __str__(self):
        return f"DCGM error {self.value}"


def dcgmExceptionClass(error_code):
    return DCGMError._valClassMapping.get(error_code)


def _extractDCGMErrorsAsClasses():
    """DCGM_ST_UNINITIALIZED becomes DCGMError_Uninitialized, as the bindings name them."""
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("DCGM_ST_") and n != "DCGM_ST_OK"]:
        class_name = "DCGMError_" + string.capwords(name.replace("DCGM_ST_", ""), "_").replace("_", "")
        error = type(class_name, (DCGMError,), {})
        setattr(module, class_name, error)
        DCGMError._valClassMapping[getattr(module, name)] = error


_extractDCGMErrorsAsClasses()


def _dcgmCheckReturn(ret):
    if ret != DCGM_ST_OK:
        raise DCGMError(ret)
    return ret


def _dcgmInit(libDcgmPath=None):
    """Loads libdcgm.so.4 in the real bindings; the emulator has nothing to load."""


class c_dcgmConnectV2Params_v2(Structure):
    _fields_ = [("version", c_uint), ("persistAfterDisconnect", c_uint), ("timeoutMs", c_uint),
                ("addressIsUnixSocket", c_uint)]


c_dcgmConnectV2Params_version2 = make_dcgm_version(c_dcgmConnectV2Params_v2, 2)
c_dcgmConnectV2Params_version = c_dcgmConnectV2Params_version2


class c_dcgmGroupEntityPair_t(Structure):
    _fields_ = [("entityGroupId", c_uint32), ("entityId", c_uint32)]


class c_dcgmFieldValue_v1_value(Union):
    _fields_ = [("i64", c_int64), ("dbl", c_double), ("str", c_char * DCGM_MAX_STR_LENGTH),
                ("blob", c_byte * DCGM_MAX_BLOB_LENGTH)]


class c_dcgmFieldValue_v2(Structure):
    _fields_ = [("version", c_uint), ("entityGroupId", c_uint), ("entityId", c_uint), ("fieldId", c_ushort),
                ("fieldType", c_short), ("status", c_int), ("unused", c_uint), ("ts", c_int64),
                ("value", c_dcgmFieldValue_v1_value)]


class c_dcgmDeviceIdentifiers_v1(Structure):
    _fields_ = [("brandName", c_char * DCGM_MAX_STR_LENGTH), ("deviceName", c_char * DCGM_MAX_STR_LENGTH),
                ("pciBusId", c_char * DCGM_MAX_STR_LENGTH), ("serial", c_char * DCGM_MAX_STR_LENGTH),
                ("uuid", c_char * DCGM_MAX_STR_LENGTH), ("vbios", c_char * DCGM_MAX_STR_LENGTH),
                ("inforomImageVersion", c_char * DCGM_MAX_STR_LENGTH), ("pciDeviceId", c_uint32),
                ("pciSubSystemId", c_uint32), ("driverVersion", c_char * DCGM_MAX_STR_LENGTH),
                ("virtualizationMode", c_uint32)]


class c_dcgmDeviceAttributes_v3(Structure):
    _fields_ = [("version", c_uint32), ("identifiers", c_dcgmDeviceIdentifiers_v1)]


dcgmDeviceAttributes_version3 = make_dcgm_version(c_dcgmDeviceAttributes_v3, 3)


class c_dcgmProfMetricGroupInfo_v2(Structure):
    _fields_ = [("majorId", c_ushort), ("minorId", c_ushort), ("numFieldIds", c_uint32),
                ("fieldIds", c_ushort * DCGM_PROF_MAX_FIELD_IDS_PER_GROUP_V2)]


class c_dcgmProfGetMetricGroups_v3(Structure):
    _fields_ = [("version", c_uint32), ("unused", c_uint32), ("gpuId", c_uint32), ("numMetricGroups", c_uint32),
                ("metricGroups", c_dcgmProfMetricGroupInfo_v2 * DCGM_PROF_MAX_NUM_GROUPS_V2)]


dcgmProfGetMetricGroups_version3 = make_dcgm_version(c_dcgmProfGetMetricGroups_v3, 3)


class c_dcgmDiagErrorDetail_t(Structure):
    _fields_ = [("msg", c_char * 1024), ("code", c_uint)]


class c_dcgmIncidentInfo_t(Structure):
    _fields_ = [("system", c_uint), ("health", c_uint32), ("error", c_dcgmDiagErrorDetail_t),
                ("entityInfo", c_dcgmGroupEntityPair_t)]


class c_dcgmHealthResponse_v5(Structure):
    _fields_ = [("version", c_uint32), ("overallHealth", c_uint32), ("incidentCount", c_uint32),
                ("incidents", c_dcgmIncidentInfo_t * DCGM_HEALTH_WATCH_MAX_INCIDENTS)]


dcgmHealthResponse_version5 = make_dcgm_version(c_dcgmHealthResponse_v5, 5)


class c_dcgmVersionInfo_v2(Structure):
    _fields_ = [("version", c_uint32), ("rawBuildInfoString", c_char * (DCGM_MAX_STR_LENGTH * 2))]


dcgmVersionInfo_version2 = make_dcgm_version(c_dcgmVersionInfo_v2, 2)
