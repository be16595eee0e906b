"""OTLP metrics on loopback, for training frameworks that already speak OpenTelemetry: POST
/v1/metrics, protobuf or JSON (OTLP/HTTP), mapped onto the same per-rank totals as the spool.

Megatron-core's training instruments (megatron/core/telemetry/training_metrics.py), which it exports
from one rank every log interval:
- `megatron.training.step_duration_ms` (histogram, ms): its count is the steps, its sum the step
  seconds (cumulative points replace the totals, delta points add to them);
- `megatron.training.skipped_iters` (counter): the non-finite steps;
- `megatron.training.loss`, `megatron.training.grad_norm` (gauges): the last values.
The job is the resource's `gpuscope.job_id`, `slurm.job.id` or `nemo.run.id` (Megatron's run id),
the first present; the rank its `gpuscope.rank` or `rank` (else 0); the GPU its `gpuscope.gpu` (a
UUID, PCI bus id or NVML index). A request without a job is refused (400), a body over MAX_BODY too.
Needs `opentelemetry-proto` (`pip install 'gpuscope[otlp]'`); without it the intake is off, logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.collectors.train_ranks import Rank

log = logging.getLogger("gpuscope")

MAX_BODY = 4 << 20
JOB_ATTRIBUTES = ("gpuscope.job_id", "slurm.job.id", "nemo.run.id")
RANK_ATTRIBUTES = ("gpuscope.rank", "rank")
CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE


class OtlpIntake:
    """The loopback server and the totals of the ranks it heard from."""

    def __init__(self, address: str, clock: Callable[[], float]) -> None:
        from google.protobuf import json_format  # the otlp extra; ImportError reaches the caller
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

        self._request_type = metrics_service_pb2.ExportMetricsServiceRequest
        self._json = json_format
        self._clock = clock
        self._lock = threading.Lock()
        self._ranks: dict[tuple[str, int], Rank] = {}
        host, _, port = address.rpartition(":")
        self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), _handler(self))
        self._server.daemon_threads = True
        self.address = self._server.server_address
        threading.Thread(target=self._server.serve_forever, name="train-otlp", daemon=True).start()

    def ranks(self) -> dict[tuple[str, int], Rank]:
        with self._lock:
            return {key: replace(rank) for key, rank in self._ranks.items()}

    def forget_before(self, cutoff: float) -> None:
        """Drops the ranks not heard from since `cutoff` (the collector's staleness)."""
        with self._lock:
            for key in [k for k, rank in self._ranks.items() if rank.seen < cutoff]:
                del self._ranks[key]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self, body: bytes, content_type: str) -> str:
        """Applies one export request; returns why it is refused, or ""."""
        request = self._request_type()
        try:
            if content_type.startswith("application/json"):
                self._json.Parse(body.decode(), request, ignore_unknown_fields=True)
            else:
                request.ParseFromString(body)
        except Exception:
            return "not an OTLP metrics request"
        now = self._clock()
        with self._lock:
            for resource_metrics in request.resource_metrics:
                attributes = {a.key: _value(a.value) for a in resource_metrics.resource.attributes}
                job = next((str(attributes[k]) for k in JOB_ATTRIBUTES if attributes.get(k) not in (None, "")), "")
                if not job:
                    return f"no job: the resource needs one of {', '.join(JOB_ATTRIBUTES)}"
                rank_id = next((attributes[k] for k in RANK_ATTRIBUTES if k in attributes), 0)
                rank = self._ranks.setdefault((job, int(rank_id)), Rank())
                rank.gpu = str(attributes.get("gpuscope.gpu", rank.gpu))
                rank.seen = now
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        _apply(rank, metric)
        return ""


def _apply(rank: Rank, metric: Any) -> None:
    """One OTLP metric onto a rank's totals, where it is one of Megatron's training instruments."""
    if metric.name == "megatron.training.step_duration_ms" and metric.HasField("histogram"):
        points = metric.histogram.data_points
        cumulative = metric.histogram.aggregation_temporality == CUMULATIVE
        steps, milliseconds = sum(p.count for p in points), sum(p.sum for p in points)
        rank.steps = steps if cumulative else rank.steps + steps
        rank.seconds = milliseconds / 1000 if cumulative else rank.seconds + milliseconds / 1000
    elif metric.name == "megatron.training.skipped_iters" and metric.HasField("sum"):
        skipped = int(sum(_number(p) for p in metric.sum.data_points))
        rank.nonfinite = skipped if metric.sum.aggregation_temporality == CUMULATIVE else rank.nonfinite + skipped
    elif metric.name in ("megatron.training.loss", "megatron.training.grad_norm") and metric.HasField("gauge"):
        points = sorted(metric.gauge.data_points, key=lambda p: p.time_unix_nano)
        if points:
            setattr(rank, metric.name.rsplit(".", 1)[1], _number(points[-1]))


def _number(point: Any) -> float:
    return float(point.as_double if point.WhichOneof("value") == "as_double" else point.as_int)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _handler(intake: OtlpIntake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/v1/metrics":
                self._answer(404, b"only POST /v1/metrics\n")
            elif length > MAX_BODY:
                self._answer(413, b"request too large\n")
            else:
                refused = intake.take(self.rfile.read(length), self.headers.get("Content-Type", ""))
                self._answer(400 if refused else 200, (refused + "\n").encode() if refused else b"{}")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format % args)
    return Handler
