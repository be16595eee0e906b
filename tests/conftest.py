import pytest

from tests.helpers import FIXTURES

# Modules that share a lane (an xdist group) run one after another on one worker, never side by side:
# the two alert-table stacks (Prometheus, VictoriaMetrics, vmalert, two agents and four simulated
# nodes each) take more than half of a 2-core machine apiece.
LANES = {"tests.test_e2e_alerts": "alert-stacks", "tests.test_e2e_alerts_infiniband": "alert-stacks"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`scripts/test` runs both tiers `--dist loadgroup`), a module's tests stay on
    one worker, so a module's fixtures (a Prometheus, a simulated node) start once; a lane's modules
    (LANES) stay on one worker too, in their order."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            name = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(LANES.get(name, name)))


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
