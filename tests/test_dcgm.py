"""The DCGM source at the bindings' boundary: gpuscope's emulator of DCGM's Python bindings
(simulator/dcgm_bindings) answering from a simulated nv-hostengine, as the NVML emulator does
for NVML. The collector code is the one that runs against the DCGM package's bindings; the
emulator's own fidelity to the published bindings is held in tests/test_dcgm_emulator.py."""

from __future__ import annotations

import logging
import time

import pytest

from exporter.collectors import gpu_dcgm
from exporter.collectors.gpu_dcgm import DcgmOptions
from simulator import dcgm_engine
from simulator.dcgm_engine import HostEngine
from simulator.nvml import Fault, load_profile
from tests.helpers import series, value
from tests.test_gpu import gpu, gpu_setup, scrape_once, wait_for  # noqa: F401 (gpu_setup: a fixture)

ADDRESS = "127.0.0.1:15555"
# The p4d profile's busy GPU as DCGM holds it: SM active, occupancy, tensor and FP32 (group A.1), DRAM
# (B), the graphics engine (D): the best minor of every major holding gpuscope's fields.
PROFILING = {"gpuscope_gpu_graphics_engine_active_ratio": 0.97, "gpuscope_gpu_sm_active_ratio": 0.88,
             "gpuscope_gpu_sm_occupancy_ratio": 0.38, "gpuscope_gpu_tensor_active_ratio": 0.52,
             "gpuscope_gpu_dram_active_ratio": 0.41, "gpuscope_gpu_fp32_active_ratio": 0.07}


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(gpu_dcgm, "RETRY_SECONDS", (0.05, 0.3))


@pytest.fixture
def a100(gpu_setup):  # noqa: F811 (the fixture imported above)
    """A p4d node whose nv-hostengine listens at ADDRESS; returns (sim, engine, make) where make(**options)
    starts the GPU collector and returns its registry."""
    engines = []

    def start(profile: str = "p4d.24xlarge", engine_setup=None, address: str = ADDRESS, **options):
        sim, _, registry, _ = gpu_setup(profile, dcgm=DcgmOptions(address=address,
                                                                          bindings=(dcgm_engine.BINDINGS,)), **options)
        engine = HostEngine(sim, load_profile("p4d.24xlarge")["dcgm"], switches=6)
        (engine_setup or (lambda _: None))(engine)
        dcgm_engine.ENGINES[dcgm_engine.key(address)] = engine
        engines.append(address)
        return sim, engine, registry

    yield start
    for address in engines:
        dcgm_engine.unregister(address)


def profiled(registry, gpus: int = 8) -> dict:
    return wait_for(lambda: (p := scrape_once(registry)) and len(series(p, "gpuscope_gpu_sm_active_ratio")) == gpus
                    and p)


def test_an_a100_node_gets_every_ratio_dcgm_counts_at_once_with_exact_values_dram_included(a100):
    """Every non-blank value equals what DCGM holds, read as the double the c_short fieldType says it is
    (never its int64 bits, ~4.6e18), and DRAM and the graphics engine come from majors of their own."""
    sim, engine, registry = a100()
    parsed = profiled(registry)
    for index in range(8):
        for name, expected in PROFILING.items():
            assert value(parsed, name, **gpu(index, sim)) == pytest.approx(expected)
    assert {(i["gpu"], i["uuid"], i["profiling"]) for i in series(parsed, "gpuscope_gpu_info")} == {
        (str(index), gpu(index, sim)["uuid"], "dcgm") for index in range(8)}
    # FP64 and FP16 are other minors of SM activity's major: asked for, they would be multiplexed
    assert not series(parsed, "gpuscope_gpu_fp16_active_ratio") and not series(parsed, "gpuscope_gpu_fp64_active_ratio")
    assert value(parsed, "gpuscope_dcgm_up") == 1
    assert not series(parsed, "gpuscope_dcgm_profiling_blocked")
    assert not series(parsed, "gpuscope_dcgm_nvswitch_blocked")
    assert engine.calls["dcgmWatchFields"] == 1  # one request for the three majors
    assert engine.passes({1001, 1002, 1003, 1004, 1005, 1007}) == 1


def sources(parsed) -> dict[str, str]:
    return {i["gpu"]: i["profiling"] for i in series(parsed, "gpuscope_gpu_info")}


def test_dcgm_gpus_are_joined_to_nvml_by_uuid_and_a_gpu_dcgm_lacks_gets_none(a100):
    """The engine numbers GPUs in reverse of NVML (as DCGM's gpuIds are its own) and does not list GPU 3."""
    sim, _, registry = a100(engine_setup=lambda engine: engine.hidden.add(3))
    sim.inject(5, Fault(activity_scale=0.5))
    parsed = profiled(registry, gpus=7)
    assert value(parsed, "gpuscope_gpu_sm_active_ratio", **gpu(5, sim)) == pytest.approx(0.44)
    assert value(parsed, "gpuscope_gpu_sm_active_ratio", **gpu(4, sim)) == pytest.approx(0.88)
    assert "3" not in {s["gpu"] for s in series(parsed, "gpuscope_gpu_sm_active_ratio")}
    assert "3" not in {s["gpu"] for s in series(parsed, "gpuscope_gpu_dcgm_health")}
    assert sources(parsed)["3"] == "none" and sources(parsed)["4"] == "dcgm"


def test_blank_values_drop_the_series_and_keep_the_source_up(a100):
    """Counters taken after the watch (DCGM answers its blank sentinel): no value, never 2**47."""
    _, engine, registry = a100()
    profiled(registry)
    engine.profiling_owner = "nsight"
    parsed = wait_for(lambda: (p := scrape_once(registry)) and not series(p, "gpuscope_gpu_sm_active_ratio") and p)
    assert value(parsed, "gpuscope_dcgm_up") == 1
    assert len(series(parsed, "gpuscope_gpu_dcgm_health")) == 64


@pytest.mark.parametrize(("setup", "reason"), [
    (lambda engine: setattr(engine, "profiling_owner", "nsight"), "locked"),  # -37: another owner of the counters
    (lambda engine: setattr(engine, "root", False), "requires_root"),  # -29: nv-hostengine not run as root
    (lambda engine: setattr(engine, "profiling_error", -33), "module_not_loaded"),  # no profiling module
    (lambda engine: setattr(engine, "profiling_error", -6), "not_supported"),
])
def test_a_refused_profiling_watch_leaves_health_running_with_its_reason_and_retries(a100, caplog, setup, reason):
    caplog.set_level(logging.WARNING, logger="gpuscope")
    sim, engine, registry = a100(engine_setup=setup)
    parsed = wait_for(lambda: (p := scrape_once(registry)) and series(p, "gpuscope_dcgm_profiling_blocked") and p)
    assert series(parsed, "gpuscope_dcgm_profiling_blocked") == [{"reason": reason}]
    assert not series(parsed, "gpuscope_gpu_sm_active_ratio")
    assert len(series(parsed, "gpuscope_gpu_dcgm_health")) == 64  # health goes on: 8 GPUs x 8 systems
    assert len(series(parsed, "gpuscope_nvswitch_dcgm_health")) == 12
    assert value(parsed, "gpuscope_dcgm_up") == 1 and value(parsed, "gpuscope_gpu_up", **gpu(0, sim)) == 1
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    time.sleep(1)  # retried meanwhile, refused again: still one log line
    engine.profiling_owner, engine.root, engine.profiling_error = "", True, 0
    parsed = profiled(registry)  # the retry takes the counters once they are free
    assert not series(parsed, "gpuscope_dcgm_profiling_blocked")
    refused = [r for r in caplog.records if "refuses a profiling watch" in r.getMessage()]
    assert len(refused) == 1 and refused[0].reason == reason
    assert engine.calls["connect"] >= 3


def test_where_other_clients_passes_leave_no_room_each_group_the_engine_takes_is_kept(a100):
    """An engine that counts one pass only (max_passes 1) while another client watches FP64 (minor A.2):
    SM activity's group (A.1) is refused with -38, DRAM's and the graphics engine's are taken."""
    def crowded(engine):
        engine.max_passes = 1
        engine.other_clients.add(1006)
    sim, engine, registry = a100(engine_setup=crowded)
    parsed = wait_for(lambda: (p := scrape_once(registry)) and len(series(p, "gpuscope_gpu_dram_active_ratio")) == 8
                      and p)
    assert value(parsed, "gpuscope_gpu_dram_active_ratio", **gpu(4, sim)) == pytest.approx(0.41)
    assert value(parsed, "gpuscope_gpu_graphics_engine_active_ratio", **gpu(4, sim)) == pytest.approx(0.97)
    assert not series(parsed, "gpuscope_gpu_sm_active_ratio")
    assert series(parsed, "gpuscope_dcgm_profiling_blocked") == [{"reason": "multi_pass"}]
    engine.other_clients = set()  # the other client is gone: the retry gets everything
    parsed = profiled(registry)
    assert value(parsed, "gpuscope_gpu_sm_active_ratio", **gpu(4, sim)) == pytest.approx(0.88)
    assert not series(parsed, "gpuscope_dcgm_profiling_blocked")


def test_another_clients_minor_is_multiplexed_not_refused_within_five_passes(a100):
    """Another client on FP64 (A.2) and FP16 (A.3): with gpuscope's A.1, three passes, which DCGM takes."""
    _, engine, registry = a100(engine_setup=lambda engine: engine.other_clients.update({1006, 1008}))
    parsed = profiled(registry)
    assert not series(parsed, "gpuscope_dcgm_profiling_blocked")
    assert engine.passes({1002, 1006, 1008}) == 3


def test_a_second_exporter_on_the_same_engine_gets_the_same_values_and_health(a100, gpu_setup):  # noqa: F811
    """Field-group names are unique across an engine's clients (-26): each gpuscope names its own."""
    sim, engine, first = a100()
    _, _, second, _ = gpu_setup("p4d.24xlarge", dcgm=DcgmOptions(address=ADDRESS, bindings=(dcgm_engine.BINDINGS,)))
    for registry in (first, second):
        parsed = profiled(registry)
        assert value(parsed, "gpuscope_gpu_dram_active_ratio", **gpu(7, sim)) == pytest.approx(0.41)
        assert len(series(parsed, "gpuscope_gpu_dcgm_health")) == 64
        assert not series(parsed, "gpuscope_dcgm_profiling_blocked")
    assert engine.calls["dcgmFieldGroupCreate"] == 2


def test_an_engine_without_its_nvswitch_module_keeps_gpu_health_and_profiling(a100, caplog):
    """dcgmGetEntityGroupEntities(DCGM_FE_SWITCH) answers -33: no NVSwitch health, the reason, the rest."""
    caplog.set_level(logging.WARNING, logger="gpuscope")
    sim, engine, registry = a100(engine_setup=lambda engine: setattr(engine, "nvswitch_module", False))
    parsed = profiled(registry)
    assert series(parsed, "gpuscope_dcgm_nvswitch_blocked") == [{"reason": "module_not_loaded"}]
    assert not series(parsed, "gpuscope_nvswitch_dcgm_health")
    assert len(series(parsed, "gpuscope_gpu_dcgm_health")) == 64
    assert value(parsed, "gpuscope_gpu_sm_active_ratio", **gpu(1, sim)) == pytest.approx(0.88)
    time.sleep(1)  # retried meanwhile: one log line
    assert len([r for r in caplog.records if "no NVSwitches" in r.getMessage()]) == 1
    engine.nvswitch_module = True
    parsed = wait_for(lambda: (p := scrape_once(registry)) and series(p, "gpuscope_nvswitch_dcgm_health") and p)
    assert not series(parsed, "gpuscope_dcgm_nvswitch_blocked")


def test_an_engine_of_another_major_version_is_one_log_line_and_no_series(a100, caplog):
    caplog.set_level(logging.WARNING, logger="gpuscope")
    sim, _, registry = a100(engine_setup=lambda engine: setattr(engine, "version", "3.3.9"))
    parsed = wait_for(lambda: (p := scrape_once(registry)) and len([
        r for r in caplog.records if getattr(r, "error", "") == "DCGMError_VerMismatch"]) == 1 and p)
    assert value(parsed, "gpuscope_dcgm_up") == 0 and not series(parsed, "gpuscope_gpu_dcgm_health")
    assert value(parsed, "gpuscope_gpu_up", **gpu(0, sim)) == 1


def test_the_engine_restarting_is_survived_and_the_source_comes_back(a100, caplog):
    caplog.set_level(logging.WARNING, logger="gpuscope")
    sim, engine, registry = a100()
    profiled(registry)
    engine.apply(down=True, locked=False, incidents={})
    parsed = wait_for(lambda: (p := scrape_once(registry)) and value(p, "gpuscope_dcgm_up") == 0 and p)
    assert not series(parsed, "gpuscope_gpu_sm_active_ratio") and not series(parsed, "gpuscope_gpu_dcgm_health")
    assert value(parsed, "gpuscope_gpu_up", **gpu(0, sim)) == 1  # NVML goes on
    time.sleep(1)  # several reconnects fail meanwhile: one log line
    assert len([r for r in caplog.records if "not usable" in r.getMessage()]) == 1
    engine.apply(down=False, locked=False, incidents={})
    parsed = profiled(registry)
    assert value(parsed, "gpuscope_dcgm_up") == 1
    assert engine.calls["connect"] >= 2


def test_health_incidents_fail_and_warn_per_gpu_system_with_their_code(a100):
    sim, engine, registry = a100()
    profiled(registry)
    engine.apply(down=False, locked=False, incidents={2: [(0x10, 20, 4)], 6: [(0x1, 10, 3)]})
    parsed = wait_for(lambda: (p := scrape_once(registry)) and series(p, "gpuscope_gpu_dcgm_health_incident")
                      and len(series(p, "gpuscope_gpu_dcgm_health_incident")) == 2 and p)
    assert value(parsed, "gpuscope_gpu_dcgm_health", system="memory", **gpu(2, sim)) == 2
    assert value(parsed, "gpuscope_gpu_dcgm_health", system="pcie", **gpu(6, sim)) == 1
    assert value(parsed, "gpuscope_gpu_dcgm_health", system="memory", **gpu(6, sim)) == 0
    assert value(parsed, "gpuscope_gpu_dcgm_health_incident", system="memory", code="4", **gpu(2, sim)) == 2
    assert value(parsed, "gpuscope_gpu_dcgm_health_incident", system="pcie", code="3", **gpu(6, sim)) == 1
    assert {s["switch"] for s in series(parsed, "gpuscope_nvswitch_dcgm_health")} == {str(n) for n in range(6)}
    engine.apply(down=False, locked=False, incidents={})  # the incident cleared: the series go, the system passes
    parsed = wait_for(lambda: (p := scrape_once(registry)) and not series(p, "gpuscope_gpu_dcgm_health_incident") and p)
    assert value(parsed, "gpuscope_gpu_dcgm_health", system="memory", **gpu(2, sim)) == 0


def test_dcgm_absent_is_one_log_line_and_the_gpu_collector_goes_on(gpu_setup, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="gpuscope")
    _, _, registry, _ = gpu_setup("p4d.24xlarge", dcgm=DcgmOptions(bindings=("/nonexistent/dcgm",)))
    parsed = wait_for(lambda: (p := scrape_once(registry)) and any("DCGM unavailable" in r.getMessage()
                                                                  for r in caplog.records) and p)
    assert value(parsed, "gpuscope_dcgm_up") == 0
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    assert len(series(parsed, "gpuscope_gpu_up")) == 8 and sources(parsed)["0"] == "none"
    assert "/nonexistent/dcgm" in next(r for r in caplog.records if "DCGM unavailable" in r.getMessage()).reason


def test_a_unix_socket_address_reaches_the_engine(a100):
    _, _, registry = a100(address="/run/nvidia-dcgm/dcgm.sock")
    assert value(profiled(registry), "gpuscope_dcgm_up") == 1


@pytest.mark.parametrize(("mode", "source", "dcgm_up"), [("auto", "gpm", None), ("gpm", "gpm", None),
                                                        ("dcgm", "dcgm", 1), ("off", "none", None)])
def test_the_profiling_mode_picks_the_source_on_hopper(a100, mode, source, dcgm_up):
    """On a p5 auto reads GPM and never asks DCGM; dcgm reads the engine (DCGM computes from GPM there)."""
    _, _, registry = a100("p5.48xlarge", profiling=mode)
    parsed = wait_for(lambda: (p := scrape_once(registry)) and (mode == "off" or len(
        series(p, "gpuscope_gpu_sm_active_ratio")) == 8) and p)
    assert set(sources(parsed).values()) == {source}
    assert (value(parsed, "gpuscope_dcgm_up") if dcgm_up else series(parsed, "gpuscope_dcgm_up")) == (dcgm_up or [])


def _value(structs, fields, kind: str, number: float | int):
    """A c_dcgmFieldValue_v2 as libdcgm fills it: the type's character code in the c_short."""
    value = structs.c_dcgmFieldValue_v2()
    value.fieldType = ord(kind)
    if kind == fields.DCGM_FT_DOUBLE:
        value.value.dbl = number
    else:
        value.value.i64 = number
    return value


def test_a_field_value_is_read_by_the_character_its_type_code_names():
    structs, fields, _ = gpu_dcgm.load_bindings((dcgm_engine.BINDINGS,))
    def number(kind: str, value: float | int) -> float | None:
        return gpu_dcgm.field_number(_value(structs, fields, kind, value), fields)

    assert number(fields.DCGM_FT_DOUBLE, 0.88) == 0.88
    assert number(fields.DCGM_FT_DOUBLE, 2.0 ** 47) is None  # FP64 blank
    assert number(fields.DCGM_FT_INT64, 1410) == 1410.0
    assert number(fields.DCGM_FT_INT64, 0x7FFFFFFFFFFFFFF2) is None
    assert number(fields.DCGM_FT_STRING, 0) is None


class _Slots:
    """A health response's incident array that counts the slots read and refuses to be walked whole."""

    def __init__(self, incidents) -> None:
        self._incidents, self.read = incidents, []

    def __getitem__(self, slot: int):
        self.read.append(slot)
        return self._incidents[slot]

    def __iter__(self):
        raise AssertionError("the 1,024 slots walked: read incidentCount of them")

    def __len__(self) -> int:
        return len(self._incidents)


def test_a_health_response_is_read_for_its_incident_count_only():
    structs, _, _ = gpu_dcgm.load_bindings((dcgm_engine.BINDINGS,))
    response = structs.c_dcgmHealthResponse_v5()
    assert len(response.incidents) == 1024  # DCGM_HEALTH_WATCH_MAX_INCIDENTS_V2
    response.incidentCount = 2
    response.incidents[0].system, response.incidents[1].system = 0x10, 0x1

    class Response:
        incidentCount = response.incidentCount
        incidents = _Slots(response.incidents)

    assert [incident.system for incident in gpu_dcgm.filled_incidents(Response)] == [0x10, 0x1]
    assert Response.incidents.read == [0, 1]
