"""Assembles the daemon from its settings: collectors, registries, HTTP server."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from prometheus_client import CollectorRegistry, PlatformCollector

from exporter import __version__, collectors, files, server
from exporter.collectors import Roots
from exporter.config import ConfigError, ExporterSettings
from exporter.process import ProcessCollector
from exporter.registry import ScrapeRegistry
from exporter.sdnotify import notify
from toolkit.webconfig import WebConfig

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
def host_node(settings: ExporterSettings) -> Iterator[ExporterSettings]:
    """The host's own hardware: the settings as they are."""
    yield settings


def run(settings: ExporterSettings, web: WebConfig,
        node: Callable[[ExporterSettings], AbstractContextManager[ExporterSettings]] = host_node) -> int:
    """Serve until SIGTERM or SIGINT; the caller has already checked the configuration. `node` gives
    the settings to serve with while the node lasts: the host's, or a simulated node's roots (whose
    directory is checked as the node is made: exit 2 when it is not ours to use)."""
    try:
        with node(settings) as served:
            return _serve(served, web)
    except ConfigError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 2


def _serve(settings: ExporterSettings, web: WebConfig) -> int:
    files.raise_descriptor_limit()  # before the collectors open the files they keep
    process_registry, scrapes = build_registries(settings, settings.roots)
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
