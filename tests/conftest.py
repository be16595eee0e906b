import pytest

from tests.helpers import FIXTURES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`scripts/test` runs `--dist loadgroup`), a module's tests stay on one worker,
    so a module's stack is started once; a test that names its own group (a share of the end-to-end
    alert table, on a stack of its own) goes with that group instead."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
