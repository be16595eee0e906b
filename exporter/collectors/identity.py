"""The node's identity without a network call, and what its instance type should have.

EC2 Nitro instances expose the instance type in DMI: `<sysfs>/class/dmi/id/product_name` reads
`p5.48xlarge` when `sys_vendor` reads `Amazon EC2`, and `board_asset_tag` holds the instance id (EC2
user guide, "Identify EC2 Linux instances"). `--node.instance-type` overrides what DMI says (other
clouds, odd firmware). An unreadable DMI or a type the inventory does not know leaves the
expectations out: nothing compares with them, so nothing pages.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from exporter import catalog
from exporter.catalog import Family, Scrape
from exporter.collectors.base import Registration, register
from exporter.files import read_optional
from exporter.inventory import COMPONENTS, INVENTORY
from exporter.options import Option

EC2_VENDOR = "Amazon EC2"


class IdentityCollector:
    name = "identity"

    def __init__(self, sysfs: str, instance_type: str = "") -> None:
        self._dmi = os.path.join(sysfs, "class", "dmi", "id")
        self._override = instance_type

    def collect(self) -> Iterable[Family]:
        vendor = read_optional(f"{self._dmi}/sys_vendor")
        product = read_optional(f"{self._dmi}/product_name")
        instance_type = self._override or (product if vendor == EC2_VENDOR else "")
        instance_id = read_optional(f"{self._dmi}/board_asset_tag") if vendor == EC2_VENDOR else ""
        scrape = Scrape()
        scrape.add(catalog.NODE_INFO, 1, instance_type, vendor, instance_id)
        expected = INVENTORY.get(instance_type)
        if expected:
            for component in COMPONENTS:
                scrape.add(catalog.NODE_EXPECTED, getattr(expected, component), component)
        return scrape.families.values()


register(Registration(
    "identity", "the instance type from DMI (no network call) and what that type should have: GPUs, EFA devices, "
                "NVLinks per GPU, NVSwitches",
    lambda roots, instance_type: IdentityCollector(roots.sysfs, instance_type),
    (Option("node.instance-type", "", str,
            "the node's instance type (e.g. p5.48xlarge) when DMI does not tell it; empty: from DMI"),),
    lambda values: values["node.instance-type"]))
