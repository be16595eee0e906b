"""Decides, for each alert of an Alertmanager notification, whether to drain or resume its node, and
keeps the rails: dry-run until enabled, an allowlist, never on a resolved or stale notification, at
most N drains per window and a fraction of a partition held out at once, resume only nodes it took
out itself and only when the node passes the check. Every decision goes to the audit log (JSON
lines) and the receiver's metrics; state survives restarts, so repeats and restarts change nothing.
No action without its record: before the scheduler is touched the intent is written to the audit log
and the state file; where either cannot be written the action is refused (`unrecorded`) and the
notification is answered 5xx, so Alertmanager sends it again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from receiver.policy import KEY_LABELS, Policy
from receiver.schedulers import NodeState, Scheduler, SchedulerError

DRAIN, RESUME = "drain", "resume"
log = logging.getLogger("gpuscope")
# Every (action, outcome, reason) a decision can have: the metrics start each at 0, so the first
# refusal is an increase on any engine (a counter born at 1 is no increase to Prometheus).
OUTCOMES = (
    (DRAIN, "done", "drained"), (DRAIN, "dry_run", "would_drain"),
    (DRAIN, "skipped", "already_held"), (DRAIN, "skipped", "out_by_other"),
    (DRAIN, "refused", "not_allowed"), (DRAIN, "refused", "stale"), (DRAIN, "refused", "no_node"),
    (DRAIN, "refused", "unknown_node"), (DRAIN, "refused", "rate_limit"), (DRAIN, "refused", "fraction_limit"),
    (DRAIN, "refused", "scheduler_error"),
    (RESUME, "done", "resumed"), (RESUME, "dry_run", "would_resume"), (RESUME, "skipped", "not_held"),
    (RESUME, "skipped", "still_firing"), (RESUME, "skipped", "disabled"), (RESUME, "refused", "check_failed"),
    (RESUME, "refused", "check_unavailable"), (RESUME, "refused", "scheduler_error"),
    (DRAIN, "refused", "unrecorded"), (RESUME, "refused", "unrecorded"),
)
UNRECORDED = "unrecorded"


@dataclass
class Decision:
    action: str
    outcome: str
    reason: str
    alert: str
    node: str
    detail: str = ""
    fingerprint: str = ""


@dataclass
class Held:
    """A node gpuscope took out (or, in dry-run, would have), and the alerts that keep it out."""

    since: float
    reason: str
    dry_run: bool
    alerts: dict[str, str] = field(default_factory=dict)  # fingerprint -> alert name


class Unrecorded(RuntimeError):
    """A notification some of whose records could not be written: its decisions (the actions that
    needed a record refused) and which file failed. The receiver answers 5xx: Alertmanager retries."""

    def __init__(self, message: str, decisions: list[Decision]) -> None:
        super().__init__(message)
        self.decisions = decisions


def _parse_time(text: str) -> float | None:
    """Alertmanager's RFC 3339 time; None for its zero time (0001-01-01), which means "not set"."""
    if not text or text.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Engine:
    def __init__(self, policy: Policy, scheduler: Scheduler, check: Callable[[str], list[str]],
                 record: Callable[[Decision], None] = lambda _d: None, clock: Callable[[], float] = time.time) -> None:
        """`check(node)` returns what is wrong with the node (empty: fit) or raises OSError/RuntimeError
        when it cannot tell; `record` sees every decision (the metrics)."""
        self.policy = policy
        self._scheduler = scheduler
        self._check = check
        self._record = record
        self._clock = clock
        self._lock = threading.Lock()
        self.held: dict[str, Held] = {}
        self.drains: list[float] = []
        self._unrecorded = ""  # why a record of the notification in hand could not be written ("" if all were)
        self._load_state()
        for what, write in (("audit_log", self._touch_audit), ("state_file", self._save_state)):
            try:
                write()
            except OSError as exc:
                raise ValueError(f"{what} {getattr(policy, what)}: cannot write: {exc.strerror or exc}") from None

    # --- the notification -------------------------------------------------------------------------

    def handle(self, payload: dict[str, Any]) -> list[Decision]:
        """Every alert of one webhook notification, in order; raises ValueError on a malformed payload."""
        alerts = payload.get("alerts") if isinstance(payload, dict) else None
        if not isinstance(alerts, list) or not all(isinstance(a, dict) and isinstance(a.get("labels"), dict)
                                                   for a in alerts):
            raise ValueError("not an Alertmanager webhook notification (version 4): no alerts with labels")
        with self._lock:
            self._unrecorded = ""
            try:
                nodes: dict[str, NodeState] | None = self._scheduler.nodes()
                self._reconcile(nodes)
            except SchedulerError as exc:
                nodes, error = None, str(exc)
            decisions = [self._decide(alert, nodes, error if nodes is None else "") for alert in alerts]
            self._write(self._save_state, self.policy.state_file)
            for decision in decisions:
                self._write(lambda d=decision: self._audit(d), self.policy.audit_log)
                self._record(decision)
            if self._unrecorded:
                raise Unrecorded(self._unrecorded, decisions)
        return decisions

    def _write(self, write: Callable[[], None], path: str) -> bool:
        """A record written, or the failure logged and kept for `handle` to raise."""
        try:
            write()
            return True
        except OSError as exc:
            self._unrecorded = f"{path}: cannot write: {exc.strerror or exc}"
            log.error("remediation record not written", extra={"file": path, "error": exc.strerror or str(exc)})
            return False

    def _intend(self, decision: Decision, outcome: str, detail: str) -> bool:
        """Before the scheduler is touched: the intent in the audit log, and the state file written (the
        action's change must be kept). False, and the action must not happen, if either cannot be."""
        intent = Decision(decision.action, "intent", outcome, decision.alert, decision.node, detail,
                          decision.fingerprint)
        return (self._write(lambda: self._audit(intent), self.policy.audit_log)
                and self._write(self._save_state, self.policy.state_file))

    def _decide(self, alert: dict[str, Any], nodes: dict[str, NodeState] | None, error: str) -> Decision:
        labels = {str(k): str(v) for k, v in alert["labels"].items()}
        name = labels.get("alertname", "")
        firing = alert.get("status") == "firing"
        decision = Decision(DRAIN if firing else RESUME, "", "", name, self.policy.node.resolve(labels),
                            fingerprint=str(alert.get("fingerprint") or sorted(labels.items())))
        if name not in self.policy.alerts:
            return self._set(decision, "refused" if firing else "skipped", "not_allowed" if firing else "not_held",
                             f"{name} is not in the policy's alerts")
        if not decision.node:
            return self._set(decision, "refused", "no_node", f"no node in label {self.policy.node.label!r} "
                                                             f"({labels.get(self.policy.node.label, '')!r})")
        if nodes is None:
            return self._set(decision, "refused", "scheduler_error", error)
        if firing:
            return self._drain(decision, alert, labels, nodes)
        return self._resume(decision, nodes)

    @staticmethod
    def _set(decision: Decision, outcome: str, reason: str, detail: str = "") -> Decision:
        decision.outcome, decision.reason, decision.detail = outcome, reason, detail
        return decision

    # --- drain ------------------------------------------------------------------------------------

    def _drain(self, decision: Decision, alert: dict[str, Any], labels: dict[str, str],
               nodes: dict[str, NodeState]) -> Decision:
        now = self._clock()
        ends = _parse_time(str(alert.get("endsAt", "")))
        if ends is not None and ends < now:
            return self._set(decision, "refused", "stale", f"the alert ended at {alert.get('endsAt')}")
        state = nodes.get(decision.node)
        if state is None:
            return self._set(decision, "refused", "unknown_node", f"the scheduler has no node {decision.node!r}")
        held = self.held.get(decision.node)
        if held is not None:
            held.alerts[decision.fingerprint] = decision.alert
            return self._set(decision, "skipped", "already_held", held.reason)
        if state.out:
            return self._set(decision, "skipped", "out_by_other", "already drained by someone else: left as it is")
        self.drains = [t for t in self.drains if t > now - self.policy.limits.window_seconds]
        if len(self.drains) >= self.policy.limits.max_drains:
            return self._set(decision, "refused", "rate_limit", f"{len(self.drains)} drains in the last "
                                                                f"{self.policy.limits.window_seconds:g} s")
        crowded = self._crowded_group(decision.node, nodes)
        if crowded:
            return self._set(decision, "refused", "fraction_limit", crowded)
        reason = self._reason(decision.alert, labels)
        self.held[decision.node] = Held(now, reason, not self.policy.enforce, {decision.fingerprint: decision.alert})
        if self.policy.enforce:
            if not self._intend(decision, "drained", reason):
                del self.held[decision.node]
                return self._set(decision, "refused", UNRECORDED, self._unrecorded)
            try:
                self._scheduler.drain(decision.node, reason)
            except SchedulerError as exc:
                del self.held[decision.node]
                return self._set(decision, "refused", "scheduler_error", str(exc))
        self.drains.append(now)
        if self.policy.enforce:
            return self._set(decision, "done", "drained", reason)
        return self._set(decision, "dry_run", "would_drain", reason)

    def _reason(self, alert: str, labels: dict[str, str]) -> str:
        where = " ".join(f"{key}={labels[key]}" for key in KEY_LABELS if labels.get(key))
        return f"{self.policy.reason_prefix} {alert} {where}".strip()

    def _crowded_group(self, node: str, nodes: dict[str, NodeState]) -> str:
        """Why taking `node` out would hold too much of one of its groups out; "" if it would not."""
        for group in nodes[node].groups:
            members = [n for n in nodes.values() if group in n.groups]
            held = sum(1 for n in members if n.name in self.held or n.ours)
            allowed = self.policy.limits.allowed(len(members))
            if held + 1 > allowed:
                return f"{held} of {len(members)} nodes of {group} already held out (at most {allowed})"
        return ""

    # --- resume -----------------------------------------------------------------------------------

    def _resume(self, decision: Decision, nodes: dict[str, NodeState]) -> Decision:
        held = self.held.get(decision.node)
        if held is None:
            return self._set(decision, "skipped", "not_held", "gpuscope did not take this node out")
        held.alerts.pop(decision.fingerprint, None)
        if held.alerts:
            return self._set(decision, "skipped", "still_firing", ", ".join(sorted(set(held.alerts.values()))))
        if not self.policy.resume.enabled:
            return self._set(decision, "skipped", "disabled", "resume is off in the policy: resume by hand")
        try:
            problems = self._check(decision.node)
        except (OSError, RuntimeError) as exc:
            return self._set(decision, "refused", "check_unavailable", str(exc))
        if problems:
            return self._set(decision, "refused", "check_failed", "; ".join(problems))
        if not held.dry_run:
            if not self._intend(decision, "resumed", "the node passed its check"):
                return self._set(decision, "refused", UNRECORDED, self._unrecorded)
            try:
                self._scheduler.resume(decision.node)
            except SchedulerError as exc:
                return self._set(decision, "refused", "scheduler_error", str(exc))
        del self.held[decision.node]
        return self._set(decision, "dry_run" if held.dry_run else "done",
                         "would_resume" if held.dry_run else "resumed", "the node passed its check")

    # --- state and audit --------------------------------------------------------------------------

    def _reconcile(self, nodes: dict[str, NodeState]) -> None:
        """The scheduler is the truth: a node a person resumed is no longer held; one that carries our
        reason but is missing from the state (a lost state file) is held again."""
        for name in [n for n, h in self.held.items() if not h.dry_run and not (n in nodes and nodes[n].ours)]:
            del self.held[name]
        for state in nodes.values():
            if state.ours and state.name not in self.held:
                self.held[state.name] = Held(self._clock(), "found drained with gpuscope's reason", False)

    def _load_state(self) -> None:
        path = self.policy.state_file
        if not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            self.held = {name: Held(**value) for name, value in data["held"].items()}
            self.drains = [float(t) for t in data["drains"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"state file {path}: unreadable ({exc}); move it away to start over") from None

    def _save_state(self) -> None:
        path = self.policy.state_file
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(f"{path}.tmp", "w", encoding="utf-8") as handle:
            json.dump({"held": {n: asdict(h) for n, h in self.held.items()}, "drains": self.drains}, handle)
        os.replace(f"{path}.tmp", path)

    def _touch_audit(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.policy.audit_log)), exist_ok=True)
        with open(self.policy.audit_log, "a", encoding="utf-8"):
            pass

    def _audit(self, decision: Decision) -> None:
        entry = {"time": datetime.fromtimestamp(self._clock()).astimezone().isoformat(timespec="seconds"),
                 "mode": "enforce" if self.policy.enforce else "dry-run", **asdict(decision)}
        with open(self.policy.audit_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
