"""Kubernetes pod attribution against a real gRPC server speaking the kubelet's pod-resources proto."""

from __future__ import annotations

import time

import pytest

from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.pods import parse_list_response
from exporter.registry import ScrapeRegistry
from simulator.nvml import SimulatedNvml
from tests.helpers import samples, series, value
from tests.kubelet import GPU_RESOURCE, compiled_api, serving, simulated_uuids, two_pods


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with compiled_api(tmp_path_factory.mktemp("podresources")) as modules:
        yield modules


def test_decoder_reads_what_protobuf_encodes(api):
    pb, _ = api
    uuid = simulated_uuids()
    allocations = parse_list_response(two_pods(pb).SerializeToString(), (GPU_RESOURCE,))
    assert {device: (a.namespace, a.pod, a.container) for device, a in allocations.items()} == {
        **{uuid[i]: ("ml", "trainer-0", "pytorch") for i in range(4)}, "5": ("research", "notebook", "jupyter")}
    assert parse_list_response(b"", (GPU_RESOURCE,)) == {}
    with pytest.raises((ValueError, IndexError)):
        parse_list_response(b"\x0b\x01", (GPU_RESOURCE,))  # a truncated message


@pytest.fixture
def kubelet(api, tmp_path):
    """A pod-resources server on a unix socket; yields (socket path, server stop function)."""
    pb, pb_grpc = api
    socket_path = str(tmp_path / "kubelet.sock")
    with serving(pb_grpc, two_pods(pb), socket_path) as server:
        yield socket_path, lambda: server.stop(0).wait()


def scrape_until(registry: ScrapeRegistry, check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        parsed = samples(registry.render())
        if check(parsed):
            return parsed
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


def test_gpu_collector_attributes_gpus_to_pods(kubelet):
    socket_path, stop = kubelet
    collector = GpuCollector(SimulatedNvml("p5.48xlarge"),
                             GpuOptions(pod_resources_socket=socket_path, pod_interval=0.1))
    try:
        registry = ScrapeRegistry([collector], 5.0)
        parsed = scrape_until(registry, lambda p: series(p, "gpuscope_gpu_pod_info"))
        pods = {(s["gpu"], s["namespace"], s["pod"], s["container"]) for s in series(parsed, "gpuscope_gpu_pod_info")}
        assert pods == {(str(i), "ml", "trainer-0", "pytorch") for i in range(4)} | {
            ("5", "research", "notebook", "jupyter")}
        assert value(parsed, "gpuscope_gpu_pod_resources_up") == 1
        stop()  # the kubelet goes away: attribution disappears, visibly
        parsed = scrape_until(registry, lambda p: value(p, "gpuscope_gpu_pod_resources_up") == 0)
        assert not series(parsed, "gpuscope_gpu_pod_info")
        assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    finally:
        collector.close()


def test_missing_socket_is_not_an_error(tmp_path):
    collector = GpuCollector(SimulatedNvml("p5.48xlarge"),
                             GpuOptions(pod_resources_socket=str(tmp_path / "absent.sock"), pod_interval=0.1))
    try:
        registry = ScrapeRegistry([collector], 5.0)
        parsed = scrape_until(registry, lambda p: ("gpuscope_gpu_pod_resources_up", frozenset()) in p)
        assert value(parsed, "gpuscope_gpu_pod_resources_up") == 0
        assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
        assert len(series(parsed, "gpuscope_gpu_up")) == 8
    finally:
        collector.close()


def test_pod_attribution_keeps_refreshing_across_a_driver_reload(kubelet):
    socket_path, stop = kubelet
    sim = SimulatedNvml("p5.48xlarge")
    collector = GpuCollector(sim, GpuOptions(pod_resources_socket=socket_path, pod_interval=0.1))
    try:
        registry = ScrapeRegistry([collector], 5.0)
        scrape_until(registry, lambda p: series(p, "gpuscope_gpu_pod_info"))
        sim.reload_driver()
        scrape_until(registry, lambda p: value(p, "gpuscope_collector_success", collector="gpu") == 1
                     and sim.calls["nvmlInit"] == 2)
        stop()  # the watcher still asks the kubelet after the reload, so it notices it is gone
        scrape_until(registry, lambda p: value(p, "gpuscope_gpu_pod_resources_up") == 0)
    finally:
        collector.close()
