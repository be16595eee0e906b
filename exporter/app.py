"""Assembles the daemon from its settings: collectors, registries, HTTP server."""

from __future__ import annotations

import logging
import signal
import threading

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from exporter import __version__, collectors, server
from exporter.config import ExporterSettings
from exporter.registry import ScrapeRegistry
from exporter.webconfig import WebConfig

log = logging.getLogger("gpuscope")


def build_registries(settings: ExporterSettings) -> tuple[CollectorRegistry, ScrapeRegistry]:
    """The process self-metrics (prometheus_client's collectors) and the gpuscope collectors."""
    scrapes = ScrapeRegistry(collectors.build(settings.collectors, settings.roots), settings.timeout)
    process = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=process)
    PlatformCollector(registry=process)
    return process, scrapes


def run(settings: ExporterSettings, web: WebConfig) -> int:
    """Serve until SIGTERM or SIGINT; the caller has already checked the configuration."""
    process_registry, scrapes = build_registries(settings)
    try:
        httpd = server.serve(settings.listen_address, process_registry=process_registry, scrapes=scrapes, web=web,
                             telemetry_path=settings.telemetry_path)
    except OSError as exc:
        host, port = settings.listen_address
        log.error("cannot listen", extra={"address": f"{host}:{port}", "error": exc.strerror or str(exc)})
        return 1
    # One collection right away, so /-/ready turns true without waiting for Prometheus.
    threading.Thread(target=scrapes.render, name="warm-up", daemon=True).start()

    def stop(signum, _frame) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = httpd.server_address[:2]
    log.info("listening", extra={"address": f"{host}:{port}", "tls": web.ssl_context is not None,
                                 "collectors": ",".join(settings.collectors), "version": __version__})
    httpd.serve_forever()
    httpd.server_close()
    return 0
