import pytest

from tests.helpers import FIXTURES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`scripts/test` runs the fast tier `--dist loadgroup`), a module's tests stay
    on one worker, so a module's fixtures (a Prometheus, a simulated node) start once."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
