"""`gpuscope exporter --simulate=PROFILE`: the real agent serving a live simulated node.

The simulator's options join the agent's (flags, environment, config file alike) and, when
`--simulate` names a profile, `node()` hands the agent the roots of a node it keeps alive: a
temporary (or given) sysfs tree, a simulated NVML behind the pynvml API, the node's kernel log, NCCL
Inspector files and, for a profile with one, a DCGM host engine behind the emulated bindings. The
agent's collectors read them unchanged; the agent never imports this package.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from exporter.collectors import MODULES
from exporter.collectors.kmsg import KmsgOptions
from exporter.config import ExporterSettings
from exporter.options import Option, choice, parse_directory
from simulator.profiles import PROFILES
from toolkit.durations import positive_seconds

log = logging.getLogger("gpuscope")


def parse_profile(value: Any) -> str:
    """A simulated node profile, or empty for the real host."""
    text = str(value or "")
    if text and text not in PROFILES:
        raise ValueError(f"unknown profile {text!r} (one of {', '.join(PROFILES)})")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("simulate", "", parse_profile,
           "serve a simulated node of this profile instead of the host's hardware (its NCCL Inspector files feed "
           "the nccl collector): " + ", ".join(PROFILES)),
    Option("simulate.dir", "", parse_directory,
           "with --simulate: the node's directory (its sysfs tree, and faults.yaml read for injected faults); "
           "a sys/ there that the simulator did not write is refused, never replaced; empty: a temporary one"),
    Option("simulate.interval", "2s", positive_seconds, "with --simulate: how often the node's counters move on"),
    Option("simulate.efa-layout", "split", choice("split", "combined"),
           "with --simulate: EFA counter layout, split (kernel >= 5.15) or combined (older kernels)"),
)


@contextmanager
def node(settings: ExporterSettings) -> Iterator[ExporterSettings]:
    """The settings to serve with: the host's as they are, or a live simulated node's."""
    profile_name = settings.values.get("simulate", "")
    if not profile_name:
        yield settings
        return
    from simulator import dcgm_engine
    from simulator.node import INSPECTOR_EVERY, SimulatedNode
    from simulator.nvml import SimulatedNvml, load_profile

    profile, directory = load_profile(profile_name), settings.values["simulate.dir"]
    interval = settings.values["simulate.interval"]
    with tempfile.TemporaryDirectory(prefix="gpuscope-sim-") as work:
        nvml = SimulatedNvml(profile)
        if not directory:  # a node of its own runs a one-node training job
            SimulatedNode.write_job(work, "4242", node=0, nodes=1)
        dcgm = settings.roots.of("gpu").dcgm
        engine = dcgm_engine.serve(nvml, profile, dcgm.address)  # a p4d's nv-hostengine, behind the emulated bindings
        simulated = SimulatedNode(directory or work, profile, nvml, layout=settings.values["simulate.efa-layout"],
                                  dcgm=engine, train_dir=settings.roots.of("train").directory)
        simulated.start(interval)
        log.info("serving a simulated node", extra={"profile": profile_name, "sysfs": simulated.sysfs,
                                                    "faults": simulated.faults_file})
        try:
            yield _served_by(settings, simulated, nvml, INSPECTOR_EVERY * interval, dcgm_engine.BINDINGS)
        finally:
            simulated.stop()
            dcgm_engine.unregister(dcgm.address)


def _served_by(settings: ExporterSettings, simulated: Any, nvml: Any, inspector_interval: float,
               bindings: str) -> ExporterSettings:
    """The agent's settings with the node's roots: its tree and NVML, its NCCL Inspector files (at the
    simulator's dump cadence; the nccl collector on, as a node of its own runs a job), its own kernel
    log, and DCGM's emulated bindings."""
    roots = settings.roots
    nccl, gpu = roots.of("nccl"), roots.of("gpu")
    own = {"nccl": dataclasses.replace(nccl, interval=inspector_interval,
                                       directory=nccl.directory or simulated.inspector_dir),
           "kmsg": KmsgOptions(path=simulated.kmsg_file, boot_procfs=simulated.procfs),
           "gpu": dataclasses.replace(gpu, dcgm=dataclasses.replace(gpu.dcgm, bindings=(bindings,)))}
    enabled = set(settings.collectors) | ({"nccl"} if settings.values.get("collector.nccl", True) else set())
    return dataclasses.replace(
        settings, collectors=tuple(name for name in MODULES if name in enabled),
        roots=dataclasses.replace(roots, sysfs=simulated.sysfs, nvml=nvml, settings={**roots.settings, **own}))
