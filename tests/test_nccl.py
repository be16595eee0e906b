"""The nccl collector on NCCL Inspector files written byte for byte as the plugin writes them:
whole, truncated mid-line, empty, stale, too many, with an unescaped quote in a comm name."""

from __future__ import annotations

import math
import os

import pytest

from exporter import catalog
from exporter.collectors.nccl import NcclCollector, NcclOptions, parse
from simulator.inspector import Bucket, bucket_lines, dump, file_name, write_rank_files
from tests.helpers import samples, scrape, value

UUID = "GPU-00000003-5ca1-4e0d-9a7b-1d0f00003333"
OTHER = "GPU-00000004-5ca1-4e0d-9a7b-1d0f00004444"
# Inspector's README example line, as the plugin prints it.
README_LINE = ('nccl_collective_exec_time_microseconds{version="v5.1",slurm_job_id="unknown",node="nvl72004-T01",'
               'gpu="GPU0",comm_name="DP Group 0",n_nodes="1",nranks="4",collective="AllReduce",'
               'message_size="4-5GB",algo_proto="Ring_ll"} 9498.47')
BIG = Bucket("DP Group 0", 6, 48, "AllReduce", "1-2GB", "Ring_simple", 40.0, 20000.0)
SMALL = Bucket("DP Group 0", 6, 48, "AllReduce", "64-65MB", "Tree_ll128", 10.0, 2000.0)
NOW = 1_800_000_000.0


def write(directory, uuid: str, buckets: list[Bucket], job: str = "4242", mtime: float = NOW - 5) -> str:
    write_rank_files(str(directory), [(uuid, 0, buckets)], job, "node-1")
    path = os.path.join(directory, file_name(uuid))
    os.utime(path, (mtime, mtime))
    return path


def collector(directory, now: list[float], **options) -> NcclCollector:
    nccl = NcclCollector(NcclOptions(directory=str(directory), interval=30.0, **options), clock=lambda: now[0])
    nccl.identify_with(lambda: {UUID.lower(): (("3", UUID), ("777",)), OTHER.lower(): (("4", OTHER), ())})
    return nccl


def exec_time(parsed, uuid: str = UUID, gpu: str = "3", job: str = "4242", size: str = "all") -> float:
    return value(parsed, catalog.NCCL_EXEC_TIME.name, gpu=gpu, uuid=uuid, job_id=job, comm="DP Group 0",
                 nranks="48", collective="AllReduce", message_size=size)


def test_parse_the_readme_line_and_an_unescaped_quote():
    lines, malformed = parse(README_LINE + "\n" + README_LINE.replace('"DP Group 0"', '"pp "stage" 1"') + "\n")
    assert malformed == 0
    assert [(line.comm, line.nranks, line.operation, line.size, line.value) for line in lines] == [
        ("DP Group 0", "4", "AllReduce", "4-5GB", 9498.47), ('pp "stage" 1', "4", "AllReduce", "4-5GB", 9498.47)]


@pytest.mark.parametrize("line", [
    "garbage", README_LINE.replace("9498.47", "NaN"), README_LINE.replace("9498.47", "lots"),
    README_LINE.replace("nccl_collective_exec_time_microseconds", "nccl_unheard_of"),
    README_LINE.replace(',nranks="4"', ""),
])
def test_a_malformed_line_is_skipped_and_counted(line):
    lines, malformed = parse(README_LINE + "\n" + line + "\n")
    assert (len(lines), malformed) == (1, 1)


def test_buckets_are_aggregated_in_base_units_and_joined_to_the_nvml_gpu(tmp_path):
    write(tmp_path, UUID, [BIG, SMALL])
    parsed = samples(scrape([collector(tmp_path, [NOW])]))
    assert exec_time(parsed) == pytest.approx((20000.0 + 2000.0) / 2 * 1e-6)
    bandwidth = value(parsed, catalog.NCCL_BUS_BANDWIDTH.name, gpu="3", uuid=UUID, job_id="4242", comm="DP Group 0",
                      nranks="48", collective="AllReduce", message_size="all")
    assert bandwidth == pytest.approx(math.sqrt(40.0 * 10.0) * 1e9)  # geometric mean, as Inspector averages
    assert value(parsed, catalog.NCCL_SNAPSHOT_AGE.name, gpu="3", uuid=UUID, job_id="4242") == 5.0
    assert value(parsed, catalog.NCCL_MALFORMED_LINES.name) == 0
    nccl = {key for key in parsed if key[0].startswith("gpuscope_nccl_")}
    assert len(nccl) == 2 + 1 + 1 + 3  # bandwidth, time; snapshot age; malformed; dropped files, series, ras


def test_without_a_slurm_job_the_gpus_own_job_is_used(tmp_path):
    write(tmp_path, UUID, [BIG], job="unknown")
    parsed = samples(scrape([collector(tmp_path, [NOW])]))
    assert exec_time(parsed, job="777") == pytest.approx(0.02)


def test_message_size_detail_adds_one_series_per_bucket(tmp_path):
    write(tmp_path, UUID, [BIG, SMALL])
    parsed = samples(scrape([collector(tmp_path, [NOW], message_sizes=True)]))
    assert [exec_time(parsed, size=size) for size in ("all", "1-2GB", "64-65MB")] == pytest.approx(
        [0.011, 0.02, 0.002])


@pytest.mark.parametrize("rewrite", [
    pytest.param(lambda path, text: dump(path, []), id="empty"),
    pytest.param(lambda path, text: dump(path, [text[:len(text) // 2 + 7]]), id="truncated mid-line"),
])
def test_a_file_caught_mid_rewrite_keeps_its_last_complete_snapshot(tmp_path, rewrite):
    path = write(tmp_path, UUID, [BIG])
    now = [NOW]
    nccl = collector(tmp_path, now)
    assert exec_time(samples(scrape([nccl]))) == pytest.approx(0.02)
    rewrite(path, bucket_lines(SMALL, "4242", "node-1", 0))
    os.utime(path, (NOW + 25, NOW + 25))
    now[0] = NOW + 30
    parsed = samples(scrape([nccl]))
    assert exec_time(parsed) == pytest.approx(0.02)
    assert value(parsed, catalog.NCCL_SNAPSHOT_AGE.name, gpu="3", uuid=UUID, job_id="4242") == 35.0  # the snapshot's
    assert value(parsed, catalog.NCCL_MALFORMED_LINES.name) == 0


def test_a_file_is_read_once_it_settled(tmp_path):
    path = write(tmp_path, UUID, [BIG])
    now = [NOW]
    nccl = collector(tmp_path, now)
    scrape([nccl])
    dump(path, [bucket_lines(SMALL, "4242", "node-1", 0)])
    os.utime(path, (NOW + 29.6, NOW + 29.6))  # Inspector may still be appending buckets
    now[0] = NOW + 30
    assert exec_time(samples(scrape([nccl]))) == pytest.approx(0.02)
    now[0] = NOW + 31
    assert exec_time(samples(scrape([nccl]))) == pytest.approx(0.002)


def test_a_file_not_rewritten_for_three_intervals_drops_its_series_and_keeps_its_age(tmp_path):
    """Inspector rewrites a file only after completions: a hung job's file ages, and so does a finished
    job's. Its series go; its age stays, with the job that wrote it, for the rules to judge."""
    write(tmp_path, UUID, [BIG], mtime=NOW - 94)  # three 30 s intervals and 4 s late: a starved dump thread
    write(tmp_path, OTHER, [BIG], job="4243", mtime=NOW - 96)
    parsed = samples(scrape([collector(tmp_path, [NOW])]))
    assert {labels: v for (name, labels), v in parsed.items() if name == catalog.NCCL_SNAPSHOT_AGE.name} == {
        frozenset({("gpu", "3"), ("uuid", UUID), ("job_id", "4242")}): 94.0,
        frozenset({("gpu", "4"), ("uuid", OTHER), ("job_id", "4243")}): 96.0}
    assert {labels for name, labels in parsed if name == catalog.NCCL_EXEC_TIME.name} == {
        frozenset({("gpu", "3"), ("uuid", UUID), ("job_id", "4242"), ("comm", "DP Group 0"), ("nranks", "48"),
                   ("collective", "AllReduce"), ("message_size", "all")})}


def test_a_file_without_slurm_keeps_the_job_it_was_read_fresh_in(tmp_path):
    """Without Slurm the file names no job: it is the GPU's when the file was read fresh, and stays so
    once a new job (a new pod) runs on the GPU without Inspector; a file already stale when first read
    (an exporter started after the job) is nobody's."""
    path = write(tmp_path, UUID, [BIG], job="unknown")
    now, jobs = [NOW], ["777"]
    nccl = NcclCollector(NcclOptions(directory=str(tmp_path), interval=30.0), clock=lambda: now[0])
    nccl.identify_with(lambda: {UUID.lower(): (("3", UUID), tuple(jobs))})
    assert value(samples(scrape([nccl])), catalog.NCCL_SNAPSHOT_AGE.name, gpu="3", uuid=UUID, job_id="777") == 5.0
    now[0], jobs[:] = NOW + 600, ["888"]
    assert value(samples(scrape([nccl])), catalog.NCCL_SNAPSHOT_AGE.name, gpu="3", uuid=UUID, job_id="777") == 605.0
    restarted = NcclCollector(NcclOptions(directory=str(tmp_path), interval=30.0), clock=lambda: now[0])
    restarted.identify_with(lambda: {UUID.lower(): (("3", UUID), tuple(jobs))})
    assert value(samples(scrape([restarted])), catalog.NCCL_SNAPSHOT_AGE.name, gpu="3", uuid=UUID) == 605.0  # no job_id
    assert os.path.exists(path)


def test_files_and_series_beyond_the_caps_are_dropped_and_counted(tmp_path):
    write(tmp_path, UUID, [BIG, Bucket("TP Group 1", 1, 8, "AllGather", "1-2GB", "Ring_ll", 300.0, 900.0)])
    write(tmp_path, OTHER, [BIG])
    parsed = samples(scrape([collector(tmp_path, [NOW], max_files=1, max_series=3)]))
    assert value(parsed, catalog.NCCL_DROPPED.name, what="files") == 1
    assert value(parsed, catalog.NCCL_DROPPED.name, what="series") == 1
    assert sum(1 for name, _ in parsed if name in (catalog.NCCL_EXEC_TIME.name, catalog.NCCL_BUS_BANDWIDTH.name)) == 3


def test_a_malformed_line_costs_that_line_only(tmp_path):
    path = write(tmp_path, UUID, [BIG])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("nccl_bus_bandwidth_gbs{broken\n")
    os.utime(path, (NOW - 5, NOW - 5))
    parsed = samples(scrape([collector(tmp_path, [NOW])]))
    assert exec_time(parsed) == pytest.approx(0.02)
    assert value(parsed, catalog.NCCL_MALFORMED_LINES.name) == 1


def test_the_file_is_rewritten_in_place_as_inspector_does(tmp_path):
    """Same inode, truncated then appended: a reader holding the old content sees it change under it."""
    path = write(tmp_path, UUID, [BIG, SMALL])
    inode = os.stat(path).st_ino
    dump(path, [bucket_lines(SMALL, "4242", "node-1", 0)])
    assert os.stat(path).st_ino == inode
    with open(path, encoding="utf-8") as handle:
        assert handle.read() == bucket_lines(SMALL, "4242", "node-1", 0)
