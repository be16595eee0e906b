import pytest

from exporter import files
from tests.helpers import FIXTURES

# As the exporter does at start: an ordinary user's soft limit (often 1,024) would otherwise cap the
# kept-file budget that the tests of kept files measure.
files.raise_descriptor_limit()

# Modules that share a lane run one after another on one worker, never side by side: the two
# alert-table stacks (Prometheus, VictoriaMetrics, vmalert, two agents and four simulated nodes each)
# take two thirds of a 2-core machine apiece, and the time-to-page test, whose pages come within
# seconds of their targets, missed one (32 s against 30) beside them.
ALERT_STACKS = ("test_e2e_alerts", "test_e2e_alerts_infiniband", "test_e2e_time_to_page")
LANES = {f"tests/{name}.py": "alert-stacks" for name in ALERT_STACKS}
# The longest units of each tier, longest first (seconds on the 2-core CI machine, `--durations=0`
# summed per unit), handed out before every other unit so that none of them starts last and runs
# alone at the end; xdist would otherwise order units by their number of tests.
LONGEST_FIRST = (
    "alert-stacks",  # 486 s
    "tests/test_install.py", "tests/test_e2e_job_waits.py", "tests/test_e2e_goodput.py",  # 177, 101, 85
    "tests/test_e2e_a100.py", "tests/test_e2e_remediate.py", "tests/test_dashboards.py",  # 65, 56, 52
    "tests/test_victoria.py", "tests/test_e2e_selectors.py", "tests/test_e2e_cluster.py",  # 45, 39, 34
    "tests/test_alert_rules.py", "tests/test_kubernetes.py", "tests/test_server.py",  # fast tier: 34, 27, 26
    "tests/test_sim.py", "tests/test_nccl_ras.py", "tests/test_cli.py",  # 25, 18, 18
    "tests/test_remediate_kubernetes.py", "tests/test_remediate.py", "tests/test_faults.py",  # 17, 12, 10
)


def lane_of(nodeid: str) -> str:
    """The unit xdist hands to one worker: the test's lane, or else its module."""
    module = nodeid.split("::", 1)[0]
    return LANES.get(module, module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under `--dist loadscope` (how `scripts/test` runs both tiers), a module's tests stay on one
    worker, so its fixtures (a Prometheus, a simulated cluster) start once; a lane's modules (LANES)
    stay on one worker in their order; the longest units (LONGEST_FIRST) are handed out first.
    (xdist's own `loadgroup` no longer groups under pytest 9: the group is a suffix it writes into
    the test's id, which pytest 9 keeps apart.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            longest = next((unit for unit in LONGEST_FIRST if unit in self.workqueue), None)
            if longest:
                self.workqueue.move_to_end(longest, last=False)
            super()._assign_work_unit(node)

    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
