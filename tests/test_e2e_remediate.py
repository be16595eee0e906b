"""From alert to action on a REAL Slurm (munged, slurmctld, slurmd from Debian's packages).

- A fault on a simulated node fires through real Prometheus and Alertmanager (the reference routing,
  bearer token included), reaches `gpuscope remediate`, and `sinfo -R` shows the node drained with
  the alert as reason; cleared, the alert resolves, the node passes its check and is resumed.
- A storm of 20 alerts for 20 nodes through Alertmanager: the rails hold (3 drains, 17 refusals,
  each in the audit log and the receiver's metrics), and GpuscopeRemediationRefused fires.
- `gpuscope check` as Slurm's HealthCheckProgram leaves a healthy node alone and drains the node
  whose simulated GPU did not come up.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import requests
import yaml

from alerts.render import write_shortened_rules
from simulator.cluster import Cluster
from simulator.stack import alertmanager, prometheus, routed_to_webhook, webhook_receiver
from tests.helpers import REPO
from tests.procs import receiver_process
from tests.slurm import available, slurm_cluster
from tests.test_alertmanager import CONFIG, post

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(available()), reason=available() or "Slurm runs here")]
TOKEN = "s3cret-remediate-token"


def receiver(tmp_path, slurm, **policy):
    """`gpuscope remediate` with this policy (enforcing), behind a bearer token."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    return receiver_process(tmp_path, {"enforce": True, **policy}, f"--web.bearer-token-file={tmp_path / 'token'}",
                            env=slurm.env, token=TOKEN)


def routing(hook_url: str, receiver_url: str, token_file: str) -> dict:
    """The reference Alertmanager config: the remediate receiver posts to the real receiver with its
    bearer token, every other receiver to the test webhook."""
    config = routed_to_webhook(yaml.safe_load(CONFIG.read_text()), hook_url)
    remediate = next(r for r in config["receivers"] if r["name"] == "remediate")
    remediate["webhook_configs"] = [{"url": f"{receiver_url}/alerts", "send_resolved": True,
                                     "http_config": {"authorization": {"credentials_file": token_file}}}]
    return config


def audit(tmp_path) -> list[dict]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def decided(tmp_path) -> list[dict]:
    """The audit log's decisions, without the intent line written before each action."""
    return [entry for entry in audit(tmp_path) if entry["outcome"] != "intent"]


def decisions(base: str) -> dict[tuple[str, str, str], float]:
    text = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).text
    found = {}
    for line in text.splitlines():
        if line.startswith("gpuscope_remediation_decisions_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            key = tuple(labels[k].strip('"') for k in ("action", "outcome", "reason"))
            found[key] = float(line.rsplit(" ", 1)[1])
    return found


def test_a_fault_drains_its_node_and_recovery_resumes_it(tmp_path):
    with Cluster(str(tmp_path / "sim"), nodes=4) as cluster, \
            slurm_cluster(str(tmp_path / "slurm"), "node-[0-3]", {"gpu": "node-[0-3]"}) as slurm:
        urls = {node.name: f"http://{node.address}/metrics" for node in cluster.nodes}
        rules = write_shortened_rules(str(tmp_path / "rules.yml"), 60)
        with receiver(tmp_path, slurm, resume={"check_urls": urls}) as base, \
                webhook_receiver() as (hook_url, hook), \
                alertmanager(routing(hook_url, base, str(tmp_path / "token"))) as am, \
                prometheus([{"job_name": "gpuscope", "file_sd_configs": [{"files": [cluster.write_targets()]}]}],
                           rule_files=[rules], alertmanager=am) as prom:
            prom.wait_for('count(up{job="gpuscope"} == 1) == 4')
            time.sleep(5)
            assert slurm.reasons() == {}  # a healthy cluster: nothing drained
            cluster.inject(2, {"kind": "efa_device_missing"})
            reasons = slurm.wait_for(slurm.reasons, 60, "node-2 was not drained")
            assert reasons == {"node-2": "gpuscope: EfaDeviceMissing"}
            assert "drain" in slurm.state("node-2")
            cluster.clear(2)
            slurm.wait_for(lambda: slurm.reasons() == {}, 60, "node-2 was not resumed")
            assert "drain" not in slurm.state("node-2")
            assert any(a["labels"]["alertname"] == "EfaDeviceMissing" for n in hook.received() for a in n["alerts"])
        log = [(e["action"], e["outcome"], e["reason"], e["node"]) for e in audit(tmp_path)]
        assert ("drain", "done", "drained", "node-2") in log and log[-1] == ("resume", "done", "resumed", "node-2")
        assert [e for e in log if e[1] in ("done", "dry_run")] == [("drain", "done", "drained", "node-2"),
                                                                  ("resume", "done", "resumed", "node-2")]


def test_a_storm_of_alerts_drains_at_most_the_limit_and_the_refusals_page(tmp_path):
    with slurm_cluster(str(tmp_path / "slurm"), "n[00-49]", {"big": "n[00-49]"}) as slurm, \
            receiver(tmp_path, slurm, limits={"max_drains": 3, "window": "1h", "max_fraction": 0.5}) as base, \
            webhook_receiver() as (hook_url, _hook), \
            alertmanager(routing(hook_url, base, str(tmp_path / "token"))) as am:
        rules = tmp_path / "rules.yml"
        write_shortened_rules(str(rules), 60)
        target = base.removeprefix("http://")
        scrape = {"job_name": "gpuscope-remediate", "static_configs": [{"targets": [target]}],
                  "authorization": {"credentials_file": str(tmp_path / "token")}}
        with prometheus([scrape], rule_files=[str(rules)]) as prom:
            prom.wait_for('gpuscope_remediation_enforcing{job="gpuscope-remediate"} == 1')
            post(am, *({"alertname": "GpuLost", "severity": "critical", "instance": f"n{i:02d}", "gpu": "0"}
                       for i in range(20)))
            slurm.wait_for(lambda: len(decided(tmp_path)) >= 20, 60, "not every alert was decided")
            time.sleep(2)  # anything more would have arrived by now
            assert len(slurm.reasons()) == 3
            assert set(slurm.reasons().values()) == {"gpuscope: GpuLost gpu=0"}
            log = [(e["outcome"], e["reason"]) for e in decided(tmp_path)]
            assert sorted(log) == [("done", "drained")] * 3 + [("refused", "rate_limit")] * 17
            written = [(e["outcome"], e["node"]) for e in audit(tmp_path) if e["reason"] == "drained"]
            drained = sorted(slurm.reasons())
            assert sorted(written) == [("done", n) for n in drained] + [("intent", n) for n in drained]
            assert all(written.index(("intent", n)) < written.index(("done", n)) for n in drained)  # intent first
            counts = decisions(base)
            assert (counts[("drain", "done", "drained")], counts[("drain", "refused", "rate_limit")]) == (3, 17)
            assert counts[("drain", "refused", "fraction_limit")] == 0  # every combination is there from the start
            prom.wait_for('ALERTS{alertname="GpuscopeRemediationRefused", alertstate="firing", reason="rate_limit"}')


def test_check_as_health_check_program_drains_a_node_short_of_a_gpu(tmp_path):
    """The shipped deploy/slurm/healthcheck.sh as slurmd's HealthCheckProgram, its settings in a
    defaults file as an admin writes them."""
    gpuscope = os.path.join(os.path.dirname(sys.executable), "gpuscope")  # the console script
    with Cluster(str(tmp_path / "sim"), nodes=1) as cluster:
        defaults = tmp_path / "gpuscope-check"
        defaults.write_text(f"GPUSCOPE='{gpuscope}'\nGPUSCOPE_CHECK_STATE='{tmp_path}/check/state.json'\n"
                            f"GPUSCOPE_CHECK_ARGS='--exporter=http://{cluster.nodes[0].address}/metrics "
                            f"--node-name=node-0'\nexport SLURM_CONF='{tmp_path}/slurm/slurm.conf'\n")
        wrapper = tmp_path / "healthcheck"  # slurmd passes no environment of ours: name the defaults file
        shipped = REPO / "deploy" / "slurm" / "healthcheck.sh"
        wrapper.write_text(f"#!/bin/sh\nGPUSCOPE_CHECK_DEFAULTS='{defaults}' exec '{shipped}'\n")
        wrapper.chmod(0o755)
        with slurm_cluster(str(tmp_path / "slurm"), "node-0", {"gpu": "node-0"}, serve="node-0",
                           health_check=str(wrapper)) as slurm:
            slurm.wait_for(lambda: os.path.exists(f"{tmp_path}/check/state.json"), 30, "the health check never ran")
            time.sleep(5)  # two more health checks
            assert slurm.reasons() == {}
            cluster.inject(0, {"kind": "gpu_missing_at_boot", "gpu": 3})
            cluster.restart(0)
            reasons = slurm.wait_for(slurm.reasons, 30, "node-0 was not drained by its health check")
            assert reasons == {"node-0": "gpuscope check: 7 of 8 GPUs answer NVML (p5.48xlarge has 8)"}
