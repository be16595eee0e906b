"""The cluster-scale benchmark's fleet (bench/scale_data.py) and rule passes (bench/scale.py): the job
mix, the faults and what they must raise, how a captured series becomes a fleet node's, and the
order in which recording rules can be computed from a backfilled history."""

from __future__ import annotations

from alerts.rules import Record
from bench import scale
from bench import scale_data as d

WINDOW = d.Window(start=1_000_000, steps=1440, interval=15)  # six hours


def series(name: str, labels: dict[str, str], first: float, second: float = 0.0, **extra) -> d.Series:
    return d.Series(name, tuple(sorted(labels.items())), False, first, second if second else first, 10.0, **extra)


def test_the_job_mix_of_256_nodes():
    layout = d.Layout.spread(256)
    sizes = [job.nodes for job in layout.jobs]
    assert sizes == [128] + [16] * 6 + [1] * 24
    assert layout.idle_from == 248 and layout.describe()["idle_nodes"] == 8
    assert {job.fault: job.id for job in layout.jobs if job.fault} == {
        "waits": "10000", "late": "10001", "hang": "10006", "checkpoint": "10007"}
    assert layout.node_faults == {147: "straggler", 150: "thermal_throttle", 163: "straggler", 169: "efa_stall",
                                  179: "straggler", 182: "thermal_throttle", 188: "sxid_fatal",
                                  195: "efa_device_missing", 198: "gpu_lost"}


def test_placements_before_and_during_the_faults():
    layout = d.Layout.spread(256)
    assert layout.placement(0) == d.Placement(layout.jobs[0], 0, "leader", "waits_leader", 7200)
    assert layout.placement(67).during == "waits_culprit" and layout.placement(66).during == "waits_member"
    assert layout.placement(188) == d.Placement(layout.jobs[4], 12, "member", "sxid_fatal", d.EVENT_SECONDS)
    assert layout.placement(224).before == "single" and layout.placement(224).during == "checkpoint"
    assert layout.placement(225).during == "single"
    assert layout.placement(250) == d.Placement(None, 0, "idle", "idle", 7200)


def test_alerts_expected_before_and_after_the_events():
    layout = d.Layout.spread(256)
    early, late = layout.expected_alerts(1200), layout.expected_alerts(60)
    assert early["GpuStraggler"] == {("node-0147", "5"), ("node-0163", "5"), ("node-0179", "5"),
                                     ("node-0150", "3"), ("node-0182", "3"), ("node-0067", "5"), ("node-0132", "3")}
    assert early["NcclCollectiveHang"] == {("node-0210", "2")}
    assert early["CollectiveStall"] == {(f"node-{n:04d}",) for n in range(208, 224)}
    assert early["EfaTrafficStalled"] == early["CollectiveStall"] | {("node-0169",)}
    assert "GpuLost" not in early and "NvswitchFatalError" not in early
    assert late["GpuLost"] == late["GpuXidCritical"] == {("node-0198", "6")}
    assert late["NvswitchFatalError"] == {("node-0188",)}


def test_each_fault_loses_gpu_time_by_its_own_cause():
    # job 10002: a straggler and a throttled GPU; 10003: a straggler on a node whose EFA stalls (the
    # stall covers the job); 10005: a GPU lost beside a missing EFA device
    assert d.Layout.spread(256).expected_losses() == {
        ("10000", "straggler"), ("10001", "straggler"), ("10006", "stall"), ("10007", "idle_allocated"),
        ("10002", "throttle"), ("10003", "stall"), ("10004", "throttle"), ("10005", "lost_gpu")}


def test_a_captured_series_on_a_fleet_node():
    layout = d.Layout.spread(256)
    inspector = series("gpuscope_nccl_collective_exec_time_seconds", {
        "gpu": "0", "uuid": "GPU-00000000-5ca1-4e0d-9a7b-1d0f00000000", "job_id": "34", "comm": "TP Group 10",
        "nranks": "8", "collective": "AllGather", "message_size": "all"}, 0.0012)
    labels = d.labels_for(inspector, 70, layout.placement(70), "member")
    assert labels == {"gpu": "0", "uuid": "GPU-00000046-5ca1-4e0d-9a7b-1d0f00000000", "job_id": "10000",
                      "comm": "TP Group 70", "nranks": "8", "collective": "AllGather", "message_size": "all",
                      "instance": "node-0070", "job": "gpuscope", "cluster": "scale"}
    world = series(inspector.name, {**dict(inspector.labels), "comm": "World", "nranks": "64"}, 0.012)
    assert d.labels_for(world, 70, layout.placement(70), "member")["nranks"] == "1024"
    pipeline = series(inspector.name, {**dict(inspector.labels), "comm": "PP Group 0", "nranks": "8"}, 0.0005)
    assert d.labels_for(pipeline, 70, layout.placement(70), "member")["nranks"] == "128"


def test_the_hung_jobs_leader_names_the_fleets_culprit():
    layout = d.Layout.spread(256)
    leader = layout.placement(208)
    behind = series("gpuscope_nccl_ras_rank_behind_operations", {
        "job_id": "31", "comm": "a1", "rank": "18", "host": "127.0.0.4", "nvml_dev": "2"}, 1)
    labels = d.labels_for(behind, 208, leader, "hang_leader")
    assert labels["host"] == d.host(210) == "10.0.0.210" and labels["rank"] == "18"
    assert labels["job_id"] == "10006" and labels["comm"] == d._comm_hash("10006", "a1")
    comm = series("gpuscope_nccl_ras_communicator_stalled_seconds", {"job_id": "31", "comm": "a1", "ranks": "24"}, 5)
    assert d.labels_for(comm, 208, leader, "hang_leader")["ranks"] == "128"
    own = series("gpuscope_nccl_ras_host_info", {"host": "127.0.0.2"}, 1)
    assert d.labels_for(own, 208, leader, "hang_leader")["host"] == "10.0.0.208"


def test_unix_times_keep_their_age_from_the_start_or_from_the_fault():
    boot_era = series("gpuscope_nvswitch_last_sxid_timestamp_seconds", {}, 5000.0, age=5400.0)
    logged = series("gpuscope_nvswitch_last_sxid_timestamp_seconds", {"sxid": "24007"}, 9990.0, age=20.0,
                    of_fault=True)
    assert set(d._values(boot_era, boot_era, WINDOW, 300, 0)) == {repr(float(WINDOW.start - 5400))}
    values = d._values(None, logged, WINDOW, 300, 0)
    assert values[:WINDOW.step_of(300)] == [None] * WINDOW.step_of(300)
    assert set(values[WINDOW.step_of(300):]) == {repr(float(WINDOW.end - 300 - 20))}


def test_counters_and_running_durations_carry_on_across_the_onset():
    calm = d.Series("gpuscope_nccl_ras_communicator_stalled_seconds", (), False, 0.0, 0.0, 10.0)
    stalled = d.Series(calm.name, (), True, 24.0, 34.0, 10.0)  # it counted the seconds between the scrapes
    values = d._values(calm, stalled, WINDOW, 7200, 0)
    onset = WINDOW.step_of(7200)
    assert values[onset - 1] == "0.0" and values[onset] == "0" and values[-1] == str(15 * (WINDOW.steps - onset - 1))
    assert d._is_clock(24.1, 34.1, 10.0) and not d._is_clock(489.0, 609.0, 10.0)


def test_recording_rules_in_the_passes_a_backfill_can_compute():
    records = [Record("a:x:sum", "sum(gpuscope_x)"), Record("a:x:base", "min_over_time(a:x:sum[6h])"),
               Record("a:x:drop", "a:x:sum / a:x:base"), Record("a:y:sum", "sum(gpuscope_y) * a:x:sum")]
    first = scale.computable(records, set())
    assert [(r.record, r.expr) for r in first] == [("a:x:sum", "sum(gpuscope_x)"),
                                                   ("a:y:sum", "sum(gpuscope_y) * (sum(gpuscope_x))")]
    second = scale.computable(records, {"a:x:sum", "a:y:sum"})
    assert [r.record for r in second] == ["a:x:base", "a:x:drop"]
    assert second[1].expr == "a:x:sum / (min_over_time(a:x:sum[6h]))"


def test_vmalert_replays_a_rule_after_the_records_it_reads():
    rules = [{"name": "reads", "rules": [{"record": "b:x:ratio", "expr": "a:x:sum / 2"}, {"alert": "X", "expr": "1"},
                                         {"record": "b:y:sum", "expr": "sum(gpuscope_y)"}]},
             {"name": "writes", "rules": [{"record": "a:x:sum", "expr": "sum(gpuscope_x)"},
                                          {"record": "a:x:base", "expr": "min_over_time(b:x:ratio[6h])"}]},
             {"name": "alerts", "rules": [{"alert": "Y", "expr": "b:x:ratio > 1"}]}]
    assert scale.replay_levels(rules) == [
        [{"name": "reads", "rules": [{"record": "b:y:sum", "expr": "sum(gpuscope_y)"}]},
         {"name": "writes", "rules": [{"record": "a:x:sum", "expr": "sum(gpuscope_x)"}]}],
        [{"name": "reads", "rules": [{"record": "b:x:ratio", "expr": "a:x:sum / 2"}]}],
        [{"name": "writes", "rules": [{"record": "a:x:base", "expr": "min_over_time(b:x:ratio[6h])"}]}]]
