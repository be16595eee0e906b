"""Every gpuscope alert and recording rule, defined once in Python from the metric catalog.

`groups(settings)` returns the rule groups; `alerts/render.py` writes them as a Prometheus rules
file, a Kubernetes PrometheusRule and a Grafana provisioning file. Peer baselines (medians over the
busy GPUs of a node, and over the nodes) are recording rules, so alerts and dashboards read a few
pre-aggregated series instead of recomputing medians over every GPU of the fleet.

Node identity is `instance`; GPU alerts carry `gpu` and `uuid`, EFA alerts `device`, Lustre alerts
`fs` and `target`, because each alert keeps the labels of the series it is about. The expressions
are written in these canonical labels; `groups()` fits them to the settings (selector, cluster and
node label names, alerts switched off or given another severity).
"""

from __future__ import annotations

from dataclasses import replace

from alerts.rules.base import Alert, Group, Record
from alerts.rules.goodput import COSTLY_ALERTS, cost_annotation, goodput_records
from alerts.rules.gpu import gpu_health_alerts, gpu_records, straggler_alerts, thermal_alerts
from alerts.rules.inventory import agent_alerts, inventory_alerts
from alerts.rules.nccl import job_wait_alerts, job_wait_records, ras_alerts
from alerts.rules.network import communication_alerts, network_records
from alerts.rules.remediation import remediation_alerts
from alerts.rules.storage import storage_alerts, storage_records
from alerts.settings import Settings, load_settings


def _canonical_groups(settings: Settings) -> list[Group]:
    """Every area's groups, records first (in the order the generated files have always had)."""
    return [*gpu_records(settings), *network_records(settings), *storage_records(settings),
            *job_wait_records(settings), *straggler_alerts(settings), *job_wait_alerts(settings),
            *ras_alerts(settings), *thermal_alerts(settings), *communication_alerts(settings),
            *gpu_health_alerts(settings), *inventory_alerts(settings), *storage_alerts(settings),
            agent_alerts(settings), remediation_alerts(settings), *goodput_records(settings)]


def alert_names() -> frozenset[str]:
    """Every alert that exists, for checking a settings file's `alerts:` overrides."""
    return frozenset(rule.alert for group in _canonical_groups(Settings()) for rule in group.rules
                     if isinstance(rule, Alert))


def load(path: str) -> Settings:
    """The settings file at `path` (defaults if empty), its alert overrides checked against the alerts."""
    return load_settings(path, alert_names())


def _localized(rule: Record | Alert, s: Settings) -> Record | Alert:
    if isinstance(rule, Record):
        return replace(rule, expr=s.expr(rule.expr))
    return replace(rule, expr=s.expr(rule.expr), severity=s.severity(rule.alert, rule.severity),
                   summary=s.template(rule.summary), description=s.template(rule.description),
                   cost=cost_annotation(s) if rule.alert in COSTLY_ALERTS else "")


def groups(settings: Settings) -> list[Group]:
    """Every rule group for these settings: alerts switched off are left out (and a group left empty
    with them), the rest carry the user's selector, label names and severities."""
    out = []
    for group in _canonical_groups(settings):
        local = replace(settings, selector=group.selector) if group.selector else settings
        rules = tuple(_localized(rule, local) for rule in group.rules
                      if not (isinstance(rule, Alert) and rule.alert in settings.disabled_alerts))
        if rules:
            out.append(replace(group, rules=rules))
    return out
