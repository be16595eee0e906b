"""NVIDIA GPUs through NVML: what dcgm-exporter exports, what it ships switched off, and more.

The collector takes the NVML module as an argument (the real `pynvml`, or gpuscope's simulated
one), so the code below is exactly what runs on a GPU node. Per scrape and GPU it makes 6 NVML
calls on a p5 (7 where the driver gives temperature limits relative to T.Limit, or lacks the power
fields): one batched `nvmlDeviceGetFieldValues` carries power and its enforced limit, energy, HBM
temperature, ECC, row remapping, violation times, PCIe and NVLink counters; identity, limits and
maxima are read once; what changes seldom (active NVLinks, the PCIe link's generation and width,
the memory clock) in the background every --collector.gpu.link-interval.

Failure handling:
- a call that is NotSupported / FunctionNotFound / NoPermission is dropped for that GPU (logged
  once); its metric is simply absent;
- a GPU that is lost (GpuIsLost, Unknown, ResetRequired) reports gpuscope_gpu_up 0 and is
  retried every scrape; the other GPUs are unaffected;
- NVML that cannot initialise (no driver, driver reloading) fails the collector, retried with
  exponential backoff, logged once per distinct error.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from exporter import catalog
from exporter.catalog import Family, Metric, Scrape
from exporter.collectors.base import Registration, Roots, register
from exporter.collectors.gpu_background import UNSUPPORTED, GpmSampler, JobWatcher, LinkWatcher, XidWatcher
from exporter.collectors.gpu_dcgm import DEFAULT_BINDINGS, DcgmOptions, DcgmSampler, DcgmView
from exporter.collectors.jobs import MappingDirectory
from exporter.collectors.pods import PodResourcesWatcher
from exporter.files import InFlight
from exporter.options import Option, choice, parse_names
from toolkit.configfile import parse_bool
from toolkit.durations import positive_seconds

log = logging.getLogger("gpuscope")

MAX_BACKOFF_SECONDS = 300.0

# Clock event reason bits (nvmlClocksEventReason*), one 0/1 series each. Left out, to keep a node
# under 1,500 series: ApplicationsClocksSetting (0x2, a lowered clock shows in the clock itself),
# SyncBoost (0x10, sync-boost groups are not used for training) and DisplayClockSetting (0x100).
CLOCK_EVENT_REASONS = (
    ("gpu_idle", 0x1), ("sw_power_cap", 0x4), ("hw_slowdown", 0x8), ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40), ("hw_power_brake", 0x80), ("board_limit", 0x200), ("reliability", 0x400),
)
# (field id, metric, extra label values, scale) for the scalar fields of the per-scrape batch.
SCALAR_FIELDS: tuple[tuple[int, Metric, tuple[str, ...], float], ...] = (
    (82, catalog.GPU_MEMORY_TEMPERATURE, (), 1.0),
    (83, catalog.GPU_ENERGY, (), 1e-3),  # mJ
    (74, catalog.GPU_VIOLATION, ("power",), 1e-9),  # ns
    (75, catalog.GPU_VIOLATION, ("thermal",), 1e-9),
    (76, catalog.GPU_VIOLATION, ("sync_boost",), 1e-9),
    (77, catalog.GPU_VIOLATION, ("board_limit",), 1e-9),
    (78, catalog.GPU_VIOLATION, ("low_utilization",), 1e-9),
    (79, catalog.GPU_VIOLATION, ("reliability",), 1e-9),
    (3, catalog.GPU_ECC_ERRORS, ("corrected", "volatile"), 1.0),
    (4, catalog.GPU_ECC_ERRORS, ("uncorrected", "volatile"), 1.0),
    (5, catalog.GPU_ECC_ERRORS, ("corrected", "aggregate"), 1.0),
    (6, catalog.GPU_ECC_ERRORS, ("uncorrected", "aggregate"), 1.0),
    (142, catalog.GPU_REMAPPED_ROWS, ("correctable",), 1.0),
    (143, catalog.GPU_REMAPPED_ROWS, ("uncorrectable",), 1.0),
    (144, catalog.GPU_REMAP_PENDING, (), 1.0),
    (145, catalog.GPU_REMAP_FAILURE, (), 1.0),
    (29, catalog.GPU_RETIRED_PAGES, ("single_bit",), 1.0),
    (30, catalog.GPU_RETIRED_PAGES, ("double_bit",), 1.0),
    (31, catalog.GPU_RETIRED_PENDING, (), 1.0),
    (230, catalog.GPU_RECOVERY_ACTION, (), 1.0),
    (94, catalog.GPU_PCIE_REPLAYS, (), 1.0),
    (197, catalog.GPU_PCIE_TX, (), 1.0),
    (198, catalog.GPU_PCIE_RX, (), 1.0),
    (38, catalog.GPU_NVLINK_ERRORS, ("crc_flit",), 1.0),
    (45, catalog.GPU_NVLINK_ERRORS, ("crc_data",), 1.0),
    (52, catalog.GPU_NVLINK_ERRORS, ("replay",), 1.0),
    (59, catalog.GPU_NVLINK_ERRORS, ("recovery",), 1.0),
)
# Power and its enforced limit in the same batch where the driver has these fields (185: averaged
# over a second, as nvmlDeviceGetPowerUsage on Hopper and later; 190: the limit enforced, out-of-band
# caps included): two calls fewer a scrape. A GPU without them (GA100 has no averaged power) keeps the calls.
POWER_FIELDS: tuple[tuple[int, Metric, tuple[str, ...], float], ...] = (
    (185, catalog.GPU_POWER, (), 1e-3),  # mW
    (190, catalog.GPU_POWER_LIMIT, (), 1e-3),
)
NVLINK_LINK_COUNT_FIELD = 91
NVLINK_TX_FIELD, NVLINK_RX_FIELD = 138, 139  # KiB, per link (scope id = link)
# nvmlDeviceGetTemperatureThreshold ids and the T.Limit-relative fields of newer drivers.
TEMPERATURE_LIMITS = (("shutdown", 0, 193), ("slowdown", 1, 194), ("memory_max", 2, 195), ("gpu_max", 3, 196))
_LOST = ("NVMLError_GpuIsLost", "NVMLError_Unknown", "NVMLError_ResetRequired")
_DRIVER_GONE = ("NVMLError_Uninitialized", "NVMLError_DriverNotLoaded", "NVMLError_LibRmVersionMismatch")


@dataclass(frozen=True)
class GpuOptions:
    nvlink_per_link: bool = False
    gpm_interval: float = 10.0  # profiling's sampling interval, GPM or DCGM
    profiling: str = "auto"  # auto: GPM where the GPU has it, else DCGM; gpm; dcgm; off
    dcgm: DcgmOptions = field(default_factory=DcgmOptions)
    job_mapping_dir: str = ""  # dcgm-exporter's HPC job mapping; empty: find jobs from GPU processes
    procfs: str = "/proc"
    job_interval: float = 15.0
    link_interval: float = 30.0  # active NVLinks are counted this often, in the background
    pod_resources_socket: str = ""  # the kubelet's pod-resources socket; empty: no pod attribution
    pod_resource_names: tuple[str, ...] = ("nvidia.com/gpu",)
    pod_interval: float = 30.0


class _GpuLost(Exception):
    pass


class _DriverGone(Exception):
    pass


@dataclass
class _Gpu:
    """What is read once per GPU, and which calls it does not support."""

    index: int
    handle: Any
    uuid: str
    model: str
    pci_bus_id: str
    labels: tuple[str, str]
    static: list[tuple[Metric, tuple[str, ...], float]] = field(default_factory=list)
    absolute_limits: dict[str, float] = field(default_factory=dict)
    relative_limits: dict[str, float] = field(default_factory=dict)
    scalars: list[tuple[int, Metric, tuple[str, ...], float]] = field(default_factory=list)  # the batch's
    from_fields: set[Metric] = field(default_factory=set)  # read in the batch, not by their own calls
    fields: list[tuple[int, int]] = field(default_factory=list)
    links: int = 0
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False


class GpuCollector:
    """Reads every GPU once per scrape; XIDs and GPM profiling come from background threads."""

    name = "gpu"

    def __init__(self, nvml: Any, options: GpuOptions = GpuOptions(), clock: Callable[[], float] = time.monotonic):
        self._nvml = nvml
        self._options = options
        self._clock = clock
        self._lock = threading.Lock()
        self._gpus: list[_Gpu] | None = None
        self._driver: tuple[str, str, str] = ("", "", "")
        self._retry_at = 0.0
        self._backoff = 1.0
        self._last_error = ""
        self._in_flight = InFlight()
        self._xids: XidWatcher | None = None
        self._gpm: GpmSampler | None = None
        self._dcgm: DcgmSampler | None = None
        self._links: LinkWatcher | None = None
        self._jobs: MappingDirectory | JobWatcher | None = (
            MappingDirectory(options.job_mapping_dir) if options.job_mapping_dir else None)
        self._pods = (PodResourcesWatcher(options.pod_resources_socket, options.pod_resource_names,
                                          options.pod_interval) if options.pod_resources_socket else None)
        self._logged: set[tuple[int, str]] = set()
        # Field value decoding, resolved once: a batch of 63 fields per GPU is decoded every scrape.
        self._success = nvml.NVML_SUCCESS
        self._union_member = {
            nvml.NVML_VALUE_TYPE_DOUBLE: "dVal", nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal", nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
            nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal", nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
            nvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
        }

    def identities(self) -> dict[str, tuple[tuple[str, str], tuple[str, ...]]]:
        """{uuid in lower case: ((gpu, uuid) labels, the GPU's jobs)}: how other sources that name a GPU
        by UUID (NCCL Inspector files) find its NVML index and job. Empty until NVML is initialised."""
        gpus = self._gpus or []
        jobs = self._jobs.jobs() if self._jobs else {}
        return {gpu.uuid.lower(): (gpu.labels, tuple(jobs.get(gpu.index, ()))) for gpu in gpus if gpu.uuid}

    def gpus_by_pci(self) -> dict[str, tuple[str, str]]:
        """{PCI address as the kernel's XID lines write it ("0000:9b:00", no function): (gpu, uuid) labels}."""
        return {pci_address(gpu.pci_bus_id).rsplit(".", 1)[0]: gpu.labels for gpu in self._gpus or [] if gpu.uuid}

    # --- lifecycle ---------------------------------------------------------------------------------

    def _ensure_initialized(self) -> list[_Gpu]:
        with self._lock:
            if self._gpus is not None:
                return self._gpus
            now = self._clock()
            if now < self._retry_at:
                raise RuntimeError(f"NVML unavailable ({self._last_error}); retry in {self._retry_at - now:.0f}s")
            try:
                self._nvml.nvmlInit()
                gpus = [self._discover_or_lost(i) for i in range(self._nvml.nvmlDeviceGetCount())]
                self._driver = (_text(self._nvml.nvmlSystemGetDriverVersion()),
                                _cuda_version(self._optional(self._nvml.nvmlSystemGetCudaDriverVersion)),
                                _text(self._optional(self._nvml.nvmlSystemGetNVMLVersion) or ""))
            except self._nvml.NVMLError as exc:
                self._fail_init(now, exc)
                raise RuntimeError(f"NVML unavailable ({self._last_error})") from None
            self._backoff, self._last_error, self._gpus = 1.0, "", gpus
            opened = [gpu for gpu in gpus if gpu.uuid]
            self._xids = XidWatcher(self._nvml, {gpu.index: gpu.handle for gpu in opened})
            self._start_profiling(opened)
            self._links = LinkWatcher(self._nvml, {gpu.index: (gpu.handle, gpu.links) for gpu in opened},
                                      self._options.link_interval, self._fields)
            if not self._options.job_mapping_dir:
                self._jobs = JobWatcher(self._nvml, {gpu.index: gpu.handle for gpu in opened}, self._options.procfs,
                                        self._options.job_interval)
            log.info("NVML initialised", extra={"gpus": len(gpus), "driver": self._driver[0]})
            return gpus

    def _start_profiling(self, opened: list[_Gpu]) -> None:
        """GPM for the GPUs that have it (unless --collector.gpu.profiling says dcgm or off); DCGM's host
        engine for the others (auto), or for all (dcgm)."""
        mode, interval = self._options.profiling, self._options.gpm_interval
        handles = {gpu.index: gpu.handle for gpu in opened}
        self._gpm = GpmSampler(self._nvml, handles if mode in ("auto", "gpm") else {}, interval)
        by_dcgm = frozenset(handles) - self._gpm.supported if mode == "auto" else frozenset(
            handles if mode == "dcgm" else ())
        if by_dcgm:
            options = replace(self._options.dcgm, interval=interval)
            self._dcgm = DcgmSampler(options, {gpu.uuid: gpu.index for gpu in opened}, by_dcgm)

    def _fail_init(self, now: float, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if error != self._last_error:
            log.warning("NVML initialisation failed; retrying with backoff", extra={"error": error})
        self._last_error = error
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)

    def _reset(self) -> None:
        """The driver went away (reload, unload): drop everything and initialise again next scrape."""
        with self._lock:
            self._stop_nvml_workers()
            self._gpus = None
            self._retry_at = self._clock()
        self._optional(self._nvml.nvmlShutdown)

    def _stop_nvml_workers(self) -> None:
        """Stops the threads that hold NVML handles; initialisation starts them again."""
        for worker in (self._xids, self._gpm, self._dcgm, self._jobs, self._links):
            if isinstance(worker, (XidWatcher, GpmSampler, DcgmSampler, JobWatcher, LinkWatcher)):
                worker.stop()
        self._xids = self._gpm = self._dcgm = self._links = None
        if isinstance(self._jobs, JobWatcher):
            self._jobs = None

    def close(self) -> None:
        """Stops every background thread (tests, shutdown). The pod-resources watcher needs no NVML,
        so a driver reload leaves it running; only this stops it."""
        self._stop_nvml_workers()
        if self._pods:
            self._pods.stop()

    def _optional(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except self._nvml.NVMLError:
            return None

    # --- discovery (once per GPU) ------------------------------------------------------------------

    def _discover_or_lost(self, index: int) -> _Gpu:
        """A GPU NVML counts but cannot open (lost before the exporter started) is reported lost,
        with no UUID, until the next initialisation; the other GPUs are read as usual."""
        try:
            return self._discover(index)
        except self._nvml.NVMLError as exc:
            if type(exc).__name__ in _DRIVER_GONE:
                raise
            log.warning("GPU cannot be opened; reported lost", extra={"gpu": index, "error": str(exc)})
            return _Gpu(index, None, "", "", "", (str(index), ""), lost=True)

    def _discover(self, index: int) -> _Gpu:
        n = self._nvml
        handle = n.nvmlDeviceGetHandleByIndex(index)
        uuid = _text(n.nvmlDeviceGetUUID(handle))
        gpu = _Gpu(index, handle, uuid, _text(n.nvmlDeviceGetName(handle)),
                   pci_address(_text(n.nvmlDeviceGetPciInfo(handle).busId)), (str(index), uuid))
        for metric, call, scale in (
            (catalog.GPU_SM_CLOCK_MAX, lambda: n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_SM), 1e6),
            (catalog.GPU_MEMORY_CLOCK_MAX, lambda: n.nvmlDeviceGetMaxClockInfo(handle, n.NVML_CLOCK_MEM), 1e6),
            (catalog.GPU_PCIE_GENERATION_MAX, lambda: n.nvmlDeviceGetMaxPcieLinkGeneration(handle), 1),
            (catalog.GPU_PCIE_WIDTH_MAX, lambda: n.nvmlDeviceGetMaxPcieLinkWidth(handle), 1),
        ):
            value = self._optional(call)
            if value is not None:
                gpu.static.append((metric, (), value * scale))
        for name, threshold, _ in TEMPERATURE_LIMITS:
            value = self._optional(lambda t=threshold: n.nvmlDeviceGetTemperatureThreshold(handle, t))
            if value is not None and value > 0:
                gpu.absolute_limits[name] = float(value)
        if not gpu.absolute_limits:  # newer drivers: limits relative to T.Limit, in fields 193-196
            for (name, *_), value in zip(TEMPERATURE_LIMITS,
                                                  self._fields(handle, [(f, 0) for *_, f in TEMPERATURE_LIMITS]),
                                                  strict=True):
                if value is not None:
                    gpu.relative_limits[name] = value
        links = self._fields(handle, [(NVLINK_LINK_COUNT_FIELD, 0)])[0]
        gpu.links = int(links or 0)
        if gpu.links:
            gpu.static.append((catalog.GPU_NVLINK_LINKS, (), gpu.links))
        power = self._fields(handle, [(f, 0) for f, *_ in POWER_FIELDS])
        gpu.scalars = [*SCALAR_FIELDS, *(spec for spec, value in zip(POWER_FIELDS, power, strict=True)
                                         if value is not None)]
        gpu.from_fields = {metric for _, metric, *_ in gpu.scalars[len(SCALAR_FIELDS):]}
        gpu.fields = [(f, 0) for f, *_ in gpu.scalars]
        gpu.fields += [(f, link) for link in range(gpu.links) for f in (NVLINK_TX_FIELD, NVLINK_RX_FIELD)]
        return gpu

    def _fields(self, handle: Any, requests: list[tuple[int, int]]) -> list[float | None]:
        """Batched field values; None for a field this GPU or driver does not have."""
        try:
            values = self._nvml.nvmlDeviceGetFieldValues(handle, requests)
        except self._nvml.NVMLError as exc:
            if type(exc).__name__ in UNSUPPORTED:
                return [None] * len(requests)
            raise
        success, members = self._success, self._union_member
        return [float(getattr(v.value, members.get(v.valueType, "ullVal"))) if v.nvmlReturn == success else None
                for v in values]

    # --- the scrape --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Family]:
        gpus = self._ensure_initialized()
        scrape = Scrape()
        scrape.add(catalog.GPU_DRIVER_INFO, 1, *self._driver)
        driver_gone = False
        dcgm = self._dcgm.view() if self._dcgm else None
        for gpu in gpus:
            key = str(gpu.index)
            up = False
            if not driver_gone and not self._in_flight.busy(key):
                with self._in_flight.hold(key):
                    try:
                        up = self._read_gpu(gpu, scrape, self._profiling_source(gpu.index, dcgm))
                    except _DriverGone:
                        driver_gone = True
            scrape.add(catalog.GPU_UP, 1 if up else 0, *gpu.labels)
        if driver_gone:
            self._reset()
            raise RuntimeError("NVML lost the driver (reload?); reinitialising")
        self._add_background(gpus, scrape)
        if dcgm is not None:
            _add_dcgm({gpu.index: gpu for gpu in gpus if not gpu.lost}, dcgm, scrape)
        yield from scrape.families.values()

    def _profiling_source(self, index: int, dcgm: DcgmView | None) -> str:
        if self._gpm and index in self._gpm.supported:
            return "gpm"
        return "dcgm" if dcgm and index in dcgm.profiled else "none"

    def _read_gpu(self, gpu: _Gpu, scrape: Scrape, profiling: str) -> bool:
        """Adds one GPU's samples; False if the GPU is lost."""
        n, labels = self._nvml, gpu.labels
        if not gpu.uuid:  # never opened: nothing to read until NVML initialises again
            return False
        try:
            if gpu.lost:  # a GPU back from the dead may have a new handle
                gpu.handle = n.nvmlDeviceGetHandleByIndex(gpu.index)
            self._read_calls(gpu, scrape)
        except _GpuLost:
            if not gpu.lost:
                log.warning("GPU lost", extra={"gpu": gpu.index, "uuid": gpu.uuid})
            gpu.lost = True
            return False
        except n.NVMLError as exc:  # from the handle lookup
            if type(exc).__name__ in _DRIVER_GONE:
                raise _DriverGone() from None
            gpu.lost = True
            return False
        if gpu.lost:
            log.info("GPU back", extra={"gpu": gpu.index, "uuid": gpu.uuid})
        gpu.lost = False
        scrape.add(catalog.GPU_INFO, 1, *labels, gpu.model, gpu.pci_bus_id, profiling)
        for metric, extra, value in gpu.static:
            scrape.add(metric, value, *labels, *extra)
        return True

    def _read_calls(self, gpu: _Gpu, scrape: Scrape) -> None:
        n, h, labels = self._nvml, gpu.handle, gpu.labels
        call = self._caller(gpu)

        utilization = call("nvmlDeviceGetUtilizationRates", lambda: n.nvmlDeviceGetUtilizationRates(h))
        if utilization is not None:
            scrape.add(catalog.GPU_UTILIZATION, utilization.gpu / 100, *labels)
            scrape.add(catalog.GPU_MEMORY_UTILIZATION, utilization.memory / 100, *labels)
        memory = call("nvmlDeviceGetMemoryInfo", lambda: n.nvmlDeviceGetMemoryInfo(h))
        if memory is not None:
            scrape.add(catalog.GPU_MEMORY_USED, memory.used, *labels)
            scrape.add(catalog.GPU_MEMORY_FREE, memory.free, *labels)
            scrape.add(catalog.GPU_MEMORY_TOTAL, memory.total, *labels)
        for metric, name, fn, scale in (
            (catalog.GPU_POWER, "nvmlDeviceGetPowerUsage", lambda: n.nvmlDeviceGetPowerUsage(h), 1e-3),
            (catalog.GPU_POWER_LIMIT, "nvmlDeviceGetEnforcedPowerLimit",
             lambda: n.nvmlDeviceGetEnforcedPowerLimit(h), 1e-3),
            (catalog.GPU_SM_CLOCK, "nvmlDeviceGetClockInfo(SM)",
             lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM), 1e6),
        ):
            if metric in gpu.from_fields:
                continue  # in the batched field values below
            value = call(name, fn)
            if value is not None:
                scrape.add(metric, value * scale, *labels)
        reasons = call("nvmlDeviceGetCurrentClocksEventReasons", lambda: n.nvmlDeviceGetCurrentClocksEventReasons(h))
        if reasons is not None:
            for reason, bit in CLOCK_EVENT_REASONS:
                scrape.add(catalog.GPU_CLOCK_EVENT, 1 if reasons & bit else 0, *labels, reason)
        self._read_temperatures(gpu, scrape, call)
        values = call("nvmlDeviceGetFieldValues", lambda: self._fields(h, gpu.fields))
        if values is not None:
            self._add_fields(gpu, values, scrape)

    def _read_temperatures(self, gpu: _Gpu, scrape: Scrape, call) -> None:
        n, h, labels = self._nvml, gpu.handle, gpu.labels
        temperature = call("nvmlDeviceGetTemperature", lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU))
        if temperature is None:
            return
        scrape.add(catalog.GPU_TEMPERATURE, temperature, *labels)
        if gpu.absolute_limits:
            for name, limit in gpu.absolute_limits.items():
                scrape.add(catalog.GPU_TEMPERATURE_LIMIT, limit, *labels, name)
            if "slowdown" in gpu.absolute_limits:
                scrape.add(catalog.GPU_TEMPERATURE_MARGIN, gpu.absolute_limits["slowdown"] - temperature, *labels)
            return
        # T.Limit drivers: the margin is the distance to T.Limit; a limit of -2 means 2 degrees past it.
        margin = call("nvmlDeviceGetMarginTemperature", lambda: n.nvmlDeviceGetMarginTemperature(h))
        if margin is None:
            return
        for name, relative in gpu.relative_limits.items():
            scrape.add(catalog.GPU_TEMPERATURE_LIMIT, temperature + margin - relative, *labels, name)
        if "slowdown" in gpu.relative_limits:
            scrape.add(catalog.GPU_TEMPERATURE_MARGIN, margin - gpu.relative_limits["slowdown"], *labels)

    def _add_fields(self, gpu: _Gpu, values: list[float | None], scrape: Scrape) -> None:
        labels = gpu.labels
        for (_, metric, extra, scale), value in zip(gpu.scalars, values, strict=False):
            if value is not None:
                scrape.add(metric, value * scale, *labels, *extra)
        link_values = values[len(gpu.scalars):]
        if not gpu.links or any(v is None for v in link_values):
            return
        tx = [v * 1024 for v in link_values[0::2]]  # KiB
        rx = [v * 1024 for v in link_values[1::2]]
        scrape.add(catalog.GPU_NVLINK_TX, sum(tx), *labels)
        scrape.add(catalog.GPU_NVLINK_RX, sum(rx), *labels)
        if self._options.nvlink_per_link:
            for link, (sent, received) in enumerate(zip(tx, rx, strict=True)):
                scrape.add(catalog.GPU_NVLINK_LINK_TX, sent, *labels, str(link))
                scrape.add(catalog.GPU_NVLINK_LINK_RX, received, *labels, str(link))

    def _caller(self, gpu: _Gpu) -> Callable[[str, Callable[[], Any]], Any]:
        """Runs one NVML call for a GPU: None when unsupported (remembered), raises when the GPU is lost."""
        nvml = self._nvml

        def call(name: str, fn: Callable[[], Any]) -> Any:
            if name in gpu.unsupported:
                return None
            try:
                return fn()
            except nvml.NVMLError as exc:
                kind = type(exc).__name__
                if kind in _LOST:
                    raise _GpuLost() from None
                if kind in _DRIVER_GONE:
                    raise _DriverGone() from None
                if kind in UNSUPPORTED:
                    gpu.unsupported.add(name)
                    log.info("NVML call unsupported; metric dropped for this GPU",
                             extra={"gpu": gpu.index, "call": name, "error": kind})
                elif (gpu.index, name) not in self._logged:
                    self._logged.add((gpu.index, name))
                    log.warning("NVML call failed", extra={"gpu": gpu.index, "call": name, "error": kind})
                return None

        return call

    def _add_background(self, gpus: list[_Gpu], scrape: Scrape) -> None:
        """Jobs, XID counts, link state and GPM profiling values, from the background threads' latest
        snapshots."""
        by_index = {gpu.index: gpu for gpu in gpus}
        if self._xids:
            counts, last = self._xids.snapshot()
            for (index, xid), count in sorted(counts.items()):
                scrape.add(catalog.GPU_XID_ERRORS, count, *by_index[index].labels, str(xid))
            for index, when in sorted(last.items()):
                scrape.add(catalog.GPU_LAST_XID, when, *by_index[index].labels)
        if self._pods:
            up, allocations = self._pods.snapshot()
            scrape.add(catalog.GPU_POD_RESOURCES_UP, 1 if up else 0)
            for gpu in gpus:  # the device plugin names a GPU by UUID, or by index
                allocation = allocations.get(gpu.uuid) or allocations.get(str(gpu.index))
                if allocation:
                    scrape.add(catalog.GPU_POD_INFO, 1, *gpu.labels, allocation.namespace, allocation.pod,
                               allocation.container)
        if self._jobs:
            for index, jobs in sorted(self._jobs.jobs().items()):
                if index in by_index:
                    for job in jobs:
                        scrape.add(catalog.GPU_JOB_INFO, 1, *by_index[index].labels, job)
        for worker in (self._links, self._gpm):
            for index, values in sorted(worker.snapshot().items()) if worker else ():
                if by_index[index].lost:
                    continue
                for metric, value in values:
                    scrape.add(metric, value, *by_index[index].labels)


def _add_dcgm(gpus: dict[int, _Gpu], view: DcgmView, scrape: Scrape) -> None:
    """DCGM's profiling values and health checks, from its sampler's last round."""
    scrape.add(catalog.DCGM_UP, 1 if view.up else 0)
    if view.blocked:
        scrape.add(catalog.DCGM_PROFILING_BLOCKED, 1, view.blocked)
    if view.switches_blocked:
        scrape.add(catalog.DCGM_NVSWITCH_BLOCKED, 1, view.switches_blocked)
    for index, values in sorted(view.values.items()):
        for metric, value in values if index in gpus else ():
            scrape.add(metric, value, *gpus[index].labels)
    for index, systems in sorted(view.health.items()):
        for system, result in systems.items() if index in gpus else ():
            scrape.add(catalog.GPU_DCGM_HEALTH, result, *gpus[index].labels, system)
    for index, system, code, result in view.incidents:
        if index in gpus:
            scrape.add(catalog.GPU_DCGM_INCIDENT, result, *gpus[index].labels, system, code)
    for switch, systems in sorted(view.switches.items()):
        for system, result in systems.items():
            scrape.add(catalog.NVSWITCH_DCGM_HEALTH, result, str(switch), system)


def pci_address(bus_id: str) -> str:
    """NVML's "00000000:53:00.0" as sysfs and lspci write it, "0000:53:00.0", so it joins with the
    gpu_pci_address of gpuscope_rdma_device_info."""
    domain, _, rest = bus_id.lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}" if rest else bus_id.lower()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(version: int | None) -> str:
    """12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}" if version else ""


OPTIONS = (
    Option("collector.gpu.nvlink-per-link", False, parse_bool,
           "also export NVLink bytes per link (18 links x 8 GPUs more series)", is_flag=True),
    Option("collector.gpu.gpm-interval", "10s", positive_seconds,
           "how often profiling (GPM, or DCGM's watch) is sampled in the background (set it to the scrape interval)"),
    Option("collector.gpu.profiling", "auto", choice("auto", "gpm", "dcgm", "off"),
           "profiling ratios (SM active, tensor, DRAM): auto (NVML GPM where the GPU has it, else DCGM's host "
           "engine: A100), gpm, dcgm, off"),
    Option("collector.gpu.dcgm-address", "127.0.0.1:5555", str,
           "DCGM host engine (nv-hostengine) to read profiling and health from: host:port, or a unix socket "
           "path; 'embedded' starts an engine inside gpuscope (only where no other engine runs)"),
    Option("collector.gpu.dcgm-bindings", ",".join(DEFAULT_BINDINGS), parse_names,
           "comma-separated folders to load DCGM's Python bindings from (the DCGM package's own; first found)"),
    Option("collector.gpu.link-interval", "30s", positive_seconds,
           "how often the active NVLinks are counted in the background (one field-values call per GPU)"),
    Option("collector.gpu.job-mapping-dir", "", str,
           "dcgm-exporter style HPC job mapping directory (one file per GPU index, a job id per line); "
           "empty: find each GPU's Slurm job from its processes"),
    Option("collector.gpu.pod-resources-socket", "", str,
           "the kubelet's pod-resources socket (usually /var/lib/kubelet/pod-resources/kubelet.sock) for "
           "Kubernetes pod attribution; empty: off"),
    Option("collector.gpu.pod-resource-names", "nvidia.com/gpu", parse_names,
           "comma-separated device plugin resource names that are GPUs"),
)


def _settings(values: dict[str, Any]) -> GpuOptions:
    return GpuOptions(nvlink_per_link=values["collector.gpu.nvlink-per-link"],
                      gpm_interval=values["collector.gpu.gpm-interval"], profiling=values["collector.gpu.profiling"],
                      dcgm=DcgmOptions(address=values["collector.gpu.dcgm-address"],
                                       bindings=values["collector.gpu.dcgm-bindings"]),
                      job_mapping_dir=values["collector.gpu.job-mapping-dir"],
                      link_interval=values["collector.gpu.link-interval"],
                      pod_resources_socket=values["collector.gpu.pod-resources-socket"],
                      pod_resource_names=values["collector.gpu.pod-resource-names"])


def _build(roots: Roots, options: GpuOptions) -> GpuCollector:
    nvml = roots.nvml or importlib.import_module("pynvml")  # the real NVML only when the collector starts
    return GpuCollector(nvml, replace(options, procfs=roots.procfs))


register(Registration(
    "gpu", "NVIDIA GPUs through NVML: utilization, memory, temperatures and limits, power, clocks, throttle "
           "reasons, ECC and row remapping, XIDs, PCIe, NVLink, GPM profiling",
    _build, OPTIONS, _settings))
