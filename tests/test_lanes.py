"""How the suite itself is spread over pytest-xdist's workers (tests/conftest.py): a module's tests
on one worker, the alert-table stacks and the time-to-page test in one lane, never side by side."""

from tests.conftest import LANES, LONGEST_FIRST, lane_of
from tests.helpers import REPO


def test_the_alert_stacks_and_time_to_page_share_a_lane_and_any_other_module_is_its_own_unit():
    lanes = {lane_of(f"tests/{name}.py::test_x[a]") for name in
             ("test_e2e_alerts", "test_e2e_alerts_infiniband", "test_e2e_time_to_page")}
    assert lanes == {"alert-stacks"}
    assert lane_of("tests/test_jobs.py::test_job_of_process[a::b]") == "tests/test_jobs.py"


def test_every_module_a_lane_names_exists():
    assert [module for module in LANES if not (REPO / module).is_file()] == []


def test_every_unit_named_longest_first_exists_once():
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert [unit for unit in LONGEST_FIRST if unit not in LANES.values() and not (REPO / unit).is_file()] == []
