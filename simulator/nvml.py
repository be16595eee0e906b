"""A simulated NVML behind the `pynvml` API, so the real GPU collector runs unchanged without a GPU.

`SimulatedNvml(profile)` answers the calls gpuscope makes with values from a node profile
(`profiles/*.yaml`): a GPU busy training, with counters (energy, NVLink and PCIe bytes, violation
time) integrating their rates as the clock advances. Constants, exception classes and ctypes
structures are pynvml's own; any NVML function not simulated raises FunctionNotFound, as an old
driver would. Faults are injected per GPU with `inject()`; every call is counted in `calls`.
"""

from __future__ import annotations

import ctypes
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pynvml
import yaml

from simulator.profiles import PROFILES

UPTIME_AT_START = 86_400.0  # the node has been up a day when the simulation starts
_THRESHOLDS = {"shutdown": 0, "slowdown": 1, "memory_max": 2, "gpu_max": 3}
_LINK_FIELDS = (138, 139, 165)  # per link (scopeId): NVLink throughput TX, RX; NVML_FI_DEV_NVLINK_GET_STATE
_TLIMIT_FIELDS = {193: "shutdown", 194: "slowdown", 195: "memory_max", 196: "gpu_max"}
# GPM metric id -> profile key of the busy pattern (a ratio).
_GPM_RATIOS = {1: "graphics_active", 2: "sm_active", 3: "sm_occupancy", 5: "tensor_active", 10: "dram_active",
               11: "fp64_active", 12: "fp32_active", 13: "fp16_active"}


def load_profile(name: str) -> dict[str, Any]:
    """A node profile by name; ValueError naming the known ones otherwise. A profile that `extends`
    another is that one with its own top-level keys replacing the other's."""
    if name not in PROFILES:
        raise ValueError(f"unknown simulated node profile {name!r} (known: {', '.join(PROFILES)})")
    text = resources.files("simulator.profiles").joinpath(f"{name}.yaml").read_text()
    profile = yaml.safe_load(text)
    base = profile.pop("extends", None)
    return {**load_profile(base), **profile} if base else profile


@dataclass
class Fault:
    """What is wrong with one simulated GPU. Unset fields leave the busy pattern alone."""

    sm_clock_mhz: float | None = None
    power_watts: float | None = None
    temperature: float | None = None
    utilization: float | None = None
    reasons: int = 0
    activity_scale: float | None = None  # multiplies GPM activity (a straggler's or a hung job's)
    nvlink_scale: float | None = None
    violation_rates: dict[str, float] = field(default_factory=dict)  # policy -> seconds per second
    nvlink_error_rates: dict[str, float] = field(default_factory=dict)  # replay|recovery|crc_* -> per second
    ecc: dict[int, int] = field(default_factory=dict)  # field id (3-6) -> added count
    remap: dict[int, int] = field(default_factory=dict)  # field id (142-145) -> value
    recovery_action: int | None = None
    lost: bool = False
    nvlinks_down: int = 0  # the GPU's last links report down
    errors: dict[str, int] = field(default_factory=dict)  # NVML function -> return code it fails with
    hang: frozenset[str] = frozenset()  # NVML functions that block until the fault is replaced


_POLICY_FIELDS = {"power": 74, "thermal": 75, "sync_boost": 76, "board_limit": 77, "low_utilization": 78,
                  "reliability": 79}
_NVLINK_ERROR_FIELDS = {"crc_flit": 38, "crc_data": 45, "replay": 52, "recovery": 59}


def gpu_bus(index: int) -> int:
    """The simulated GPU's PCI bus number."""
    return 0x53 + index * 0x11


def gpu_uuid(index: int) -> str:
    """The simulated GPU's NVML UUID (the same on every simulated node, as indices are)."""
    return f"GPU-{index:08x}-5ca1-4e0d-9a7b-{0x1d0f00000000 + index * 0x1111:012x}"


class _GpuState:
    """One GPU's cumulative counters, integrated from their rates whenever time moves."""

    def __init__(self, index: int, profile: dict[str, Any], now: float) -> None:
        gpu, busy = profile["gpu"], profile["busy"]
        self.index = index
        self.handle = ctypes.pointer(pynvml.struct_c_nvmlDevice_t())
        self.uuid = gpu_uuid(index)
        self.bus_id = f"00000000:{gpu_bus(index):02X}:00.0"
        self.fault = Fault()
        self.last = now
        links = gpu["nvlinks"]
        self.nvlink_bytes = [UPTIME_AT_START * busy["nvlink_bytes_per_second_per_link"]] * links
        self.energy_joules = UPTIME_AT_START * busy["power_watts"]
        self.pcie_bytes = [UPTIME_AT_START * busy["pcie_bytes_per_second"]] * 2
        self.violation = {policy: 0.0 for policy in _POLICY_FIELDS}
        self.violation["power"] = UPTIME_AT_START * 0.02  # at full load the power cap holds clocks now and then
        self.nvlink_errors = {kind: 0.0 for kind in _NVLINK_ERROR_FIELDS}

    def advance(self, now: float, power: float, nvlink_rate: float, pcie_rate: float) -> None:
        dt = max(0.0, now - self.last)
        self.last = now
        if dt == 0.0 or self.fault.lost:
            return
        self.energy_joules += power * dt
        self.nvlink_bytes = [b + nvlink_rate * dt for b in self.nvlink_bytes]
        self.pcie_bytes = [b + pcie_rate * dt for b in self.pcie_bytes]
        self.violation["power"] += 0.02 * dt
        for policy, rate in self.fault.violation_rates.items():
            self.violation[policy] += rate * dt
        for kind, rate in self.fault.nvlink_error_rates.items():
            self.nvlink_errors[kind] += rate * dt


class SimulatedNvml:
    """The pynvml module, simulated for one node profile. Pass it where the collector wants `pynvml`."""

    def __init__(self, profile: str | dict[str, Any], clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = load_profile(profile) if isinstance(profile, str) else profile
        self._clock = clock
        self._lock = threading.RLock()
        self._initialized = False
        self.init_error: int | None = None  # an NVML return code nvmlInit should fail with
        start = clock()
        self._start = start
        self._gpus = [_GpuState(i, self.profile, start) for i in range(self.profile["gpu"]["count"])]
        self._absent: set[int] = set()
        self._by_address = {ctypes.addressof(g.handle.contents): g for g in self._gpus}
        self._event_sets: list[tuple[queue.SimpleQueue, set[int]]] = []
        self._gpm_samples: dict[int, tuple[int, float, dict[str, float]]] = {}
        self._hang_release = threading.Event()
        self.calls: Counter[str] = Counter()
        self.processes: dict[int, list[int]] = {}  # GPU index -> pids of its compute processes

    # --- pynvml's constants, exceptions and structures; FunctionNotFound for the rest ------------

    def __getattr__(self, name: str) -> Any:
        real = getattr(pynvml, name)
        if callable(real) and name.startswith("nvml") and not isinstance(real, type):
            def missing(*_args: Any) -> Any:
                self.calls[name] += 1
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            return missing
        return real

    # --- fault injection -------------------------------------------------------------------------

    def inject(self, gpu: int, fault: Fault) -> None:
        """Replaces GPU `gpu`'s fault (Fault() clears it). Counters keep their values."""
        with self._lock:
            state = self._gpus[gpu]
            self._advance(state)
            falls_off = fault.lost and not state.fault.lost
            state.fault = fault
            if not fault.hang:
                self._hang_release.set()
                self._hang_release = threading.Event()
        if falls_off:
            self.raise_xid(gpu, 79)  # "GPU has fallen off the bus", as the driver reports it

    def raise_xid(self, gpu: int, xid: int) -> None:
        """Delivers an XID event to every event set the GPU is registered with."""
        state = self._gpus[gpu]
        for events, registered in self._event_sets:
            if gpu in registered:
                events.put((state.handle, xid))

    def release_hangs(self) -> None:
        self._hang_release.set()

    def reload_driver(self) -> None:
        """As a driver reload looks to a running process: every call fails until nvmlInit again."""
        self._initialized = False

    # --- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _error(code: int) -> pynvml.NVMLError:
        return pynvml.NVMLError(code)

    def _device(self, name: str, handle: Any) -> _GpuState:
        """Counts the call and applies the GPU's fault: lost, unsupported, no permission, hang."""
        self.calls[name] += 1
        if not self._initialized:
            raise self._error(pynvml.NVML_ERROR_UNINITIALIZED)
        state = self._by_address.get(ctypes.addressof(handle.contents))
        if state is None:
            raise self._error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        fault = state.fault
        if fault.lost:
            raise self._error(pynvml.NVML_ERROR_GPU_IS_LOST)
        if name in fault.errors:
            raise self._error(fault.errors[name])
        if name in fault.hang:
            self._hang_release.wait()
        with self._lock:
            self._advance(state)
        return state

    def _busy(self, key: str, default: float = 0.0) -> float:
        return float(self.profile["busy"].get(key, default))

    def _power(self, state: _GpuState) -> float:
        if state.fault.power_watts is not None:
            return state.fault.power_watts
        wobble = 0.01 * math.sin((state.last - self._start) / 7.0)
        return self._busy("power_watts") * (1 + wobble)

    def _nvlink_rate(self, state: _GpuState) -> float:
        scale = state.fault.nvlink_scale if state.fault.nvlink_scale is not None else 1.0
        return self._busy("nvlink_bytes_per_second_per_link") * scale

    def _advance(self, state: _GpuState) -> None:
        scale = state.fault.nvlink_scale if state.fault.nvlink_scale is not None else 1.0
        state.advance(self._clock(), self._power(state), self._nvlink_rate(state),
                      self._busy("pcie_bytes_per_second") * scale)

    def _temperature(self, state: _GpuState) -> float:
        if state.fault.temperature is not None:
            return state.fault.temperature
        return round(self._busy("temperature") + math.sin((state.last - self._start) / 30.0))

    # --- system ----------------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self._error(self.init_error)
        self._initialized = True

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        self._initialized = False

    def _system(self, name: str) -> dict[str, Any]:
        self.calls[name] += 1
        if not self._initialized:
            raise self._error(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.profile["driver"]

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._system("nvmlSystemGetDriverVersion")["version"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return int(self._system("nvmlSystemGetCudaDriverVersion")["cuda"])

    def nvmlSystemGetNVMLVersion(self) -> str:
        return self._system("nvmlSystemGetNVMLVersion")["nvml"]

    def nvmlDeviceGetCount(self) -> int:
        self._system("nvmlDeviceGetCount")
        return len(self._visible())

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._system("nvmlDeviceGetHandleByIndex")
        visible = self._visible()
        if not 0 <= index < len(visible):
            raise self._error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if visible[index].fault.lost:
            raise self._error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return visible[index].handle

    def boot_without(self, gpus: set[int]) -> None:
        """GPUs that did not come up at boot: NVML enumerates the others (renumbered), until the next
        initialisation after a reboot. Only before the first nvmlInit, as a boot is."""
        if not self._initialized:
            self._absent = set(gpus)

    def _visible(self) -> list[_GpuState]:
        return [gpu for gpu in self._gpus if gpu.index not in self._absent]

    # --- identity and limits ---------------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._device("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._device("nvmlDeviceGetName", handle)
        return self.profile["gpu"]["model"]

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        state = self._device("nvmlDeviceGetPciInfo", handle)
        info = pynvml.nvmlPciInfo_t()
        info.busId = state.bus_id.encode()
        return info

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, clock: int) -> int:
        self._device("nvmlDeviceGetMaxClockInfo", handle)
        gpu = self.profile["gpu"]
        return int(gpu["sm_clock_max_mhz"] if clock == pynvml.NVML_CLOCK_SM else gpu["memory_clock_max_mhz"])

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:
        state = self._device("nvmlDeviceGetNvLinkState", handle)
        if link >= self.profile["gpu"]["nvlinks"]:
            raise self._error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        up = self.profile["gpu"]["nvlinks"] - state.fault.nvlinks_down  # the last links go down
        return pynvml.NVML_FEATURE_ENABLED if link < up else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any) -> int:
        self._device("nvmlDeviceGetMaxPcieLinkGeneration", handle)
        return int(self.profile["gpu"]["pcie"]["generation"])

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any) -> int:
        self._device("nvmlDeviceGetMaxPcieLinkWidth", handle)
        return int(self.profile["gpu"]["pcie"]["width"])

    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int:
        self._device("nvmlDeviceGetTemperatureThreshold", handle)
        limits = self.profile["gpu"]["temperature_limits"]
        if limits["mode"] != "absolute":
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        name = next((n for n, t in _THRESHOLDS.items() if t == threshold), None)
        if name is None:
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(limits[name])

    # --- per-scrape readings ---------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        state = self._device("nvmlDeviceGetUtilizationRates", handle)
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = int(state.fault.utilization if state.fault.utilization is not None else self._busy("utilization"))
        rates.memory = int(self._busy("memory_utilization"))
        return rates

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        self._device("nvmlDeviceGetMemoryInfo", handle)
        memory = pynvml.c_nvmlMemory_t()
        memory.total = int(self.profile["gpu"]["memory_bytes"])
        memory.used = int(self._busy("memory_used_bytes"))
        memory.free = memory.total - memory.used
        return memory

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return round(self._power(self._device("nvmlDeviceGetPowerUsage", handle)) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._device("nvmlDeviceGetEnforcedPowerLimit", handle)
        return int(self.profile["gpu"]["power_limit_watts"] * 1000)

    def nvmlDeviceGetClockInfo(self, handle: Any, clock: int) -> int:
        state = self._device("nvmlDeviceGetClockInfo", handle)
        gpu = self.profile["gpu"]
        if clock == pynvml.NVML_CLOCK_SM:
            return int(state.fault.sm_clock_mhz or gpu["sm_clock_max_mhz"])
        return int(gpu["memory_clock_max_mhz"])

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any) -> int:
        self._device("nvmlDeviceGetCurrPcieLinkGeneration", handle)
        return int(self.profile["gpu"]["pcie"]["generation"])

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any) -> int:
        self._device("nvmlDeviceGetCurrPcieLinkWidth", handle)
        return int(self.profile["gpu"]["pcie"]["width"])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._device("nvmlDeviceGetCurrentClocksEventReasons", handle).fault.reasons

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        return int(self._temperature(self._device("nvmlDeviceGetTemperature", handle)))

    def nvmlDeviceGetMarginTemperature(self, handle: Any) -> int:
        state = self._device("nvmlDeviceGetMarginTemperature", handle)
        limits = self.profile["gpu"]["temperature_limits"]
        tlimit = limits.get("tlimit", limits.get("gpu_max"))
        return int(tlimit - self._temperature(state))

    def nvmlDeviceGetFieldValues(self, handle: Any, requests: list[Any]) -> Any:
        state = self._device("nvmlDeviceGetFieldValues", handle)
        values = (pynvml.c_nvmlFieldValue_t * len(requests))()
        scalars = self._scalar_fields(state)
        for slot, request in enumerate(requests):
            field_id, scope = request if isinstance(request, tuple) else (request, 0)
            entry = values[slot]
            entry.fieldId, entry.scopeId = field_id, scope
            value = self._link_field(state, field_id, scope) if field_id in _LINK_FIELDS else scalars.get(field_id)
            if value is None:
                entry.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            entry.nvmlReturn = pynvml.NVML_SUCCESS
            if isinstance(value, float):
                entry.valueType, entry.value.dVal = pynvml.NVML_VALUE_TYPE_DOUBLE, value
            elif field_id in _TLIMIT_FIELDS:  # temperatures relative to T.Limit are signed
                entry.valueType, entry.value.siVal = pynvml.NVML_VALUE_TYPE_SIGNED_INT, value
            else:
                entry.valueType, entry.value.ullVal = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, value
        return values

    def _scalar_fields(self, state: _GpuState) -> dict[int, int]:
        """Every scalar field the simulated GPU has, by field id."""
        gpu, fault = self.profile["gpu"], state.fault
        limits = gpu["temperature_limits"]
        scalar: dict[int, int] = {
            82: int(fault.temperature - 5 if fault.temperature is not None else self._busy("memory_temperature")),
            83: int(state.energy_joules * 1000),
            91: int(gpu["nvlinks"]),
            94: 0, 197: int(state.pcie_bytes[0]), 198: int(state.pcie_bytes[1]),
            230: int(fault.recovery_action or 0),
            190: int(gpu["power_limit_watts"] * 1000),  # mW, as nvmlDeviceGetEnforcedPowerLimit
        }
        if gpu.get("averaged_power_field", True):  # 185, mW: what nvmlDeviceGetPowerUsage says after GA100
            scalar[185] = round(self._power(state) * 1000)
        scalar.update({fid: int(state.violation[p] * 1e9) for p, fid in _POLICY_FIELDS.items()})
        scalar.update({fid: int(state.nvlink_errors[k]) for k, fid in _NVLINK_ERROR_FIELDS.items()})
        scalar.update({fid: fault.ecc.get(fid, 0) for fid in (3, 4, 5, 6)})
        if gpu.get("row_remapping"):
            scalar.update({fid: fault.remap.get(fid, 0) for fid in (142, 143, 144, 145)})
        else:
            scalar.update({29: 0, 30: 0, 31: 0})
        if limits["mode"] == "tlimit":
            scalar.update({fid: int(limits[name]) for fid, name in _TLIMIT_FIELDS.items()})
        return scalar

    def _link_field(self, state: _GpuState, field_id: int, link: int) -> int | None:
        """One link's field: its state (165: active 1, inactive 0; the last links go down) or its
        throughput in KiB (138, 139: the simulation splits traffic evenly both ways)."""
        links = self.profile["gpu"]["nvlinks"]
        if link >= links:
            return None
        if field_id == 165:
            return int(link < links - state.fault.nvlinks_down)
        return int(state.nvlink_bytes[link] / 1024)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        state = self._device("nvmlDeviceGetComputeRunningProcesses", handle)
        out = []
        for pid in self.processes.get(state.index, []):
            info = pynvml.c_nvmlProcessInfo_t()
            info.pid, info.usedGpuMemory = pid, 70 * 1024**3
            out.append(info)
        return out

    # --- XID events ------------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._system("nvmlEventSetCreate")
        event_set = (queue.SimpleQueue(), set())
        self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._device("nvmlDeviceGetSupportedEventTypes", handle)
        return pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeSingleBitEccError

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        event_set[1].add(self._device("nvmlDeviceRegisterEvents", handle).index)

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self.calls["nvmlEventSetWait_v2"] += 1
        try:
            handle, xid = event_set[0].get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise self._error(pynvml.NVML_ERROR_TIMEOUT) from None
        data = pynvml.c_nvmlEventData_t()
        data.device = handle
        data.eventType = pynvml.nvmlEventTypeXidCriticalError
        data.eventData = xid
        return data

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self.calls["nvmlEventSetFree"] += 1

    # --- GPM -------------------------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: Any) -> Any:
        self._device("nvmlGpmQueryDeviceSupport", handle)
        support = pynvml.c_nvmlGpmSupport_t()
        support.isSupportedDevice = 1 if self.profile["gpu"].get("gpm") else 0
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self.calls["nvmlGpmSampleAlloc"] += 1
        return ctypes.pointer(pynvml.struct_c_nvmlGpmSample_t())

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.calls["nvmlGpmSampleFree"] += 1

    def nvmlGpmSampleGet(self, handle: Any, sample: Any) -> Any:
        state = self._device("nvmlGpmSampleGet", handle)
        if not self.profile["gpu"].get("gpm"):
            raise self._error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self._gpm_samples[ctypes.addressof(sample.contents)] = (state.index, self._clock(), self._activity(state))
        return sample

    def uuid_of(self, index: int) -> str:
        """The GPU's UUID as NVML gives it (for the simulated DCGM engine, which joins by UUID)."""
        return self._gpus[index].uuid

    def activity_of(self, index: int) -> dict[str, float]:
        """What GPU `index` is doing now, as profiling counters (GPM here, DCGM's engine) measure it."""
        with self._lock:
            return self._activity(self._gpus[index])

    def _activity(self, state: _GpuState) -> dict[str, float]:
        """What the GPU is doing now, as GPM would average it between two samples."""
        fault = state.fault
        scale = fault.activity_scale if fault.activity_scale is not None else 1.0
        return {key: min(1.0, self._busy(key) * scale) for key in _GPM_RATIOS.values()}

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        self.calls["nvmlGpmMetricsGet"] += 1
        first = self._gpm_samples.get(ctypes.addressof(request.sample1.contents))
        second = self._gpm_samples.get(ctypes.addressof(request.sample2.contents))
        if first is None or second is None or first[0] != second[0]:
            raise self._error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        activity = second[2]
        for slot in range(request.numMetrics):
            metric = request.metrics[slot]
            key = _GPM_RATIOS.get(metric.metricId)
            if key is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            metric.nvmlReturn = pynvml.NVML_SUCCESS
            metric.value = activity[key] * 100.0
        return request
