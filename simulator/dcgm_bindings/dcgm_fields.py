"""Emulated `dcgm_fields`: entity groups, field types and the field ids gpuscope uses (DCGM 4 ids).

As in NVIDIA's module, the field types are one-character strings, while the `fieldType` member of a
field value is a `c_short` holding the character's code: a reader compares `chr(value.fieldType)`
with them, as NVIDIA's `dcgm_field_helpers.py` does.
"""

from ctypes import c_uint32

DCGM_FE_NONE, DCGM_FE_GPU, DCGM_FE_VGPU, DCGM_FE_SWITCH = 0, 1, 2, 3
c_dcgm_field_eid_t = c_uint32

DCGM_FT_BINARY = "b"
DCGM_FT_DOUBLE = "d"
DCGM_FT_INT64 = "i"
DCGM_FT_STRING = "s"
DCGM_FT_TIMESTAMP = "t"

DCGM_FI_PROF_GR_ENGINE_ACTIVE = 1001
DCGM_FI_PROF_SM_ACTIVE = 1002
DCGM_FI_PROF_SM_OCCUPANCY = 1003
DCGM_FI_PROF_PIPE_TENSOR_ACTIVE = 1004
DCGM_FI_PROF_DRAM_ACTIVE = 1005
DCGM_FI_PROF_PIPE_FP64_ACTIVE = 1006
DCGM_FI_PROF_PIPE_FP32_ACTIVE = 1007
DCGM_FI_PROF_PIPE_FP16_ACTIVE = 1008
DCGM_FI_PROF_PCIE_TX_BYTES = 1009
DCGM_FI_PROF_PCIE_RX_BYTES = 1010
DCGM_FI_PROF_NVLINK_TX_BYTES = 1011
DCGM_FI_PROF_NVLINK_RX_BYTES = 1012
