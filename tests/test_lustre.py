"""Lustre client collector on the real 2.10 tree and on a 2.14 layout built from a real lctl dump."""

from __future__ import annotations

import os
import shutil

import pytest

from exporter.collectors.lustre import (
    LustreCollector,
    parse_health_check,
    parse_import,
    parse_last_reply,
    parse_pending_pages,
    parse_stats,
)
from tests.helpers import samples, scrape, series, value

HPE = "HewlettPackard-lustre_exporter"
WHAMCLOUD = "whamcloud-lustrefs-exporter/lustre-collector/src/fixtures"


def lctl_param(text: str, name: str) -> str:
    """The body of one `param=` block of `lctl get_param` output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
    body = [lines[start].partition("=")[2]]
    for line in lines[start + 1:]:
        if "=" in line.split(" ", 1)[0]:
            break
        body.append(line)
    return "\n".join(body).strip() + "\n"


@pytest.fixture(scope="module")
def lustre_210(fixtures):
    root = fixtures / HPE
    return samples(scrape([LustreCollector(str(root / "sys"), str(root / "proc"))]))


def test_llite_210_io_and_operations(lustre_210):
    fs = {"fs": "lustrefs"}
    assert value(lustre_210, "gpuscope_lustre_read_bytes_total", **fs) == 4194304
    assert value(lustre_210, "gpuscope_lustre_read_calls_total", **fs) == 1
    assert value(lustre_210, "gpuscope_lustre_write_bytes_total", **fs) == 93813797294080
    assert value(lustre_210, "gpuscope_lustre_write_calls_total", **fs) == 89467810
    assert value(lustre_210, "gpuscope_lustre_operations_total", operation="open", **fs) == 136
    assert value(lustre_210, "gpuscope_lustre_operations_total", operation="inode_permission", **fs) == 398
    # 2.10 reports no latency ([regs] rows), so there is no duration series.
    assert not series(lustre_210, "gpuscope_lustre_operation_duration_seconds_total")


def test_targets_210_import_health(lustre_210):
    ost = {"fs": "lustrefs", "target": "OST0000"}
    assert value(lustre_210, "gpuscope_lustre_import_state", **ost) == 8  # FULL
    assert value(lustre_210, "gpuscope_lustre_import_healthy", **ost) == 1
    assert value(lustre_210, "gpuscope_lustre_import_rpcs_in_flight", **ost) == 8
    assert value(lustre_210, "gpuscope_lustre_import_rpc_timeouts_total", **ost) == 0
    assert value(lustre_210, "gpuscope_lustre_import_average_wait_seconds", **ost) == pytest.approx(0.006054)
    assert value(lustre_210, "gpuscope_lustre_import_connection_attempts_total", **ost) == 1
    assert value(lustre_210, "gpuscope_lustre_import_connections_total", **ost) == 1
    assert value(lustre_210, "gpuscope_lustre_pending_pages", direction="write", **ost) == 1244
    assert value(lustre_210, "gpuscope_lustre_import_last_reply_timestamp_seconds", **ost) == 1510950459
    mdt = {"fs": "lustrefs", "target": "MDT0000"}
    assert value(lustre_210, "gpuscope_lustre_import_average_wait_seconds", **mdt) == pytest.approx(0.000408)
    assert not [s for s in series(lustre_210, "gpuscope_lustre_pending_pages") if s["target"] == "MDT0000"]
    assert value(lustre_210, "gpuscope_lustre_import_last_reply_timestamp_seconds", **mdt) == 1510950432
    targets = sorted(s["target"] for s in series(lustre_210, "gpuscope_lustre_target_read_success"))
    assert targets == ["MDT0000"] + [f"OST000{i}" for i in range(7)]
    assert value(lustre_210, "gpuscope_lustre_health_check_healthy") == 1


def test_instance_id_is_never_a_label(lustre_210):
    assert not [labels for _, labels in lustre_210 if any("ffff" in v for _, v in labels)]


def test_server_asking_files_are_never_opened(fixtures, tmp_path):
    """kbytes*/files* block on a dead server: replaced by FIFOs, any open() would hang the collector."""
    root = tmp_path / "lustre"
    shutil.copytree(fixtures / HPE, root, symlinks=True)
    fifos = 0
    for directory, _, files in os.walk(root):
        for name in files:
            if name.startswith(("kbytes", "files")):
                os.unlink(os.path.join(directory, name))
                os.mkfifo(os.path.join(directory, name))
                fifos += 1
    assert fifos > 20
    parsed = samples(scrape([LustreCollector(str(root / "sys"), str(root / "proc"))], timeout=2))
    assert value(parsed, "gpuscope_collector_success", collector="lustre") == 1


def test_214_layout_reads_debugfs_first_and_reports_latency(fixtures, tmp_path):
    dump = (fixtures / WHAMCLOUD / "valid/lustre-2-14-0/client/llite_client.txt").read_text()
    sysfs, procfs = tmp_path / "sys", tmp_path / "proc"
    instance = "ai400x2-ff47bce9ca35d800"
    llite = sysfs / "kernel/debug/lustre/llite" / instance
    llite.mkdir(parents=True)
    (llite / "stats").write_text(lctl_param(dump, f"llite.{instance}.stats"))
    stale = procfs / "fs/lustre/llite" / instance
    stale.mkdir(parents=True)
    (stale / "stats").write_text("snapshot_time 1 secs.nsecs\nopen 1 samples [regs]\n")
    (sysfs / "fs/lustre").mkdir(parents=True)
    (sysfs / "fs/lustre/health_check").write_text(lctl_param(dump, "health_check"))
    osc = procfs / "fs/lustre/osc" / f"ai400x2-OST0003-osc-{instance[8:]}"
    osc.mkdir(parents=True)
    (osc / "import").write_text("import:\n    state: IDLE\n    rpcs:\n       inflight: 0\n")

    parsed = samples(scrape([LustreCollector(str(sysfs), str(procfs))]))
    fs = {"fs": "ai400x2"}
    assert value(parsed, "gpuscope_lustre_operations_total", operation="open", **fs) == 35955554
    assert value(parsed, "gpuscope_lustre_operation_duration_seconds_total", operation="open", **fs) == \
        pytest.approx(3393.651645)
    assert value(parsed, "gpuscope_lustre_operations_total", operation="ioctl", **fs) == 114
    assert value(parsed, "gpuscope_lustre_health_check_healthy") == 1
    ost = {"fs": "ai400x2", "target": "OST0003"}
    assert value(parsed, "gpuscope_lustre_import_state", **ost) == 10  # IDLE
    assert value(parsed, "gpuscope_lustre_import_healthy", **ost) == 1
    assert value(parsed, "gpuscope_lustre_target_read_success", **ost) == 1


def test_parse_stats_with_start_and_elapsed_time(fixtures):
    dump = (fixtures / WHAMCLOUD / "valid/lustre-2.14.0_ddn145/2.14.0_ddn145_stats.txt").read_text()
    rows = parse_stats(lctl_param(dump, "llite.fs-ffff97e895d31000.stats"))
    assert set(rows) == {"getattr"}
    assert (rows["getattr"].count, rows["getattr"].unit, rows["getattr"].total) == (6, "usecs", 2555)


def test_parse_health_check_multiline_unhealthy(fixtures):
    dump = (fixtures / WHAMCLOUD / "valid/valid_unhealthy_host.txt").read_text()
    text = lctl_param(dump, "health_check")
    assert text.endswith("NOT HEALTHY\n") and "OST0012" in text
    assert parse_health_check(text) is False
    assert parse_health_check("healthy\n") is True
    assert parse_health_check("LBUG\n") is False


def test_parsers_on_210_target_files(fixtures):
    osc = fixtures / HPE / "proc/fs/lustre/osc/lustrefs-OST0003-osc-ffff88105db50000"
    status = parse_import((osc / "import").read_text())
    assert status.state == "FULL"
    assert parse_pending_pages((osc / "rpc_stats").read_text()).keys() == {"read", "write"}
    assert parse_last_reply((osc / "timeouts").read_text()) > 1.5e9
    with pytest.raises(ValueError, match="state"):
        parse_import("import:\n    name: x\n")


def test_broken_import_costs_only_that_target(fixtures, tmp_path):
    root = tmp_path / "lustre"
    shutil.copytree(fixtures / HPE, root, symlinks=True)
    broken = root / "proc/fs/lustre/osc/lustrefs-OST0002-osc-ffff88105db50000/import"
    broken.write_text("\x00\xff garbage")
    parsed = samples(scrape([LustreCollector(str(root / "sys"), str(root / "proc"))]))
    assert value(parsed, "gpuscope_lustre_target_read_success", fs="lustrefs", target="OST0002") == 0
    assert value(parsed, "gpuscope_lustre_target_read_success", fs="lustrefs", target="OST0003") == 1
    assert len(series(parsed, "gpuscope_lustre_import_state")) == 7
    assert value(parsed, "gpuscope_collector_success", collector="lustre") == 1
