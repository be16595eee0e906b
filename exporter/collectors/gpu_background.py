"""The GPU collector's background threads: XID events, GPM profiling samples, link state.

Neither can be done inside a scrape: XIDs arrive as events that must be waited for, and a GPM
metric needs two samples some time apart. Each thread keeps a small snapshot behind a lock;
scrapes read the snapshot and never wait on NVML for these.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from exporter import catalog
from exporter.catalog import Metric
from exporter.collectors.jobs import job_of_process

log = logging.getLogger("gpuscope")

XID_CRITICAL_EVENT = 0x8  # nvmlEventTypeXidCriticalError
# Errors that mean a GPU or driver lacks a call (not that the GPU is lost): its metric is left out.
UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound", "NVMLError_NoPermission")
_WAIT_MS = 500

# GPM metric id -> (metric, scale): percentages become ratios. GPM's PCIe and NVLink rates (ids 20,
# 21, 60, 61) are not exported: rate() of the byte counters gives the same over any window.
GPM_METRICS: dict[int, tuple[Metric, float]] = {
    1: (catalog.GPU_GRAPHICS_ACTIVE, 0.01),
    2: (catalog.GPU_SM_ACTIVE, 0.01),
    3: (catalog.GPU_SM_OCCUPANCY, 0.01),
    5: (catalog.GPU_TENSOR_ACTIVE, 0.01),
    10: (catalog.GPU_DRAM_ACTIVE, 0.01),
    11: (catalog.GPU_FP64_ACTIVE, 0.01),
    12: (catalog.GPU_FP32_ACTIVE, 0.01),
    13: (catalog.GPU_FP16_ACTIVE, 0.01),
}


class XidWatcher:
    """Counts XID events per GPU and XID from an NVML event set."""

    def __init__(self, nvml: Any, handles: dict[int, Any]) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._counts: Counter[tuple[int, int]] = Counter()
        self._last: dict[int, float] = {}
        # Events name their GPU by handle; asking NVML for the index fails for a GPU that is lost,
        # exactly when its XID 79 arrives, so handles are matched by address instead.
        self._index_of = {_address(handle): index for index, handle in handles.items()}
        self._stop = threading.Event()
        self._event_set = None
        try:
            self._event_set = nvml.nvmlEventSetCreate()
            for index, handle in handles.items():
                self._register(index, handle)
        except nvml.NVMLError as exc:
            log.warning("XID events unavailable", extra={"error": type(exc).__name__})
            self._event_set = None
            return
        self._thread = threading.Thread(target=self._run, name="gpu-xid-events", daemon=True)
        self._thread.start()

    def _register(self, index: int, handle: Any) -> None:
        try:
            if self._nvml.nvmlDeviceGetSupportedEventTypes(handle) & XID_CRITICAL_EVENT:
                self._nvml.nvmlDeviceRegisterEvents(handle, XID_CRITICAL_EVENT, self._event_set)
        except self._nvml.NVMLError as exc:
            log.warning("XID events unavailable for GPU", extra={"gpu": index, "error": type(exc).__name__})

    def _run(self) -> None:
        nvml = self._nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, _WAIT_MS)
            except nvml.NVMLError as exc:
                name = type(exc).__name__
                if name == "NVMLError_Timeout":
                    continue
                if name in ("NVMLError_Uninitialized", "NVMLError_DriverNotLoaded"):
                    return
                self._stop.wait(1.0)  # e.g. a lost GPU: keep listening to the others
                continue
            if data.eventType & XID_CRITICAL_EVENT:
                self._record(data)

    def _record(self, data: Any) -> None:
        index = self._index_of.get(_address(data.device))
        if index is None:
            return
        with self._lock:
            self._counts[index, int(data.eventData)] += 1
            self._last[index] = time.time()
        log.warning("XID error", extra={"gpu": index, "xid": int(data.eventData)})

    def snapshot(self) -> tuple[dict[tuple[int, int], int], dict[int, float]]:
        with self._lock:
            return dict(self._counts), dict(self._last)

    def stop(self) -> None:
        self._stop.set()


class JobWatcher:
    """Finds the Slurm job of each GPU from its compute processes, every `interval` seconds.

    Used when no job mapping directory is configured: one NVML process query per GPU and a cgroup
    read per process is too much for every scrape, and jobs change on a scale of minutes.
    """

    def __init__(self, nvml: Any, handles: dict[int, Any], procfs: str, interval: float) -> None:
        self._nvml = nvml
        self._handles = handles
        self._procfs = procfs
        self._interval = interval
        self._lock = threading.Lock()
        self._jobs: dict[int, tuple[str, ...]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="gpu-jobs", daemon=True).start()

    def _run(self) -> None:
        while True:
            jobs = {}
            for index, handle in self._handles.items():
                try:
                    processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                except self._nvml.NVMLError:
                    continue  # a lost GPU, or a driver without the call: no attribution for it
                ids = {job_of_process(self._procfs, p.pid) for p in processes} - {""}
                if ids:
                    jobs[index] = tuple(sorted(ids, key=int))
            with self._lock:
                self._jobs = jobs
            if self._stop.wait(self._interval):
                return

    def jobs(self) -> dict[int, tuple[str, ...]]:
        with self._lock:
            return dict(self._jobs)

    def stop(self) -> None:
        self._stop.set()


# NVML_FI_DEV_NVLINK_GET_STATE, read per link (scopeId): NVML_NVLINK_STATE_INACTIVE 0, ACTIVE 1, SLEEP 2
# (a low-power link, up), ACTIVE_TRAFFIC_DISABLED 3 (up, carrying nothing: not active).
NVLINK_STATE_FIELD = 165
NVLINK_UP_STATES = (1, 2)


class LinkWatcher:
    """Each GPU's links every `interval` seconds: its active NVLinks, in one batched field-values call
    (`fields`, the collector's reader: None for a field the driver lacks; a driver without the state
    field answers one nvmlDeviceGetNvLinkState per link instead, 18 on an H100), its PCIe link's
    current generation and width, and its memory clock (fixed on HBM; no rule reads it). These change
    seldom: reading them here keeps a scrape at 6 NVML calls a GPU on a p5, 11 with the background's
    at 15 s scrapes and the default intervals."""

    def __init__(self, nvml: Any, gpus: dict[int, tuple[Any, int]], interval: float,
                 fields: Callable[[Any, list[tuple[int, int]]], list[float | None]]) -> None:
        self._nvml = nvml
        self._gpus = gpus  # GPU index -> (handle, NVLinks it has)
        self._interval = interval
        self._fields = fields
        self._lock = threading.Lock()
        self._values: dict[int, list[tuple[Metric, float]]] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._run, name="gpu-links", daemon=True).start()

    def _run(self) -> None:
        while True:
            values = {}
            for index, (handle, nvlinks) in self._gpus.items():
                try:
                    values[index] = self._read(handle, nvlinks)
                except self._nvml.NVMLError:
                    continue  # a lost GPU: nothing for it
            with self._lock:
                self._values = values
            if self._stop.wait(self._interval):
                return

    def _read(self, handle: Any, nvlinks: int) -> list[tuple[Metric, float]]:
        n = self._nvml
        out = [(catalog.GPU_NVLINK_ACTIVE, self._count(handle, nvlinks))] if nvlinks else []
        for metric, read, scale in (
            (catalog.GPU_PCIE_GENERATION, n.nvmlDeviceGetCurrPcieLinkGeneration, 1),
            (catalog.GPU_PCIE_WIDTH, n.nvmlDeviceGetCurrPcieLinkWidth, 1),
            (catalog.GPU_MEMORY_CLOCK, lambda h: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM), 1e6),
        ):
            try:
                out.append((metric, read(handle) * scale))
            except n.NVMLError as exc:
                if type(exc).__name__ not in UNSUPPORTED:
                    raise
        return out

    def _count(self, handle: Any, links: int) -> int:
        states = self._fields(handle, [(NVLINK_STATE_FIELD, link) for link in range(links)])
        if None not in states:
            return sum(state in NVLINK_UP_STATES for state in states)
        return sum(self._nvml.nvmlDeviceGetNvLinkState(handle, link) == self._nvml.NVML_FEATURE_ENABLED
                   for link in range(links))

    def snapshot(self) -> dict[int, list[tuple[Metric, float]]]:
        with self._lock:
            return dict(self._values)

    def stop(self) -> None:
        self._stop.set()


def _address(handle: Any) -> int | None:
    """The address an NVML device handle (a ctypes pointer) points at."""
    return ctypes.cast(handle, ctypes.c_void_p).value


class GpmSampler:
    """Takes a GPM sample per GPU every interval and keeps the metrics between the last two."""

    def __init__(self, nvml: Any, handles: dict[int, Any], interval: float) -> None:
        self._nvml = nvml
        self._interval = interval
        self._lock = threading.Lock()
        self._values: dict[int, list[tuple[Metric, float]]] = {}
        self._stop = threading.Event()
        self._samples: dict[int, list[Any]] = {}
        self._handles = {}
        for index, handle in handles.items():
            try:
                if nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
                    self._samples[index] = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
                    self._handles[index] = handle
            except nvml.NVMLError as exc:
                log.info("GPM profiling unavailable for GPU", extra={"gpu": index, "error": type(exc).__name__})
        self._taken: set[int] = set()
        self.supported = frozenset(self._handles)  # the GPUs with GPM (another source profiles the rest)
        if self._handles:
            threading.Thread(target=self._run, name="gpu-gpm", daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for index in list(self._handles):
                self._sample(index)
            self._stop.wait(self._interval)

    def _sample(self, index: int) -> None:
        nvml = self._nvml
        previous, current = self._samples[index]
        try:
            nvml.nvmlGpmSampleGet(self._handles[index], current)
            if index in self._taken:
                values = self._metrics(previous, current)
                with self._lock:
                    self._values[index] = values
        except nvml.NVMLError as exc:
            name = type(exc).__name__
            with self._lock:
                self._values.pop(index, None)
            self._taken.discard(index)
            if name in UNSUPPORTED:
                log.info("GPM profiling unavailable for GPU", extra={"gpu": index, "error": name})
                del self._handles[index]
            return
        self._taken.add(index)
        self._samples[index] = [current, previous]

    def _metrics(self, first: Any, second: Any) -> list[tuple[Metric, float]]:
        nvml = self._nvml
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = first
        request.sample2 = second
        for slot, metric_id in enumerate(GPM_METRICS):
            request.metrics[slot].metricId = metric_id
        nvml.nvmlGpmMetricsGet(request)
        out = []
        for slot, (metric, scale) in enumerate(GPM_METRICS.values()):
            result = request.metrics[slot]
            if result.nvmlReturn == nvml.NVML_SUCCESS:
                out.append((metric, result.value * scale))
        return out

    def snapshot(self) -> dict[int, list[tuple[Metric, float]]]:
        with self._lock:
            return dict(self._values)

    def stop(self) -> None:
        self._stop.set()
