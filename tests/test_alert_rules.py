"""The generated alert rules: up to date, promtool-clean, and every alert unit-tested with promtool.

The unit tests in tests/rules/ compare labels; they run against the generated rules with the
annotations stripped (a test transformation, nothing edited by hand), and the annotations are
checked here: every alert has a summary, a templated description and a runbook that exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from alerts.render import FILES, prometheus_duration, prometheus_rules, render_all, shorten_durations
from alerts.rules import Alert, groups
from alerts.settings import (
    MIN_SCRAPES_PER_WINDOW,
    SCRAPE_INTERVAL,
    Settings,
    SettingsError,
    in_unit,
    load_settings,
)
from tests.helpers import REPO
from toolkit.durations import seconds

GENERATED = REPO / "alerts" / "generated"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*.yml"))
RUNBOOKS = (REPO / "alerts" / "runbooks" / "README.md").read_text()


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool missing: scripts/test installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_rules_and_the_prometheusrule_spec(tmp_path):
    result = promtool("check", "rules", str(GENERATED / FILES[0]))
    assert result.returncode == 0, result.stdout + result.stderr
    spec = yaml.safe_load((GENERATED / FILES[1]).read_text())["spec"]
    (tmp_path / "spec.yml").write_text(yaml.safe_dump(spec))
    result = promtool("check", "rules", str(tmp_path / "spec.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def unannotated(tmp_path_factory):
    """A directory holding the generated rules without their annotations, as `rules.yml`."""
    rules = yaml.safe_load((GENERATED / FILES[0]).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    directory = tmp_path_factory.mktemp("unannotated")
    (directory / "rules.yml").write_text(yaml.safe_dump(rules))
    return directory


@pytest.mark.parametrize("case", RULE_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests(unannotated, case):
    shutil.copy(case, unannotated / case.name)
    result = promtool("test", "rules", str(unannotated / case.name))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_and_has_a_runbook():
    tested = "\n".join(path.read_text() for path in RULE_TESTS)
    alerts = {rule.alert for group in groups(Settings()) for rule in group.rules if isinstance(rule, Alert)}
    assert sorted(a for a in alerts if f"alertname: {a}\n" not in tested) == []
    assert sorted(a for a in alerts if f'<a id="{a.lower()}"></a>' not in RUNBOOKS) == []


def test_every_alert_is_actionable():
    for group in groups(Settings()):
        for rule in group.rules:
            if isinstance(rule, Alert):
                assert rule.severity in ("critical", "warning", "info"), rule.alert
                assert rule.summary and "{{ $labels.instance }}" in rule.description, rule.alert


def test_settings_override_and_errors(tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text("straggler_ratio: 0.8\nxid_critical: [79]\n")
    settings = load_settings(str(path))
    assert (settings.straggler_ratio, settings.xid_critical) == (0.8, (79,))
    rules = render_all(settings)[FILES[0]]
    assert "< 0.8)" in rules and 'xid=~"79"' in rules
    path.write_text("straggler_ration: 0.8\n")
    with pytest.raises(SettingsError, match="unknown setting 'straggler_ration'"):
        load_settings(str(path))
    path.write_text("straggler_ratio: lots\n")
    with pytest.raises(SettingsError, match="straggler_ratio: expected float"):
        load_settings(str(path))


@pytest.mark.parametrize(("line", "message"), [
    ("straggler_ratio: 1.5", "straggler_ratio: 1.5 is not a fraction from 0 to 1"),
    ("straggler_for: soon", "straggler_for: 'soon' is not a duration such as 30s, 10m or 6h"),
    ("straggler_for: 60", "straggler_for: '60' is not a duration with its unit, such as 30s, 10m or 6h"),
    ("nccl_hang_seconds: 0", "nccl_hang_seconds: 0.0 is not a number of seconds above 0"),
    ("straggler_min_gpus: 0", "straggler_min_gpus: 0 is not a count of 1 or more"),
    ("temperature_margin_celsius: -2", "temperature_margin_celsius: -2.0 is not 0 or more (celsius)"),
])
def test_each_setting_is_checked_in_its_unit(tmp_path, line, message):
    path = tmp_path / "alerts.yml"
    path.write_text(line + "\n")
    with pytest.raises(SettingsError, match=re.escape(f"settings {path}: {message}")):
        load_settings(str(path))


def test_the_settings_in_seconds_are_the_ones_the_shortened_rules_divide():
    assert in_unit("seconds") == ("nccl_hang_seconds", "nccl_inspector_stale_seconds")
    assert "straggler_for" in in_unit("duration") and "busy_utilization" in in_unit("fraction")


def test_grafana_provisioning_holds_every_alert_with_a_threshold_condition():
    provisioning = yaml.safe_load((GENERATED / FILES[2]).read_text())
    assert provisioning["apiVersion"] == 1
    rules = [rule for group in provisioning["groups"] for rule in group["rules"]]
    expected = [rule for group in groups(Settings()) for rule in group.rules if isinstance(rule, Alert)]
    assert [r["grafana_alert"]["title"] for r in rules] == [a.alert for a in expected]
    assert len({r["uid"] for r in rules}) == len(rules) and all(len(r["uid"]) <= 40 for r in rules)
    for rule, alert in zip(rules, expected, strict=True):
        data = rule["grafana_alert"]["data"]
        assert [d["refId"] for d in data] == ["A", "B", "C"] and rule["grafana_alert"]["condition"] == "C"
        assert data[0]["model"]["expr"] == f"({alert.expr}) * 0 + 1"
        assert data[0]["datasourceUid"] == "prometheus"
        assert rule["labels"]["severity"] == alert.severity
        assert rule["for"] == ("0s" if alert.for_ == "0m" else alert.for_)


_RANGE = re.compile(r"\[(\d+(?:ms|s|m|h|d))(?::[^\]]*)?\]")


def ranges_seconds(rules: dict) -> list[float]:
    """Every range selector's length, in seconds, across the rule file."""
    return [seconds(found) for group in rules["groups"] for rule in group["rules"]
            for found in _RANGE.findall(rule["expr"])]


def test_every_window_holds_four_scrapes_at_the_shipped_interval():
    """rate() over fewer samples flickers; at the shipped 15 s scrape, 1m is the shortest window."""
    windows = ranges_seconds(prometheus_rules(groups(Settings()), Settings()))
    assert len(windows) > 40
    helm = yaml.safe_load((REPO / "deploy/helm/gpuscope/values.yaml").read_text())
    kustomize = yaml.safe_load((REPO / "deploy/kubernetes/base/servicemonitor.yaml").read_text())
    assert helm["serviceMonitor"]["interval"] == kustomize["spec"]["endpoints"][0]["interval"] == SCRAPE_INTERVAL
    assert min(windows) == MIN_SCRAPES_PER_WINDOW * seconds(SCRAPE_INTERVAL) == 60


@pytest.mark.parametrize(("factor", "scrape", "shortest", "two_samples", "straggler", "fast_group"), [
    (10, 1.5, 6, "1500ms", "6s", "500ms"), (60, 1.0, 4, "1s", "4s", "333ms"), (10, 5.0, 20, "5s", "20s", "1667ms")])
def test_shortened_rules_keep_four_scrapes_in_every_window(factor, scrape, shortest, two_samples, straggler,
                                                           fast_group):
    """Issue 28: the demo divided 1m by 10 at a 5 s scrape, a 6 s window holding one sample. A stack
    scraping at the shipped interval divided by the factor keeps production's shape (the demo); a
    slower one has its shortest windows floored at four of its scrapes, and each `for:` at as many of
    its scrapes as in production, up to four (issue 26: at a quarter of a scrape, a single sample of
    the 60-fold tests paged EfaTrafficStalled; at one, a second of skew between simulated nodes paged
    stragglers). A group's own interval keeps its ratio to the scrape."""
    production = prometheus_rules(groups(Settings()), Settings())
    shortened = shorten_durations(production, factor, scrape)
    windows = ranges_seconds(shortened)
    assert min(windows) == shortest
    expected = [max(4 * scrape, w / factor) for w in ranges_seconds(production)]
    assert windows == pytest.approx(expected)
    fors = {r["alert"]: r["for"] for g in shortened["groups"] for r in g["rules"] if "for" in r}
    assert fors["GpuStraggler"] == straggler
    assert fors["GpuRowRemapPending"] == prometheus_duration(max(300 / factor, 4 * scrape))  # 5m
    assert fors["EfaTrafficStalled"] == fors["CollectiveStall"] == two_samples
    # an event's age is held against the window's length in seconds, shortened with the window: the
    # 60-fold table once kept an SXID "recent" for 1,800 s and paged it again on a scrape gap (issue 30)
    sxid = next(r["expr"] for g in shortened["groups"] for r in g["rules"] if r.get("alert") == "NvswitchFatalError")
    assert sxid.endswith(f'severity="fatal"}} < {max(600 / factor, 4 * scrape):g}'), sxid
    assert {g["name"]: g["interval"] for g in shortened["groups"] if "interval" in g} == {
        "gpuscope-xid": fast_group, "gpuscope-nvswitch": fast_group, "gpuscope-network": fast_group,
        "gpuscope-nccl-ras-alerts": fast_group}
