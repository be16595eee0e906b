"""A100 nodes, profiled through DCGM, end to end: real Prometheus and Alertmanager over five simulated
p4d.24xlarge exporters whose SM activity comes from DCGM's host engine (the simulated nv-hostengine
behind gpuscope's emulator of DCGM's Python bindings; NVML has no GPM there).

Scenario `a100_stragglers`: a 32-GPU job whose pipeline's first and last stages are always busier
(a trap), then the rank it waits for (GPU 3 of node-2, busy while the others spin in NCCL); on
node-4, a classic straggler (GPU 6) and a GPU whose memory DCGM fails (GPU 2); and a DCGM warning on
node-0 that clears before it may warn (a trap). Rule durations are divided by 60 as in
test_e2e_job_waits.py. Exactly those three fire; the waited-for rank is named from the hardware
(DCGM's SM activity) and from NCCL Inspector.
"""

from __future__ import annotations

import pytest

from simulator.cluster import load_scenario
from tests.test_e2e_alerts import key
from tests.test_e2e_job_waits import play_watching, scenario_stack

pytestmark = pytest.mark.e2e

WAITED_FOR, CLASSIC, MEMORY = ("GpuStraggler", "node-2", "3"), ("GpuStraggler", "node-4", "6"), (
    "GpuDcgmHealthFailing", "node-4", "2")


def test_a100_profiling_from_dcgm_names_the_waited_for_rank_and_the_classic_straggler(tmp_path):
    scenario = load_scenario("a100_stragglers")
    with scenario_stack(tmp_path, scenario) as (cluster, prom, hook):
        # every GPU's SM activity, and from DCGM
        prom.wait_for('count(gpuscope_gpu_sm_active_ratio) == 40 and on () '
                      'count(gpuscope_gpu_info{profiling="dcgm"}) == 40')
        seen, evidence = play_watching(cluster, scenario, prom, 30)
    assert seen == {WAITED_FOR, CLASSIC, MEMORY}, seen
    assert {e for k, e in evidence if k == WAITED_FOR} == {"busiest_gpu", "nccl_early_rank"}
    notified = {key(a["labels"]) for note in hook.received() for a in note["alerts"] if a["status"] == "firing"}
    assert notified == {WAITED_FOR, CLASSIC, MEMORY}
