"""The node's instance type from DMI, without a network call, and its expected inventory."""

from __future__ import annotations

import pytest

from exporter import catalog
from exporter.collectors.identity import IdentityCollector
from exporter.inventory import INVENTORY
from tests.helpers import samples, scrape, series, value


def dmi(tmp_path, **files: str):
    directory = tmp_path / "class" / "dmi" / "id"
    directory.mkdir(parents=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n")
    return str(tmp_path)


def expected(parsed) -> dict[str, float]:
    return {s["component"]: value(parsed, catalog.NODE_EXPECTED.name, **s)
            for s in series(parsed, catalog.NODE_EXPECTED.name)}


def test_an_ec2_p5_knows_its_type_id_and_inventory(tmp_path):
    sysfs = dmi(tmp_path, sys_vendor="Amazon EC2", product_name="p5.48xlarge", board_asset_tag="i-0abc")
    parsed = samples(scrape([IdentityCollector(sysfs)]))
    assert value(parsed, catalog.NODE_INFO.name, instance_type="p5.48xlarge", vendor="Amazon EC2",
                 instance_id="i-0abc") == 1
    assert expected(parsed) == {"gpus": 8, "efa_devices": 32, "nvlinks_per_gpu": 18, "nvswitches": 4}


@pytest.mark.parametrize(("files", "override"), [
    pytest.param({"sys_vendor": "Amazon EC2", "product_name": "g6.48xlarge"}, "", id="type not in the inventory"),
    pytest.param({}, "", id="DMI unreadable"),
    pytest.param({"sys_vendor": "Dell Inc.", "product_name": "PowerEdge XE9680"}, "", id="not EC2"),
])
def test_without_a_known_type_there_are_no_expectations(tmp_path, files, override):
    sysfs = dmi(tmp_path, **files)
    parsed = samples(scrape([IdentityCollector(sysfs, override)]))
    assert expected(parsed) == {}
    assert len(series(parsed, catalog.NODE_INFO.name)) == 1  # still there, with what is known
    assert value(parsed, catalog.COLLECTOR_SUCCESS.name, collector="identity") == 1


def test_the_flag_overrides_dmi(tmp_path):
    sysfs = dmi(tmp_path, sys_vendor="Dell Inc.", product_name="PowerEdge XE9680")
    parsed = samples(scrape([IdentityCollector(sysfs, "p5en.48xlarge")]))
    assert value(parsed, catalog.NODE_INFO.name, instance_type="p5en.48xlarge", vendor="Dell Inc.") == 1
    assert expected(parsed)["efa_devices"] == 16


def test_every_simulated_ec2_profile_is_in_the_inventory_and_the_dgx_is_not(tmp_path):
    from simulator.node import write_dmi
    from simulator.nvml import load_profile
    from simulator.profiles import PROFILES

    for name in PROFILES:
        profile = load_profile(name)
        write_dmi(str(tmp_path / name), profile, str(tmp_path))
        parsed = samples(scrape([IdentityCollector(str(tmp_path / name))]))
        if name == "dgx-h100":  # outside EC2: DMI says NVIDIA DGXH100, and nothing is expected of it
            assert value(parsed, catalog.NODE_INFO.name, vendor="NVIDIA") == 1  # empty labels are absent
            assert expected(parsed) == {}
            continue
        assert expected(parsed) == {"gpus": profile["gpu"]["count"], "efa_devices": profile["efa_devices"],
                                    "nvlinks_per_gpu": profile["gpu"]["nvlinks"],
                                    "nvswitches": INVENTORY[profile["instance"]].nvswitches}
