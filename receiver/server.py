"""`gpuscope remediate`: the Alertmanager webhook receiver. POST /alerts takes a notification (webhook
version 4), GET /metrics shows the decisions, /-/healthy and /-/ready answer probes without
authentication. TLS, basic auth and response headers come from the exporter's web config file; a
bearer token (Alertmanager's `http_config.authorization`) from a file. The HTTP edge is the shared
one (toolkit/http.py), as the exporter's. It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import signal
import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from exporter import __version__, check
from exporter import catalog as c
from exporter.exposition import CONTENT_TYPE
from receiver import policy as policy_module
from receiver.engine import OUTCOMES, Decision, Engine, Unrecorded
from receiver.schedulers import SchedulerError, for_policy
from toolkit import logs, webconfig
from toolkit.configfile import ConfigError, parse_listen_address
from toolkit.http import TEXT, BaseHandler, Routes, WebServer

DEFAULT_ADDRESS = "127.0.0.1:19401"
MAX_BODY_BYTES = 8 << 20
log = logging.getLogger("gpuscope")


class Metrics:
    """The receiver's own metrics, named in the catalog; every decision series starts at 0."""

    def __init__(self, enforcing: bool) -> None:
        self.registry = CollectorRegistry(auto_describe=False)

        def counter(metric: c.Metric) -> Counter:
            return Counter(metric.name.removesuffix("_total"), metric.help, metric.labels, registry=self.registry)

        self.decisions = counter(c.REMEDIATION_DECISIONS)
        self.notifications = counter(c.REMEDIATION_NOTIFICATIONS)
        self.conflicts = counter(c.REMEDIATION_CONFLICTS)
        for outcome in OUTCOMES:
            self.decisions.labels(*outcome)
        for result in ("ok", "invalid", "unrecorded"):
            self.notifications.labels(result)
        self.held = Gauge(c.REMEDIATION_HELD.name, c.REMEDIATION_HELD.help, registry=self.registry)
        Gauge(c.REMEDIATION_ENFORCING.name, c.REMEDIATION_ENFORCING.help, registry=self.registry).set(int(enforcing))

    def record(self, decision: Decision) -> None:
        self.decisions.labels(decision.action, decision.outcome, decision.reason).inc()


class ReceiverServer(WebServer):
    def __init__(self, address: tuple[str, int], web: webconfig.WebConfig, engine: Engine, metrics: Metrics,
                 token: str) -> None:
        self.engine, self.metrics, self.token = engine, metrics, token
        super().__init__(address, Handler, web)


class Handler(BaseHandler):
    """POST /alerts, GET /metrics (both authenticated); /-/healthy and /-/ready open to probes, so a
    kubelet needs no token in the pod spec."""

    server: ReceiverServer
    server_version = f"gpuscope/{__version__}"
    open_paths = frozenset({"/-/healthy", "/-/ready"})
    max_body = MAX_BODY_BYTES  # Alertmanager sends every alert of a group in one notification

    def routes(self) -> Routes:
        return {"GET": {"/metrics": self._metrics, "/-/healthy": self.healthy,
                        "/-/ready": lambda: self._send(200, TEXT, b"Ready\n")},
                "POST": {"/alerts": self._alerts}}

    def authorized(self) -> bool:
        """The bearer token (Alertmanager's `http_config.authorization`) when one is set, else the web
        config's basic auth."""
        if self.server.token:
            header = self.headers.get("Authorization") or ""
            return hmac.compare_digest(header.encode(), f"Bearer {self.server.token}".encode())
        return super().authorized()

    def challenge(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="gpuscope"'} if self.server.token else super().challenge()

    def _metrics(self) -> None:
        self.server.metrics.held.set(len(self.server.engine.held))
        self._send(200, CONTENT_TYPE, generate_latest(self.server.metrics.registry))

    def _alerts(self) -> None:
        body = self.read_body()
        if body is None:
            return
        status = 200
        try:
            decisions = self.server.engine.handle(json.loads(body))
        except ValueError as exc:  # JSON or payload shape; Alertmanager would retry a 5xx forever
            self.server.metrics.notifications.labels("invalid").inc()
            self._send(400, TEXT, f"{exc}\n".encode())
            return
        except Unrecorded as exc:  # no action without its record: Alertmanager sends it again
            status, decisions = 503, exc.decisions
        self.server.metrics.notifications.labels("ok" if status == 200 else "unrecorded").inc()
        for decision in decisions:
            log.info("decision", extra={"action": decision.action, "outcome": decision.outcome,
                                        "reason": decision.reason, "alert": decision.alert, "node": decision.node})
        self._send(status, "application/json", json.dumps([vars(d) for d in decisions]).encode())


def node_check(policy: policy_module.Policy):
    """What `gpuscope check` would say of the node, from its exporter (no XID history: a critical XID
    since boot keeps the node out until it reboots or a person resumes it)."""
    ignore = re.compile(policy.resume.ignore_rdma_devices) if policy.resume.ignore_rdma_devices else None

    def judge(node: str) -> list[str]:
        text = check.read_exporter(policy.resume.url(node), policy.resume.timeout_seconds)
        return check.judge(check.parse(text), None, ignore).problems

    return judge


def _read_token(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"--web.bearer-token-file {path}: cannot read: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"--web.bearer-token-file {path}: empty")
    return token


def run(args: dict) -> int:
    """Serve until SIGTERM/SIGINT; configuration problems are one line and exit 2."""
    logs.setup(args["log_level"], "logfmt")
    try:
        policy = policy_module.load(args["policy"])
        web = webconfig.load(args["web_config_file"])
        token = _read_token(args["bearer_token_file"])
        try:
            address = parse_listen_address(args["listen_address"])
        except ValueError as exc:
            raise ConfigError(f"--web.listen-address: {exc}") from None
        metrics = Metrics(policy.enforce)
        engine = Engine(policy, for_policy(policy, metrics.conflicts.inc), node_check(policy), metrics.record)
    except (ConfigError, ValueError, SchedulerError) as exc:
        print(f"gpuscope remediate: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"gpuscope remediate: error: the kubernetes scheduler needs: pip install 'gpuscope[remediate]' ({exc})",
              file=sys.stderr)
        return 1
    try:
        server = ReceiverServer(address, web, engine, metrics, token)
    except OSError as exc:
        print(f"gpuscope remediate: error: cannot listen on {args['listen_address']}: {exc.strerror}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("listening", extra={"address": args["listen_address"], "mode": "enforce" if policy.enforce else "dry-run",
                                 "scheduler": policy.scheduler, "audit_log": policy.audit_log})
    server.serve_forever()
    server.server_close()
    return 0

