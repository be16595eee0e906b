"""Assembles the daemon from its settings: collectors, registries, HTTP server."""

from __future__ import annotations

import dataclasses
import logging
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, PlatformCollector

from exporter import __version__, collectors, files, server
from exporter.collectors import Roots
from exporter.collectors.kmsg import KmsgOptions
from exporter.config import ConfigError, ExporterSettings
from exporter.process import ProcessCollector
from exporter.registry import ScrapeRegistry
from exporter.sdnotify import notify
from exporter.webconfig import WebConfig

log = logging.getLogger("gpuscope")
# After SIGTERM, scrapes in progress get this long to finish (a scrape is bounded by --collector.timeout).
STOP_GRACE_SECONDS = 10.0


def build_registries(settings: ExporterSettings, roots: Roots) -> tuple[CollectorRegistry, ScrapeRegistry]:
    """The process self-metrics (prometheus_client's collectors) and the gpuscope collectors."""
    scrapes = ScrapeRegistry(collectors.build(settings.collectors, roots), settings.timeout)
    process = CollectorRegistry(auto_describe=False)
    process.register(ProcessCollector())
    PlatformCollector(registry=process)
    return process, scrapes


@contextmanager
def node_roots(settings: ExporterSettings) -> Iterator[Roots]:
    """The host's roots, or those of a live simulated node (a temporary tree and a simulated NVML)."""
    if not settings.simulate:
        yield settings.roots
        return
    from simulator import dcgm_engine  # the simulator only when asked for
    from simulator.node import INSPECTOR_EVERY, SimulatedNode
    from simulator.nvml import SimulatedNvml, load_profile

    profile = load_profile(settings.simulate)
    with tempfile.TemporaryDirectory(prefix="gpuscope-sim-") as work:
        nvml = SimulatedNvml(profile)
        if not settings.simulate_dir:  # a node of its own runs a one-node training job
            SimulatedNode.write_job(work, "4242", node=0, nodes=1)
        dcgm = settings.roots.gpu.dcgm
        engine = dcgm_engine.serve(nvml, profile, dcgm.address)  # a p4d's nv-hostengine, behind the emulated bindings
        node = SimulatedNode(settings.simulate_dir or work, profile, nvml, layout=settings.simulate_efa_layout,
                             dcgm=engine)
        node.start(settings.simulate_interval)
        log.info("serving a simulated node", extra={"profile": settings.simulate, "sysfs": node.sysfs,
                                                    "faults": node.faults_file})
        try:
            # NCCL Inspector's files of the simulated job, at the simulator's dump cadence
            nccl = dataclasses.replace(settings.roots.nccl, interval=INSPECTOR_EVERY * settings.simulate_interval,
                                       directory=settings.roots.nccl.directory or node.inspector_dir)
            kmsg = KmsgOptions(path=node.kmsg_file, boot_procfs=node.procfs)  # the node's own kernel log
            gpu = dataclasses.replace(settings.roots.gpu,
                                      dcgm=dataclasses.replace(dcgm, bindings=(dcgm_engine.BINDINGS,)))
            yield dataclasses.replace(settings.roots, sysfs=node.sysfs, nvml=nvml, nccl=nccl, kmsg=kmsg, gpu=gpu)
        finally:
            node.stop()
            dcgm_engine.unregister(dcgm.address)


def run(settings: ExporterSettings, web: WebConfig) -> int:
    """Serve until SIGTERM or SIGINT; the caller has already checked the configuration (a simulated
    node's directory is checked here, as the node is made: exit 2 when it is not ours to use)."""
    try:
        with node_roots(settings) as roots:
            return _serve(settings, web, roots)
    except ConfigError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 2


def _serve(settings: ExporterSettings, web: WebConfig, roots: Roots) -> int:
    files.raise_descriptor_limit()  # before the collectors open the files they keep
    process_registry, scrapes = build_registries(settings, roots)
    try:
        httpd = server.serve(settings.listen_address, process_registry=process_registry, scrapes=scrapes, web=web,
                             telemetry_path=settings.telemetry_path)
    except OSError as exc:
        host, port = settings.listen_address
        log.error("cannot listen", extra={"address": f"{host}:{port}", "error": exc.strerror or str(exc)})
        return 1
    def warm_up() -> None:
        """One collection right away, so /-/ready turns true without waiting for Prometheus; then
        tell systemd (Type=notify) that we serve."""
        scrapes.render()
        notify("READY=1")

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()

    def stop(signum, _frame) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        notify("STOPPING=1")
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda *_: log.info(
        "SIGHUP: nothing to reload by signal; a renewed TLS certificate is read when its files change, "
        "other settings need a restart"))
    host, port = httpd.server_address[:2]
    log.info("listening", extra={"address": f"{host}:{port}", "tls": web.ssl_context is not None,
                                 "collectors": ",".join(settings.collectors), "version": __version__})
    httpd.serve_forever()
    left = httpd.wait_idle(STOP_GRACE_SECONDS)  # scrapes in progress finish; no new ones are accepted
    if left:
        log.warning("stopping with connections still open", extra={"connections": left})
    httpd.server_close()
    collectors.close(runner.collector for runner in scrapes.runners)
    return 0
