"""The scenarios of the end-to-end alert table that need InfiniBand ports: four DGX H100 nodes, through
the same two engines, rules and checks as tests/test_e2e_alerts.py. A module of its own so that the
p5 stack is down before this one starts (both up at once overload a 2-core machine), and in the same
lane (tests/conftest.py), so the two never run side by side."""

from __future__ import annotations

import pytest

from simulator.cluster import load_scenario
from tests.test_e2e_alerts import TABLE, _stack, play

pytestmark = pytest.mark.e2e  # real Prometheus and VictoriaMetrics (and Alertmanagers) over simulated nodes


@pytest.fixture(scope="module")
def dgx_stack(tmp_path_factory):
    """Four DGX H100 nodes on InfiniBand, for the scenarios that need their ports."""
    yield from _stack(tmp_path_factory, "dgx-h100")


@pytest.mark.parametrize("name", [name for name in TABLE if load_scenario(name).profile == "dgx-h100"])
def test_infiniband_scenario_fires_exactly_the_expected_alerts(dgx_stack, name):
    play(dgx_stack, name)
