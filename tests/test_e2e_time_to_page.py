"""Time to page, for every fault class with a target (issue 26), measured end to end.

Production's timing at 1/FACTOR of its length, in every part that delays a page: the exporters
scraped and the rules evaluated every second (15 s shipped), GPM sampled and NCCL RAS asked by the
leader every 667 ms (10 s shipped), RAS's own timeouts divided too, every rule duration divided by
FACTOR (`shorten_durations` keeps each window at four scrapes, as production's are), and the reference
Alertmanager routes with their group waits divided by FACTOR (a page's 10 s becomes 667 ms). The
simulated hardware moves every 250 ms (real counters move continuously).

For each scenario: from the injection to the first FIRING of an alert that names the fault in
Prometheus, and to its first notification at the webhook, times FACTOR, against the target. The
figures are printed (`pytest -s`) and kept in docs/alerts.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import yaml

from alerts.render import prometheus_duration, write_shortened_rules
from alerts.settings import SCRAPE_INTERVAL
from simulator.cluster import Cluster, load_scenario
from simulator.stack import alertmanager, prometheus, routed_to_webhook, webhook_receiver
from tests.helpers import wait_until
from tests.test_alertmanager import CONFIG
from tests.test_e2e_alerts import firing, key
from toolkit.durations import seconds

pytestmark = pytest.mark.e2e

FACTOR = 15  # the shipped 15 s scrape becomes 1 s
GPM_SECONDS = 10  # the exporter's default GPM sampling interval, and RAS's leader interval
SIMULATE_INTERVAL = "250ms"

# scenario -> (target in production seconds, the alerts that page for it); a page is the first of
# them to fire or be notified, naming the scenario's node (and GPU where the alert names one).
TARGETS: dict[str, tuple[int, set[tuple[str, str, str]]]] = {
    # A kernel log line alone, first: its page stays up for the XID window (10 minutes), which the
    # faults judged against their peers do not wait out (LOG_ONLY) and gpu_lost's XID comes after.
    "kernel_xid": (30, {("GpuXidCritical", "node-3", "6")}),
    # Judged against the job or the cluster (its medians, its collectives): played one after another
    # once nothing but a log line's page is active, so no earlier fault is still inside their windows.
    "efa_stall": (60, {("EfaTrafficStalled", "node-2", "")}),
    "nccl_hang": (90, {("NcclCollectiveHang", "node-2", "5")}),
    "nccl_process_dead": (90, {("NcclCollectiveHang", "node-1", "2"), ("NcclRankDead", "node-1", "2")}),
    "nccl_hang_inspector": (120, {("NcclCollectiveHang", f"node-{n}", "") for n in range(4)}),
    "collective_stall": (120, {("CollectiveStall", f"node-{n}", "") for n in range(4)}),
    "straggler": (150, {("GpuStraggler", "node-1", "5")}),
    "compute_straggler": (180, {("GpuStraggler", "node-1", "5")}),
    "nccl_late_arrival": (180, {("GpuStraggler", "node-2", "3")}),
    # Judged on their node's own series (LOCAL): each waits only for its own alerts' groups to be quiet.
    "gpu_lost": (30, {("GpuXidCritical", "node-3", "6"), ("GpuLost", "node-3", "6")}),
    "thermal_throttle": (60, {("GpuThermalThrottling", "node-1", "3")}),
    "dcgm_health_fail": (60, {("GpuDcgmHealthFailing", "node-3", "6")}),
    "efa_retransmit_storm": (90, {("EfaRetransmitTimeouts", "node-3", ""),
                                  ("EfaRemoteConnectionImpaired", "node-3", "")}),
}
LOCAL = {"kernel_xid", "gpu_lost", "thermal_throttle", "dcgm_health_fail", "efa_retransmit_storm"}
LOG_ONLY = {"GpuXidCritical"}  # paged from a kernel log record, which is inside no peer's window


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Four p5.48xlarge nodes (node-3 reading profiling and health from DCGM, as an A100 does),
    Prometheus with the shortened rules, the reference Alertmanager routes."""
    root = tmp_path_factory.mktemp("time-to-page")
    scrape = seconds(SCRAPE_INTERVAL) / FACTOR
    rules = write_shortened_rules(str(root / "rules.yml"), FACTOR, scrape_seconds=scrape)
    sampling = prometheus_duration(GPM_SECONDS / FACTOR)
    cluster = Cluster(str(root), nodes=4, interval=SIMULATE_INTERVAL, ras_interval=sampling,
                      ras_timeout_factor=1 / FACTOR, exporter_args=(f"--collector.gpu.gpm-interval={sampling}",),
                      node_args={3: ("--collector.gpu.profiling=dcgm",)})  # as an A100: profiling, health from DCGM
    with ExitStack() as started:
        started.enter_context(cluster)
        url, hook = started.enter_context(webhook_receiver())
        routes = routed_to_webhook(yaml.safe_load(CONFIG.read_text()), url, FACTOR)
        targets = {"files": [cluster.write_targets()], "refresh_interval": "1s"}
        prom = started.enter_context(prometheus(
            [{"job_name": "gpuscope", "file_sd_configs": [targets]}], interval=prometheus_duration(scrape),
            rule_files=[rules], alertmanager=started.enter_context(alertmanager(routes))))
        prom.wait_for('count(up{job="gpuscope"} == 1) == 4')
        yield cluster, prom, hook


@pytest.mark.parametrize("name", list(TARGETS))
def test_the_page_comes_within_its_target(stack, name):
    """The scenario's faults injected at once: an alert naming them is notified within the target."""
    cluster, prom, hook = stack
    target, pages = TARGETS[name]
    groups = {(alert, node) for alert, node, _ in pages}
    if name in LOCAL:
        quiet(prom, hook, name, lambda group: group in groups)
    else:
        quiet(prom, hook, name, lambda group: group[0] not in LOG_ONLY)
    before = len(hook.received())
    start = time.monotonic()
    for step in load_scenario(name).steps:
        if step.fault:
            cluster.inject(step.node, step.fault)
    fired = notified = None
    try:
        while notified is None:
            now = time.monotonic() - start
            assert now * FACTOR < 2 * target, f"{name}: no page after {now * FACTOR:.0f} s (fired: {fired})"
            if fired is None and firing(prom)[0] & pages:
                fired = now
            if {key(a["labels"]) for note in hook.received()[before:] for a in note["alerts"]} & pages:
                notified = now
            time.sleep(0.05)
    finally:
        cluster.clear("job")
        for node in range(4):
            cluster.clear(node)
    fired = notified if fired is None else fired
    print(f"\n{name}: firing {fired * FACTOR:.0f} s, notified {notified * FACTOR:.0f} s, target {target} s")
    assert notified * FACTOR <= target, (f"{name}: paged {notified * FACTOR:.0f} s after the fault (firing after "
                                         f"{fired * FACTOR:.0f} s), target {target} s")


def quiet(prom, hook, name: str, counts: Callable[[tuple[str, str]], bool]) -> None:
    """Waits until nothing is pending or firing in Prometheus (a pending alert of the previous scenario
    would fire early in this one) and every alert notified has been notified resolved (a new alert
    joining a group Alertmanager still holds waits for that group's next interval, not a group wait),
    of the alerts whose group (alertname, instance: the reference routes' grouping) `counts`: a fault
    judged on its node's own series waits only for its own groups, the others for all but a log
    line's page (issue 30: waiting out XID windows was 80 s of this module's 172)."""
    def group(labels: dict[str, str]) -> tuple[str, str]:
        return labels["alertname"], labels.get("instance", "")

    def active() -> list[dict]:
        return [a for a in prom.alerts() if counts(group(a["labels"]))]

    def unresolved() -> set[frozenset]:
        last = {frozenset(a["labels"].items()): a["status"] for note in hook.received() for a in note["alerts"]
                if counts(group(a["labels"]))}
        return {labels for labels, status in last.items() if status == "firing"}

    wait_until(lambda: not active() and not unresolved(), 120,
               lambda: f"before {name}: active {active()}, notified unresolved {unresolved()}")
