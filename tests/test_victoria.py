"""The rule unit tests that guard counters and the alerts built on them, run on VictoriaMetrics and
vmalert as well as on promtool (issue 19: one rule set, correct on both engines).

counter_start.yml holds the traps of a counter that does not start at 0 (a new series' first value,
an exporter restart, a reset) for every alert that pages on a counter's rise; the others are small
files whose alerts read counters (gpu_health.yml and inventory.yml pass too, in 60 s more: every
alert also fires on vmalert in the end-to-end table, tests/test_e2e_alerts.py). Not run here:
kernel_log.yml (its series hold Unix times counted from promtool's clock at 0, which
VictoriaMetrics cannot store), and the files whose expectations sit on a sample exactly at a window's
left edge, which Prometheus counts and VictoriaMetrics does not (docs/scale-out.md).
"""

from __future__ import annotations

import tempfile

import pytest
import yaml

from alerts.render import FILES
from simulator.stack import victoria_metrics
from tests.helpers import REPO
from tests.victoria import VictoriaMetrics, expand, play

CASES = ("counter_start", "storage", "agent", "remediation")


@pytest.fixture(scope="module")
def vm():
    with victoria_metrics() as store:
        yield VictoriaMetrics(store.base)


@pytest.fixture(scope="module")
def rules():
    """The generated rules without annotations, as the promtool tests read them."""
    loaded = yaml.safe_load((REPO / "alerts" / "generated" / FILES[0]).read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return loaded


def test_promtool_series_notation_is_read_as_promtool_reads_it():
    assert expand("1x2 _x1 0+60x2 5-1x1 stale 2.5e1") == [1, 1, 1, None, None, 0, 60, 120, 5, 4, None, 25]


@pytest.mark.e2e  # real VictoriaMetrics and vmalert
@pytest.mark.parametrize("case", CASES)
def test_vmalert_fires_what_promtool_expects(vm, rules, case):
    with tempfile.TemporaryDirectory() as work:
        assert play(vm, rules, str(REPO / "tests" / "rules" / f"{case}.yml"), work) == []
