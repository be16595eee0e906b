"""Reference tables in docs/ generated from the catalog and the option list, so the docs cannot drift.

`scripts/generate` rewrites the marked sections (`<!-- generated:NAME -->…<!-- end:NAME -->`) of the
documents in DOCS; a test fails when they are out of date.
"""

from __future__ import annotations

import re

from exporter.catalog import CATALOG
from exporter.collectors import MODULES, REGISTERED
from exporter.config import OPTIONS as AGENT_OPTIONS
from simulator.serve import OPTIONS as SIMULATOR_OPTIONS

OPTIONS = AGENT_OPTIONS + SIMULATOR_OPTIONS  # `gpuscope exporter`'s flags


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
    titles = {"exporter": "exporter self-metrics (plus prometheus_client's process_* and python_*)",
              **{name: REGISTERED[name].description for name in MODULES},
              "remediate": "`gpuscope remediate`, the remediation receiver, on its own /metrics (docs/remediation.md)"}
    for collector, title in titles.items():
        metrics = [m for m in CATALOG.values() if m.collector == collector]
        if not metrics:
            continue
        rows += [f"**{collector}**: {title}", "",
                 "| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
        for m in metrics:
            labels = ", ".join(f"`{label}`" for label in m.labels)
            source = f"`{m.source}`" if m.source else ""
            rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help.replace('|', '/')} | {source} |")
        rows.append("")
    return "\n".join(rows)


SECTIONS = {"flags": flags_table, "metrics": metrics_table}
# Each document (relative to the repository) and the generated sections it holds.
DOCS = {"docs/exporter.md": ("flags",), "docs/metrics.md": ("metrics",)}


def render(text: str, sections: tuple[str, ...]) -> str:
    """`text` with each named `<!-- generated:NAME -->…<!-- end:NAME -->` section regenerated."""
    for name in sections:
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- end:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no generated:{name} section")
        text = pattern.sub(lambda m, make=SECTIONS[name]: m.group(1) + make() + m.group(2), text)
    return text
