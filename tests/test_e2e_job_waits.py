"""The rank a 48-GPU job waits for, among the traps, through real Prometheus and Alertmanager.

Eight simulated p5 nodes: job 4242 on nodes 0-5 (48 GPUs) whose first and last pipeline stages are
busier from the start, and job 4343 on nodes 6-7. Then job 4343 checkpoints (its GPUs idle, no
collectives) while GPU 5 of node-3 becomes the rank job 4242 waits for (scenario `job_waits`). Rule
durations are divided by 60 as in test_e2e_alerts.py. Exactly that GPU fires, from the hardware
and from NCCL Inspector alike, and reaches the webhook; nothing else fires at any time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from alerts.render import write_shortened_rules
from simulator.cluster import Cluster, load_scenario
from simulator.faults import Scenario
from simulator.stack import Prometheus, Webhook, alertmanager, prometheus, webhook_receiver
from tests.helpers import TWICE_A_SCRAPE
from tests.test_alertmanager import for_test
from tests.test_e2e_alerts import firing, key

pytestmark = pytest.mark.e2e

STRAGGLER = ("GpuStraggler", "node-3", "5")


def test_only_the_rank_the_job_waits_for_pages_and_both_sources_name_it(tmp_path):
    scenario = load_scenario("job_waits")
    with scenario_stack(tmp_path, scenario) as (cluster, prom, hook):
        seen, evidence = play_watching(cluster, scenario, prom, 30)  # past the checkpoint's end (60 s)
    assert seen == {STRAGGLER}, seen
    assert evidence == {(STRAGGLER, "busiest_gpu"), (STRAGGLER, "nccl_early_rank")}
    notified = {key(a["labels"]) for note in hook.received() for a in note["alerts"] if a["status"] == "firing"}
    assert notified == {STRAGGLER}
    assert {a["labels"]["severity"] for note in hook.received() for a in note["alerts"]} == {"critical"}


@contextmanager
def scenario_stack(tmp_path, scenario: Scenario) -> Iterator[tuple[Cluster, Prometheus, Webhook]]:
    """The scenario's nodes (its profile and jobs, GPM sampled every second), Prometheus with the rules
    shortened 60-fold and Alertmanager delivering to a webhook, every exporter scraped."""
    rules = write_shortened_rules(str(tmp_path / "rules.yml"), 60)
    cluster = Cluster(str(tmp_path), nodes=scenario.nodes, jobs=scenario.jobs, profile=scenario.profile,
                      interval=TWICE_A_SCRAPE, exporter_args=("--collector.gpu.gpm-interval=1s",))
    with cluster, webhook_receiver() as (url, hook), alertmanager(for_test(url)) as am:
        jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()],
                                                              "refresh_interval": "1s"}]}]
        with prometheus(jobs, rule_files=[rules], alertmanager=am) as prom:
            prom.wait_for(f'count(up{{job="gpuscope"}} == 1) == {scenario.nodes}')
            yield cluster, prom, hook


def play_watching(cluster: Cluster, scenario, prom, after: float) -> tuple[set, set]:
    """Plays the scenario's steps at their times, then `after` seconds more, recording every alert that
    fired and, per alert, its evidence label."""
    seen: set[tuple[str, str, str]] = set()
    evidence: set[tuple[tuple[str, str, str], str]] = set()

    def watch(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got, alerts = firing(prom)
            seen.update(got)
            evidence.update((key(a["labels"]), a["labels"].get("evidence", "")) for a in alerts)
            time.sleep(0.5)

    steps = list(scenario.steps)
    start = time.monotonic()
    while steps:
        while steps and steps[0].at <= time.monotonic() - start:
            cluster.apply(steps.pop(0))
        watch(0.5)
    watch(after)
    return seen, evidence
