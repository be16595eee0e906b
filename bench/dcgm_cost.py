"""What the DCGM source costs on a simulated A100 node: DCGM calls per scrape and per sampling round,
the sampler's CPU per round, and NVML calls per GPU per scrape with DCGM on and with profiling off.

DCGM answers through gpuscope's emulator of its Python bindings (simulator/dcgm_bindings) and a
simulated host engine, so the CPU is that of gpuscope's side plus the emulator's; real bindings add
one local socket round trip to nv-hostengine per call. Run:

    python -m bench.dcgm_cost [--seconds 10] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.gpu_dcgm import DcgmOptions
from exporter.registry import ScrapeRegistry
from simulator import dcgm_engine
from simulator.dcgm_engine import HostEngine
from simulator.nvml import SimulatedNvml, load_profile

PROFILE = "p4d.24xlarge"
ADDRESS = "bench:5555"


@contextmanager
def a100(**options: Any) -> Iterator[tuple[SimulatedNvml, HostEngine, ScrapeRegistry]]:
    """A simulated p4d, its engine at ADDRESS and a GPU collector reading it, past its first rounds."""
    nvml = SimulatedNvml(PROFILE)
    engine = dcgm_engine.serve(nvml, load_profile(PROFILE), ADDRESS)
    assert engine is not None
    collector = GpuCollector(nvml, GpuOptions(dcgm=DcgmOptions(ADDRESS, (dcgm_engine.BINDINGS,)), **options))
    registry = ScrapeRegistry([collector], 5.0)
    try:
        registry.render()
        time.sleep(0.5)  # background threads past their first round
        yield nvml, engine, registry
    finally:
        collector.close()
        dcgm_engine.unregister(ADDRESS)


def nvml_calls_per_gpu(profiling: str, scrapes: int = 20) -> float:
    with a100(profiling=profiling, gpm_interval=3600) as (nvml, _, registry):
        before = sum(nvml.calls.values())
        for _ in range(scrapes):
            registry.render()
        return (sum(nvml.calls.values()) - before) / scrapes / nvml.profile["gpu"]["count"]


def sampler(seconds: float, interval: float) -> tuple[int, dict[str, float], float, float]:
    """(rounds, DCGM calls per round by name, DCGM calls per scrape, CPU ms per round)."""
    with a100(gpm_interval=interval) as (_, engine, registry):
        scrape_calls = 0
        for _ in range(50):
            calls = sum(engine.calls.values())
            registry.render()
            scrape_calls += sum(engine.calls.values()) - calls  # the sampler may run meanwhile: an upper bound
        start_cpu, start = time.process_time(), dict(engine.calls)
        time.sleep(seconds)
        cpu = time.process_time() - start_cpu
        rounds = engine.calls["dcgmHealthCheck"] - start.get("dcgmHealthCheck", 0)
        per_round = {name: (count - start.get(name, 0)) / max(rounds, 1) for name, count in engine.calls.items()
                     if count - start.get(name, 0)}
        return rounds, per_round, scrape_calls / 50, 1000 * cpu / max(rounds, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.05, help="sampling interval (10 s shipped; short to count)")
    args = parser.parse_args()
    rounds, per_round, per_scrape, cpu = sampler(args.seconds, args.interval)
    print(f"{PROFILE}: {rounds} DCGM rounds in {args.seconds:g} s")
    calls = ", ".join(f"{name} {count:.2f}" for name, count in per_round.items())
    print(f"DCGM calls per round   {sum(per_round.values()):.2f} ({calls})")
    print(f"DCGM calls per scrape  {per_scrape:.2f} (at most: the sampler ran beside the scrapes)")
    print(f"sampler CPU per round  {cpu:.3f} ms (whole process, idle otherwise)")
    print(f"NVML calls per GPU per scrape: DCGM on {nvml_calls_per_gpu('auto'):.2f}, profiling off "
          f"{nvml_calls_per_gpu('off'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
