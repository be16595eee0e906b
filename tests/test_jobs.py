"""Slurm job attribution: the mapping directory, process cgroups, and the prolog/epilog that keep it."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.jobs import MappingDirectory, job_of_process
from exporter.registry import ScrapeRegistry
from simulator.nvml import SimulatedNvml
from tests.helpers import REPO, samples, series

PROLOG = REPO / "deploy" / "slurm" / "prolog.sh"
EPILOG = REPO / "deploy" / "slurm" / "epilog.sh"


def test_mapping_directory_reads_gpu_files_and_follows_changes(tmp_path):
    mapping = tmp_path / "map"
    assert MappingDirectory(str(mapping)).jobs() == {}  # no directory yet: no jobs, no error
    mapping.mkdir()
    (mapping / "0").write_text("4242\n")
    (mapping / "1").write_text("4242\n\n4243\n")
    (mapping / "2.1").write_text("77\n")  # MIG: GPU 2, GPU instance 1
    (mapping / "notes.txt").write_text("99\n")
    (mapping / "3").write_text("not-a-job\n")
    directory = MappingDirectory(str(mapping))
    assert directory.jobs() == {0: ("4242",), 1: ("4242", "4243"), 2: ("77",)}
    (mapping / "1").write_text("4243\n")
    assert directory.jobs() == {0: ("4242",), 1: ("4243",), 2: ("77",)}
    (mapping / "0").unlink()
    assert directory.jobs() == {1: ("4243",), 2: ("77",)}


@pytest.mark.parametrize(("cgroup", "environ", "job"), [
    ("12:devices:/slurm/uid_1000/job_4242/step_0/task_0\n", b"", "4242"),  # cgroup v1
    ("0::/system.slice/slurmstepd.scope/job_31337/step_batch/user/task_0\n", b"", "31337"),  # cgroup v2
    ("0::/user.slice/user-1000.slice/session-3.scope\n", b"HOME=/root\0SLURM_JOB_ID=555\0", "555"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", b"HOME=/root\0", ""),
    ("0::/kubepods/burstable/pod1234/abcd\n", b"SLURM_JOB_ID=x1\0", ""),
])
def test_job_of_process(tmp_path, cgroup, environ, job):
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "cgroup").write_text(cgroup)
    (tmp_path / "123" / "environ").write_bytes(environ)
    assert job_of_process(str(tmp_path), 123) == job
    assert job_of_process(str(tmp_path), 999) == ""  # the process has exited


def job_info(registry: ScrapeRegistry) -> set[tuple[str, str]]:
    parsed = samples(registry.render())
    return {(s["gpu"], s["job_id"]) for s in series(parsed, "gpuscope_gpu_job_info")}


def test_gpu_collector_exports_jobs_from_the_mapping_directory(tmp_path):
    (tmp_path / "0").write_text("4242\n")
    (tmp_path / "1").write_text("4242\n")
    (tmp_path / "7").write_text("4300\n")
    collector = GpuCollector(SimulatedNvml("p5.48xlarge"), GpuOptions(job_mapping_dir=str(tmp_path)))
    try:
        registry = ScrapeRegistry([collector], 5.0)
        assert job_info(registry) == {("0", "4242"), ("1", "4242"), ("7", "4300")}
        (tmp_path / "7").unlink()
        assert job_info(registry) == {("0", "4242"), ("1", "4242")}
    finally:
        collector.close()


def test_gpu_collector_finds_jobs_from_gpu_processes(tmp_path):
    for pid, cgroup in ((100, "0::/system.slice/slurmstepd.scope/job_900/step_0/user/task_0\n"),
                        (101, "0::/system.slice/slurmstepd.scope/job_900/step_0/user/task_1\n"),
                        (102, "0::/user.slice\n")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cgroup").write_text(cgroup)
    nvml = SimulatedNvml("p5.48xlarge")
    nvml.processes = {0: [100], 1: [101], 2: [102], 3: [4040]}  # 4040 has exited
    collector = GpuCollector(nvml, GpuOptions(procfs=str(tmp_path), job_interval=0.05))
    try:
        registry = ScrapeRegistry([collector], 5.0)
        deadline = time.monotonic() + 5
        while (jobs := job_info(registry)) != {("0", "900"), ("1", "900")}:
            assert time.monotonic() < deadline, jobs
            time.sleep(0.05)
    finally:
        collector.close()


def run(script, job: str, gpus: str, directory) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": job, "SLURM_JOB_GPUS": gpus,
           "GPUSCOPE_JOB_MAPPING_DIR": str(directory)}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=30)


def test_prolog_and_epilog_keep_the_mapping_per_job(tmp_path):
    mapping = tmp_path / "mapping"
    assert run(PROLOG, "100", "0,1,2,3", mapping).returncode == 0
    assert run(PROLOG, "200", "4,5,6,7", mapping).returncode == 0
    assert run(PROLOG, "300", "3", mapping).returncode == 0  # a GPU shared by two jobs
    assert MappingDirectory(str(mapping)).jobs() == {0: ("100",), 1: ("100",), 2: ("100",), 3: ("100", "300"),
                                                     4: ("200",), 5: ("200",), 6: ("200",), 7: ("200",)}
    assert run(EPILOG, "100", "0,1,2,3", mapping).returncode == 0
    assert MappingDirectory(str(mapping)).jobs() == {3: ("300",), 4: ("200",), 5: ("200",), 6: ("200",),
                                                     7: ("200",)}
    assert sorted(p.name for p in mapping.iterdir()) == [".lock", "3", "4", "5", "6", "7"]


def test_prologs_and_epilogs_running_at_once_lose_nothing(tmp_path):
    mapping = tmp_path / "mapping"
    jobs = [str(1000 + n) for n in range(16)]
    threads = [threading.Thread(target=run, args=(PROLOG, job, "0,1,2,3,4,5,6,7", mapping)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert MappingDirectory(str(mapping)).jobs() == {gpu: tuple(jobs) for gpu in range(8)}
    threads = [threading.Thread(target=run, args=(EPILOG, job, "", mapping)) for job in jobs[:12]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert MappingDirectory(str(mapping)).jobs() == {gpu: tuple(jobs[12:]) for gpu in range(8)}


def test_prolog_without_a_job_id_records_nothing_and_does_not_fail(tmp_path):
    result = run(PROLOG, "", "0", tmp_path / "mapping")
    assert result.returncode == 0 and "SLURM_JOB_ID is not set" in result.stderr
    assert not (tmp_path / "mapping").exists()
