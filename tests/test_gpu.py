"""GPU collector driven through the simulated NVML: exact values, cost per scrape, and every failure mode."""

from __future__ import annotations

import logging
import time

import pynvml
import pytest

from exporter import catalog
from exporter.collectors.gpu import GpuCollector, GpuOptions
from exporter.collectors.gpu_background import GpmSampler, LinkWatcher
from exporter.config import OPTIONS
from exporter.registry import ScrapeRegistry
from simulator.nvml import UPTIME_AT_START, Fault, SimulatedNvml
from tests.helpers import samples, series, value
from toolkit.durations import positive_seconds


class Clock:
    """A clock the test moves by hand, so counters have exact values."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gpu_setup():
    made = []

    def make(profile: str = "p5.48xlarge", timeout: float = 2.0, **options):
        clock = Clock()
        sim = SimulatedNvml(profile, clock=clock)
        collector = GpuCollector(sim, GpuOptions(**{"gpm_interval": 0.05, **options}), clock=clock)
        made.append((sim, collector))
        return sim, collector, ScrapeRegistry([collector], timeout), clock

    yield make
    for sim, collector in made:
        sim.release_hangs()
        collector.close()


def scrape_once(registry: ScrapeRegistry):
    return samples(registry.render())


def gpu(index: int, sim: SimulatedNvml) -> dict[str, str]:
    return {"gpu": str(index), "uuid": sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(index))}


def wait_for(predicate, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_p5_values_are_exact(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    parsed = scrape_once(registry)
    g0 = gpu(0, sim)
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    assert len(series(parsed, "gpuscope_gpu_up")) == 8
    assert value(parsed, "gpuscope_gpu_info", model="NVIDIA H100 80GB HBM3", pci_bus_id="0000:53:00.0", profiling="gpm",
                 **g0) == 1
    expected = {
        "gpuscope_gpu_utilization_ratio": 1.0, "gpuscope_gpu_memory_utilization_ratio": 0.42,
        "gpuscope_gpu_memory_total_bytes": 85520809984, "gpuscope_gpu_memory_used_bytes": 76235669504,
        "gpuscope_gpu_memory_free_bytes": 85520809984 - 76235669504,
        "gpuscope_gpu_power_watts": 640.0, "gpuscope_gpu_power_limit_watts": 700.0,
        "gpuscope_gpu_energy_joules_total": UPTIME_AT_START * 640,
        "gpuscope_gpu_temperature_celsius": 63, "gpuscope_gpu_memory_temperature_celsius": 58,
        "gpuscope_gpu_temperature_slowdown_margin_celsius": 26,
        "gpuscope_gpu_sm_clock_hertz": 1.98e9, "gpuscope_gpu_sm_clock_max_hertz": 1.98e9,
        "gpuscope_gpu_memory_clock_hertz": 2.619e9, "gpuscope_gpu_memory_clock_max_hertz": 2.619e9,
        "gpuscope_gpu_pcie_link_generation": 5, "gpuscope_gpu_pcie_link_generation_max": 5,
        "gpuscope_gpu_pcie_link_width": 16, "gpuscope_gpu_pcie_link_width_max": 16,
        "gpuscope_gpu_pcie_transmit_bytes_total": UPTIME_AT_START * 2e9, "gpuscope_gpu_pcie_replays_total": 0,
        "gpuscope_gpu_nvlink_links": 18, "gpuscope_gpu_recovery_action": 0,
        "gpuscope_gpu_nvlink_transmit_bytes_total": 18 * int(UPTIME_AT_START * 5e9 / 1024) * 1024,
        "gpuscope_gpu_remapped_rows_failure": 0,
    }
    assert {name: value(parsed, name, **g0) for name in expected} == expected
    limits = {s["limit"]: value(parsed, "gpuscope_gpu_temperature_limit_celsius", **s)
              for s in series(parsed, "gpuscope_gpu_temperature_limit_celsius") if s["gpu"] == "0"}
    assert limits == {"shutdown": 92, "slowdown": 89, "memory_max": 95, "gpu_max": 87}
    assert value(parsed, "gpuscope_gpu_violation_seconds_total", policy="power", **g0) == UPTIME_AT_START * 0.02
    assert value(parsed, "gpuscope_gpu_ecc_errors_total", type="uncorrected", scope="volatile", **g0) == 0
    assert value(parsed, "gpuscope_gpu_driver_info", driver_version="550.127.08", cuda_version="12.4",
                 nvml_version="12.550.127.08") == 1
    # Ampere and later remap rows instead of retiring pages: no retired-page series.
    assert not series(parsed, "gpuscope_gpu_retired_pages_total")
    # Per-link NVLink series only behind the flag.
    assert not series(parsed, "gpuscope_gpu_nvlink_link_transmit_bytes_total")


def test_tlimit_relative_limits_are_converted_to_absolute(gpu_setup):
    sim, _, registry, _ = gpu_setup("p5en.48xlarge")
    parsed = scrape_once(registry)
    g0 = gpu(0, sim)
    limits = {s["limit"]: value(parsed, "gpuscope_gpu_temperature_limit_celsius", **s)
              for s in series(parsed, "gpuscope_gpu_temperature_limit_celsius") if s["gpu"] == "0"}
    # T.Limit 87 C; the driver reports slowdown -2, shutdown -8, gpu_max 0, memory_max -8 relative to it.
    assert limits == {"shutdown": 95, "slowdown": 89, "memory_max": 95, "gpu_max": 87}
    assert value(parsed, "gpuscope_gpu_temperature_slowdown_margin_celsius", **g0) == 26
    assert value(parsed, "gpuscope_gpu_memory_total_bytes", **g0) == 150754820096


# Per scrape: utilization, memory, SM clock, clock event reasons, temperature, the field batch; + the
# T.Limit margin (p5en, p6); + the power call where the driver lacks field 185 (p4d).
@pytest.mark.parametrize(("profile", "calls"), [("p5.48xlarge", 6), ("p5en.48xlarge", 7),
                                                ("p6-b200.48xlarge", 7), ("p4d.24xlarge", 7)])
def test_nvml_calls_per_gpu_per_scrape(gpu_setup, profile, calls):
    sim, collector, registry, _ = gpu_setup(profile)
    scrape_once(registry)  # discovery happens once
    collector.close()  # the background threads' calls are counted apart (below)
    time.sleep(0.1)
    sim.calls.clear()
    scrape_once(registry)
    assert sum(sim.calls.values()) == calls * 8, sim.calls


def test_nvml_calls_per_gpu_per_scrape_with_the_background_at_most_11_on_a_p5(gpu_setup):
    """A round of each background reader, counted on the simulated p5, spread over a 15 s scrape at
    the shipped intervals: GPM 2 calls a round (a sample, the metrics against the previous one),
    links 4 (the NVLink state batch, PCIe generation and width, the memory clock)."""
    sim, collector, registry, _ = gpu_setup("p5.48xlarge")
    scrape_once(registry)
    collector.close()
    time.sleep(0.1)
    handle = sim.nvmlDeviceGetHandleByIndex(0)
    gpm = GpmSampler(sim, {0: handle}, 3600)
    try:
        wait_for(lambda: 0 in gpm._taken)  # the first sample: the next round has a pair
        sim.calls.clear()
        gpm._sample(0)
        gpm_calls = sum(sim.calls.values())
    finally:
        gpm.stop()
    links = LinkWatcher(sim, {0: (handle, 18)}, 3600, collector._fields)
    try:
        wait_for(lambda: links.snapshot())
        sim.calls.clear()
        links._read(handle, 18)
        link_calls = sum(sim.calls.values())
    finally:
        links.stop()
    defaults = {option.name: option.default for option in OPTIONS}
    gpm_every = positive_seconds(defaults["collector.gpu.gpm-interval"])
    links_every = positive_seconds(defaults["collector.gpu.link-interval"])
    assert (gpm_calls, link_calls, gpm_every, links_every) == (2, 4, 10.0, 30.0)
    assert 6 + gpm_calls * 15 / gpm_every + link_calls * 15 / links_every == 11


def test_p4d_has_no_gpm_and_12_links(gpu_setup):
    sim, _, registry, _ = gpu_setup("p4d.24xlarge")
    time.sleep(0.2)
    parsed = scrape_once(registry)
    assert value(parsed, "gpuscope_gpu_nvlink_links", **gpu(0, sim)) == 12
    assert not series(parsed, "gpuscope_gpu_tensor_active_ratio")


def test_gpm_profiling_from_background_samples(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    sim.inject(6, Fault(activity_scale=0.5))
    parsed = wait_for(lambda: (p := scrape_once(registry)) and len(series(p, "gpuscope_gpu_tensor_active_ratio")) == 8
                      and p)
    assert value(parsed, "gpuscope_gpu_tensor_active_ratio", **gpu(0, sim)) == pytest.approx(0.57)
    assert value(parsed, "gpuscope_gpu_tensor_active_ratio", **gpu(6, sim)) == pytest.approx(0.285)
    assert value(parsed, "gpuscope_gpu_sm_active_ratio", **gpu(0, sim)) == pytest.approx(0.93)
    assert value(parsed, "gpuscope_gpu_fp16_active_ratio", **gpu(0, sim)) == pytest.approx(0.21)


def test_gpm_no_permission_drops_only_profiling(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    sim.inject(2, Fault(errors={"nvmlGpmSampleGet": pynvml.NVML_ERROR_NO_PERMISSION}))
    parsed = wait_for(lambda: (p := scrape_once(registry)) and len(series(p, "gpuscope_gpu_tensor_active_ratio")) == 7
                      and p)
    assert "2" not in {s["gpu"] for s in series(parsed, "gpuscope_gpu_tensor_active_ratio")}
    assert value(parsed, "gpuscope_gpu_up", **gpu(2, sim)) == 1


def test_clock_event_reasons_and_violation_counters(gpu_setup):
    sim, _, registry, clock = gpu_setup()
    sim.inject(3, Fault(reasons=0x40 | 0x20, temperature=89, violation_rates={"thermal": 1.0}, sm_clock_mhz=1410))
    clock.now += 10
    parsed = scrape_once(registry)
    g3 = gpu(3, sim)
    active = {s["reason"] for s in series(parsed, "gpuscope_gpu_clock_event_active")
              if s["gpu"] == "3" and value(parsed, "gpuscope_gpu_clock_event_active", **s) == 1}
    assert active == {"hw_thermal_slowdown", "sw_thermal_slowdown"}
    assert len([s for s in series(parsed, "gpuscope_gpu_clock_event_active") if s["gpu"] == "3"]) == 8
    assert value(parsed, "gpuscope_gpu_violation_seconds_total", policy="thermal", **g3) == pytest.approx(10.0)
    assert value(parsed, "gpuscope_gpu_violation_seconds_total", policy="thermal", **gpu(0, sim)) == 0
    assert value(parsed, "gpuscope_gpu_temperature_slowdown_margin_celsius", **g3) == 0
    assert value(parsed, "gpuscope_gpu_sm_clock_hertz", **g3) == 1.41e9


def test_memory_errors_and_nvlink_errors(gpu_setup):
    sim, _, registry, clock = gpu_setup()
    sim.inject(1, Fault(ecc={4: 2, 6: 2}, remap={143: 1, 145: 1}, recovery_action=1,
                        nvlink_error_rates={"replay": 3.0, "recovery": 0.5}))
    clock.now += 4
    parsed = scrape_once(registry)
    g1 = gpu(1, sim)
    assert value(parsed, "gpuscope_gpu_ecc_errors_total", type="uncorrected", scope="volatile", **g1) == 2
    assert value(parsed, "gpuscope_gpu_ecc_errors_total", type="uncorrected", scope="aggregate", **g1) == 2
    assert value(parsed, "gpuscope_gpu_remapped_rows_total", cause="uncorrectable", **g1) == 1
    assert value(parsed, "gpuscope_gpu_remapped_rows_failure", **g1) == 1
    assert value(parsed, "gpuscope_gpu_recovery_action", **g1) == 1
    assert value(parsed, "gpuscope_gpu_nvlink_errors_total", type="replay", **g1) == 12
    assert value(parsed, "gpuscope_gpu_nvlink_errors_total", type="recovery", **g1) == 2
    assert value(parsed, "gpuscope_gpu_nvlink_errors_total", type="replay", **gpu(0, sim)) == 0


def test_xid_events_are_counted_per_xid(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    parsed = scrape_once(registry)
    assert not series(parsed, "gpuscope_gpu_xid_errors_total")  # a series appears with its first XID
    before = time.time()
    sim.raise_xid(4, 79)
    sim.raise_xid(4, 79)
    sim.raise_xid(4, 31)
    parsed = wait_for(lambda: (p := scrape_once(registry))
                      and len(series(p, "gpuscope_gpu_xid_errors_total")) == 2 and p)
    assert value(parsed, "gpuscope_gpu_xid_errors_total", xid="79", **gpu(4, sim)) == 2
    assert {(s["gpu"], s["xid"]) for s in series(parsed, "gpuscope_gpu_xid_errors_total")} == {("4", "79"),
                                                                                                  ("4", "31")}
    assert value(parsed, "gpuscope_gpu_last_xid_timestamp_seconds", **gpu(4, sim)) >= before
    assert not [s for s in series(parsed, "gpuscope_gpu_last_xid_timestamp_seconds") if s["gpu"] != "4"]


def test_per_link_nvlink_behind_flag(gpu_setup):
    sim, _, registry, _ = gpu_setup(nvlink_per_link=True)
    parsed = scrape_once(registry)
    g0 = gpu(0, sim)
    links = [s for s in series(parsed, "gpuscope_gpu_nvlink_link_transmit_bytes_total") if s["gpu"] == "0"]
    assert len(links) == 18
    total = sum(value(parsed, "gpuscope_gpu_nvlink_link_transmit_bytes_total", **s) for s in links)
    assert total == value(parsed, "gpuscope_gpu_nvlink_transmit_bytes_total", **g0)


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
                                  pynvml.NVML_ERROR_NO_PERMISSION])
def test_unsupported_call_drops_one_metric_logged_once(gpu_setup, caplog, code):
    sim, _, registry, _ = gpu_setup()
    sim.inject(5, Fault(errors={"nvmlDeviceGetMemoryInfo": code}))
    with caplog.at_level(logging.INFO, logger="gpuscope"):
        for _ in range(3):
            parsed = scrape_once(registry)
    gpus = {s["gpu"] for s in series(parsed, "gpuscope_gpu_memory_used_bytes")}
    assert gpus == {"0", "1", "2", "3", "4", "6", "7"}
    assert value(parsed, "gpuscope_gpu_up", **gpu(5, sim)) == 1
    assert value(parsed, "gpuscope_gpu_power_watts", **gpu(5, sim)) == 640
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    assert len([r for r in caplog.records if "unsupported" in r.getMessage()]) == 1
    assert sim.calls["nvmlDeviceGetMemoryInfo"] == 8 + 7 + 7  # GPU 5 is asked once, then never again


def test_lost_gpu_reports_down_and_recovers(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    scrape_once(registry)
    sim.inject(7, Fault(lost=True))
    parsed = scrape_once(registry)
    assert value(parsed, "gpuscope_gpu_up", **gpu(0, sim)) == 1
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    up7 = [s for s in series(parsed, "gpuscope_gpu_up") if s["gpu"] == "7"]
    assert [value(parsed, "gpuscope_gpu_up", **s) for s in up7] == [0]
    assert not [s for s in series(parsed, "gpuscope_gpu_power_watts") if s["gpu"] == "7"]
    assert len(series(parsed, "gpuscope_gpu_power_watts")) == 7
    xid79 = {"gpu": "7", "uuid": up7[0]["uuid"], "xid": "79"}
    wait_for(lambda: xid79 in series(scrape_once(registry), "gpuscope_gpu_xid_errors_total"))
    sim.inject(7, Fault())
    parsed = scrape_once(registry)
    assert value(parsed, "gpuscope_gpu_up", **gpu(7, sim)) == 1
    assert len(series(parsed, "gpuscope_gpu_power_watts")) == 8


def test_a_gpu_lost_before_the_exporter_started_is_reported_and_the_rest_are_read(gpu_setup):
    """NVML counts a GPU it cannot open (GpuIsLost at discovery): that one is up 0 with no UUID, the
    seven others are read as usual; before, the whole collector failed and every GPU went dark."""
    sim, _, registry, _ = gpu_setup()
    sim.inject(1, Fault(lost=True))
    parsed = scrape_once(registry)
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    assert value(parsed, "gpuscope_gpu_up", gpu="1") == 0
    assert [s["gpu"] for s in series(parsed, "gpuscope_gpu_power_watts")] == ["0", "2", "3", "4", "5", "6", "7"]


def test_nvml_missing_fails_collector_with_backoff_and_one_log_line(gpu_setup, caplog):
    sim, _, registry, clock = gpu_setup()
    sim.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    with caplog.at_level(logging.INFO, logger="gpuscope"):
        assert value(scrape_once(registry), "gpuscope_collector_success", collector="gpu") == 0
        clock.now += 0.5  # inside the 1 s backoff: no new attempt
        assert value(scrape_once(registry), "gpuscope_collector_success", collector="gpu") == 0
        assert sim.calls["nvmlInit"] == 1
        clock.now += 1.0
        scrape_once(registry)
        assert sim.calls["nvmlInit"] == 2
        clock.now += 1.5  # backoff doubled to 2 s
        scrape_once(registry)
        assert sim.calls["nvmlInit"] == 2
    assert len([r for r in caplog.records if "initialisation failed" in r.getMessage()]) == 1
    sim.init_error = None
    clock.now += 10
    assert value(scrape_once(registry), "gpuscope_collector_success", collector="gpu") == 1


def test_driver_reload_reinitialises(gpu_setup):
    sim, _, registry, _ = gpu_setup()
    scrape_once(registry)
    sim.reload_driver()
    assert value(scrape_once(registry), "gpuscope_collector_success", collector="gpu") == 0
    parsed = scrape_once(registry)
    assert value(parsed, "gpuscope_collector_success", collector="gpu") == 1
    assert len(series(parsed, "gpuscope_gpu_power_watts")) == 8
    assert sim.calls["nvmlInit"] == 2


def test_hung_nvml_call_costs_one_scrape_then_only_its_gpu(gpu_setup):
    sim, _, registry, _ = gpu_setup(timeout=0.5)
    scrape_once(registry)
    sim.inject(2, Fault(hang=frozenset({"nvmlDeviceGetUtilizationRates"})))
    started = time.monotonic()
    first = scrape_once(registry)
    assert time.monotonic() - started < 0.9
    assert value(first, "gpuscope_collector_success", collector="gpu") == 0
    later = scrape_once(registry)
    assert value(later, "gpuscope_collector_success", collector="gpu") == 1
    assert value(later, "gpuscope_gpu_up", **gpu(2, sim)) == 0
    assert len(series(later, "gpuscope_gpu_power_watts")) == 7


def test_active_nvlinks_are_counted_with_one_call_per_gpu(gpu_setup):
    """NVML_FI_DEV_NVLINK_GET_STATE for every link in one field-values call per GPU (18 calls of
    nvmlDeviceGetNvLinkState before): GPU 3 with two links down counts 16."""
    sim, collector, registry, _ = gpu_setup(link_interval=0.05)
    sim.inject(3, Fault(nvlinks_down=2))
    scrape_once(registry)  # discovery starts the watcher
    parsed = wait_for(lambda: (p := scrape_once(registry)) and series(p, "gpuscope_gpu_nvlink_active_links") and p)
    assert value(parsed, "gpuscope_gpu_nvlink_active_links", **gpu(3, sim)) == 16
    assert value(parsed, "gpuscope_gpu_nvlink_active_links", **gpu(0, sim)) == 18
    collector.close()
    time.sleep(0.1)
    assert sim.calls["nvmlDeviceGetNvLinkState"] == 0


def test_a_driver_without_the_link_state_field_is_asked_link_by_link():
    sim = SimulatedNvml("p5.48xlarge")
    sim.nvmlInit()
    sim.inject(0, Fault(nvlinks_down=1))
    handle = sim.nvmlDeviceGetHandleByIndex(0)
    watcher = LinkWatcher(sim, {0: (handle, 18)}, 60.0, lambda _handle, requests: [None] * len(requests))
    try:
        assert wait_for(lambda: watcher.snapshot()) == {0: [(catalog.GPU_NVLINK_ACTIVE, 17),
                                                            (catalog.GPU_PCIE_GENERATION, 5),
                                                            (catalog.GPU_PCIE_WIDTH, 16),
                                                            (catalog.GPU_MEMORY_CLOCK, 2619e6)]}
    finally:
        watcher.stop()
    assert sim.calls["nvmlDeviceGetNvLinkState"] == 18
