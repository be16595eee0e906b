"""Cluster scale: rule groups and dashboard panels timed on a backfilled fleet of simulated p5 nodes.

Backfills `--hours` (default 6) of history at a 15 s interval for `--nodes` simulated p5.48xlarge
nodes (series shapes and faults from the simulator: bench/scale_data.py) with `promtool tsdb
create-blocks-from openmetrics`, then the recording rules with `promtool tsdb create-blocks-from
rules`, starts Prometheus on that TSDB (loopback) and, once it has compacted the blocks, times
through the HTTP API (Prometheus's own execTotalTime, `stats=all`):

- every rule of every group at several instants (a group's time is the sum of its rules', as the
  rule manager evaluates them one after the other);
- every dashboard panel query over 1 h and 6 h with the default template selections, with the
  step and $__rate_interval Grafana would use (a panel's time is the sum of its queries');

and checks that the straggler, stall and thermal alerts name exactly the faulty GPUs and nodes.
Only the metric families some rule or panel reads are backfilled (about half of a node's 1,483
series; the others cost index space, not query time). Run:

    python -m bench.scale --nodes 256 [--dir /var/tmp/gpuscope-scale] [--results FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import requests
import yaml

from alerts.render import prometheus_rules
from alerts.rules import Record, groups
from alerts.settings import Settings
from bench import scale_data as data
from dashboards.build import dashboard_json
from dashboards.render import resolve_derived, substitute
from exporter.sim.stack import find_binary, prometheus

INTERVAL = 15
BLOCK = 6 * 3600  # backfill one aligned 6 h block per promtool run: one pass over each input file
CHUNK_NODES = 32  # nodes per promtool input file (about 5 GB of text)
RULE_INSTANTS_AGO = (5 * 3600, 4 * 3600, 3 * 3600, 5400, 2400, 60)  # seconds before the end
ALERT_INSTANTS_AGO = (2400, 1200, 60)  # inside the fault window, past every `for:`
CALM_AGO = 3 * 3600  # before the faults: nothing may fire
REPEATS = 3


def rule_groups() -> list[dict]:
    """The generated rule groups, as Prometheus loads them."""
    return prometheus_rules(groups(Settings()), Settings())["groups"]


def read_families() -> set[str]:
    """Metric names some rule or dashboard panel reads."""
    text = json.dumps(rule_groups()) + json.dumps(dashboard_json())
    return set(re.findall(r"\bgpuscope_[a-z0-9_]+", text))


def backfill_chunk(args: tuple) -> int:
    templates, layout, nodes, start, steps, work, tsdb = args
    path = os.path.join(work, f"chunk-{nodes.start}.om")
    try:
        samples = data.write_openmetrics(path, templates, layout, nodes, start, steps, INTERVAL)
        subprocess.run([find_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                        f"--max-block-duration={BLOCK // 3600}h", path, tsdb], check=True, capture_output=True)
    finally:
        if os.path.exists(path):
            os.remove(path)
    return samples


def inlined_recording_rules() -> list[Record]:
    """The recording rules with every recorded name they read replaced by its expression, so one
    promtool pass computes them all from raw series (promtool cannot chain rules within a pass)."""
    records = [rule for group in groups(Settings()) for rule in group.rules if isinstance(rule, Record)]
    expanded: dict[str, str] = {}
    for rule in records:  # a rule only reads rules recorded before it
        expr = rule.expr
        for name, body in expanded.items():
            expr = re.sub(rf"\b{re.escape(name)}\b(?![{{\[])", f"({body})", expr)
        # a name recorded by several rules (disjoint label sets, e.g. per error class) is their union
        expanded[rule.record] = f"({expanded[rule.record]}) or ({expr})" if rule.record in expanded else expr
    return [Record(name, expr) for name, expr in expanded.items()]


def backfill_rules(base: str, start: int, end: int, work: str, records: list[Record]) -> str:
    """Blocks of the given recording rules over [start, end), in a directory of their own."""
    out = os.path.join(work, "recorded")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if not records:
        return out
    path = os.path.join(work, "recording.yml")
    rules = [{"record": r.record, "expr": r.expr} for r in records]
    Path(path).write_text(yaml.safe_dump({"groups": [{"name": "backfill", "rules": rules}]}))
    subprocess.run([find_binary("promtool"), "tsdb", "create-blocks-from", "rules", "--quiet", f"--url={base}",
                    f"--start={start}", f"--end={end}", f"--eval-interval={INTERVAL * 4}s", f"--output-dir={out}",
                    path], check=True, capture_output=True)
    return out


def blocks(tsdb: str) -> list[str]:
    return [entry for entry in os.listdir(tsdb) if os.path.exists(os.path.join(tsdb, entry, "meta.json"))]


def query(base: str, path: str, params: dict) -> tuple[list[dict], float, int]:
    """Result, Prometheus's own execution time in seconds and the samples it touched."""
    response = requests.get(f"{base}/api/v1/{path}", params={**params, "stats": "all"}, timeout=600)
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{params['query']}: {body.get('error')}")
    stats = body["data"]["stats"]
    return body["data"]["result"], stats["timings"]["execTotalTime"], stats["samples"]["totalQueryableSamples"]


def time_rule_groups(base: str, end: int) -> list[dict]:
    rows = []
    for group in rule_groups():
        totals, samples, slowest = [], 0, {}
        for ago in RULE_INSTANTS_AGO:
            spent = 0.0
            for rule in group["rules"]:
                _, seconds, touched = query(base, "query", {"query": rule["expr"], "time": end - ago})
                spent, samples = spent + seconds, max(samples, touched)
                name = rule.get("record") or " ".join([rule["alert"], *(f"{k}={v}" for k, v in rule["labels"].items())])
                slowest[name] = max(slowest.get(name, 0.0), seconds)
            totals.append(spent)
        rule, seconds = max(slowest.items(), key=lambda item: item[1])
        rows.append({"group": group["name"], "rules": len(group["rules"]), "median_s": statistics.median(totals),
                     "worst_s": max(totals), "max_samples": samples, "slowest_rule": rule, "slowest_rule_s": seconds,
                     "rule_worst_s": slowest})
    return rows


def label_values(base: str, query_text: str, values: dict[str, str], end: int) -> list[str]:
    """Grafana's label_values(selector, label), sorted as the variable sorts them (alphabetically)."""
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", query_text).groups()
    result, _, _ = query(base, "query", {"query": f"count by ({label}) ({substitute(selector, values)})", "time": end})
    return sorted(r["metric"][label] for r in result if label in r["metric"])


def default_selection(board: dict, base: str, end: int) -> dict[str, str]:
    """What each variable holds when the dashboard opens: All where it offers All, else its first value."""
    values: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        text = variable.get("query") or ""
        if not text.startswith("label_values("):
            continue  # the datasource, and derived variables resolved below
        if variable["includeAll"]:
            values[variable["name"]] = variable["allValue"] or ".*"
        else:
            values[variable["name"]] = next(iter(label_values(base, text, values, end)), "")
    return resolve_derived(board, base, values, at=end)


def time_panels(base: str, end: int) -> list[dict]:
    rows = []
    for uid, board in dashboard_json().items():
        selection = default_selection(board, base, end)
        for panel in board["panels"]:
            for hours in (1, 6):
                step = max(INTERVAL, hours * 3600 // panel.get("maxDataPoints", 100))
                values = {**selection, "__rate_interval": f"{max(step + INTERVAL, 4 * INTERVAL)}s"}
                runs, samples = [], 0
                for _ in range(REPEATS):
                    spent = 0.0
                    for target in panel["targets"]:
                        expr = substitute(target["expr"], values)
                        if target.get("instant"):
                            _, seconds, touched = query(base, "query", {"query": expr, "time": end})
                        else:
                            _, seconds, touched = query(base, "query_range", {
                                "query": expr, "start": end - hours * 3600, "end": end, "step": step})
                        spent, samples = spent + seconds, max(samples, touched)
                    runs.append(spent)
                rows.append({"dashboard": uid, "panel": panel["title"], "hours": hours,
                             "median_s": statistics.median(runs), "worst_s": max(runs), "max_samples": samples})
    return rows


def named(result: list[dict]) -> set[tuple[str, ...]]:
    return {(r["metric"]["instance"], r["metric"]["gpu"]) if "gpu" in r["metric"] else (r["metric"]["instance"],)
            for r in result}


def check_alerts(base: str, end: int, layout: data.Layout) -> list[str]:
    """Problems: an alert naming a GPU or node it should not, or missing one it should."""
    expected, problems = layout.expected_alerts(), []
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    for ago, faults_on in [(CALM_AGO, False), *((ago, True) for ago in ALERT_INSTANTS_AGO)]:
        found: dict[str, set] = {}
        for rule in alerts:
            result, _, _ = query(base, "query", {"query": rule["expr"], "time": end - ago})
            found.setdefault(rule["alert"], set()).update(named(result))
        for name, names in found.items():
            want = expected.get(name, set()) if faults_on else set()
            if names != want:
                problems.append(f"{name} {ago // 60} min before the end: extra {sorted(names - want)[:5]}, "
                                f"missing {sorted(want - names)[:5]}")
    return problems


def wait_for_compaction(tsdb: str, timeout: float = 7200) -> float:
    started = time.monotonic()
    while len(blocks(tsdb)) > 1 or [e for e in os.listdir(tsdb) if e.endswith(".tmp-for-creation")]:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"Prometheus still compacting {len(blocks(tsdb))} blocks after {timeout:.0f} s")
        time.sleep(5)
    return time.monotonic() - started


def backfill_raw(nodes: int, layout: data.Layout, start: int, steps: int, root: str, tsdb: str) -> dict:
    """The fleet's history as blocks in `tsdb`; what it cost, also kept in root/backfill.json for --dir reuse."""
    clock = time.monotonic()
    templates = data.capture_templates(os.path.join(root, "capture"))
    families = read_families() | {"up", data.c.GPU_JOB_INFO.name}
    templates = {name: {k: s for k, s in t.items() if s.name in families} for name, t in templates.items()}
    chunks = [range(first, min(first + CHUNK_NODES, nodes)) for first in range(0, nodes, CHUNK_NODES)]
    os.makedirs(tsdb)
    with ProcessPoolExecutor(max_workers=2) as pool:
        samples = sum(pool.map(backfill_chunk, [(templates, layout, chunk, start, steps, root, tsdb)
                                                for chunk in chunks]))
    cost = {"series_per_node": len(templates["healthy"]) + 9, "samples": samples,
            "backfill_s": time.monotonic() - clock, "start": start}
    Path(root, "backfill.json").write_text(json.dumps(cost))
    return cost


def missing_records(base: str, end: int) -> list[Record]:
    present = {r["metric"]["__name__"] for r in query(base, "query", {
        "query": 'count by (__name__) ({__name__=~".+:.+"})', "time": end})[0]}
    return [rule for rule in inlined_recording_rules() if rule.record not in present]


def run(nodes: int, hours: float, root: str) -> dict:
    """Backfills (unless root already holds this fleet's TSDB), then times and checks."""
    layout = data.Layout.spread(nodes)
    tsdb = os.path.join(root, "tsdb")
    steps = int(hours * 3600 / INTERVAL)
    if os.path.exists(os.path.join(root, "backfill.json")):
        report = json.loads(Path(root, "backfill.json").read_text())
    else:
        end = int(time.time()) // BLOCK * BLOCK
        report = backfill_raw(nodes, layout, end - steps * INTERVAL, steps, root, tsdb)
    start = report["start"]
    end = start + steps * INTERVAL
    report.update(nodes=nodes, gpus=nodes * 8, hours=hours)
    with prometheus([], interval="15s", data_dir=tsdb, ready_timeout=1800) as prom:
        clock = time.monotonic()
        recorded = backfill_rules(prom.base, start, end, root, missing_records(prom.base, end))
        report["rule_backfill_s"] = time.monotonic() - clock
        for block in blocks(recorded):
            shutil.move(os.path.join(recorded, block), tsdb)
        report["compaction_s"] = wait_for_compaction(tsdb)
        report["series"] = int(query(prom.base, "query", {"query": 'count({__name__=~".+"})', "time": end})[0][0]
                               ["value"][1])
        report["tsdb_bytes"] = sum(f.stat().st_size for f in Path(tsdb).rglob("*") if f.is_file())
        report["rule_groups"] = time_rule_groups(prom.base, end)
        report["panels"] = time_panels(prom.base, end)
        report["alert_problems"] = check_alerts(prom.base, end, layout)
    return report


def print_report(report: dict) -> None:
    print(f"{report['nodes']} nodes, {report['gpus']} GPUs, {report['hours']} h at {INTERVAL} s: "
          f"{report['series']:,} series ({report['series_per_node']} per node), {report['samples']:,} samples, "
          f"TSDB {report['tsdb_bytes'] / 2**30:.2f} GiB; backfill {report['backfill_s']:.0f} s, recording rules "
          f"{report['rule_backfill_s']:.0f} s, compaction {report['compaction_s']:.0f} s")
    print("\n| rule group | rules | median | worst | slowest rule (worst) |\n|---|---|---|---|---|")
    for row in report["rule_groups"]:
        print(f"| {row['group']} | {row['rules']} | {row['median_s'] * 1000:.0f} ms | {row['worst_s'] * 1000:.0f} ms | "
              f"{row['slowest_rule']} ({row['slowest_rule_s'] * 1000:.0f} ms) |")
    print("\n| dashboard | panels | median panel, 6 h | worst panel, 1 h | worst panel, 6 h | slowest panel (6 h) |")
    print("|---|---|---|---|---|---|")
    for uid in dashboard_json():
        rows = {h: [r for r in report["panels"] if r["dashboard"] == uid and r["hours"] == h] for h in (1, 6)}
        slowest = max(rows[6], key=lambda r: r["worst_s"])
        print(f"| {uid} | {len(rows[6])} | {statistics.median(r['median_s'] for r in rows[6]) * 1000:.0f} ms | "
              f"{max(r['worst_s'] for r in rows[1]) * 1000:.0f} ms | {slowest['worst_s'] * 1000:.0f} ms | "
              f"{slowest['panel']} |")
    problems = report["alert_problems"]
    print("\nalerts: " + ("exactly the faulty GPUs and nodes" if not problems else "\n  ".join(problems)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--dir", default="", help="work directory (default: a temporary one, removed after)")
    parser.add_argument("--results", default="", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    if args.hours * 3600 > BLOCK:
        parser.error(f"--hours: at most {BLOCK // 3600}")
    root = args.dir or tempfile.mkdtemp(prefix="gpuscope-scale-", dir="/var/tmp")
    try:
        report = run(args.nodes, args.hours, root)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if args.results:
        Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["alert_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
