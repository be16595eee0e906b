"""README reference tables generated from the catalog and the option list, so the docs cannot drift.

`python -m exporter.reference` rewrites the marked sections of README.md; a test fails when they
are out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from exporter.catalog import CATALOG
from exporter.collectors import DESCRIPTIONS
from exporter.config import OPTIONS


def flags_table() -> str:
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|",
            "| `--config.file` | `GPUSCOPE_CONFIG_FILE` | | YAML file of flag names to values |"]
    for option in OPTIONS:
        flag = f"`--[no-]{option.name}`" if option.is_flag else f"`--{option.name}`"
        default = str(option.default).lower() if option.is_flag else option.default
        rows.append(f"| {flag} | `{option.env}` | `{default}` | {option.help} |" if default != ""
                    else f"| {flag} | `{option.env}` | | {option.help} |")
    return "\n".join(rows) + "\n"


def metrics_table() -> str:
    rows = []
    for collector in ("exporter", *DESCRIPTIONS):
        metrics = [m for m in CATALOG.values() if m.collector == collector]
        if not metrics:
            continue
        title = DESCRIPTIONS.get(collector, "exporter self-metrics (plus prometheus_client's process_* and python_*)")
        rows += [f"**{collector}**: {title}", "",
                 "| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
        for m in metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels)
            source = f"`{m.source}`" if m.source else ""
            rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help.replace('|', '/')} | {source} |")
        rows.append("")
    return "\n".join(rows)


SECTIONS = {"flags": flags_table, "metrics": metrics_table}


def render(readme: str) -> str:
    """README text with every `<!-- generated:NAME -->…<!-- end:NAME -->` section regenerated."""
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        if not pattern.search(readme):
            raise ValueError(f"README has no generated:{name} section")
        readme = pattern.sub(lambda m, make=make: m.group(1) + make() + m.group(2), readme)
    return readme


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
