"""The README's generated tables match the catalog and the options."""

from exporter.reference import render
from tests.helpers import REPO


def test_readme_reference_tables_are_current():
    readme = (REPO / "README.md").read_text()
    assert render(readme) == readme, "README is stale: run python -m exporter.reference"

