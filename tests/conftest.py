import pytest

from tests.helpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures():
    """The real captures vendored in tests/fixtures (sources and licences in its SOURCES.md)."""
    return FIXTURES
