"""`gpuscope remediate` for Kubernetes, and its HTTP edge, as a real process.

No Kubernetes API server can run here, so the API is simulated at its boundary: a stub server that
keeps nodes as the API returns them, applies JSON merge patches (RFC 7386) as the API server does
for `application/merge-patch+json`, enforces optimistic concurrency as it does (every write moves the
node's `metadata.resourceVersion`; a patch carrying another one is a 409 Conflict), checks the bearer
token and records every call. `ApiStub.interfere` plays another controller writing the node between
the receiver's read and its write. The resume
check reads a real simulated exporter.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import free_port, http_status, json_reply, wait_until
from tests.procs import exporter_process, receiver_process

CLI = [sys.executable, "-c", "import sys; from gpuscope.cli import main; sys.exit(main())"]
API_TOKEN = "api-token"


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386: null deletes, objects merge, anything else (lists included) replaces."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_patch(out.get(key) or {}, value)
        else:
            out[key] = value
    return out


class ApiStub:
    def __init__(self, nodes: dict[str, dict]) -> None:
        self.nodes = nodes
        self.calls: list[tuple[str, str, dict | None]] = []
        self.lock = threading.Lock()
        self.revision = 0
        for item in nodes.values():
            self.bump(item)
        self.interfere: Callable[[dict], None] | None = None  # run once, on the node, before the next PATCH

    def bump(self, item: dict) -> None:
        """A write: the node's resourceVersion moves on (etcd's revision, one for the whole store)."""
        self.revision += 1
        item["metadata"]["resourceVersion"] = str(self.revision)

    def patch(self, name: str, body: dict) -> tuple[int, dict]:
        """The API server's merge patch: a resourceVersion in the patch is a precondition."""
        if self.interfere:
            self.interfere(self.nodes[name])
            self.bump(self.nodes[name])
            self.interfere = None
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != self.nodes[name]["metadata"]["resourceVersion"]:
            return 409, {"kind": "Status", "code": 409, "reason": "Conflict",
                         "message": f'Operation cannot be fulfilled on nodes "{name}": the object has been '
                                    "modified; please apply your changes to the latest version and try again"}
        self.nodes[name] = merge_patch(self.nodes[name], body)
        self.bump(self.nodes[name])
        return 200, self.nodes[name]


@contextmanager
def api_stub(nodes: dict[str, dict], tls: tuple[str, str] | None = None) -> Iterator[tuple[str, ApiStub]]:
    """The stub on a free loopback port; with `tls` (certificate and key files) over HTTPS, as a real
    API server answers a pod."""
    stub = ApiStub(nodes)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            json_reply(self, status, body)

        def _handle(self, method: str) -> None:
            body = None
            if method == "PATCH":
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.calls.append((method, self.path, body))
                if self.headers.get("Authorization") != f"Bearer {API_TOKEN}":
                    self._reply(401, {"kind": "Status", "code": 401})
                    return
                name = self.path.removeprefix("/api/v1/nodes").strip("/")
                if not name:
                    self._reply(200, {"kind": "NodeList", "items": list(stub.nodes.values())})
                elif name not in stub.nodes:
                    self._reply(404, {"kind": "Status", "code": 404})
                elif method == "PATCH":
                    assert self.headers["Content-Type"] == "application/merge-patch+json"
                    self._reply(*stub.patch(name, body))
                else:
                    self._reply(200, stub.nodes[name])

        def do_GET(self) -> None:
            self._handle("GET")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", stub
    finally:
        server.shutdown()
        server.server_close()


def node(name: str, unschedulable: bool = False, taints: list | None = None) -> dict:
    return {"metadata": {"name": name, "labels": {"eks.amazonaws.com/nodegroup": "p5"}},
            "spec": {"unschedulable": unschedulable, "taints": taints or []}}


def notify(base: str, status: str, instance: str, **headers: str) -> requests.Response:
    alert = {"status": status, "labels": {"alertname": "GpuLost", "instance": instance, "gpu": "6"},
             "endsAt": "0001-01-01T00:00:00Z", "fingerprint": f"lost-{instance}"}
    return requests.post(f"{base}/alerts", json={"version": "4", "status": status, "alerts": [alert]},
                         headers=headers, timeout=10)


def test_kubernetes_cordon_taint_and_undo_leave_other_taints_and_cordons(tmp_path):
    (tmp_path / "token").write_text(API_TOKEN)
    foreign = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    nodes = {"ip-a": node("ip-a", taints=[foreign]), "ip-b": node("ip-b", unschedulable=True),
             **{f"ip-{i}": node(f"ip-{i}") for i in range(18)}}
    with api_stub(nodes) as (api, stub), exporter_process("--simulate=p5.48xlarge") as exporter:
        policy = {"enforce": True, "scheduler": "kubernetes",
                  "kubernetes": {"api": api, "token_file": str(tmp_path / "token"),
                                 "group_label": "eks.amazonaws.com/nodegroup"},
                  "resume": {"check_url": f"{exporter}/metrics"}, "limits": {"max_drains": 5}}
        with receiver_process(tmp_path, policy) as base:
            assert notify(base, "firing", "ip-a").status_code == 200
            assert notify(base, "firing", "ip-b").json()[0]["reason"] == "out_by_other"  # a person cordoned it
            with stub.lock:
                patched = stub.nodes["ip-a"]
                assert patched["spec"]["unschedulable"] is True
                assert patched["spec"]["taints"] == [foreign, {"key": "gpuscope.io/unhealthy", "value": "true",
                                                               "effect": "NoSchedule"}]
                assert patched["metadata"]["annotations"] == {"gpuscope.io/drain-reason": "gpuscope: GpuLost gpu=6",
                                                              "gpuscope.io/was-cordoned": "false"}
                assert [c for c in stub.calls if c[0] == "PATCH" and c[1].endswith("/ip-b")] == []
            decisions = notify(base, "resolved", "ip-a").json()
            assert [(d["outcome"], d["reason"]) for d in decisions] == [("done", "resumed")]
            with stub.lock:
                assert stub.nodes["ip-a"]["spec"] == {"unschedulable": False, "taints": [foreign]}
                assert stub.nodes["ip-a"]["metadata"].get("annotations", {}) == {}
                assert stub.nodes["ip-b"]["spec"]["unschedulable"] is True  # a person's cordon stays
                assert all(call[0] in ("GET", "PATCH") for call in stub.calls)


UNREACHABLE = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}


def test_a_taint_another_controller_sets_between_read_and_write_is_kept(tmp_path):
    """The node lifecycle controller taints the node unreachable while the receiver drains it, and
    again while it resumes it: each time the receiver's write, made at the version it read, is refused
    (409), it reads the node again, and the controller's taint stays; both conflicts are counted."""
    (tmp_path / "token").write_text(API_TOKEN)
    (tmp_path / "bearer").write_text("hook-token\n")
    ours = {"key": "gpuscope.io/unhealthy", "value": "true", "effect": "NoSchedule"}
    with api_stub({"ip-1": node("ip-1")}) as (api, stub), exporter_process("--simulate=p5.48xlarge") as exporter:
        policy = {"enforce": True, "scheduler": "kubernetes", "resume": {"check_url": f"{exporter}/metrics"},
                  "kubernetes": {"api": api, "token_file": str(tmp_path / "token")}}
        with receiver_process(tmp_path, policy, f"--web.bearer-token-file={tmp_path / 'bearer'}",
                              token="hook-token") as base:
            hook = {"Authorization": "Bearer hook-token"}
            stub.interfere = lambda item: item["spec"].setdefault("taints", []).append(UNREACHABLE)
            assert notify(base, "firing", "ip-1", **hook).json()[0]["reason"] == "drained"
            with stub.lock:
                assert stub.nodes["ip-1"]["spec"]["taints"] == [UNREACHABLE, ours]
                stub.nodes["ip-1"]["spec"]["taints"] = [ours]  # the node is reachable again
                stub.bump(stub.nodes["ip-1"])
            stub.interfere = lambda item: item["spec"]["taints"].insert(0, UNREACHABLE)
            assert notify(base, "resolved", "ip-1", **hook).json()[0]["reason"] == "resumed"
            with stub.lock:
                assert stub.nodes["ip-1"]["spec"] == {"unschedulable": False, "taints": [UNREACHABLE]}
                patches = [c for c in stub.calls if c[0] == "PATCH"]
            assert len(patches) == 4  # two refused, two written
            metrics = requests.get(f"{base}/metrics", headers=hook, timeout=5).text
            assert "gpuscope_remediation_write_conflicts_total 2.0" in metrics


def test_no_drain_without_its_audit_record_and_alertmanager_is_told_to_retry(tmp_path):
    """The audit log turns unwritable (a directory where the file was) while the receiver runs: the
    node is not touched, the decision is counted as refused, and Alertmanager gets a 503 (it retries);
    its retry drains once the log can be written again."""
    (tmp_path / "token").write_text(API_TOKEN)
    with api_stub({"ip-1": node("ip-1")}) as (api, stub):
        policy = {"enforce": True, "scheduler": "kubernetes",
                  "kubernetes": {"api": api, "token_file": str(tmp_path / "token")}}
        with receiver_process(tmp_path, policy) as base:
            (tmp_path / "audit.jsonl").unlink()
            (tmp_path / "audit.jsonl").mkdir()
            refused = notify(base, "firing", "ip-1")
            assert refused.status_code == 503
            assert [(d["outcome"], d["reason"]) for d in refused.json()] == [("refused", "unrecorded")]
            with stub.lock:
                assert [c for c in stub.calls if c[0] == "PATCH"] == []
            metrics = requests.get(f"{base}/metrics", timeout=5).text
            assert ('gpuscope_remediation_decisions_total{action="drain",outcome="refused",reason="unrecorded"} 1.0'
                    in metrics)
            assert 'gpuscope_remediation_notifications_total{result="unrecorded"} 1.0' in metrics
            (tmp_path / "audit.jsonl").rmdir()
            assert notify(base, "firing", "ip-1").json()[0]["reason"] == "drained"
    assert [json.loads(line)["outcome"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()] == [
        "intent", "done"]


def test_a_record_that_cannot_be_written_stops_the_start_in_one_line(tmp_path):
    (tmp_path / "audit").mkdir()
    (tmp_path / "policy.yml").write_text(yaml.safe_dump({"audit_log": str(tmp_path / "audit"),
                                                         "state_file": str(tmp_path / "state.json")}))
    result = subprocess.run([*CLI, "remediate", f"--policy={tmp_path / 'policy.yml'}"], capture_output=True,
                            text=True, timeout=20)
    assert (result.returncode, result.stderr) == (
        2, f"gpuscope remediate: error: audit_log {tmp_path / 'audit'}: cannot write: Is a directory\n")


def test_kubernetes_fraction_is_of_the_node_group(tmp_path):
    (tmp_path / "token").write_text(API_TOKEN)
    nodes = {f"ip-{i}": node(f"ip-{i}") for i in range(10)}  # one group of 10: at most one held out
    with api_stub(nodes) as (api, stub):
        policy = {"enforce": True, "scheduler": "kubernetes", "limits": {"max_drains": 10, "max_fraction": 0.1},
                  "kubernetes": {"api": api, "token_file": str(tmp_path / "token"),
                                 "group_label": "eks.amazonaws.com/nodegroup"}}
        with receiver_process(tmp_path, policy) as base:
            first, second = notify(base, "firing", "ip-1").json(), notify(base, "firing", "ip-2").json()
            assert (first[0]["reason"], second[0]["reason"]) == ("drained", "fraction_limit")
            assert second[0]["detail"] == "1 of 10 nodes of p5 already held out (at most 1)"
            with stub.lock:
                assert [c[1] for c in stub.calls if c[0] == "PATCH"] == ["/api/v1/nodes/ip-1"]


def test_the_receiver_edge_auth_bad_payloads_and_metrics(tmp_path):
    (tmp_path / "bearer").write_text("hook-token\n")
    nodes = {"ip-1": node("ip-1")}
    (tmp_path / "token").write_text(API_TOKEN)
    with api_stub(nodes) as (api, _stub):
        policy = {"scheduler": "kubernetes", "kubernetes": {"api": api, "token_file": str(tmp_path / "token")}}
        (tmp_path / "web.yml").write_text(yaml.safe_dump({"http_server_config": {"headers": HEADERS}}))
        with receiver_process(tmp_path, policy, f"--web.bearer-token-file={tmp_path / 'bearer'}",
                              f"--web.config.file={tmp_path / 'web.yml'}", token="hook-token") as base:
            good = {"Authorization": "Bearer hook-token"}
            assert notify(base, "firing", "ip-1").status_code == 401
            assert notify(base, "firing", "ip-1", Authorization="Bearer wrong").status_code == 401
            bad = requests.post(f"{base}/alerts", data=b"{not json", headers=good, timeout=5)
            assert bad.status_code == 400
            shapeless = requests.post(f"{base}/alerts", json={"alerts": "none"}, headers=good, timeout=5)
            assert (shapeless.status_code, shapeless.text) == (
                400, "not an Alertmanager webhook notification (version 4): no alerts with labels\n")
            assert requests.post(f"{base}/elsewhere", json={}, headers=good, timeout=5).status_code == 404
            _check_http_edges(base, good)
            decision = notify(base, "firing", "ip-1", **good).json()[0]
            assert (decision["outcome"], decision["reason"]) == ("dry_run", "would_drain")  # dry-run by default
            metrics = requests.get(f"{base}/metrics", headers=good, timeout=5).text
            assert 'gpuscope_remediation_decisions_total{action="drain",outcome="dry_run",reason="would_drain"} 1.0' \
                in metrics
            assert 'gpuscope_remediation_notifications_total{result="invalid"} 2.0' in metrics
            assert "gpuscope_remediation_enforcing 0.0" in metrics
            assert "gpuscope_remediation_nodes_held 1.0" in metrics


HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "deny"}


def _check_http_edges(base: str, good: dict[str, str]) -> None:
    """The exporter's HTTP edge, on the receiver: probes answered without the token (a kubelet has
    none), everything else with it; HEAD; 405 naming the methods; a Content-Length that is not a
    number or too large answered and the connection closed; the web config's headers on every reply."""
    for path in ("/-/healthy", "/-/ready"):
        probe = requests.get(f"{base}{path}", timeout=5)
        assert probe.status_code == 200 and probe.headers["X-Frame-Options"] == "deny", path
    refused = requests.get(f"{base}/metrics", timeout=5)
    assert (refused.status_code, refused.headers["WWW-Authenticate"], refused.headers["X-Frame-Options"]) == (
        401, 'Bearer realm="gpuscope"', "deny")
    head = requests.head(f"{base}/metrics", headers=good, timeout=5)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0 and head.content == b""
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        other = requests.request(method, f"{base}/alerts", headers=good, timeout=5)
        assert (other.status_code, other.headers["Allow"]) == (405, "GET, HEAD, POST"), method
    host, port = base.removeprefix("http://").split(":")
    for length, status in ((b"abc", b"400"), (b"99999999999", b"413")):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer hook-token\r\n"
                         b"Content-Length: " + length + b"\r\n\r\n{}")
            reply = b""
            while chunk := sock.recv(4096):  # the server closes the connection after its answer
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 " + status + b" "), reply


@pytest.mark.parametrize("args", [("--web.listen-address=nowhere",), ("--web.bearer-token-file=/no/such/file",)])
def test_bad_receiver_flags_are_one_line(tmp_path, args):
    (tmp_path / "policy.yml").write_text("{}\n")
    result = subprocess.run([*CLI, "remediate", f"--policy={tmp_path / 'policy.yml'}", *args], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and args[0].split("=")[0] in result.stderr


def kubeconfig(tmp_path, api: str, user: dict) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gpu",
        "clusters": [{"name": "p5", "cluster": {"server": api}}],
        "users": [{"name": "gpuscope", "user": user}],
        "contexts": [{"name": "other", "context": {"cluster": "nowhere", "user": "nobody"}},
                     {"name": "gpu", "context": {"cluster": "p5", "user": "gpuscope"}}]}))
    return str(path)


def test_a_kubeconfig_current_context_with_a_token(tmp_path):
    with api_stub({"ip-1": node("ip-1")}) as (api, stub):
        policy = {"enforce": True, "scheduler": "kubernetes",
                  "kubernetes": {"kubeconfig": kubeconfig(tmp_path, api, {"token": API_TOKEN})}}
        with receiver_process(tmp_path, policy) as base:
            assert notify(base, "firing", "ip-1").json()[0]["reason"] == "drained"
        with stub.lock:
            assert stub.nodes["ip-1"]["spec"]["unschedulable"] is True


def test_a_kubeconfig_that_runs_a_program_is_refused(tmp_path):
    path = kubeconfig(tmp_path, "https://example.invalid", {"exec": {"command": "aws", "args": ["eks", "get-token"]}})
    (tmp_path / "policy.yml").write_text(yaml.safe_dump({"scheduler": "kubernetes",
                                                         "kubernetes": {"kubeconfig": path}}))
    result = subprocess.run([*CLI, "remediate", f"--policy={tmp_path / 'policy.yml'}"], capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2
    assert result.stderr == (f"gpuscope remediate: error: kubeconfig {path}: user 'gpuscope' authenticates through "
                             "a program (exec or auth-provider), which gpuscope does not run: give it a "
                             "service-account token\n")


def test_the_receiver_runs_with_the_configuration_the_chart_renders(tmp_path):
    """The chart's Deployment and policy, as the pod sees them, under a temporary root: its arguments,
    the ConfigMap's policy.yml (enforcing), the token Secret and the service account's token and CA
    where Kubernetes mounts them, KUBERNETES_SERVICE_HOST/PORT pointing at the API stub over TLS. The
    kubelet's probes pass without a token; Alertmanager's notification drains; Prometheus scrapes with
    the token as the ServiceMonitor sends it."""
    from tests.test_kubernetes import CHART, helm, yaml_documents
    from tests.test_server import _cert, _key, _write_pem

    rendered = helm("template", "gpuscope", str(CHART), "--namespace", "monitoring", "--set", "remediate.enabled=true",
                    "--set", "remediate.policy.enforce=true", "--show-only", "templates/remediate.yaml")
    assert rendered.returncode == 0, rendered.stderr
    objects = {d["kind"]: d for d in yaml_documents(rendered.stdout)}
    root = tmp_path / "pod"

    def place(path: str) -> str:
        """A path in the pod, under the temporary root."""
        return str(root) + path if path.startswith("/") else path

    policy = yaml.safe_load(objects["ConfigMap"]["data"]["policy.yml"])
    for key in ("audit_log", "state_file"):
        policy[key] = place(policy[key])
    for key in ("token_file", "ca_file"):
        policy["kubernetes"][key] = place(policy["kubernetes"][key])
    ca_key, server_key = _key(), _key()
    ca = _cert("kubernetes test CA", ca_key, ca=True)
    account = os.path.dirname(policy["kubernetes"]["token_file"])
    os.makedirs(account)
    _write_pem(tmp_path / "server.pem", _cert("127.0.0.1", server_key, ca, ca_key, san_ip="127.0.0.1"))
    _write_pem(tmp_path / "server.key", key=server_key)
    _write_pem(root / policy["kubernetes"]["ca_file"].removeprefix(str(root) + "/"), ca)
    (root / policy["kubernetes"]["token_file"].removeprefix(str(root) + "/")).write_text(API_TOKEN)
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in container["args"][1:]}
    os.makedirs(os.path.dirname(place(args["--policy"])))
    (root / args["--policy"][1:]).write_text(yaml.safe_dump(policy))
    os.makedirs(os.path.dirname(place(args["--web.bearer-token-file"])))
    (root / args["--web.bearer-token-file"][1:]).write_text("hook-token")
    port = free_port()
    assert args["--web.listen-address"] == f":{container['ports'][0]['containerPort']}"
    with api_stub({"ip-1": node("ip-1")}, tls=(str(tmp_path / "server.pem"), str(tmp_path / "server.key"))) as (
            api, stub):
        env = {**os.environ, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": api.rsplit(":", 1)[1]}
        command = [*CLI, container["args"][0], f"--policy={place(args['--policy'])}",
                   f"--web.listen-address=127.0.0.1:{port}",
                   f"--web.bearer-token-file={place(args['--web.bearer-token-file'])}"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:
            for probe in ("livenessProbe", "readinessProbe"):
                path = container[probe]["httpGet"]["path"]
                wait_until(lambda p=path: http_status(f"{base}{p}") == 200, 15, f"{path} did not answer 200")
            assert notify(base, "firing", "ip-1", Authorization="Bearer hook-token").json()[0]["reason"] == "drained"
            assert requests.get(f"{base}/metrics", headers={"Authorization": "Bearer hook-token"},
                                timeout=5).status_code == 200
            assert http_status(f"{base}/metrics") == 401
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
        with stub.lock:
            assert stub.nodes["ip-1"]["spec"]["unschedulable"] is True
    audit = Path(policy["audit_log"]).read_text().splitlines()
    assert [json.loads(line)["outcome"] for line in audit] == ["intent", "done"]

