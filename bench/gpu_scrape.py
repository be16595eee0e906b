"""CPU cost per scrape of the GPU collector, and how much of it is the NVML calls themselves.

Without a GPU the NVML calls are answered by the simulated NVML, so the script measures two
things on a simulated node: a whole scrape (collector, registry, text exposition), and the same
NVML calls made back to back with nothing around them. The difference is what gpuscope adds on
top of NVML. Run:

    python bench/gpu_scrape.py [--profile p5.48xlarge] [--scrapes 300]
"""

from __future__ import annotations

import argparse
import sys
import time

from exporter.collectors.gpu import TEMPERATURE_LIMITS, GpuCollector, GpuOptions
from exporter.registry import ScrapeRegistry
from simulator.nvml import SimulatedNvml


def bare_calls(nvml: SimulatedNvml, handles: list, fields: list) -> None:
    """The NVML calls one scrape makes, with no collector around them."""
    for handle in handles:
        nvml.nvmlDeviceGetUtilizationRates(handle)
        nvml.nvmlDeviceGetMemoryInfo(handle)
        nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)
        nvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
        nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        nvml.nvmlDeviceGetFieldValues(handle, fields)


def cpu_ms(fn, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        fn()
    return (time.process_time() - start) / rounds * 1000


def nvml_handles(nvml: SimulatedNvml, collector: GpuCollector) -> tuple[list, object]:
    """The GPUs' handles and the collector's view of the first (its field list)."""
    gpu = collector._ensure_initialized()[0]  # initializes NVML
    return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())], gpu


def nvml_call_ms(profile: str, rounds: int) -> float:
    """CPU of the NVML calls one scrape makes on the simulated `profile`, with nothing around them:
    what a whole-node figure subtracts to show gpuscope's own cost."""
    nvml = SimulatedNvml(profile)
    collector = GpuCollector(nvml, GpuOptions(gpm_interval=3600))
    try:
        handles, gpu = nvml_handles(nvml, collector)
        return cpu_ms(lambda: bare_calls(nvml, handles, gpu.fields), rounds)
    finally:
        collector.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="p5.48xlarge")
    parser.add_argument("--scrapes", type=int, default=300)
    args = parser.parse_args()

    nvml = SimulatedNvml(args.profile)
    collector = GpuCollector(nvml, GpuOptions(gpm_interval=3600))
    registry = ScrapeRegistry([collector], 5.0)
    for _ in range(5):
        text = registry.render()
    try:
        scrape = cpu_ms(registry.render, args.scrapes)
        handles, gpu = nvml_handles(nvml, collector)
        calls = cpu_ms(lambda: bare_calls(nvml, handles, gpu.fields), args.scrapes)
    finally:
        collector.close()
    series = sum(1 for line in text.splitlines() if line.startswith("gpuscope_gpu_"))
    print(f"{args.profile}: {len(handles)} GPUs, {series} gpuscope_gpu_* series, {len(gpu.fields)} fields per batch, "
          f"limits {'absolute' if gpu.absolute_limits else 'T.Limit-relative'} ({len(TEMPERATURE_LIMITS)})")
    print(f"whole scrape           {scrape:7.2f} ms CPU")
    print(f"bare NVML calls        {calls:7.2f} ms CPU (simulated NVML)")
    print(f"gpuscope on top        {scrape - calls:7.2f} ms CPU ({(scrape - calls) / len(handles):.2f} ms per GPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
