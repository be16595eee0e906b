"""promtool's rule unit tests run on VictoriaMetrics and vmalert, so one rule set is held on both engines.

A test file in promtool's format (tests/rules/*.yml) is played on a real single-node VictoriaMetrics
(Debian's victoria-metrics 1.79): its input series are imported at their times, vmalert evaluates the
rules over that span in replay mode (`-replay.timeFrom/-replay.timeTo`, results written back to
VictoriaMetrics, one rule after another as the groups order them), and the alerts firing at each
`eval_time` are read back from the `ALERTS` series vmalert wrote at exactly that time.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import yaml

from toolkit.durations import seconds

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"^(_|stale|{_NUMBER})(?:([-+])({_NUMBER}))?(?:x(\d+))?$")
# Far enough back that replay never reaches "now", aligned to the minute as promtool's clock is.
BASE = (int(time.time()) // 86400 - 2) * 86400


def expand(values: str) -> list[float | None]:
    """promtool's series notation: `1x5` is six 1s, `0+60x3` is 0 60 120 180, `_` a missing sample."""
    out: list[float | None] = []
    for term in values.split():
        match = _TERM.match(term)
        if not match:
            raise ValueError(f"unsupported series term {term!r}")
        start, sign, step, times = match.groups()
        count = int(times) + 1 if times else 1
        if start in ("_", "stale"):
            out.extend([None] * count)
            continue
        delta = float(step or 0) * (-1 if sign == "-" else 1)
        out.extend(float(start) + delta * i for i in range(count))
    return out


def _labels(series: str) -> dict[str, str]:
    name, _, rest = series.partition("{")
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
    return {"__name__": name.strip(), **labels} if name.strip() else labels


class VictoriaMetrics:
    """The import, export and admin calls a rule test needs, on a running VictoriaMetrics at `url`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> bytes:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as response:
            return response.read()

    def post(self, path: str, body: bytes) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.url}{path}", data=body, method="POST"), timeout=30).read()

    def clear(self) -> None:
        self.get("/api/v1/admin/tsdb/delete_series", **{"match[]": '{__name__=~".+"}'})
        self.get("/internal/resetRollupResultCache")

    def flush(self) -> None:
        self.get("/internal/force_flush")
        time.sleep(1.2)  # searchable after the next in-memory part flush

    def import_series(self, series: str, values: list[float | None], interval: float) -> None:
        points = [(BASE + i * interval, v) for i, v in enumerate(values) if v is not None]
        if points:
            self.post("/api/v1/import", json.dumps({
                "metric": _labels(series), "values": [v for _, v in points],
                "timestamps": [int(t * 1000) for t, _ in points]}).encode())

    def samples_at(self, selector: str, at: float) -> list[dict[str, str]]:
        """The label sets of the raw samples stamped exactly `at` (no lookback)."""
        body = self.get("/api/v1/export", **{"match[]": selector, "start": f"{at:.3f}", "end": f"{at:.3f}"})
        return [json.loads(line)["metric"] for line in body.decode().splitlines() if line]


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_RECORD_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+")


def needed_groups(rules: dict, alerts: set[str], exprs: list[str]) -> dict:
    """The groups holding `alerts`, and those defining a record that they or `exprs` read, directly or
    through other records; in the file's order. Replaying all 49 groups for every test takes minutes."""
    defines = {rule["record"]: group for group in rules["groups"] for rule in group["rules"] if "record" in rule}
    wanted = [group for group in rules["groups"] if any(rule.get("alert") in alerts for rule in group["rules"])]
    texts = list(exprs) + [rule["expr"] for group in wanted for rule in group["rules"]]
    while texts:
        for name in _RECORD_NAME.findall(texts.pop()):
            group = defines.get(name)
            if group is not None and group not in wanted:
                wanted.append(group)
                texts += [rule["expr"] for rule in group["rules"]]
    return {"groups": [group for group in rules["groups"] if group in wanted]}


def replay(vm: VictoriaMetrics, rules: dict, until: float, work: str) -> None:
    """vmalert evaluates `rules` every minute from BASE to BASE + until, writing records and ALERTS back.
    Rules run one after another over the whole span; the delay between them lets VictoriaMetrics make
    one rule's results searchable before the next reads them."""
    binary = shutil.which("vmalert")
    assert binary, "vmalert missing: scripts/test installs Debian's victoria-metrics package"
    path = os.path.join(work, "rules.yml")
    with open(path, "w") as handle:
        yaml.safe_dump(rules, handle)
    result = subprocess.run(
        [binary, f"-rule={path}", f"-datasource.url={vm.url}", f"-remoteWrite.url={vm.url}",
         f"-replay.timeFrom={_iso(BASE)}", f"-replay.timeTo={_iso(BASE + until)}", "-replay.disableProgressBar",
         "-replay.rulesDelay=1.5s", "-remoteWrite.flushInterval=100ms", "-evaluationInterval=1m",
         "-datasource.queryStep=1m", "-loggerLevel=ERROR"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    vm.flush()


def _sorted(label_sets) -> list[dict[str, str]]:
    return sorted(label_sets, key=lambda labels: sorted(labels.items()))


def firing(vm: VictoriaMetrics, alert: str, at: float) -> list[dict[str, str]]:
    """The label sets of `alert` firing at `at`, as promtool's exp_labels spell them."""
    found = vm.samples_at(f'ALERTS{{alertname="{alert}",alertstate="firing"}}', BASE + at)
    return _sorted({k: v for k, v in labels.items() if k not in ("__name__", "alertname", "alertstate", "alertgroup")}
                   for labels in found)


def query(vm: VictoriaMetrics, expr: str, at: float) -> dict[tuple, float]:
    body = json.loads(vm.get("/api/v1/query", query=expr, time=f"{BASE + at:.3f}"))
    return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}


def play(vm: VictoriaMetrics, rules: dict, case_file: str, work: str) -> list[str]:
    """Runs every test of a promtool test file; one line per difference from its expectations."""
    differences = []
    name = os.path.basename(case_file)
    with open(case_file) as handle:
        tests = yaml.safe_load(handle)["tests"]
    for number, test in enumerate(tests):
        interval = seconds(test.get("interval", "1m"))
        alert_checks, expr_checks = test.get("alert_rule_test", []), test.get("promql_expr_test", [])
        vm.clear()
        for entry in test["input_series"]:
            vm.import_series(entry["series"], expand(str(entry["values"])), interval)
        vm.flush()
        times = [seconds(check["eval_time"]) for check in alert_checks + expr_checks]
        replay(vm, needed_groups(rules, {c["alertname"] for c in alert_checks}, [c["expr"] for c in expr_checks]),
               max(times) + 60, work)
        for check in alert_checks:
            expected = _sorted({k: str(v) for k, v in alert.get("exp_labels", {}).items() if k != "alertname"}
                               for alert in check.get("exp_alerts") or [])
            got = firing(vm, check["alertname"], seconds(check["eval_time"]))
            if got != expected:
                differences.append(f"{name} test {number} {check['alertname']} at {check['eval_time']}: "
                                   f"expected {expected}, vmalert fired {got}")
        for check in expr_checks:
            expected = {tuple(sorted(_labels(sample["labels"]).items())): float(sample["value"])
                        for sample in check.get("exp_samples") or []}
            got = query(vm, check["expr"], seconds(check["eval_time"]))
            if got.keys() != expected.keys() or any(abs(got[k] - v) > 1e-6 * max(1.0, abs(v))
                                                    for k, v in expected.items()):
                differences.append(f"{name} test {number} {check['expr']} at {check['eval_time']}: "
                                   f"expected {expected}, VictoriaMetrics answered {got}")
    return differences
