"""Whole scrapes of fixture trees against golden files, and promtool's lint on them.

Regenerate after an intended change with `GPUSCOPE_UPDATE_GOLDEN=1 pytest tests/test_golden.py`
and review the diff like code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import requests

from exporter import catalog
from exporter.collectors import Roots, build, close
from exporter.collectors.gpu import GpuOptions
from exporter.registry import ScrapeRegistry
from simulator.node import SimulatedNode
from simulator.nvml import SimulatedNvml, load_profile
from simulator.rdma_tree import p5_efa_devices, write_rdma_tree
from tests.helpers import REPO, scrape
from tests.procs import exporter_process
from tests.test_host import host_tree  # noqa: F401  (fixture)
from tests.test_lustre import HPE

GOLDEN = REPO / "tests" / "golden"
ALL = ("rdma", "lustre", "host")


UNSTABLE = (catalog.COLLECTOR_DURATION.name + "{", catalog.BUILD_INFO.name + "{")


def stable(text: str) -> str:
    """The scrape without durations (differ run to run) and build info (differs by Python version)."""
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith(UNSTABLE))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.prom"
    if os.environ.get("GPUSCOPE_UPDATE_GOLDEN"):
        path.write_text(stable(text))
    assert stable(text) == path.read_text(), f"{path} differs; regenerate with GPUSCOPE_UPDATE_GOLDEN=1 and review"


@pytest.fixture
def p5_node(tmp_path, fixtures, host_tree):  # noqa: F811
    """A p5.48xlarge-shaped node: 32 EFA devices, the real Lustre 2.10 client tree, a small host."""
    sysfs, procfs = host_tree
    shutil.copytree(fixtures / HPE / "proc", procfs, dirs_exist_ok=True, symlinks=True)
    shutil.copytree(fixtures / HPE / "sys", sysfs, dirs_exist_ok=True, symlinks=True)
    return sysfs, procfs


@pytest.mark.parametrize("layout", ["split", "combined"])
def test_p5_node_whole_scrape(p5_node, layout):
    sysfs, procfs = p5_node
    write_rdma_tree(sysfs, p5_efa_devices(), layout=layout)
    check_golden("p5_node", scrape(build(ALL, Roots(sysfs, procfs))))


@pytest.mark.parametrize(("name", "subdir"), [("procfs_infiniband", "prometheus-procfs"),
                                              ("node_exporter_infiniband", "prometheus-node_exporter")])
def test_real_infiniband_captures_whole_scrape(fixtures, name, subdir):
    check_golden(name, scrape(build(("rdma",), Roots(str(fixtures / subdir / "sys"), "/nonexistent"))))


def promtool_check(text: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test installs Debian's prometheus package"
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", ["p5_node", "procfs_infiniband", "node_exporter_infiniband"])
def test_promtool_accepts_golden_scrapes(name):
    result = promtool_check((GOLDEN / f"{name}.prom").read_text())
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_promtool_accepts_a_live_scrape(p5_node):
    sysfs, procfs = p5_node
    write_rdma_tree(sysfs, p5_efa_devices())
    with exporter_process(f"--path.sysfs={sysfs}", f"--path.procfs={procfs}") as base:
        text = requests.get(f"{base}/metrics", timeout=5).text
    result = promtool_check(text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_simulated_p5_whole_scrape(tmp_path):
    """A simulated p5.48xlarge (8 H100, 32 EFA, FSx for Lustre) at a fixed instant, GPM included."""
    clock = lambda: 5000.0  # noqa: E731
    sim = SimulatedNvml("p5.48xlarge", clock=clock)
    node = SimulatedNode(str(tmp_path), load_profile("p5.48xlarge"), clock=clock)
    built = build(("gpu", "rdma", "lustre"), Roots(node.sysfs, str(tmp_path / "none"), nvml=sim,
                                                   settings={"gpu": GpuOptions(gpm_interval=0.05)}))
    try:
        registry = ScrapeRegistry(built, 5.0)
        deadline = time.monotonic() + 5
        while ((text := registry.render()).count("gpuscope_gpu_tensor_active_ratio{") < 8
               or text.count("gpuscope_gpu_nvlink_active_links{") < 8):
            assert time.monotonic() < deadline, "GPM values and link counts for 8 GPUs did not come within 5 s"
            time.sleep(0.02)
    finally:
        close(built)
    check_golden("simulated_p5", text)
    result = promtool_check(text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_nccl_inspector_whole_scrape(tmp_path):
    """A p5's eight Inspector files of a 4-node job, as the plugin writes them, read at a fixed
    instant; rank 5 is the one the job waits for (shortest collectives)."""
    from exporter.collectors.nccl import NcclCollector, NcclOptions
    from simulator.inspector import rank_buckets, write_rank_files
    from simulator.nvml import gpu_uuid

    ranks = [(gpu_uuid(g), g, rank_buckets(1, 4, 8, g, 0.45 if g == 5 else 1.7, 1.0)) for g in range(8)]
    write_rank_files(str(tmp_path), ranks, "4242", "node-1")
    for name in os.listdir(tmp_path):
        os.utime(tmp_path / name, (1_800_000_000, 1_800_000_000))
    nccl = NcclCollector(NcclOptions(directory=str(tmp_path)), clock=lambda: 1_800_000_010.0)
    nccl.identify_with(lambda: {gpu_uuid(g).lower(): ((str(g), gpu_uuid(g)), ("4242",)) for g in range(8)})
    text = scrape([nccl])
    check_golden("nccl_inspector", text)
    result = promtool_check(text)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr
