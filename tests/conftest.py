import pytest

from tests.helpers import FIXTURES

# Modules that share a lane run one after another on one worker, never side by side: the two
# alert-table stacks (Prometheus, VictoriaMetrics, vmalert, two agents and four simulated nodes each)
# take two thirds of a 2-core machine apiece, and the time-to-page test, whose pages come within
# seconds of their targets, missed one (32 s against 30) beside them.
ALERT_STACKS = ("test_e2e_alerts", "test_e2e_alerts_infiniband", "test_e2e_time_to_page")
LANES = {f"tests/{name}.py": "alert-stacks" for name in ALERT_STACKS}

def lane_of(nodeid: str) -> str:
    """The unit xdist hands to one worker: the test's lane, or else its module."""
    module = nodeid.split("::", 1)[0]
    return LANES.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `--dist loadscope` (how `scripts/test` runs both tiers), a module's tests stay on one
    worker, so its fixtures (a Prometheus, a simulated cluster) start once, and a lane's modules
    (LANES) stay on one worker in their order. (xdist's own `loadgroup` no longer groups under
    pytest 9: the group is a suffix it writes into the test's id, which pytest 9 keeps apart.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)

    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
