"""Real Prometheus and Alertmanager on loopback, and a webhook receiver: for `gpuscope demo` and the
end-to-end tests; and the scale-out topology: Prometheus agents sharding the targets, remote-writing
to VictoriaMetrics, vmalert evaluating the same rules (docs/scale-out.md).

Debian's binaries are found on PATH (`apt-get install prometheus prometheus-alertmanager
victoria-metrics`). Every server listens on a free 127.0.0.1 port, is stopped by its own pid when the
context exits (also when a test fails), and keeps its data in a temporary directory.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

from alerts.render import prometheus_duration
from simulator.cluster import free_port
from toolkit.durations import seconds


class MissingBinary(RuntimeError):
    """A server binary is not installed; the message says how to install it."""


def find_binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise MissingBinary(f"{names[0]} not found on PATH: install it with "
                        "`apt-get install prometheus prometheus-alertmanager victoria-metrics` (Debian/Ubuntu)")


@contextmanager
def _server(command: list[str], base: str, ready_path: str, ready_timeout: float = 30) -> Iterator[None]:
    """Runs a server until the context exits. Its log goes to a file, not a pipe nobody drains: a
    server that logs more than a pipe holds would block in its next write."""
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                errors.seek(0)
                raise RuntimeError(f"{command[0]} exited {proc.returncode}: {errors.read()}")
            try:
                if requests.get(base + ready_path, timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} not ready within {ready_timeout:.0f} s")
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errors.close()


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict]:
        response = requests.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30) -> list[dict]:
        """Polls until the query returns something (a scrape or two has happened)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no result for {expr} within {timeout}s")

    def alerts(self) -> list[dict]:
        return requests.get(f"{self.base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def ready(self) -> bool:
        return requests.get(f"{self.base}/-/ready", timeout=5).status_code == 200

    def targets(self) -> list[dict]:
        return requests.get(f"{self.base}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]


@contextmanager
def prometheus(scrape_configs: list[dict], interval: str = "1s", rule_files: Sequence[str] = (),
               alertmanager: str = "", data_dir: str = "", ready_timeout: float = 30) -> Iterator[Prometheus]:
    """Prometheus scraping and evaluating rules every `interval`, sending alerts to `alertmanager`;
    its TSDB in `data_dir` if given (e.g. a backfilled one), else a fresh temporary one."""
    binary = find_binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="gpuscope-prom-") as work:
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "scrape_configs": scrape_configs, "rule_files": list(rule_files)}
        if alertmanager:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        path = Path(work) / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        with _server([binary, f"--config.file={path}", f"--storage.tsdb.path={data_dir or work + '/data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                     f"http://127.0.0.1:{port}", "/-/ready", ready_timeout):
            yield Prometheus(f"http://127.0.0.1:{port}")


def shard_config(job: str, targets_file: str, shard: int, shards: int, by: str = "__address__") -> dict:
    """A scrape job keeping the targets whose `by` label hashes to `shard` of `shards` (hashmod)."""
    return {"job_name": job, "file_sd_configs": [{"files": [targets_file], "refresh_interval": "1s"}],
            "relabel_configs": [
                {"source_labels": [by], "modulus": shards, "target_label": "__tmp_shard",
                 "action": "hashmod"},
                {"source_labels": ["__tmp_shard"], "regex": str(shard), "action": "keep"}]}


@contextmanager
def prometheus_agent(scrape_configs: list[dict], remote_write: str, interval: str = "1s",
                     max_samples_per_send: int = 500) -> Iterator[str]:
    """Prometheus in agent mode (scrape and remote_write only), batches sent within 100 ms so a test's
    shortened rule windows see fresh data; yields its base URL."""
    binary = find_binary("prometheus")
    with tempfile.TemporaryDirectory(prefix="gpuscope-agent-") as work:
        queue = {"batch_send_deadline": "100ms", "min_backoff": "50ms", "max_samples_per_send": max_samples_per_send}
        config = {"global": {"scrape_interval": interval}, "scrape_configs": scrape_configs,
                  "remote_write": [{"url": remote_write, "queue_config": queue}]}
        path = Path(work) / "agent.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with _server([binary, "--enable-feature=agent", f"--config.file={path}",
                      f"--storage.agent.path={work}/data", f"--web.listen-address=127.0.0.1:{port}",
                      "--log.level=warn"], base, "/-/ready"):
            yield base


@contextmanager
def victoria_metrics(data_dir: str = "", flags: Sequence[str] = (), ready_timeout: float = 30) -> Iterator[Prometheus]:
    """Single-node VictoriaMetrics; queried through its Prometheus API like a Prometheus. Data is
    searchable about a second after it arrives (the default hides the last 30 s). Its storage in
    `data_dir` if given, else a fresh temporary one; `flags` added to the command line."""
    binary = find_binary("victoria-metrics")
    with tempfile.TemporaryDirectory(prefix="gpuscope-vm-") as work:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with _server([binary, f"-storageDataPath={data_dir or work}", f"-httpListenAddr=127.0.0.1:{port}",
                      "-retentionPeriod=100y", "-search.latencyOffset=1s", "-search.disableCache",
                      "-loggerLevel=ERROR", *flags], base, "/health", ready_timeout):
            yield Prometheus(base)


class Vmalert:
    def __init__(self, base: str) -> None:
        self.base = base

    def alerts(self) -> list[dict]:
        """Active alerts in Prometheus' format (labels, state); vmalert says null for none.

        Waits up to 30 s: before 1.101 (1.97.4 LTS) vmalert holds a rule's lock while it templates
        the rule's annotations, and the `cost` annotation runs a query, so this API waits for those
        queries (VictoriaMetrics issue 6079); with eight alerts firing on a loaded 2-core machine it
        did not answer within 10 s, twice in one CI run."""
        return requests.get(f"{self.base}/api/v1/alerts", timeout=30).json()["data"]["alerts"] or []

    def ready(self) -> bool:
        return requests.get(f"{self.base}/health", timeout=5).status_code == 200


@contextmanager
def vmalert(rule_files: Sequence[str], datasource: str, alertmanager: str, interval: str = "1s") -> Iterator[Vmalert]:
    """vmalert evaluating `rule_files` against `datasource` (VictoriaMetrics) every `interval`,
    writing recorded series and alert state back to it and notifying `alertmanager` (host:port)."""
    binary = find_binary("vmalert")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with _server([binary, *(f"-rule={path}" for path in rule_files), f"-datasource.url={datasource}",
                  f"-remoteWrite.url={datasource}", f"-remoteRead.url={datasource}",
                  f"-notifier.url=http://{alertmanager}", f"-evaluationInterval={interval}",
                  "-remoteWrite.flushInterval=100ms", f"-httpListenAddr=127.0.0.1:{port}", "-loggerLevel=ERROR"],
                 base, "/health"):
        yield Vmalert(base)


class Webhook:
    """Records every Alertmanager notification POSTed to it."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        self._lock = threading.Lock()

    def received(self) -> list[dict]:
        with self._lock:
            return list(self.notifications)

    def alerts(self, status: str = "firing") -> list[dict]:
        """Every alert of every notification with the given status."""
        return [alert for note in self.received() for alert in note["alerts"] if alert["status"] == status]


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, Webhook]]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook._lock:
                hook.notifications.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", hook
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def alertmanager(config: dict) -> Iterator[str]:
    """Alertmanager with `config`, gossip switched off; yields its host:port."""
    binary = find_binary("prometheus-alertmanager", "alertmanager")
    with tempfile.TemporaryDirectory(prefix="gpuscope-am-") as work:
        path = Path(work) / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        with _server([binary, f"--config.file={path}", f"--storage.path={work}/data",
                      f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
                     f"http://127.0.0.1:{port}", "/-/ready"):
            yield f"127.0.0.1:{port}"


def webhook_only_config(url: str) -> dict:
    """Every alert straight to one webhook, grouping waits cut to a second (test speed)."""
    return {"route": {"receiver": "webhook", "group_by": ["alertname", "instance"], "group_wait": "1s",
                      "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "webhook", "webhook_configs": [{"url": url, "send_resolved": True}]}]}


def routed_to_webhook(config: dict, url: str, factor: float = 0) -> dict:
    """An Alertmanager config with its own routes and inhibitions, every receiver replaced by the
    webhook at `url` (receiver names kept, so a notification still says which route it took) and
    grouping intervals cut to a second. The group waits too, or, given a `factor`, divided by it: a
    stack measuring time to page keeps the wait before a first notification in proportion (the
    interval only paces a group's later notifications)."""
    out = copy.deepcopy(config)

    def wait(duration: str) -> str:
        return prometheus_duration(seconds(duration) / factor) if factor else "1s"

    root = out["route"]
    root.update(group_wait=wait(root["group_wait"]), group_interval="1s")
    for route in root.get("routes", []):
        if "group_wait" in route:
            route["group_wait"] = wait(route["group_wait"])
    for receiver in out["receivers"]:
        for key in [k for k in receiver if k.endswith("_configs")]:
            del receiver[key]
        receiver["webhook_configs"] = [{"url": url, "send_resolved": True}]
    return out
