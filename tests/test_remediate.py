"""The remediation rails and `gpuscope check`'s judgement, decision by decision.

The engine runs here against a scheduler double that records calls (the real Slurm is in
tests/test_e2e_remediate.py, the Kubernetes API stub in tests/test_remediate_kubernetes.py); the
check judges real scrapes of simulated nodes with faults.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace

import pytest
import requests
import yaml

from exporter import check
from receiver import policy as policy_module
from receiver.engine import Engine, Unrecorded
from receiver.policy import DEFAULT_ALERTS, Limits, Policy
from receiver.schedulers import NodeState
from tests.helpers import free_port, http_status, wait_until
from tests.procs import run_gpuscope

NOW = 1_800_000_000.0


class Recorder:
    """A scheduler that keeps node states in memory and records every drain and resume."""

    def __init__(self, groups: dict[str, tuple[str, ...]]) -> None:
        self.states = {name: NodeState(name, False, False, g) for name, g in groups.items()}
        self.calls: list[tuple[str, ...]] = []

    def nodes(self) -> dict[str, NodeState]:
        return dict(self.states)

    def drain(self, node: str, reason: str) -> None:
        self.calls.append(("drain", node, reason))
        self.states[node] = replace(self.states[node], out=True, ours=reason.startswith("gpuscope:"))

    def resume(self, node: str) -> None:
        self.calls.append(("resume", node))
        self.states[node] = replace(self.states[node], out=False, ours=False)


def alert(name: str, node: str, status: str = "firing", ends: str = "0001-01-01T00:00:00Z", **labels: str) -> dict:
    labels = {"alertname": name, "instance": node, "severity": "critical", **labels}
    return {"status": status, "labels": labels, "endsAt": ends, "fingerprint": str(sorted(labels.items()))}


def notification(*alerts: dict) -> dict:
    return {"version": "4", "status": alerts[0]["status"], "alerts": list(alerts)}


def cluster(size: int = 20) -> Recorder:
    return Recorder({f"n{i}": ("gpu",) for i in range(size)})


def engine_for(tmp_path, scheduler: Recorder, problems: list[str] | None = None, **fields) -> Engine:
    policy = Policy(audit_log=str(tmp_path / "audit.jsonl"), state_file=str(tmp_path / "state.json"),
                    **{"enforce": True, **fields})
    return Engine(policy, scheduler, lambda node: list(problems or []), clock=lambda: NOW)


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def outcomes(decisions) -> list[tuple[str, str, str]]:
    return [(d.node, d.outcome, d.reason) for d in decisions]


def test_dry_run_is_the_default_and_touches_nothing(tmp_path):
    slurm = cluster()
    engine = Engine(Policy(audit_log=str(tmp_path / "audit.jsonl"), state_file=str(tmp_path / "s.json")), slurm,
                    lambda node: [], clock=lambda: NOW)
    decisions = engine.handle(notification(alert("GpuLost", "n3", gpu="6")))
    assert outcomes(decisions) == [("n3", "dry_run", "would_drain")]
    assert slurm.calls == []
    entry = audit(tmp_path)[0]
    assert (entry["mode"], entry["action"], entry["detail"]) == ("dry-run", "drain", "gpuscope: GpuLost gpu=6")


def test_drains_with_the_alert_and_its_key_labels_in_the_reason(tmp_path):
    slurm = cluster()
    decisions = engine_for(tmp_path, slurm).handle(notification(alert("GpuXidCritical", "n3", gpu="6", xid="79")))
    assert outcomes(decisions) == [("n3", "done", "drained")]
    assert slurm.calls == [("drain", "n3", "gpuscope: GpuXidCritical gpu=6 xid=79")]


def test_the_intent_is_recorded_before_the_scheduler_is_touched_then_the_outcome(tmp_path):
    slurm = cluster()
    seen_by_the_scheduler = []
    drain = slurm.drain
    slurm.drain = lambda node, reason: (seen_by_the_scheduler.extend(audit(tmp_path)), drain(node, reason))
    engine = engine_for(tmp_path, slurm)
    engine.handle(notification(alert("GpuLost", "n3", gpu="6")))
    assert [(e["outcome"], e["reason"]) for e in seen_by_the_scheduler] == [("intent", "drained")]
    assert [(e["outcome"], e["reason"], e["detail"]) for e in audit(tmp_path)] == [
        ("intent", "drained", "gpuscope: GpuLost gpu=6"), ("done", "drained", "gpuscope: GpuLost gpu=6")]
    assert "n3" in json.loads((tmp_path / "state.json").read_text())["held"]


def make_unwritable(path) -> None:
    """A directory where the file was: unwritable even for root (the suite runs as root in CI)."""
    if os.path.isdir(path):
        return
    if os.path.exists(path):
        os.remove(path)
    os.mkdir(path)


@pytest.mark.parametrize("record", ["audit.jsonl", "state.json"])
def test_a_record_that_cannot_be_written_refuses_the_action_and_the_notification(tmp_path, record):
    """The audit log or the state file turns unwritable while the receiver runs: the drain is refused
    before the scheduler is touched (counted: GpuscopeRemediationRefused), the notification raises
    Unrecorded (the receiver answers 503, Alertmanager retries), and the retry drains once the
    record can be written again."""
    slurm, recorded = cluster(), []
    policy = Policy(enforce=True, audit_log=str(tmp_path / "audit.jsonl"), state_file=str(tmp_path / "state.json"))
    engine = Engine(policy, slurm, lambda node: [], recorded.append, clock=lambda: NOW)
    make_unwritable(tmp_path / record)
    with pytest.raises(Unrecorded, match=f"{record}: cannot write: Is a directory") as raised:
        engine.handle(notification(alert("GpuLost", "n3", gpu="6")))
    assert outcomes(raised.value.decisions) == outcomes(recorded) == [("n3", "refused", "unrecorded")]
    assert slurm.calls == [] and engine.held == {}
    shutil.rmtree(tmp_path / record)
    assert outcomes(engine.handle(notification(alert("GpuLost", "n3", gpu="6")))) == [("n3", "done", "drained")]
    assert slurm.calls == [("drain", "n3", "gpuscope: GpuLost gpu=6")]


@pytest.mark.parametrize(("field", "message"), [
    ("audit_log", "audit_log {path}: cannot write: Is a directory"),
    ("state_file", "state file {path}: unreadable ([Errno 21] Is a directory: '{path}'); move it away to start over"),
])
def test_records_that_cannot_be_written_stop_the_start(tmp_path, field, message):
    path = tmp_path / "taken"
    path.mkdir()
    fields = {"audit_log": str(tmp_path / "audit.jsonl"), "state_file": str(tmp_path / "state.json"), field: str(path)}
    with pytest.raises(ValueError) as raised:
        Engine(Policy(enforce=True, **fields), cluster(), lambda node: [], clock=lambda: NOW)
    assert str(raised.value) == message.format(path=path)


@pytest.mark.parametrize(("sent", "expected"), [
    pytest.param(alert("GpuStraggler", "n3", gpu="1"), ("n3", "refused", "not_allowed"), id="not in the allowlist"),
    # NCCL RAS names where a job stopped, not why: never a drain on its own (docs/remediation.md)
    pytest.param(alert("NcclCollectiveHang", "n3", gpu="1", evidence="ras_rank"), ("n3", "refused", "not_allowed"),
                 id="a RAS-named rank alone"),
    pytest.param(alert("NcclRankDead", "n3", gpu="1"), ("n3", "refused", "not_allowed"), id="a dead NCCL process"),
    pytest.param(alert("GpuLost", "n3", ends="2020-01-01T00:00:00Z"), ("n3", "refused", "stale"), id="stale"),
    pytest.param(alert("GpuLost", ""), ("", "refused", "no_node"), id="no node label"),
    pytest.param(alert("GpuLost", "n99"), ("n99", "refused", "unknown_node"), id="unknown to the scheduler"),
    pytest.param(alert("GpuLost", "n3", status="resolved"), ("n3", "skipped", "not_held"), id="resolved never drains"),
])
def test_refusals_touch_nothing_and_are_audited(tmp_path, sent, expected):
    slurm = cluster()
    decisions = engine_for(tmp_path, slurm).handle(notification(sent))
    assert outcomes(decisions) == [expected]
    assert slurm.calls == []
    assert (audit(tmp_path)[0]["outcome"], audit(tmp_path)[0]["reason"]) == expected[1:]


def test_a_storm_drains_at_most_max_drains_and_refuses_the_rest(tmp_path):
    slurm = cluster(100)
    storm = notification(*(alert("GpuLost", f"n{i}", gpu="0") for i in range(20)))
    decisions = engine_for(tmp_path, slurm, limits=Limits(max_drains=3, max_fraction=1.0)).handle(storm)
    assert [d.outcome for d in decisions] == ["done"] * 3 + ["refused"] * 17
    assert {d.reason for d in decisions[3:]} == {"rate_limit"}
    assert [c[1] for c in slurm.calls] == ["n0", "n1", "n2"]


def test_the_rate_window_slides(tmp_path):
    slurm, now = cluster(), [NOW]
    policy = Policy(enforce=True, audit_log=str(tmp_path / "a"), state_file=str(tmp_path / "s"),
                    limits=Limits(max_drains=1, window_seconds=600, max_fraction=1.0))
    engine = Engine(policy, slurm, lambda node: [], clock=lambda: now[0])
    assert outcomes(engine.handle(notification(alert("GpuLost", "n1")))) == [("n1", "done", "drained")]
    assert outcomes(engine.handle(notification(alert("GpuLost", "n2")))) == [("n2", "refused", "rate_limit")]
    now[0] += 601
    assert outcomes(engine.handle(notification(alert("GpuLost", "n2")))) == [("n2", "done", "drained")]


def test_at_most_a_fraction_of_a_partition_and_never_less_than_one_node(tmp_path):
    slurm = Recorder({**{f"a{i}": ("small",) for i in range(4)}, **{f"b{i}": ("big",) for i in range(30)}})
    engine = engine_for(tmp_path, slurm, limits=Limits(max_drains=100, max_fraction=0.1))
    decisions = engine.handle(notification(*(alert("GpuLost", f"a{i}") for i in range(2)),
                                           *(alert("GpuLost", f"b{i}") for i in range(5))))
    assert outcomes(decisions) == [
        ("a0", "done", "drained"), ("a1", "refused", "fraction_limit"),  # 10 % of 4, but at least one
        ("b0", "done", "drained"), ("b1", "done", "drained"), ("b2", "done", "drained"),  # 10 % of 30
        ("b3", "refused", "fraction_limit"), ("b4", "refused", "fraction_limit")]
    assert decisions[1].detail == "1 of 4 nodes of small already held out (at most 1)"


def test_repeats_and_restarts_change_nothing(tmp_path):
    slurm = cluster()
    first = alert("GpuLost", "n3", gpu="6")
    engine_for(tmp_path, slurm).handle(notification(first))
    again = engine_for(tmp_path, slurm).handle(notification(first, alert("GpuXidCritical", "n3", gpu="6", xid="79")))
    assert outcomes(again) == [("n3", "skipped", "already_held")] * 2
    assert len(slurm.calls) == 1


def test_a_node_someone_else_drained_is_left_alone(tmp_path):
    slurm = cluster()
    slurm.states["n3"] = replace(slurm.states["n3"], out=True)  # drained by a person, another reason
    engine = engine_for(tmp_path, slurm)
    assert outcomes(engine.handle(notification(alert("GpuLost", "n3")))) == [("n3", "skipped", "out_by_other")]
    assert outcomes(engine.handle(notification(alert("GpuLost", "n3", "resolved")))) == [("n3", "skipped", "not_held")]
    assert slurm.calls == []


def test_resumes_when_every_alert_resolved_and_the_check_passes(tmp_path):
    slurm = cluster()
    engine = engine_for(tmp_path, slurm)
    lost, xid = alert("GpuLost", "n3", gpu="6"), alert("GpuXidCritical", "n3", gpu="6", xid="79")
    engine.handle(notification(lost, xid))
    assert outcomes(engine.handle(notification({**lost, "status": "resolved"}))) == [
        ("n3", "skipped", "still_firing")]
    assert engine.handle(notification({**lost, "status": "resolved"}))[0].reason == "still_firing"  # a repeat
    assert outcomes(engine.handle(notification({**xid, "status": "resolved"}))) == [("n3", "done", "resumed")]
    assert slurm.calls[-1] == ("resume", "n3")


def test_a_node_that_fails_its_check_stays_out(tmp_path):
    slurm = cluster()
    engine = engine_for(tmp_path, slurm, problems=["7 of 8 GPUs answer NVML (p5.48xlarge has 8)"])
    lost = alert("GpuMissing", "n3")
    engine.handle(notification(lost))
    decision = engine.handle(notification({**lost, "status": "resolved"}))[0]
    assert (decision.outcome, decision.reason, decision.detail) == (
        "refused", "check_failed", "7 of 8 GPUs answer NVML (p5.48xlarge has 8)")
    assert slurm.calls == [("drain", "n3", "gpuscope: GpuMissing")]


def test_a_node_a_person_resumed_is_forgotten_and_a_lost_state_is_found_again(tmp_path):
    slurm = cluster()
    engine_for(tmp_path, slurm).handle(notification(alert("GpuLost", "n3")))
    slurm.states["n3"] = replace(slurm.states["n3"], out=False, ours=False)  # a person resumed it
    slurm.states["n5"] = replace(slurm.states["n5"], out=True, ours=True)  # ours, but the state file lost it
    engine = engine_for(tmp_path, slurm)
    engine.handle(notification(alert("GpuLost", "n9", "resolved")))
    assert set(engine.held) == {"n5"}


def test_node_names_from_a_map_or_a_regex():
    names = policy_module.NodeNames("instance", None, {"ip-10-0-0-1.ec2.internal": "gpu-001"})
    assert names.resolve({"instance": "ip-10-0-0-1.ec2.internal"}) == "gpu-001"
    assert policy_module.NodeNames("instance", policy_module.re.compile(r"(?P<node>[^.:]+).*")).resolve(
        {"instance": "gpu-007.cluster:19400"}) == "gpu-007"
    assert policy_module.NodeNames("node", policy_module.re.compile(r"gpu-\d+")).resolve({"node": "cpu-1"}) == ""


@pytest.mark.parametrize(("text", "message"), [
    ("enforce: yes please\n", "enforce must be true or false"),
    ("scheduler: pbs\n", "scheduler must be one of slurm, kubernetes, not 'pbs'"),
    ("alerts: GpuLost\n", "alerts must be a list of alert names"),
    ("limits: {max_fraction: 2}\n", "limits.max_fraction must be above 0 and at most 1"),
    ("limits: {window: soon}\n", "limits.window must be a duration such as 30s, 10m or 1h"),
    ("node: {regex: '('}\n", "node.regex must be a regular expression"),
    ("resume: {check_urls: [a]}\n", "resume.check_urls must be a mapping of strings to strings"),
    ("limit: {}\n", "unknown field limit"),
])
def test_a_bad_policy_is_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "policy.yml"
    path.write_text(text)
    result = run_gpuscope("remediate", f"--policy={path}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr and message in result.stderr


def test_the_shipped_policy_file_is_the_defaults():
    from tests.helpers import REPO

    assert policy_module.load(str(REPO / "deploy" / "remediate" / "policy.yml")) == Policy()


def test_the_reference_routing_sends_exactly_the_policy_defaults_to_the_receiver():
    from importlib import resources

    config = yaml.safe_load(resources.files("alerts").joinpath("alertmanager.yml").read_text())
    route = next(r for r in config["route"]["routes"] if r["receiver"] == "remediate")
    (matcher,) = route["matchers"]
    assert matcher == f'alertname=~"{"|".join(DEFAULT_ALERTS)}"'
    assert route["continue"] is True  # and on to the pager
    (webhook,) = next(r for r in config["receivers"] if r["name"] == "remediate")["webhook_configs"]
    assert webhook["send_resolved"] is True


# --- gpuscope check -------------------------------------------------------------------------------

@pytest.fixture
def sim_scrape(tmp_path):
    """One scrape of a simulated node whose faults were there at boot, by the collectors the check reads."""
    from exporter.collectors import Roots, build, close
    from exporter.collectors.kmsg import KmsgOptions
    from exporter.registry import ScrapeRegistry
    from simulator.node import SimulatedNode
    from simulator.nvml import SimulatedNvml, load_profile

    built = []

    def scrape(*faults: dict, profile: str = "p5.48xlarge") -> str:
        root = tmp_path / f"node-{len(built)}"
        root.mkdir()
        (root / "faults.yaml").write_text(yaml.safe_dump(list(faults)))
        nvml = SimulatedNvml(load_profile(profile))
        node = SimulatedNode(str(root), load_profile(profile), nvml)
        node.advance()
        built.append(build(("identity", "gpu", "rdma", "lustre", "kmsg"),
                           Roots(node.sysfs, str(root / "proc"), nvml=nvml,
                                 settings={"kmsg": KmsgOptions(node.kmsg_file, node.procfs)})))
        return ScrapeRegistry(built[-1], 5.0).render()

    yield scrape
    for collectors in built:
        close(collectors)


def test_check_names_each_problem_of_a_faulty_node(sim_scrape):
    healthy = check.judge(check.parse(sim_scrape()))
    assert healthy.problems == [] and healthy.xids == {}
    faulty = check.judge(check.parse(sim_scrape(
        {"kind": "kernel_xid", "gpu": 6, "xid": 79}, {"kind": "efa_device_missing", "count": 2},
        {"kind": "ecc_uncorrectable", "gpu": 4}, {"kind": "row_remap_failure", "gpu": 7},
        {"kind": "sxid", "switch": 2, "sxid": 24007, "fatal": True}, {"kind": "lustre_eviction"},
        {"kind": "gpu_lost", "gpu": 1})))
    assert faulty.problems == [
        "30 of 32 EFA devices present",
        "GPU 1 lost: NVML does not answer",
        "GPU 0000:64:00: critical XID 79 since boot",  # GPU 1, lost before NVML opened it: named by PCI address
        "GPU 6: critical XID 79 since boot",
        "GPU 4: 1 uncorrectable ECC errors since the driver loaded", "GPU 7: 2 uncorrectable ECC errors since the "
        "driver loaded", "GPU 7: a row remap failed",
        "NVSwitch 2: fatal SXID 24007",
        "Lustre fsx OST0001 not connected"]
    again = check.judge(check.parse(sim_scrape({"kind": "kernel_xid", "gpu": 6, "xid": 79})), faulty.xids)
    assert again.problems == []  # the XID is not new since the last check


def test_check_fails_what_dcgm_health_fails_and_not_what_it_warns_about():
    scrape = "\n".join([
        'gpuscope_gpu_dcgm_health{gpu="2",uuid="u2",system="memory"} 2',
        'gpuscope_gpu_dcgm_health{gpu="2",uuid="u2",system="pcie"} 0',
        'gpuscope_gpu_dcgm_health{gpu="5",uuid="u5",system="thermal"} 1',
        'gpuscope_nvswitch_dcgm_health{switch="4",system="nvswitch_fatal"} 2', ""])
    assert check.judge(check.parse(scrape)).problems == [
        "GPU 2: DCGM health check fails memory", "NVSwitch 4: DCGM health check fails nvswitch_fatal"]


def test_check_of_a_node_short_of_a_gpu_and_one_without_expectations(sim_scrape):
    assert check.judge(check.parse(sim_scrape({"kind": "gpu_missing_at_boot", "gpu": 2}))).problems == [
        "7 of 8 GPUs answer NVML (p5.48xlarge has 8)"]
    assert check.judge(check.parse(sim_scrape(profile="dgx-h100"))).problems == []
    assert check.judge(check.parse(sim_scrape({"kind": "rdma_port_down", "device": 3}, profile="dgx-h100")),
                       ignore_ports=check.re.compile("mlx5_[0-2]")).problems == [
        "RDMA mlx5_3 port 1 not ACTIVE (state 1)"]


def test_check_exit_codes_and_one_line(tmp_path):
    unreachable = run_gpuscope("check", "--exporter=http://127.0.0.1:9/metrics")
    assert unreachable.returncode == 3 and unreachable.stdout == ""
    assert unreachable.stderr.startswith("gpuscope check: cannot check: cannot read the exporter at "
                                         "http://127.0.0.1:9/metrics")
    collected = run_gpuscope("check", "--collect", f"--path.sysfs={tmp_path}", f"--path.procfs={tmp_path}")
    assert collected.returncode == 1  # no NVML on this machine: the GPU collector fails, the node is unfit
    assert collected.stdout == "gpuscope check: collector gpu failing\n"


def test_the_receiver_loads_no_collector_simulator_or_grafanalib(tmp_path):
    """A real `gpuscope remediate`, started, notified and stopped, with every import it made logged:
    it judges nodes with `gpuscope check`'s judgement (exporter/check.py) and serves through the
    exporter's HTTP edge, and neither brings the node agent's collectors along."""
    port = free_port()
    (tmp_path / "policy.yml").write_text(yaml.safe_dump({
        "audit_log": str(tmp_path / "audit.jsonl"), "state_file": str(tmp_path / "state.json"),
        "slurm": {"scontrol": str(tmp_path / "no-scontrol"), "sinfo": str(tmp_path / "no-sinfo")}}))
    command = [sys.executable, "-X", "importtime", "-c", "import sys; from gpuscope.cli import main; sys.exit(main())",
               "remediate", f"--policy={tmp_path / 'policy.yml'}", f"--web.listen-address=127.0.0.1:{port}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: http_status(f"http://127.0.0.1:{port}/-/healthy") == 200, 15, "the receiver did not come up")
        reply = requests.post(f"http://127.0.0.1:{port}/alerts", json=notification(alert("GpuLost", "n3")), timeout=10)
        assert [(d["outcome"], d["reason"]) for d in reply.json()] == [("refused", "scheduler_error")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    imported = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert {"receiver.engine", "exporter.check", "toolkit.http"} <= imported  # the log is complete
    names_only = ("simulator.profiles", "simulator.scenarios")  # the command line's choices
    unwanted = {m for m in imported if m.startswith(("exporter.collectors", "grafanalib", "pynvml"))
                or m in ("exporter.config", "exporter.server") or (m.startswith("simulator.") and m not in names_only)}
    assert unwanted == set()

