"""The exporter's HTTP endpoint: /metrics, a landing page, health and readiness, on the shared HTTP
edge (toolkit/http.py: TLS, basic auth, bounded connections)."""

from __future__ import annotations

import gzip
import html
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry, generate_latest

from exporter import __version__
from exporter.exposition import CONTENT_TYPE
from exporter.registry import ScrapeRegistry
from toolkit.http import TEXT, BaseHandler, Routes, WebServer, accepts_gzip
from toolkit.webconfig import WebConfig


class ExporterHTTPServer(WebServer):
    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *,
                 process_registry: CollectorRegistry, scrapes: ScrapeRegistry, web: WebConfig,
                 telemetry_path: str) -> None:
        self.process_registry = process_registry
        self.scrapes = scrapes
        self.telemetry_path = telemetry_path
        super().__init__(address, handler, web)


class Handler(BaseHandler):
    """The exporter: metrics, a landing page, health and readiness."""

    server: ExporterHTTPServer
    server_version = f"gpuscope/{__version__}"

    def routes(self) -> Routes:
        return {"GET": {
            self.server.telemetry_path: self._metrics,
            "/": self._landing,
            "/-/healthy": self.healthy,
            "/-/ready": self._ready,
        }}

    def _metrics(self) -> None:
        # Always the 0.0.4 text format: every Prometheus version accepts it, whatever it asks first.
        body = self.server.scrapes.render().encode() + generate_latest(self.server.process_registry)
        extra = {"Vary": "Accept-Encoding"}
        if accepts_gzip(self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            extra["Content-Encoding"] = "gzip"
        self._send(200, CONTENT_TYPE, body, extra)

    def _ready(self) -> None:
        if self.server.scrapes.ever_succeeded.is_set():
            self._send(200, TEXT, b"Ready\n")
        else:
            self._send(503, TEXT, b"Not ready: no collector has succeeded yet\n")

    def _landing(self) -> None:
        rows = []
        for runner in self.server.scrapes.runners:
            last = runner.last
            status = "not run yet" if last is None else "ok" if last.success else f"failed: {last.error}"
            duration = "" if last is None else f"{last.duration * 1000:.1f} ms"
            rows.append(f"<tr><td>{html.escape(runner.name)}</td><td>{html.escape(status)}</td>"
                        f"<td>{duration}</td></tr>")
        path = html.escape(self.server.telemetry_path)
        page = (f"<!doctype html><html><head><title>gpuscope exporter</title></head><body>"
                f"<h1>gpuscope exporter {__version__}</h1><p><a href=\"{path}\">Metrics</a></p>"
                f"<table><tr><th>collector</th><th>last status</th><th>duration</th></tr>{''.join(rows)}"
                f"</table></body></html>\n")
        self._send(200, "text/html; charset=utf-8", page.encode())


def serve(address: tuple[str, int], *, process_registry: CollectorRegistry, scrapes: ScrapeRegistry,
          web: WebConfig, telemetry_path: str) -> ExporterHTTPServer:
    """Bind now (so a busy port fails at start-up) and return the server for serve_forever()."""
    return ExporterHTTPServer(address, Handler, process_registry=process_registry, scrapes=scrapes, web=web,
                              telemetry_path=telemetry_path)
