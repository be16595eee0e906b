"""The remediation policy file: which alerts may take a node out, how far the automation may go.

Every problem is one PolicyError naming the file and the field, before anything listens. Defaults
are the safe ones: dry-run, the hardware alerts that need a node out of service, two drains an
hour, a tenth of a partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from toolkit import durations
from toolkit.configfile import DEFAULT_PORT, ConfigError, load_yaml

# Critical hardware alerts after which a node should not take new work; alerts/alertmanager.yml routes
# exactly these to the receiver (tests/test_remediate.py holds the two lists together).
DEFAULT_ALERTS = ("GpuMissing", "GpuLost", "GpuXidCritical", "GpuUncorrectableEccErrors", "GpuRowRemapFailure",
                  "EfaDeviceMissing", "NvlinkInactive", "NvswitchFatalError", "GpuDcgmHealthFailing",
                  "NvswitchDcgmHealthFailing")
# Labels that say where on the node the fault is; they go into the drain reason after the alert name.
KEY_LABELS = ("gpu", "xid", "device", "port", "switch", "system", "fs", "target", "cause")
SCHEDULERS = ("slurm", "kubernetes")
_TOP = {"enforce", "scheduler", "alerts", "node", "limits", "resume", "audit_log", "state_file", "reason_prefix",
        "slurm", "kubernetes"}


class PolicyError(ConfigError):
    """A policy file that cannot be used, in one line naming the file and the field."""


@dataclass(frozen=True)
class NodeNames:
    """From an alert's labels to the scheduler's node name: `map` first, then `regex` (its group
    `node`, else the first group, else the whole match) on the label, else the label as it is."""

    label: str = "instance"
    regex: re.Pattern[str] | None = None
    map: dict[str, str] = field(default_factory=dict)

    def resolve(self, labels: dict[str, str]) -> str:
        value = labels.get(self.label, "")
        if not value or value in self.map:
            return self.map.get(value, "")
        if self.regex is None:
            return value
        match = self.regex.fullmatch(value)
        if not match:
            return ""
        if "node" in match.groupdict():
            return match["node"] or ""
        return (match[1] if match.re.groups else match[0]) or ""


@dataclass(frozen=True)
class Limits:
    max_drains: int = 2  # per window, counted in dry-run too
    window_seconds: float = 3600.0
    # Of a partition (Slurm) or node group (Kubernetes) held out by gpuscope at once, rounded down,
    # but never less than one node: a 4-node partition may lose one node, a 100-node one ten.
    max_fraction: float = 0.1

    def allowed(self, size: int) -> int:
        return max(1, int(self.max_fraction * size))


@dataclass(frozen=True)
class Resume:
    enabled: bool = True
    # The node's exporter, read by the same judgement as `gpuscope check` before a node is resumed;
    # `{node}` is the scheduler's node name. `check_urls` names the URL of particular nodes.
    check_url: str = f"http://{{node}}:{DEFAULT_PORT}/metrics"
    check_urls: dict[str, str] = field(default_factory=dict)
    ignore_rdma_devices: str = ""
    timeout_seconds: float = 2.0

    def url(self, node: str) -> str:
        return self.check_urls.get(node) or self.check_url.replace("{node}", node)


@dataclass(frozen=True)
class Kubernetes:
    api: str = ""  # empty: the in-cluster API server of the service account
    kubeconfig: str = ""  # or a kubeconfig's current context (token or client certificate)
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    taint_key: str = "gpuscope.io/unhealthy"
    group_label: str = ""  # node label whose values are the groups max_fraction applies to; "" the cluster


@dataclass(frozen=True)
class Policy:
    enforce: bool = False
    scheduler: str = "slurm"
    alerts: frozenset[str] = frozenset(DEFAULT_ALERTS)
    node: NodeNames = field(default_factory=NodeNames)
    limits: Limits = field(default_factory=Limits)
    resume: Resume = field(default_factory=Resume)
    audit_log: str = "/var/log/gpuscope/remediate.jsonl"
    state_file: str = "/var/lib/gpuscope/remediate.json"
    reason_prefix: str = "gpuscope:"
    scontrol: str = "scontrol"
    sinfo: str = "sinfo"
    kubernetes: Kubernetes = field(default_factory=Kubernetes)


def load(path: str) -> Policy:
    data = load_yaml(path, "policy")
    reader = _Reader(path)
    reader.mapping("", data, _TOP)
    node = reader.mapping("node.", data.get("node", {}), {"label", "regex", "map"})
    limits = reader.mapping("limits.", data.get("limits", {}), {"max_drains", "window", "max_fraction"})
    resume = reader.mapping("resume.", data.get("resume", {}),
                            {"enabled", "check_url", "check_urls", "ignore_rdma_devices", "timeout"})
    slurm = reader.mapping("slurm.", data.get("slurm", {}), {"scontrol", "sinfo"})
    kube = reader.mapping("kubernetes.", data.get("kubernetes", {}),
                          {"api", "kubeconfig", "token_file", "ca_file", "taint_key", "group_label"})
    scheduler = reader.text("scheduler", data.get("scheduler", "slurm"))
    if scheduler not in SCHEDULERS:
        raise PolicyError(f"policy {path}: scheduler must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
    ignore = reader.text("resume.ignore_rdma_devices", resume.get("ignore_rdma_devices", ""))
    reader.regex("resume.ignore_rdma_devices", ignore)
    fraction = reader.number("limits.max_fraction", limits.get("max_fraction", Limits.max_fraction))
    if not 0 < fraction <= 1:
        raise PolicyError(f"policy {path}: limits.max_fraction must be above 0 and at most 1")
    return Policy(
        enforce=reader.flag("enforce", data.get("enforce", False)),
        scheduler=scheduler,
        alerts=frozenset(reader.names("alerts", data.get("alerts", list(DEFAULT_ALERTS)))),
        node=NodeNames(reader.text("node.label", node.get("label", "instance")),
                       reader.regex("node.regex", node.get("regex", "")),
                       reader.strings("node.map", node.get("map", {}))),
        limits=Limits(int(reader.number("limits.max_drains", limits.get("max_drains", Limits.max_drains))),
                      reader.duration("limits.window", limits.get("window", "1h")), fraction),
        resume=Resume(reader.flag("resume.enabled", resume.get("enabled", True)),
                      reader.text("resume.check_url", resume.get("check_url", Resume.check_url)),
                      reader.strings("resume.check_urls", resume.get("check_urls", {})),
                      ignore,
                      reader.duration("resume.timeout", resume.get("timeout", "2s"))),
        audit_log=reader.text("audit_log", data.get("audit_log", Policy.audit_log)),
        state_file=reader.text("state_file", data.get("state_file", Policy.state_file)),
        reason_prefix=reader.text("reason_prefix", data.get("reason_prefix", Policy.reason_prefix)),
        scontrol=reader.text("slurm.scontrol", slurm.get("scontrol", "scontrol")),
        sinfo=reader.text("slurm.sinfo", slurm.get("sinfo", "sinfo")),
        kubernetes=Kubernetes(**{key: reader.text(f"kubernetes.{key}", value) for key, value in kube.items()}),
    )


class _Reader:
    """Type checks that name the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, field_name: str, wanted: str) -> PolicyError:
        return PolicyError(f"policy {self.path}: {field_name} must be {wanted}")

    def mapping(self, where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where.rstrip(".") or "the file", "a mapping")
        unknown = sorted(str(key) for key in value if key not in allowed)
        if unknown:
            raise PolicyError(f"policy {self.path}: unknown field {where}{unknown[0]}")
        return value

    def flag(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(name, "true or false")
        return value

    def text(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(name, "a string")
        return value

    def number(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise self.fail(name, "a number, 0 or more")
        return float(value)

    def names(self, name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(name, "a list of alert names")
        return value

    def strings(self, name: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in [*value, *value.values()]):
            raise self.fail(name, "a mapping of strings to strings")
        return dict(value)

    def regex(self, name: str, value: Any) -> re.Pattern[str] | None:
        if not value:
            return None
        try:
            return re.compile(self.text(name, value))
        except re.error as exc:
            raise self.fail(name, f"a regular expression ({exc})") from None

    def duration(self, name: str, value: Any) -> float:
        try:
            return durations.seconds(value)
        except ValueError:
            raise self.fail(name, "a duration such as 30s, 10m or 1h") from None
