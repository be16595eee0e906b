"""Renders the rule groups for Prometheus, the Prometheus Operator and Grafana-managed alerting.

`gpuscope alerts build [--config FILE] --out DIR` writes the three files for a user's settings. The
copies committed in this repository (alerts/generated/, the Helm chart, the kustomize base) have one
writer, `scripts/generate`; a test fails when any of them is stale.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import replace
from typing import Any

import yaml

from alerts.rules import Alert, Group, Record, groups, load
from alerts.settings import MIN_SCRAPES_PER_WINDOW, SCRAPE_INTERVAL, Settings, in_unit
from toolkit.durations import UNITS, seconds

HEADER = ("# Generated from alerts/rules/ by `gpuscope alerts build` (in the gpuscope repository: "
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
    return {"groups": [{"name": g.name, **({"interval": g.interval} if g.interval else {}),
                        "rules": [_rule(r, settings) for r in g.rules]} for g in rule_groups]}


def prometheus_rule_manifest(rule_groups: list[Group], settings: Settings) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "gpuscope", "labels": {"app.kubernetes.io/name": "gpuscope"}},
            "spec": prometheus_rules(rule_groups, settings)}


_DURATION = re.compile(r"(?<![\w.])(\d+)(ms|s|m|h|d)\b")
# An event's age against a window in seconds (`time() - <last event timestamp> < 600`): a number, not a
# duration, yet the window's length, shortened with the windows.
_AGE = re.compile(r"(time\(\) - [a-z_:]+(?:\{[^}]*\})? < )(\d+(?:\.\d+)?)")


def shorten_durations(rules: dict[str, Any], factor: float, scrape_seconds: float) -> dict[str, Any]:
    """The rules with every duration (`for:`, range selectors, offsets) divided by `factor`, each range
    kept at MIN_SCRAPES_PER_WINDOW scrape intervals of the shortened stack or more: a rate over one
    sample is empty, and an alert joined on it flickers (issue 28: the demo's 1m became 6 s at a 5 s
    scrape). Production windows hold four scrapes at SCRAPE_INTERVAL; a stack scraping every
    SCRAPE_INTERVAL / factor keeps exactly the production rules' shape, a slower one floors the
    shortest windows. A `for:` keeps as many scrapes as in production, up to the same four (`for: 15s`
    means two samples agree, `for: 1m` five: a quarter of a slower stack's scrape would fire on one
    sample, and a straggler on a simulator's second of skew between nodes), and a group's own
    interval keeps its ratio to the scrape.

    For the end-to-end tests and `gpuscope demo` only: it changes timing, not logic.
    """
    floor = MIN_SCRAPES_PER_WINDOW * scrape_seconds
    per_scrape = scrape_seconds / seconds(SCRAPE_INTERVAL)  # a production second in this stack

    def scale(match: re.Match[str]) -> str:
        seconds = int(match[1]) * UNITS[match[2]] / factor
        return prometheus_duration(max(floor, seconds)) if seconds else "0s"

    out = copy.deepcopy(rules)
    for group in out["groups"]:
        if "interval" in group:
            group["interval"] = prometheus_duration(seconds(group["interval"]) * per_scrape)
        for rule in group["rules"]:
            rule["expr"] = _AGE.sub(lambda m: f"{m[1]}{max(floor, float(m[2]) / factor):g}",
                                    _DURATION.sub(scale, rule["expr"]))
            if "for" in rule:  # a single-unit duration, as the settings' are
                production = seconds(rule["for"])
                rule["for"] = prometheus_duration(max(production / factor, min(production * per_scrape, floor)))
    return out


def prometheus_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration, which takes no fractions: 4 -> 4s, 1.5 -> 1500ms."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def write_shortened_rules(path: str, factor: float, settings: Settings | None = None,
                          scrape_seconds: float = 1.0) -> str:
    """The rules file for a demo or an end-to-end test whose Prometheus scrapes and evaluates every
    `scrape_seconds`: every duration divided by `factor` (see shorten_durations), and the thresholds
    that are seconds (the settings in_unit("seconds"): numbers, not PromQL durations) with them."""
    settings = settings or Settings()
    settings = replace(settings, **{name: getattr(settings, name) / factor for name in in_unit("seconds")})
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(shorten_durations(prometheus_rules(groups(settings), settings), factor, scrape_seconds), handle)
    return path


def render_all(settings: Settings, datasource_uid: str = "prometheus") -> dict[str, str]:
    """{file name: text} of every generated file."""
    from alerts.grafana import grafana_provisioning  # grafanalib: the dashboards extra, which `alerts build` needs

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
