"""The schedulers the receiver acts on, behind one small interface: list nodes, drain, resume.

Slurm through its own commands (exporter/scontrol.py). Kubernetes through the API server with
`requests`: cordon (spec.unschedulable) plus a NoSchedule taint whose key marks the node as held by
gpuscope, the reason in an annotation; resume removes exactly those. A merge patch replaces the whole
taint list, so each write carries the resourceVersion its read saw: a taint another controller set in
between (the node lifecycle controller's `unreachable`, the autoscaler's) makes it a 409 Conflict, and
the node is read and written again instead of that taint being dropped.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from exporter import scontrol
from receiver.policy import Kubernetes, Policy
from toolkit.configfile import ConfigError, load_yaml

REASON_ANNOTATION = "gpuscope.io/drain-reason"
CORDONED_ANNOTATION = "gpuscope.io/was-cordoned"  # so resuming leaves a person's own cordon in place


class SchedulerError(RuntimeError):
    """The scheduler refused or could not be reached; the message says which call and why."""


class Conflict(SchedulerError):
    """The API server refused a write made at a resourceVersion that is no longer the node's."""


WRITE_ATTEMPTS = 5  # reads and writes of one node before a write that keeps conflicting is an error


@dataclass(frozen=True)
class NodeState:
    name: str
    out: bool  # drained or cordoned, by anyone
    ours: bool  # taken out by gpuscope (its reason prefix or taint)
    groups: tuple[str, ...]  # Slurm partitions, or the Kubernetes group label's value


class Scheduler(Protocol):
    def nodes(self) -> dict[str, NodeState]: ...
    def drain(self, node: str, reason: str) -> None: ...
    def resume(self, node: str) -> None: ...


class Slurm:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def nodes(self) -> dict[str, NodeState]:
        try:
            found = scontrol.nodes(self._policy.sinfo)
        except scontrol.SlurmError as exc:
            raise SchedulerError(str(exc)) from None
        prefix = self._policy.reason_prefix
        return {name: NodeState(name, node.drained, node.drained and node.reason.startswith(prefix), node.partitions)
                for name, node in found.items()}

    def drain(self, node: str, reason: str) -> None:
        try:
            scontrol.drain(node, reason, self._policy.scontrol)
        except scontrol.SlurmError as exc:
            raise SchedulerError(str(exc)) from None

    def resume(self, node: str) -> None:
        """RESUME; Slurm 22.05 clears the drain of a node whose base state is UNKNOWN (no slurmd has
        registered it yet) but still answers "Invalid node state specified", so the node's state,
        not the message, says whether it worked."""
        try:
            scontrol.resume(node, self._policy.scontrol)
        except scontrol.SlurmError as exc:
            state = self.nodes().get(node)
            if state is None or state.out:
                raise SchedulerError(str(exc)) from None


@dataclass(frozen=True)
class Connection:
    """Where the API server is and how to talk to it."""

    base: str
    token_file: str = ""  # read at every call: projected service-account tokens rotate
    token: str = ""
    verify: str | bool = True  # a CA bundle, or the system's
    cert: tuple[str, str] | None = None  # client certificate and key files


def in_cluster(settings: Kubernetes) -> Connection:
    """The pod's service account, or `kubernetes.api` (and token_file, ca_file) as the policy says."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST", ""), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    base = (settings.api or (f"https://{host}:{port}" if host else "")).rstrip("/")
    if not base:
        raise SchedulerError("kubernetes: no API server (set kubernetes.api or kubernetes.kubeconfig, or run in a pod)")
    return Connection(base, settings.token_file, verify=settings.ca_file if base.startswith("https") else True)


def from_kubeconfig(path: str, scratch: str) -> Connection:
    """The current context of a kubeconfig: server, CA, and a token or client certificate. Inline
    `*-data` fields are written to files in `scratch` (requests wants paths). Exec plugins and
    auth providers (`aws eks get-token`, ...) are refused: the receiver runs no other program."""
    try:
        data = load_yaml(path, "kubeconfig")
        context = _named(data, "contexts", data.get("current-context"))["context"]
        cluster = _named(data, "clusters", context["cluster"])["cluster"]
        user = _named(data, "users", context["user"])["user"] or {}
    except (ConfigError, KeyError, TypeError) as exc:
        raise SchedulerError(f"kubeconfig {path}: {exc}") from None
    if "exec" in user or "auth-provider" in user:
        raise SchedulerError(f"kubeconfig {path}: user {context['user']!r} authenticates through a program (exec or "
                             "auth-provider), which gpuscope does not run: give it a service-account token")

    def material(entry: dict, key: str) -> str:
        if entry.get(key):
            return str(entry[key])
        if entry.get(f"{key}-data"):
            target = os.path.join(scratch, key)
            with open(target, "wb") as handle:
                handle.write(base64.b64decode(entry[f"{key}-data"]))
            return target
        return ""

    ca = material(cluster, "certificate-authority")
    cert, key = material(user, "client-certificate"), material(user, "client-key")
    return Connection(str(cluster["server"]).rstrip("/"), str(user.get("tokenFile", "")), str(user.get("token", "")),
                      False if cluster.get("insecure-skip-tls-verify") else (ca or True),
                      (cert, key) if cert and key else None)


def _named(data: dict, section: str, name: object) -> dict:
    for entry in data.get(section) or []:
        if entry.get("name") == name:
            return entry
    raise KeyError(f"no {section[:-1]} named {name!r}")


class KubernetesApi:
    """Nodes through the API server: GET /api/v1/nodes, PATCH /api/v1/nodes/<name> (merge patch)."""

    def __init__(self, settings: Kubernetes, on_conflict: Callable[[], None], timeout: float = 10.0) -> None:
        import requests  # the remediate extra; Slurm users never need it

        self._settings = settings
        self._on_conflict = on_conflict
        self._requests = requests
        self._timeout = timeout
        self._scratch = tempfile.TemporaryDirectory(prefix="gpuscope-kube-")
        self._connection = (from_kubeconfig(settings.kubeconfig, self._scratch.name) if settings.kubeconfig
                            else in_cluster(settings))

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        connection = self._connection
        headers = {"Accept": "application/json"}
        token = connection.token
        if connection.token_file:
            try:
                with open(connection.token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except OSError:
                pass  # an API server that needs no token (a local proxy)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        try:
            response = self._requests.request(method, connection.base + path, json=body, headers=headers,
                                              timeout=self._timeout, verify=connection.verify, cert=connection.cert)
        except self._requests.RequestException as exc:
            raise SchedulerError(f"kubernetes {method} {path}: {exc}") from None
        if response.status_code == 409:
            raise Conflict(f"kubernetes {method} {path}: HTTP 409 {response.text[:200]}")
        if response.status_code >= 300:
            raise SchedulerError(f"kubernetes {method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def nodes(self) -> dict[str, NodeState]:
        key, label = self._settings.taint_key, self._settings.group_label
        found = {}
        for item in self._call("GET", "/api/v1/nodes").get("items", []):
            meta, spec = item.get("metadata", {}), item.get("spec", {})
            ours = any(t.get("key") == key for t in spec.get("taints") or [])
            group = (meta.get("labels") or {}).get(label, "") if label else "cluster"
            found[meta["name"]] = NodeState(meta["name"], bool(spec.get("unschedulable")) or ours, ours, (group,))
        return found

    def _write(self, node: str, change: Callable[[list[dict], bool, dict], dict]) -> None:
        """Reads the node and writes the patch `change` makes of its taints other than ours, whether it
        is cordoned and its annotations, at the resourceVersion read; a conflict reads and writes again."""
        path = f"/api/v1/nodes/{node}"
        for _ in range(WRITE_ATTEMPTS):
            item = self._call("GET", path)
            spec, meta = item.get("spec", {}), item.get("metadata", {})
            taints = [t for t in spec.get("taints") or [] if t.get("key") != self._settings.taint_key]
            patch = change(taints, bool(spec.get("unschedulable")), meta.get("annotations") or {})
            if meta.get("resourceVersion"):
                patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]
            try:
                self._call("PATCH", path, patch)
                return
            except Conflict:
                self._on_conflict()
        raise SchedulerError(f"kubernetes PATCH {path}: another writer changed the node at each of "
                             f"{WRITE_ATTEMPTS} attempts (HTTP 409)")

    def drain(self, node: str, reason: str) -> None:
        """Cordon and taint; a node someone had cordoned already stays cordoned when resumed."""
        ours = {"key": self._settings.taint_key, "value": "true", "effect": "NoSchedule"}
        self._write(node, lambda taints, cordoned, _: {
            "spec": {"unschedulable": True, "taints": [*taints, ours]},
            "metadata": {"annotations": {REASON_ANNOTATION: reason,
                                         CORDONED_ANNOTATION: "true" if cordoned else "false"}}})

    def resume(self, node: str) -> None:
        self._write(node, lambda taints, _, annotations: {
            "spec": {"unschedulable": annotations.get(CORDONED_ANNOTATION) == "true", "taints": taints},
            "metadata": {"annotations": {REASON_ANNOTATION: None, CORDONED_ANNOTATION: None}}})


def for_policy(policy: Policy, on_conflict: Callable[[], None]) -> Scheduler:
    """The policy's scheduler; `on_conflict` is told of every Kubernetes write refused as stale."""
    return KubernetesApi(policy.kubernetes, on_conflict) if policy.scheduler == "kubernetes" else Slurm(policy)
