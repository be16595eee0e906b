"""Kubernetes pod attribution against a real gRPC server speaking the kubelet's pod-resources proto.

The server runs in the test process on a unix socket, with messages and service generated at test
time from tests/podresources/api.proto (the kubelet's field numbers) by grpc_tools.
"""

from __future__ import annotations

import importlib
import sys
import time
from concurrent import futures

import grpc
import pytest
from grpc_tools import protoc

from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.pods import parse_list_response
from exporter.registry import ScrapeRegistry
from exporter.sim.nvml import SimulatedNvml
from tests.helpers import REPO, samples, series, value


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    out = tmp_path_factory.mktemp("podresources")
    proto_dir = REPO / "tests" / "podresources"
    assert protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                        str(proto_dir / "api.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("api_pb2"), importlib.import_module("api_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def response(pb, sim: SimulatedNvml):
    uuid = [sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(i)) for i in range(8)]
    gpu = "nvidia.com/gpu"
    return pb.ListPodResourcesResponse(pod_resources=[
        pb.PodResources(name="trainer-0", namespace="ml", containers=[
            pb.ContainerResources(name="pytorch", cpu_ids=[1, 2, 3], devices=[
                pb.ContainerDevices(resource_name=gpu, device_ids=uuid[0:4],
                                    topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=0)])),
                pb.ContainerDevices(resource_name="vpc.amazonaws.com/efa", device_ids=["rdmap79s0"]),
            ]),
            pb.ContainerResources(name="sidecar"),
        ]),
        pb.PodResources(name="notebook", namespace="research", containers=[
            pb.ContainerResources(name="jupyter", devices=[pb.ContainerDevices(resource_name=gpu, device_ids=["5"])]),
        ]),
    ])


def test_decoder_reads_what_protobuf_encodes(api):
    pb, _ = api
    sim = SimulatedNvml("p5.48xlarge")
    sim.nvmlInit()
    allocations = parse_list_response(response(pb, sim).SerializeToString(), ("nvidia.com/gpu",))
    assert {device: (a.namespace, a.pod, a.container) for device, a in allocations.items()} == {
        **{sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(i)): ("ml", "trainer-0", "pytorch") for i in range(4)},
        "5": ("research", "notebook", "jupyter"),
    }
    assert parse_list_response(b"", ("nvidia.com/gpu",)) == {}
    with pytest.raises((ValueError, IndexError)):
        parse_list_response(b"\x0b\x01", ("nvidia.com/gpu",))  # a truncated message


@pytest.fixture
def kubelet(api, tmp_path):
    """A pod-resources server on a unix socket; yields (socket path, server stop function)."""
    pb, pb_grpc = api
    sim = SimulatedNvml("p5.48xlarge")
    sim.nvmlInit()
    answer = response(pb, sim)

    class Lister(pb_grpc.PodResourcesListerServicer):
        def List(self, request, context):
            return answer

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_PodResourcesListerServicer_to_server(Lister(), server)
    socket_path = tmp_path / "kubelet.sock"
    server.add_insecure_port(f"unix://{socket_path}")
    server.start()
    yield str(socket_path), lambda: server.stop(0).wait()
    server.stop(0)


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
