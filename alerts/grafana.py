"""Grafana-managed alert rules (file provisioning), the one part of the rule files that needs grafanalib.

Kept apart from alerts/render.py so the Prometheus rules (what `gpuscope demo` and the end-to-end
tests load) render with the node agent's dependencies and the demo extra alone; this module needs
the dashboards extra, as `gpuscope alerts build` does.
"""

from __future__ import annotations

import json
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    EXP_REDUCER_FUNC_LAST,
    EXP_TYPE_MATH,
    EXP_TYPE_REDUCE,
    AlertExpression,
    AlertFileBasedProvisioning,
    AlertGroup,
    AlertRulev9,
    Target,
)

from alerts.rules import Alert, Group
from alerts.settings import Settings

# Grafana evaluates its own rules every 10 s at the most often (its default `min_interval`), a
# multiple of 10 s for every group; the Prometheus rules' faster groups run at this pace here.
GRAFANA_EVALUATION = "10s"


def grafana_provisioning(rule_groups: list[Group], settings: Settings, datasource_uid: str) -> dict[str, Any]:
    """Grafana-managed alert rules. They query the Prometheus that evaluates the recording rules, so
    load prometheus-rules.yml there too. Each query returns only alerting series; `* 0 + 1` makes them
    1 so one threshold serves every rule."""
    alert_groups = []
    for group in rule_groups:
        rules = [rule for rule in group.rules if isinstance(rule, Alert)]
        if not rules:
            continue
        alert_groups.append(AlertGroup(name=group.name, folder="gpuscope", evaluateInterval=GRAFANA_EVALUATION, rules=[
            AlertRulev9(
                title=rule.alert,
                uid=f"gpuscope-{group.name.removeprefix('gpuscope-')}-{number}"[:40],
                triggers=[
                    Target(expr=f"({rule.expr}) * 0 + 1", refId="A", datasource=datasource_uid, instant=True),
                    AlertExpression(refId="B", expression="A", expressionType=EXP_TYPE_REDUCE,
                                    reduceFunction=EXP_REDUCER_FUNC_LAST),
                    AlertExpression(refId="C", expression="$B > 0", expressionType=EXP_TYPE_MATH),
                ],
                condition="C",
                evaluateFor="0s" if rule.for_ == "0m" else rule.for_,
                noDataAlertState="OK",
                errorAlertState="Error",
                labels={"severity": rule.severity, **dict(rule.labels)},
                annotations={"summary": rule.summary, "description": rule.description,
                             "runbook_url": rule.runbook(settings)},
            ) for number, rule in enumerate(rules)]))
    provisioning = AlertFileBasedProvisioning(groups=alert_groups)
    return json.loads(json.dumps(provisioning, cls=DashboardEncoder))  # nested grafanalib objects to plain data
