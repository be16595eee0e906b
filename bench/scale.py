"""Cluster scale: rule groups and dashboard panels timed on a backfilled fleet of simulated p5 nodes.

Writes `--hours` (default 6) of history at a 15 s interval for `--nodes` simulated p5.48xlarge nodes
in a job mix with faults (series shapes from the simulator: bench/scale_data.py), into one or both
engines (`--engine`):

- Prometheus: `promtool tsdb create-blocks-from openmetrics`, then the recording rules with
  `promtool tsdb create-blocks-from rules` in passes (a pass computes the records whose inputs are
  in the TSDB, records read at an instant inlined), Prometheus 2.42 on that TSDB; times by its own
  execTotalTime (`stats=all`).
- VictoriaMetrics single-node: the same series through /api/v1/import, the recording rules by
  vmalert's replay mode, level by level (a level reads only records of the ones before); times by the wall clock of
  each query (caches off: `-search.disableCache`), as vmalert waits for them.

On each engine, through the HTTP API:

- every rule of every group at several instants (a group's time is the sum of its rules', as the
  rule manager and vmalert evaluate them one after the other);
- every dashboard panel query over 1 h and 6 h with the default template selections, with the
  step and $__rate_interval Grafana would use (a panel's time is the sum of its queries');

and checks that the alerts name exactly the faulty GPUs, ranks and nodes, nothing before the faults,
and that GPU time is lost by exactly each fault's job and cause. Only the metric families some rule
or panel reads are backfilled (the others cost index space, not query time). Run:

    python -m bench.scale --nodes 256 [--engine both] [--dir /var/tmp/gpuscope-scale] [--results FILE.json]
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
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from alerts.records import LOST_JOB
from alerts.render import prometheus_rules
from alerts.rules import Record, groups
from alerts.settings import Settings
from bench import scale_data as data
from dashboards.build import dashboard_json
from dashboards.render import resolve_derived, substitute
from simulator.stack import find_binary, prometheus, victoria_metrics

INTERVAL = 15
BLOCK = 6 * 3600  # backfill one aligned 6 h block per promtool run: one pass over each input file
CHUNK_NODES = 32  # nodes per backfill file (about 6 GB of OpenMetrics text)
RECORD_STEP = 60  # the recording rules' history is computed at this step
RULE_INSTANTS_AGO = (5 * 3600, 4 * 3600, 3 * 3600, 5400, 2400, 60)  # seconds before the end
ALERT_INSTANTS_AGO = (2400, 1200, 60)  # inside the fault window, past every `for:`
CALM_AGO = 3 * 3600  # before the faults: nothing may fire
LOSS_AGO = 60
REPEATS = 3
ENGINES = ("prometheus", "victoria")
# VictoriaMetrics' query limits sized for a fleet (the defaults refuse a query over 300,000 series).
# -maxInsertRequestSize: vmalert's replay sends a per-GPU record's batch in one request (49 MB at
# 4,096 nodes); past the default 32 MiB VictoriaMetrics refuses it and vmalert drops the records.
VICTORIA_FLAGS = ("-maxInsertRequestSize=1073741824", "-search.maxUniqueTimeseries=100000000",
                  "-search.maxQueryDuration=600s",
                  "-search.maxSamplesPerQuery=100000000000", "-search.maxQueryLen=1048576",
                  "-search.maxPointsPerTimeseries=100000")


@dataclass(frozen=True)
class Engine:
    """An engine's Prometheus query API, timed as the engine itself would time a rule evaluation."""

    name: str
    base: str

    def query(self, path: str, params: dict) -> tuple[list[dict], float]:
        """Result and seconds spent: Prometheus's own execTotalTime, VictoriaMetrics' wall clock."""
        clock = time.perf_counter()
        extra = {"stats": "all"} if self.name == "prometheus" else {}
        response = requests.get(f"{self.base}/api/v1/{path}", params={**params, **extra}, timeout=900)
        spent = time.perf_counter() - clock
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"{self.name}: {params['query']}: {body.get('error')}")
        if self.name == "prometheus":
            spent = body["data"]["stats"]["timings"]["execTotalTime"]
        return body["data"]["result"], spent

    def at(self, expr: str, when: int) -> list[dict]:
        return self.query("query", {"query": expr, "time": when})[0]

    def rss(self) -> int:
        text = requests.get(f"{self.base}/metrics", timeout=30).text
        return int(float(re.search(r"^process_resident_memory_bytes (\S+)$", text, re.M)[1]))


def tool(*command: str, timeout: float = 4 * 3600) -> str:
    """Runs a tool; its own error output if it fails, else that output (warnings a tool exits 0 after)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stderr


def rule_groups() -> list[dict]:
    """The generated rule groups, as Prometheus loads them."""
    return prometheus_rules(groups(Settings()), Settings())["groups"]


def read_families() -> set[str]:
    """Metric names some rule or dashboard panel reads."""
    text = json.dumps(rule_groups()) + json.dumps(dashboard_json())
    return set(re.findall(r"\bgpuscope_[a-z0-9_]+", text))


# --- the raw history ---------------------------------------------------------------------------------


def backfill_chunk(args: tuple) -> int:
    """One chunk of nodes written and loaded into each engine; returns its samples."""
    templates, layout, nodes, window, work, tsdb, victoria = args
    writers = []
    if tsdb:
        writers.append(data.Writer(os.path.join(work, f"chunk-{nodes.start}.om"), window, victoria=False))
    if victoria:
        writers.append(data.Writer(os.path.join(work, f"chunk-{nodes.start}.jsonl"), window, victoria=True))
    try:
        data.write_history(writers, templates, layout, nodes, window)
        for writer in writers:
            writer.close()
            if writer.victoria:
                with open(writer.path, "rb") as body:
                    requests.post(f"{victoria}/api/v1/import", data=body, timeout=3600).raise_for_status()
            else:
                tool(find_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                     f"--max-block-duration={BLOCK // 3600}h", writer.path, tsdb)
    finally:
        for writer in writers:
            if os.path.exists(writer.path):
                os.remove(writer.path)
    return writers[0].samples


def backfill_raw(layout: data.Layout, window: data.Window, root: str, engines: tuple[str, ...]) -> dict:
    """The fleet's history into each engine's storage under root; what it cost, also kept in
    root/backfill.json for --dir reuse."""
    clock = time.monotonic()
    templates = data.capture_templates(root)
    families = read_families()
    templates = {name: {k: s for k, s in t.items() if s.name in families} for name, t in templates.items()}
    chunks = [range(first, min(first + CHUNK_NODES, layout.nodes)) for first in range(0, layout.nodes, CHUNK_NODES)]
    tsdb = os.path.join(root, "tsdb") if "prometheus" in engines else ""
    if tsdb:
        os.makedirs(tsdb)
    with victoria_store(root, "victoria" in engines) as victoria, ProcessPoolExecutor(max_workers=2) as pool:
        samples = sum(pool.map(backfill_chunk, [(templates, layout, chunk, window, root, tsdb, victoria)
                                                for chunk in chunks]))
        if victoria:
            flush(victoria)
    cost = {"engines": list(engines), "series_per_node": {role: len(t) for role, t in templates.items()},
            "samples": samples, "backfill_s": time.monotonic() - clock, "start": window.start}
    Path(root, "backfill.json").write_text(json.dumps(cost))
    return cost


def flush(victoria: str) -> None:
    """VictoriaMetrics' buffers into searchable parts: what was imported or written is queryable after."""
    requests.get(f"{victoria}/internal/force_flush", timeout=600).raise_for_status()


@contextmanager
def victoria_store(root: str, wanted: bool = True) -> Iterator[str]:
    """VictoriaMetrics on root/victoria (its base URL), or "" when not wanted."""
    if not wanted:
        yield ""
        return
    with victoria_metrics(os.path.join(root, "victoria"), VICTORIA_FLAGS, ready_timeout=600) as vm:
        yield vm.base


# --- recording rules ---------------------------------------------------------------------------------


def _records() -> list[Record]:
    """The recording rules as shipped (rendered: the scrape job's selector in), as vmalert replays them too."""
    return [Record(rule["record"], rule["expr"]) for group in rule_groups() for rule in group["rules"]
            if "record" in rule]


def _reads(expr: str, name: str) -> tuple[bool, bool]:
    """(read at all, read through a selector, a range or an offset: a series that must exist)."""
    found = re.findall(rf"\b{re.escape(name)}\b(\s*(?:[{{\[]|offset\b))?", expr)
    return bool(found), any(found)


def computable(records: list[Record], present: set[str]) -> list[Record]:
    """The missing records one promtool pass computes: each record its rule reads through a selector,
    range or offset already in the TSDB; one read at an instant and not yet there inlined. A name
    several rules record (disjoint label sets) is their union."""
    names = {rule.record for rule in records}
    bodies: dict[str, str] = {}
    blocked: set[str] = set()
    for rule in records:
        if rule.record in present or rule.record in blocked:
            continue
        expr, ok = rule.expr, True
        for name in sorted(names - present, key=len, reverse=True):
            read, hard = _reads(expr, name)
            if not read:
                continue
            if hard or name not in bodies:
                ok = False
                break
            # `group_left name` takes a parenthesis after it for its label list: give it an empty one
            expr = re.sub(r"\b(group_(?:left|right))\s+(?!\()", r"\1 () ", expr)
            expr = re.sub(rf"\b{re.escape(name)}\b", f"({bodies[name]})", expr)
        if not ok:
            blocked.add(rule.record)
            bodies.pop(rule.record, None)
            continue
        bodies[rule.record] = f"({bodies[rule.record]}) or ({expr})" if rule.record in bodies else expr
    return [Record(name, expr) for name, expr in bodies.items()]


def present_records(engine: Engine, window: data.Window) -> set[str]:
    return {r["metric"]["__name__"] for r in engine.at('count by (__name__) ({__name__=~".+:.+"})', window.end)}


def backfill_records_prometheus(root: str, window: data.Window) -> int:
    """Recording rules into root/tsdb in passes, Prometheus restarted between them so that the
    next pass reads the last one's blocks; returns the number of passes."""
    tsdb, records, attempted, passes = os.path.join(root, "tsdb"), _records(), set(), 0
    while True:
        out = os.path.join(root, "recorded")
        shutil.rmtree(out, ignore_errors=True)
        with prometheus([], interval="15s", data_dir=tsdb, ready_timeout=1800) as prom:
            engine = Engine("prometheus", prom.base)
            plan = [r for r in computable(records, present_records(engine, window)) if r.record not in attempted]
            if not plan:
                return passes
            attempted |= {rule.record for rule in plan}
            path = os.path.join(root, "recording.yml")
            rules = [{"record": rule.record, "expr": rule.expr} for rule in plan]
            Path(path).write_text(yaml.safe_dump({"groups": [{"name": "backfill", "rules": rules}]}))
            tool(find_binary("promtool"), "tsdb", "create-blocks-from", "rules", "--quiet", f"--url={prom.base}",
                 f"--start={window.start}", f"--end={window.end}", f"--eval-interval={RECORD_STEP}s",
                 f"--output-dir={out}", path)
        for block in blocks(out):
            shutil.move(os.path.join(out, block), tsdb)
        passes += 1


def replay_levels(rule_set: list[dict]) -> list[list[dict]]:
    """The recording rules in levels, each group keeping its name and order: a rule reads records of
    earlier levels only. vmalert replays one level's groups one after the other; VictoriaMetrics is
    flushed before the next level, whose rules then find every record they read."""
    records = [(g["name"], r) for g in rule_set for r in g["rules"] if "record" in r]
    reads = {id(rule): {other["record"] for _, other in records if _reads(rule["expr"], other["record"])[0]}
             for _, rule in records}
    level = dict.fromkeys((rule["record"] for _, rule in records), 0)
    for _ in records:  # to a fixed point: a rule may read a record written further down the file
        for _, rule in records:
            level[rule["record"]] = max(level[rule["record"]], *(level[name] + 1 for name in reads[id(rule)]), 0)
    out: list[list[dict]] = []
    for depth in range(max(level.values(), default=-1) + 1):
        groups: dict[str, list[dict]] = {}
        for name, rule in records:
            if level[rule["record"]] == depth:
                groups.setdefault(name, []).append(rule)
        out.append([{"name": name, "rules": rules} for name, rules in groups.items()])
    return out


def backfill_records_victoria(base: str, root: str, window: data.Window) -> int:
    """vmalert's replay mode over the history at the recording step, written back to VictoriaMetrics,
    level by level (replay_levels). Returns the number of levels."""
    path = os.path.join(root, "replay.yml")
    iso = lambda at: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))  # noqa: E731
    requests.post(f"{base}/api/v1/admin/tsdb/delete_series", data={"match[]": '{__name__=~".+:.+"}'},
                  timeout=600).raise_for_status()
    levels = replay_levels(rule_groups())
    for groups_of_level in levels:
        Path(path).write_text(yaml.safe_dump({"groups": [{**g, "interval": f"{RECORD_STEP}s"}
                                                         for g in groups_of_level]}))
        errors = tool(find_binary("vmalert"), f"-rule={path}", f"-datasource.url={base}", f"-remoteWrite.url={base}",
                      f"-replay.timeFrom={iso(window.start)}", f"-replay.timeTo={iso(window.end)}",
                      "-replay.disableProgressBar", "-remoteWrite.maxQueueSize=100000000",
                      "-remoteWrite.maxBatchSize=50000", "-remoteWrite.flushInterval=1s", "-loggerLevel=ERROR")
        if "dropping" in errors:  # vmalert exits 0 after dropping what it could not write
            raise RuntimeError(f"vmalert's replay dropped records: {errors[-2000:]}")
        flush(base)
    return len(levels)


# --- measurements --------------------------------------------------------------------------------------


def blocks(tsdb: str) -> list[str]:
    return [entry for entry in os.listdir(tsdb) if os.path.exists(os.path.join(tsdb, entry, "meta.json"))]


def rule_label(rule: dict) -> str:
    return rule.get("record") or " ".join([rule["alert"], *(f"{k}={v}" for k, v in rule["labels"].items())])


def time_rule_groups(engine: Engine, window: data.Window) -> list[dict]:
    rows = []
    for group in rule_groups():
        totals, slowest = [], {}
        for ago in RULE_INSTANTS_AGO:
            spent = 0.0
            for rule in group["rules"]:
                _, seconds = engine.query("query", {"query": rule["expr"], "time": window.end - ago})
                spent += seconds
                slowest[rule_label(rule)] = max(slowest.get(rule_label(rule), 0.0), seconds)
            totals.append(spent)
        rule, seconds = max(slowest.items(), key=lambda item: item[1])
        rows.append({"group": group["name"], "rules": len(group["rules"]), "median_s": statistics.median(totals),
                     "worst_s": max(totals), "slowest_rule": rule, "slowest_rule_s": seconds, "rule_worst_s": slowest})
    return rows


def label_values(engine: Engine, query_text: str, values: dict[str, str], end: int) -> list[str]:
    """Grafana's label_values(selector, label), sorted as the variable sorts them (alphabetically)."""
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", query_text).groups()
    result = engine.at(f"count by ({label}) ({substitute(selector, values)})", end)
    return sorted(r["metric"][label] for r in result if label in r["metric"])


def default_selection(board: dict, engine: Engine, end: int) -> dict[str, str]:
    """What each variable holds when the dashboard opens: All where it offers All, else its first value."""
    values: dict[str, str] = {}
    for variable in board["templating"]["list"]:
        text = variable.get("query") or ""
        if not text.startswith("label_values("):
            continue  # the datasource, and derived variables resolved below
        if variable["includeAll"]:
            values[variable["name"]] = variable["allValue"] or ".*"
        else:
            values[variable["name"]] = next(iter(label_values(engine, text, values, end)), "")
    return resolve_derived(board, engine.base, values, at=end)


def time_panels(engine: Engine, end: int) -> list[dict]:
    rows = []
    for uid, board in dashboard_json().items():
        selection = default_selection(board, engine, end)
        for panel in board["panels"]:
            for hours in (1, 6):
                step = max(INTERVAL, hours * 3600 // panel.get("maxDataPoints", 100))
                values = {**selection, "__rate_interval": f"{max(step + INTERVAL, 4 * INTERVAL)}s"}
                runs = []
                for _ in range(REPEATS):
                    spent = 0.0
                    for target in panel["targets"]:
                        expr = substitute(target["expr"], values)
                        if target.get("instant"):
                            spent += engine.query("query", {"query": expr, "time": end})[1]
                        else:
                            spent += engine.query("query_range", {"query": expr, "start": end - hours * 3600,
                                                                  "end": end, "step": step})[1]
                    runs.append(spent)
                rows.append({"dashboard": uid, "panel": panel["title"], "hours": hours,
                             "median_s": statistics.median(runs), "worst_s": max(runs)})
    return rows


def named(result: list[dict]) -> set[tuple[str, ...]]:
    return {(r["metric"]["instance"], r["metric"]["gpu"]) if "gpu" in r["metric"] else (r["metric"]["instance"],)
            for r in result}


def check_alerts(engine: Engine, window: data.Window, layout: data.Layout) -> list[str]:
    """Problems: an alert naming a GPU or node it should not, or missing one it should."""
    problems = []
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    for ago, faults_on in [(CALM_AGO, False), *((ago, True) for ago in ALERT_INSTANTS_AGO)]:
        expected, found = layout.expected_alerts(ago), {}
        for rule in alerts:
            found.setdefault(rule["alert"], set()).update(named(engine.at(rule["expr"], window.end - ago)))
        for name, names in found.items():
            want = expected.get(name, set()) if faults_on else set()
            if names != want:
                problems.append(f"{name} {ago // 60} min before the end: extra {sorted(names - want)[:5]}, "
                                f"missing {sorted(want - names)[:5]}")
    return problems


def check_losses(engine: Engine, window: data.Window, layout: data.Layout) -> list[str]:
    """Problems: GPU time lost by a job and cause no fault explains, or a fault's loss not recorded."""
    found = {(r["metric"]["job_id"], r["metric"]["cause"])
             for r in engine.at(f"{LOST_JOB} > 0.01", window.end - LOSS_AGO)}
    want = layout.expected_losses()
    return [f"GPU time lost by {job} ({cause}) {'without a fault' if (job, cause) in found - want else 'not recorded'}"
            for job, cause in sorted(found ^ want)]


def measure(engine: Engine, window: data.Window, layout: data.Layout) -> dict:
    series = engine.at('count({__name__=~".+"})', window.end)
    result = {"series": int(series[0]["value"][1]), "rule_groups": time_rule_groups(engine, window)}
    rss = engine.rss()
    result["panels"] = time_panels(engine, window.end)
    result["rss_bytes"] = max(rss, engine.rss())
    result["alert_problems"] = check_alerts(engine, window, layout) + check_losses(engine, window, layout)
    return result


def wait_for_compaction(tsdb: str, timeout: float = 7200) -> float:
    started = time.monotonic()
    while len(blocks(tsdb)) > 1 or [e for e in os.listdir(tsdb) if e.endswith(".tmp-for-creation")]:
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"Prometheus still compacting {len(blocks(tsdb))} blocks after {timeout:.0f} s")
        time.sleep(5)
    return time.monotonic() - started


def disk_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measure_prometheus(root: str, window: data.Window, layout: data.Layout) -> dict:
    tsdb, clock = os.path.join(root, "tsdb"), time.monotonic()
    passes = backfill_records_prometheus(root, window)
    report = {"record_passes": passes, "record_backfill_s": time.monotonic() - clock}
    with prometheus([], interval="15s", data_dir=tsdb, ready_timeout=1800) as prom:
        report["compaction_s"] = wait_for_compaction(tsdb)
        report.update(measure(Engine("prometheus", prom.base), window, layout))
    report["disk_bytes"] = disk_bytes(tsdb)
    return report


def measure_victoria(root: str, window: data.Window, layout: data.Layout) -> dict:
    with victoria_store(root) as base:
        clock = time.monotonic()
        levels = backfill_records_victoria(base, root, window)
        report = {"record_levels": levels, "record_backfill_s": time.monotonic() - clock}
        report.update(measure(Engine("victoria", base), window, layout))
    report["disk_bytes"] = disk_bytes(os.path.join(root, "victoria"))
    return report


def run(nodes: int, hours: float, root: str, engines: tuple[str, ...]) -> dict:
    """Backfills (unless root already holds this fleet's history), then times and checks each engine."""
    layout = data.Layout.spread(nodes)
    steps = int(hours * 3600 / INTERVAL)
    saved = Path(root, "backfill.json")
    if saved.exists():
        report = json.loads(saved.read_text())
        if missing := set(engines) - set(report["engines"]):
            raise SystemExit(f"--dir {root}: backfilled for {', '.join(report['engines'])}, not {', '.join(missing)}")
    else:
        end = int(time.time()) // BLOCK * BLOCK
        report = backfill_raw(layout, data.Window(end - steps * INTERVAL, steps, INTERVAL), root, engines)
    window = data.Window(report["start"], steps, INTERVAL)
    report.update(nodes=nodes, gpus=nodes * data.GPUS, hours=hours, fleet=layout.describe())
    if "prometheus" in engines:
        report["prometheus"] = measure_prometheus(root, window, layout)
    if "victoria" in engines:
        report["victoria"] = measure_victoria(root, window, layout)
    return report


def print_report(report: dict) -> None:
    per_node = report["series_per_node"]
    print(f"{report['nodes']} nodes, {report['gpus']} GPUs, {report['hours']} h at {INTERVAL} s: "
          f"{report['samples']:,} samples ({min(per_node.values())}-{max(per_node.values())} series a node), "
          f"backfill {report['backfill_s']:.0f} s; jobs {report['fleet']['jobs']}, "
          f"{report['fleet']['idle_nodes']} idle nodes")
    for name in ENGINES:
        if name not in report:
            continue
        result = report[name]
        print(f"\n## {name}: {result['series']:,} series, disk {result['disk_bytes'] / 2**30:.2f} GiB, "
              f"RSS {result['rss_bytes'] / 2**30:.2f} GiB, recording rules {result['record_backfill_s']:.0f} s")
        print("\n| rule group | rules | median | worst | slowest rule (worst) |\n|---|---|---|---|---|")
        for row in result["rule_groups"]:
            print(f"| {row['group']} | {row['rules']} | {row['median_s'] * 1000:.0f} ms | "
                  f"{row['worst_s'] * 1000:.0f} ms | {row['slowest_rule']} ({row['slowest_rule_s'] * 1000:.0f} ms) |")
        print("\n| dashboard | panels | median panel, 6 h | worst panel, 1 h | worst panel, 6 h | "
              "slowest panel (6 h) |\n|---|---|---|---|---|---|")
        for uid in dashboard_json():
            rows = {h: [r for r in result["panels"] if r["dashboard"] == uid and r["hours"] == h] for h in (1, 6)}
            slowest = max(rows[6], key=lambda r: r["worst_s"])
            print(f"| {uid} | {len(rows[6])} | {statistics.median(r['median_s'] for r in rows[6]) * 1000:.0f} ms | "
                  f"{max(r['worst_s'] for r in rows[1]) * 1000:.0f} ms | {slowest['worst_s'] * 1000:.0f} ms | "
                  f"{slowest['panel']} |")
        problems = result["alert_problems"]
        print("\nalerts and losses: " + ("exactly the faulty GPUs, ranks, nodes and jobs" if not problems
                                         else "\n  ".join(problems)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--engine", choices=(*ENGINES, "both"), default="both")
    parser.add_argument("--dir", default="", help="work directory (default: a temporary one, removed after)")
    parser.add_argument("--results", default="", help="also write the measurements to this JSON file")
    args = parser.parse_args()
    if args.hours * 3600 > BLOCK:
        parser.error(f"--hours: at most {BLOCK // 3600}")
    engines = ENGINES if args.engine == "both" else (args.engine,)
    root = args.dir or tempfile.mkdtemp(prefix="gpuscope-scale-", dir="/var/tmp")
    os.makedirs(root, exist_ok=True)
    try:
        report = run(args.nodes, args.hours, root, engines)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print_report(report)
    if args.results:
        Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(report[name]["alert_problems"] for name in engines) else 0


if __name__ == "__main__":
    sys.exit(main())
