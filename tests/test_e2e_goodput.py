"""What each fault costs, end to end: the goodput records on a simulated cluster through real Prometheus.

Four simulated p5.48xlarge nodes, job 4242 on nodes 0-1 and job 4343 on nodes 2-3 (16 GPUs each),
the generated rules with durations divided by 60 (5-minute averages over 5 s). For each fault of
the table the job's loss by cause must come within 5 % of what the simulator injected, every other
cause of that job stay near 0, and everything return to 0 once the fault is cleared. A firing
alert's `cost` annotation names the loss of the jobs on its node.
"""

from __future__ import annotations

import re
import time

import pytest

from alerts import records
from alerts.render import write_shortened_rules
from simulator.cluster import Cluster
from simulator.faults import WAITING_EXEC
from simulator.stack import prometheus
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

JOBS = (("4242", (0, 1)), ("4343", (2, 3)))
GPUS_PER_JOB = 16
# fault, where -> (job, cause, GPUs' worth of time lost): what the simulator does, worked out by hand.
TABLE = {
    "collective_stall": ("job:4242", {"kind": "collective_stall"}, "4242", "stall", GPUS_PER_JOB),
    # 15 ranks take 1.7 times as long in their collectives: the job's GPUs wait 1 - 1/1.7 of the time.
    "compute_straggler": ("job:4343", {"kind": "compute_straggler", "node": 2, "gpu": 5}, "4343", "straggler",
                          GPUS_PER_JOB * (1 - 1 / WAITING_EXEC)),
    "thermal_throttle": (1, {"kind": "thermal_throttle", "gpu": 3}, "4242", "throttle", 1 - 0.6),
    "gpu_lost": (3, {"kind": "gpu_lost", "gpu": 6}, "4343", "lost_gpu", GPUS_PER_JOB),
    "checkpoint": ("job:4343", {"kind": "checkpoint"}, "4343", "idle_allocated", GPUS_PER_JOB),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("goodput")
    with Cluster(str(root), nodes=4, jobs=JOBS, exporter_args=("--collector.gpu.gpm-interval=1s",)) as cluster:
        jobs = [{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()],
                                                              "refresh_interval": "1s"}]}]
        with prometheus(jobs, rule_files=[write_shortened_rules(str(root / "rules.yml"), 60)]) as prom:
            prom.wait_for(f'count({records.LOST_JOB}) == {2 * len(records.CAUSES)}', timeout=60)
            time.sleep(10)  # the job baselines have a healthy past
            yield cluster, prom


def losses(prom, job: str) -> dict[str, float]:
    return {r["metric"]["cause"]: float(r["value"][1]) for r in prom.query(f'{records.LOST_JOB}{{job_id="{job}"}}')}


def test_a_healthy_cluster_loses_nothing(stack):
    _, prom = stack
    for job, _ in JOBS:
        assert losses(prom, job) == dict.fromkeys(records.CAUSES, 0.0)
    assert float(prom.query(records.GOODPUT)[0]["value"][1]) == 1.0


# Faults of different jobs played at once: a job's losses are its own GPUs' (issue 30's suite time).
ROUNDS = (("collective_stall", "compute_straggler"), ("thermal_throttle", "gpu_lost"), ("checkpoint",))


def test_the_faults_played_at_once_are_each_of_another_job():
    assert sorted(name for names in ROUNDS for name in names) == sorted(TABLE)
    for names in ROUNDS:
        assert len({TABLE[name][2] for name in names}) == len(names), names


@pytest.mark.parametrize("names", ROUNDS, ids="+".join)
def test_each_fault_costs_what_was_injected(stack, names):
    cluster, prom = stack
    for name in names:
        cluster.inject(*TABLE[name][:2])
    try:
        for name in names:
            costs_what_was_injected(prom, name)
    finally:
        for name in names:
            cluster.clear(TABLE[name][0])
    for name in names:
        job = TABLE[name][2]
        wait_until(lambda job=job: max(losses(prom, job).values()) < 0.01, 60,
                   lambda name=name, job=job: f"{name}: job {job} still loses after the fault cleared: "
                                              f"{losses(prom, job)}", pause=0.5)


def costs_what_was_injected(prom, name: str) -> None:
    """The fault's job loses what was injected, by its cause, and nearly nothing by any other."""
    _, _, job, cause, expected = TABLE[name]

    def settled() -> dict[str, float] | None:
        got = losses(prom, job)
        return got if abs(got.get(cause, 0) - expected) <= 0.05 * expected else None

    got = wait_until(settled, 60, lambda: f"{name}: {cause} of job {job} never came within 5 % of "
                                          f"{expected:.2f}: {losses(prom, job)}", pause=0.5)
    others = {c: v for c, v in got.items() if c != cause and v > 0.05 * expected}
    assert others == {}, f"{name}: other causes of job {job} also lost time: {others}"


def test_a_stall_halves_goodput_and_its_alert_says_what_it_costs(stack):
    cluster, prom = stack
    cluster.inject("job:4242", {"kind": "collective_stall"})
    try:
        wait_until(lambda: abs(float(prom.query(records.GOODPUT)[0]["value"][1]) - 0.5) <= 0.025, 60,
                   lambda: f"goodput {prom.query(records.GOODPUT)}", pause=1)
        cost = re.compile(r"The jobs on node-0 lose ([\d.]+) GPUs' worth of time, \$(\d+) an hour")

        def annotated() -> tuple[float, float] | None:
            """The firing CollectiveStall's cost on node-0 once its 5-minute averages have filled (the
            dollars, one rule group later, may lag the GPUs by an evaluation)."""
            for alert in prom.alerts():
                labels = alert["labels"]
                if (labels["alertname"], labels["instance"], alert["state"]) == ("CollectiveStall", "node-0", "firing"):
                    match = cost.fullmatch(alert["annotations"].get("cost", ""))
                    assert match, alert["annotations"]
                    gpus, dollars = float(match[1]), float(match[2])
                    price = GPUS_PER_JOB * 4.916  # p5's default price
                    if abs(gpus - GPUS_PER_JOB) <= 0.05 * GPUS_PER_JOB and abs(dollars - price) <= 0.05 * price + 1:
                        return gpus, dollars
            return None

        wait_until(annotated, 60, lambda: f"no CollectiveStall costing ~16 GPUs, ~$79/h: {prom.alerts()}", pause=1)
    finally:
        cluster.clear("job:4242")
