"""The generated alert rules: up to date, promtool-clean, and every alert unit-tested with promtool.

The unit tests in tests/rules/ compare labels; they run against the generated rules with the
annotations stripped (a test transformation, nothing edited by hand), and the annotations are
checked here: every alert has a summary, a templated description and a runbook that exists.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from alerts.render import FILES, render_all
from alerts.rules import Alert, groups
from alerts.settings import Settings, SettingsError, load_settings
from tests.helpers import REPO

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


@pytest.mark.parametrize("case", RULE_TESTS, ids=lambda p: p.stem)
def test_promtool_unit_tests(tmp_path, case):
    rules = yaml.safe_load((GENERATED / FILES[0]).read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    shutil.copy(case, tmp_path / case.name)
    result = promtool("test", "rules", str(tmp_path / case.name))
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
