"""Renders the rule groups for Prometheus, the Prometheus Operator and Grafana-managed alerting.

`gpuscope alerts build [--config FILE] --out DIR` writes the three files for a user's settings. The
copies committed in this repository (alerts/generated/, the Helm chart, the kustomize base) have one
writer, `scripts/generate`; a test fails when any of them is stale.
"""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import yaml
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

from alerts.rules import Alert, Group, Record, groups, load
from alerts.settings import DURATION_UNITS, Settings

HEADER = ("# Generated from alerts/rules.py by `gpuscope alerts build` (in the gpuscope repository: "
          "scripts/generate); do not edit by hand.\n")
FILES = ("prometheus-rules.yml", "prometheusrule.yaml", "grafana-alert-rules.yaml")


def _rule(rule: Record | Alert, settings: Settings) -> dict[str, Any]:
    if isinstance(rule, Record):
        return {"record": rule.record, "expr": rule.expr}
    out: dict[str, Any] = {"alert": rule.alert, "expr": rule.expr}
    if rule.for_ != "0m":
        out["for"] = rule.for_
    out["labels"] = {"severity": rule.severity, **dict(rule.labels)}
    out["annotations"] = {"summary": rule.summary, "description": rule.description,
                          "runbook_url": rule.runbook(settings)}
    if rule.cost:
        out["annotations"]["cost"] = rule.cost
    return out


def prometheus_rules(rule_groups: list[Group], settings: Settings) -> dict[str, Any]:
    return {"groups": [{"name": g.name, "rules": [_rule(r, settings) for r in g.rules]} for g in rule_groups]}


def prometheus_rule_manifest(rule_groups: list[Group], settings: Settings) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "gpuscope", "labels": {"app.kubernetes.io/name": "gpuscope"}},
            "spec": prometheus_rules(rule_groups, settings)}


def grafana_provisioning(rule_groups: list[Group], settings: Settings, datasource_uid: str) -> dict[str, Any]:
    """Grafana-managed alert rules. They query the Prometheus that evaluates the recording rules, so
    load prometheus-rules.yml there too. Each query returns only alerting series; `* 0 + 1` makes them
    1 so one threshold serves every rule."""
    alert_groups = []
    for group in rule_groups:
        rules = [rule for rule in group.rules if isinstance(rule, Alert)]
        if not rules:
            continue
        alert_groups.append(AlertGroup(name=group.name, folder="gpuscope", evaluateInterval="1m", rules=[
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


_DURATION = re.compile(r"(?<![\w.])(\d+)(ms|s|m|h|d)\b")


def shorten_durations(rules: dict[str, Any], factor: float, floor_seconds: int = 5) -> dict[str, Any]:
    """The rules with every duration (`for:`, range selectors, offsets) divided by `factor`, ranges
    kept at `floor_seconds` or more so a rate still sees several samples at a 1 s scrape interval.

    For the end-to-end tests and `gpuscope demo --fast` only: it changes timing, not logic.
    """
    def scale(match: re.Match[str], floor: int) -> str:
        seconds = int(match[1]) * DURATION_UNITS[match[2]] / factor
        return f"{max(floor, round(seconds))}s" if seconds else "0s"

    out = copy.deepcopy(rules)
    for group in out["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _DURATION.sub(lambda m: scale(m, floor_seconds), rule["expr"])
            if "for" in rule:
                rule["for"] = _DURATION.sub(lambda m: scale(m, 1), rule["for"])
    return out


def write_shortened_rules(path: str, factor: float, settings: Settings | None = None) -> str:
    """The rules file for a demo or an end-to-end test: every duration divided by `factor`."""
    settings = settings or Settings()
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(shorten_durations(prometheus_rules(groups(settings), settings), factor), handle)
    return path


def render_all(settings: Settings, datasource_uid: str = "prometheus") -> dict[str, str]:
    """{file name: text} of every generated file."""
    rule_groups = groups(settings)
    documents = {
        FILES[0]: prometheus_rules(rule_groups, settings),
        FILES[1]: prometheus_rule_manifest(rule_groups, settings),
        FILES[2]: grafana_provisioning(rule_groups, settings, datasource_uid),
    }
    return {name: HEADER + yaml.safe_dump(doc, sort_keys=False, width=120) for name, doc in documents.items()}


def write_files(out_dir: str, files: dict[str, str]) -> list[str]:
    """Writes {file name: text} into `out_dir`; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, text in files.items():
        path = os.path.join(out_dir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        paths.append(path)
    return paths


def build(out_dir: str, settings_file: str = "", datasource_uid: str = "prometheus") -> list[str]:
    """Writes the generated files for the settings file (defaults if empty); returns their paths."""
    return write_files(out_dir, render_all(load(settings_file), datasource_uid))
