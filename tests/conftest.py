import pytest

from tests.helpers import FIXTURES


@pytest.fixture(scope="session")
def fixtures():
    if not FIXTURES.is_dir():
        pytest.fail(f"shared fixtures not found at {FIXTURES}; set GPUSCOPE_FIXTURES")
    return FIXTURES
