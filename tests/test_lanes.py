"""How the suite itself is spread over pytest-xdist's workers (tests/conftest.py): a module's tests
on one worker, the two alert-table stacks in one lane so they never run side by side."""

from tests.conftest import LANES, lane_of
from tests.helpers import REPO


def test_the_alert_stacks_share_a_lane_and_any_other_module_is_its_own_unit():
    assert lane_of("tests/test_e2e_alerts.py::test_scenario_fires_exactly_the_expected_alerts[healthy]") == \
        lane_of("tests/test_e2e_alerts_infiniband.py::test_infiniband_scenario_fires_exactly_the_expected_alerts[x]")
    assert lane_of("tests/test_jobs.py::test_job_of_process[a::b]") == "tests/test_jobs.py"


def test_every_module_a_lane_names_exists():
    assert [module for module in LANES if not (REPO / module).is_file()] == []
