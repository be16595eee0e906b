"""The training spool: the job's writer (gpuscope_train/, standard library only) and the exporter's
reader (exporter/collectors/train.py), exact on what they carry and bounded on what they refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from exporter import catalog
from exporter.collectors import Roots, build, close
from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.train import READ_BUDGET, SpoolReader, TrainCollector, TrainOptions, parse_record
from exporter.config import resolve
from gpuscope_train import StepWriter, gpu_of
from simulator.nvml import SimulatedNvml, gpu_uuid
from tests.helpers import samples, scrape, series, value
from tests.test_gpu import wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reader(directory, clock=None, **options) -> SpoolReader:
    return SpoolReader(TrainOptions(str(directory), **options), clock or Clock())


def writer(directory, rank: int = 0, job: str = "4242", **kwargs) -> StepWriter:
    return StepWriter(job=job, rank=rank, local_rank=rank % 8, gpu=kwargs.pop("gpu", str(rank % 8)),
                      directory=str(directory), **kwargs)


def test_a_record_carries_every_field_in_base_units(tmp_path):
    steps = writer(tmp_path, rank=3, gpu="GPU-abc")
    steps.step(7, 0.5, tokens=4096, samples=8, loss=2.25, grad_norm=0.75, flops=1.5e15, when=1700000000.0,
               data_wait=0.05, compute=0.4, checkpoint_save=0.01)
    line = (tmp_path / "4242" / "rank-3.jsonl").read_bytes()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"v": 1, "job": "4242", "rank": 3, "local_rank": 3, "gpu": "GPU-abc", "step": 7,
                                "time": 1700000000.0, "seconds": 0.5,
                                "phases": {"data_wait": 0.05, "compute": 0.4, "checkpoint_save": 0.01},
                                "tokens": 4096, "samples": 8, "loss": 2.25, "grad_norm": 0.75, "flops": 1.5e15}
    assert parse_record(line)["step"] == 7
    with pytest.raises(TypeError, match="unknown phase 'thinking'"):
        steps.step(8, 0.5, thinking=0.1)


def test_the_writer_imports_nothing_but_the_standard_library():
    code = ("import sys; before = set(sys.modules); import gpuscope_train; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] not in sys.stdlib_module_names))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert result.stdout.strip() == "['gpuscope_train']"


def test_the_gpu_is_found_through_cuda_visible_devices():
    assert gpu_of(1, {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == "5"
    assert gpu_of(0, {"CUDA_VISIBLE_DEVICES": "GPU-9f2e,GPU-77aa"}) == "GPU-9f2e"
    assert gpu_of(3, {}) == "3"


def test_without_a_directory_the_writer_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUSCOPE_TRAIN_DIR", raising=False)
    steps = StepWriter(job="1", rank=0)
    steps.step(1, 0.1)
    assert steps.path == "" and steps.dropped == 0


def test_rotation_keeps_a_rank_under_twice_its_cap_and_the_reader_misses_no_step(tmp_path):
    steps, spool = writer(tmp_path, max_bytes=4096), reader(tmp_path)
    for step in range(1, 1001):
        steps.step(step, 0.25, tokens=100)
        if step % 10 == 0:
            spool.read_round()
    spool.read_round()
    folder = tmp_path / "4242"
    assert sorted(os.listdir(folder)) == ["rank-0.jsonl", "rank-0.jsonl.1"]
    assert all(os.path.getsize(folder / name) <= 4096 for name in os.listdir(folder))
    ranks, dropped = spool.view()
    assert (ranks[("4242", 0)].steps, ranks[("4242", 0)].tokens, dropped) == (1000, 100_000, {})
    assert ranks[("4242", 0)].seconds == pytest.approx(250.0)


def test_a_file_rotated_twice_between_reads_is_counted_lost_and_reading_goes_on(tmp_path):
    steps, spool = writer(tmp_path, max_bytes=1024), reader(tmp_path)
    steps.step(1, 0.25)
    spool.read_round()
    for step in range(2, 60):  # several rotations before the next read
        steps.step(step, 0.25)
    spool.read_round()
    ranks, dropped = spool.view()
    assert dropped == {"lost": 1}
    assert 1 < ranks[("4242", 0)].steps < 59


def test_a_line_is_counted_once_whole_and_never_twice(tmp_path):
    folder = tmp_path / "7"
    folder.mkdir()
    path = folder / "rank-0.jsonl"
    record = b'{"v":1,"job":"7","rank":0,"gpu":"0","step":1,"seconds":0.5,"tokens":10}'
    path.write_bytes(record[:30])  # a write caught in the middle
    spool = reader(tmp_path)
    spool.read_round()
    assert spool.view()[0] == {}
    with open(path, "ab") as handle:
        handle.write(record[30:] + b"\n")
    spool.read_round()
    spool.read_round()
    assert spool.view()[0][("7", 0)].tokens == 10


def test_bad_input_is_counted_by_reason_and_costs_the_other_ranks_nothing(tmp_path):
    good, other = writer(tmp_path, rank=0), writer(tmp_path, rank=1)
    folder = tmp_path / "4242"
    good.step(1, 0.5, tokens=10)
    with open(good.path, "ab") as handle:
        handle.write(b"not json\n")
        handle.write(b'{"v":2,"job":"4242","rank":0,"step":2,"seconds":1}\n')
        handle.write(b'{"v":1,"job":"4242","rank":0}\n')
        handle.write(b"x" * (10 << 20) + b"\n")  # a 10 MB line
    good.step(2, 0.5, tokens=10)
    other.step(1, 1.0, tokens=5)
    os.mkfifo(folder / "rank-8.jsonl")  # a FIFO never blocks the reader
    os.symlink("/dev/zero", folder / "rank-9.jsonl")
    with open(folder / "rank-10.jsonl", "wb") as handle:  # a second file claiming rank 1
        handle.write(b'{"v":1,"job":"4242","rank":1,"gpu":"1","step":9,"seconds":9}\n')
    spool = reader(tmp_path)
    for _ in range(4):  # the long line takes three rounds of READ_BUDGET
        spool.read_round()
    ranks, dropped = spool.view()
    assert dropped == {"malformed": 2, "version": 1, "too_long": 1, "not_regular": 2, "duplicate_rank": 1}
    assert (ranks[("4242", 0)].steps, ranks[("4242", 0)].tokens) == (2, 20)
    assert (ranks[("4242", 1)].steps, ranks[("4242", 1)].seconds) == (1, 1.0)


def test_a_file_rewritten_in_place_is_told_apart_by_its_head_even_when_first_seen_empty(tmp_path):
    """A freed inode number can come back for a new file: its first bytes tell it apart, also for a
    file that was empty when the reader first met it."""
    path = tmp_path / "4242" / "rank-0.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"")
    spool = reader(tmp_path)
    spool.read_round()
    line = '{{"v":1,"job":"4242","rank":0,"gpu":"0","step":{},"seconds":1,"tokens":{}}}\n'
    path.write_text("".join(line.format(step, 1) for step in range(10)))  # more than HEAD bytes at once
    spool.read_round()
    with open(path, "r+") as handle:  # the same inode, another file's content
        handle.write("".join(line.format(step, 100) for step in range(12)))
    spool.read_round()
    ranks, dropped = spool.view()
    assert (ranks[("4242", 0)].steps, ranks[("4242", 0)].tokens, dropped) == (22, 1210, {"lost": 1})


def test_a_refused_path_that_becomes_a_regular_file_is_read_and_nothing_counted_lost(tmp_path):
    folder = tmp_path / "4242"
    folder.mkdir()
    os.mkfifo(folder / "rank-0.jsonl")
    spool = reader(tmp_path)
    spool.read_round()
    os.unlink(folder / "rank-0.jsonl")
    writer(tmp_path).step(1, 0.5)
    spool.read_round()
    ranks, dropped = spool.view()
    assert (ranks[("4242", 0)].steps, dropped) == (1, {"not_regular": 1})


def test_a_non_finite_step_time_counts_the_step_and_adds_no_seconds(tmp_path):
    path = tmp_path / "4242" / "rank-0.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"v":1,"job":"4242","rank":0,"step":1,"seconds":Infinity}\n'
                     b'{"v":1,"job":"4242","rank":0,"step":2,"seconds":0.5}\n')
    spool = reader(tmp_path)
    spool.read_round()
    rank = spool.view()[0][("4242", 0)]
    assert (rank.steps, rank.seconds) == (2, 0.5)


def test_a_round_reads_at_most_its_budget_of_a_fast_file(tmp_path):
    fast, slow = writer(tmp_path, rank=0, max_bytes=64 << 20), writer(tmp_path, rank=1)
    for step in range(60_000):  # about 8 MB
        fast.step(step, 0.001)
    slow.step(1, 2.0)
    spool = reader(tmp_path)
    spool.read_round()
    ranks, _ = spool.view()
    size = os.path.getsize(fast.path)
    assert ranks[("4242", 0)].steps < 60_000 and size > READ_BUDGET
    assert ranks[("4242", 1)].steps == 1
    spool.read_round()
    spool.read_round()
    assert spool.view()[0][("4242", 0)].steps == 60_000


def test_non_finite_and_skipped_steps_are_counted_and_keep_the_last_finite_loss(tmp_path):
    steps, spool = writer(tmp_path), reader(tmp_path)
    steps.step(1, 0.5, loss=2.5, grad_norm=1.0)
    steps.step(2, 0.5, loss=float("nan"), grad_norm=float("inf"))
    steps.step(3, 0.5, loss=2.4, grad_norm=0.9, skipped=True)
    spool.read_round()
    rank = spool.view()[0][("4242", 0)]
    assert (rank.nonfinite, rank.loss, rank.grad_norm) == (2, 2.4, 0.9)


def test_a_silent_rank_and_a_removed_file_lose_their_series(tmp_path):
    clock = Clock()
    first, second = writer(tmp_path, rank=0), writer(tmp_path, rank=1)
    first.step(1, 0.5)
    second.step(1, 0.5)
    spool = reader(tmp_path, clock, stale=60.0)
    spool.read_round()
    clock.now += 30
    second.step(2, 0.5)
    spool.read_round()
    clock.now += 40  # rank 0 silent for 70 s
    spool.read_round()
    assert set(spool.view()[0]) == {("4242", 1)}
    os.unlink(second.path)
    spool.read_round()
    assert spool.view()[0] == {}


def test_the_ranks_series_join_the_gpus_they_drive_by_uuid_pci_address_or_index(tmp_path):
    nvml = SimulatedNvml("p5.48xlarge")
    gpus = GpuCollector(nvml, GpuOptions(gpm_interval=3600))
    scrape([gpus])  # NVML initialised: the GPUs known
    handle = nvml.nvmlDeviceGetHandleByIndex
    uuid, bus = nvml.nvmlDeviceGetUUID(handle(2)), nvml.nvmlDeviceGetPciInfo(handle(5)).busId
    bus = bus.decode() if isinstance(bus, bytes) else bus
    writer(tmp_path, rank=10, gpu=uuid).step(1, 0.5, tokens=7, data_wait=0.1, checkpoint_load=0.2, loss=1.5)
    writer(tmp_path, rank=13, gpu=bus).step(1, 0.25)
    writer(tmp_path, rank=14, gpu="6").step(1, 0.125)
    writer(tmp_path, rank=15, gpu="GPU-not-here").step(1, 0.5)
    spool = reader(tmp_path)
    spool.read_round()
    train = TrainCollector(TrainOptions(str(tmp_path)), spool)
    train.identify_with(gpus.identities, gpus.gpus_by_pci)
    try:
        parsed = samples(scrape([gpus, train]))
    finally:
        gpus.close()
    at = {s["rank"]: (s.get("gpu", ""), s.get("uuid", "")) for s in series(parsed, catalog.TRAIN_STEPS.name)}
    assert at == {"10": ("2", uuid), "13": ("5", nvml.nvmlDeviceGetUUID(handle(5))),
                  "14": ("6", nvml.nvmlDeviceGetUUID(handle(6))), "15": ("", "")}
    labels = {"job_id": "4242", "rank": "10", "gpu": "2", "uuid": uuid}
    assert value(parsed, catalog.TRAIN_TOKENS.name, **labels) == 7
    assert value(parsed, catalog.TRAIN_STEP_SECONDS.name, **labels) == 0.5
    assert value(parsed, catalog.TRAIN_PHASE_SECONDS.name, phase="data_wait", **labels) == 0.1
    assert value(parsed, catalog.TRAIN_PHASE_SECONDS.name, phase="checkpoint", **labels) == 0.2
    assert value(parsed, catalog.TRAIN_LOSS.name, **labels) == 1.5
    assert not series(parsed, catalog.TRAIN_SAMPLES.name)  # no rank reports samples: no series


def test_the_collector_runs_where_a_spool_directory_is_given(tmp_path):
    assert "train" not in resolve({}, {}, "").collectors
    settings = resolve({"collector.train.dir": str(tmp_path)}, {}, "")
    assert "train" in settings.collectors and settings.roots.of("train").directory == str(tmp_path)
    writer(tmp_path, rank=0).step(1, 0.5)
    built = build(("train",), Roots(settings=dict(settings.roots.settings)))
    try:  # the background reader's first round comes within its interval (1 s)
        parsed = wait_for(lambda: (p := samples(scrape(built))) and series(p, catalog.TRAIN_STEPS.name) and p)
        assert value(parsed, catalog.TRAIN_STEPS.name, job_id="4242", rank="0") == 1  # no GPU collector: no GPU
    finally:
        close(built)


def simulated_node(tmp_path, clock):
    from simulator.node import SimulatedNode
    from simulator.nvml import load_profile

    root = tmp_path / "node"
    SimulatedNode.write_job(str(root), "77", node=1, nodes=2)
    node = SimulatedNode(str(root), load_profile("p5.48xlarge"), clock=clock, train_dir=str(tmp_path / "spool"))
    return node, root / "faults.yaml"


@pytest.mark.parametrize(("fault", "step_seconds", "checkpoint"), [
    (None, 1.02, 0.0),  # 1 s and 0.02 s of data wait
    ({"kind": "thermal_throttle", "gpu": 3}, round(1980 / 1188, 6) + 0.02, 0.0),  # the job at GPU 3's clock
    ({"kind": "lustre_eviction"}, 1.0 + 1.5, 0.0),  # each step waits for data
    ({"kind": "checkpoint"}, 1.02 + 4.0, 4.0),
])
def test_a_simulated_job_writes_every_rank_at_the_pace_its_node_faults_set(tmp_path, fault, step_seconds, checkpoint):
    clock = Clock()
    node, faults = simulated_node(tmp_path, clock)
    if fault:
        faults.write_text(json.dumps([fault]))
    for _ in range(10):
        clock.now += step_seconds
        node.advance()
    spool = reader(tmp_path / "spool")
    spool.read_round()
    ranks = spool.view()[0]
    assert sorted(ranks) == [("77", rank) for rank in range(8, 16)]  # node 1 of the job: ranks 8-15
    rank = ranks[("77", 11)]
    assert rank.steps == 10
    assert rank.seconds / rank.steps == pytest.approx(step_seconds, rel=1e-3)
    assert rank.checkpoint / rank.steps == pytest.approx(checkpoint)
    assert rank.gpu == gpu_uuid(3)


def test_a_stalled_network_stops_every_simulated_step(tmp_path):
    clock = Clock()
    node, faults = simulated_node(tmp_path, clock)
    faults.write_text(json.dumps([{"kind": "efa_stall"}]))
    for _ in range(10):
        clock.now += 1.0
        node.advance()
    assert not os.path.exists(tmp_path / "spool" / "77")


def test_a_simulated_node_serves_its_jobs_ranks_joined_to_their_gpus(tmp_path):
    """`gpuscope exporter --simulate` with a spool: the node's own job writes it, the exporter reads it."""
    import requests

    from tests.procs import exporter_process

    with exporter_process("--simulate=p5.48xlarge", "--simulate.interval=0.5s", "--collector.train.interval=0.2s",
                          f"--collector.train.dir={tmp_path}") as base:
        parsed = wait_for(lambda: (p := samples(requests.get(f"{base}/metrics", timeout=10).text))
                          and len(series(p, catalog.TRAIN_STEPS.name)) == 8 and p, timeout=15)
    gpus = {s["gpu"]: s["uuid"] for s in series(parsed, "gpuscope_gpu_info")}
    ranks = series(parsed, catalog.TRAIN_STEPS.name)
    assert {(s["job_id"], s["rank"], s["gpu"], s["uuid"]) for s in ranks} == {
        ("4242", str(gpu), str(gpu), gpus[str(gpu)]) for gpu in range(8)}


def otlp_collector(tmp_path):
    from tests.helpers import free_port

    address = f"127.0.0.1:{free_port()}"
    return TrainCollector(TrainOptions(otlp_address=address)), address


def test_megatrons_opentelemetry_metrics_land_as_the_same_series_through_the_real_sdk(tmp_path):
    """Megatron-core's instruments (megatron/core/telemetry/training_metrics.py), recorded through the
    real opentelemetry-sdk and sent by its OTLP/HTTP protobuf exporter."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    train, address = otlp_collector(tmp_path)
    reader_ = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"http://{address}/v1/metrics"),
                                            export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[reader_],
                             resource=Resource.create({"nemo.run.id": "4242", "rank": 31, "gpuscope.gpu": "7"}))
    meter = provider.get_meter("megatron")
    durations = meter.create_histogram("megatron.training.step_duration_ms", unit="ms")
    for milliseconds in (500.0, 520.0, 480.0):
        durations.record(milliseconds)
    meter.create_gauge("megatron.training.loss").set(2.5)
    meter.create_gauge("megatron.training.grad_norm").set(0.75)
    meter.create_counter("megatron.training.skipped_iters").add(2)
    meter.create_gauge("megatron.training.tokens_per_sec").set(1e6)  # a rate: not a token count
    try:
        assert reader_.force_flush(timeout_millis=10_000)
        parsed = samples(scrape([train]))
    finally:
        provider.shutdown()
        train.close()
    labels = {"job_id": "4242", "rank": "31"}  # its GPU ("7") unresolved: no GPU collector here
    assert value(parsed, catalog.TRAIN_STEPS.name, **labels) == 3
    assert value(parsed, catalog.TRAIN_STEP_SECONDS.name, **labels) == pytest.approx(1.5)
    assert value(parsed, catalog.TRAIN_LOSS.name, **labels) == 2.5
    assert value(parsed, catalog.TRAIN_GRAD_NORM.name, **labels) == 0.75
    assert value(parsed, catalog.TRAIN_NONFINITE.name, **labels) == 2
    assert not series(parsed, catalog.TRAIN_TOKENS.name)


def test_otlp_json_is_taken_and_a_request_without_a_job_is_refused(tmp_path):
    import requests

    train, address = otlp_collector(tmp_path)
    url = f"http://{address}/v1/metrics"
    point = {"count": "4", "sum": 2000.0, "timeUnixNano": "1"}
    request = {"resourceMetrics": [{
        "resource": {"attributes": [{"key": "slurm.job.id", "value": {"stringValue": "99"}},
                                    {"key": "rank", "value": {"intValue": "3"}}]},
        "scopeMetrics": [{"metrics": [{"name": "megatron.training.step_duration_ms", "histogram": {
            "aggregationTemporality": 2, "dataPoints": [point]}}]}]}]}
    try:
        assert requests.post(url, json=request, timeout=10).status_code == 200
        no_job = {"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": []}]}
        refused = requests.post(url, json=no_job, timeout=10)
        assert refused.status_code == 400 and "no job" in refused.text
        assert requests.post(url, data=b"\xff\x00garbage", headers={"Content-Type": "application/x-protobuf"},
                             timeout=10).status_code == 400
        parsed = samples(scrape([train]))
    finally:
        train.close()
    assert value(parsed, catalog.TRAIN_STEPS.name, job_id="99", rank="3") == 4
    assert value(parsed, catalog.TRAIN_STEP_SECONDS.name, job_id="99", rank="3") == 2.0


@pytest.mark.parametrize("address", ["0.0.0.0:4318", "10.0.0.5:4318", "127.0.0.1:0", "localhost"])
def test_the_otlp_intake_listens_on_loopback_only(address):
    with pytest.raises(Exception, match="invalid OTLP address"):
        resolve({"collector.train.otlp-address": address}, {}, "")
