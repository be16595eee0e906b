"""Writes every generated file of the repository from its one source, or checks them (`--check`).

    scripts/generate            # rewrite them all
    scripts/generate --check    # write nothing; exit 1 naming each stale file

Rules (alerts/rules/) and dashboards (dashboards/views.py) are rendered with the default settings
into alerts/generated/ and dashboards/generated/, and the same text into the Helm chart's files/ and
the kustomize base; the flag and metric tables in docs/ come from exporter/config.py and the catalog.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alerts.render import render_all
from alerts.settings import Settings
from dashboards.build import render_files
from gpuscope.reference import DOCS, render

REPO = Path(__file__).resolve().parents[1]
HELM = REPO / "deploy" / "helm" / "gpuscope" / "files"
KUSTOMIZE = REPO / "deploy" / "kubernetes" / "base"


def outputs() -> dict[Path, str]:
    """{path: text} of every generated file."""
    rules = render_all(Settings())
    dashboards = render_files(Settings())
    files = {REPO / "alerts" / "generated" / name: text for name, text in rules.items()}
    files |= {REPO / "dashboards" / "generated" / name: text for name, text in dashboards.items()}
    files[HELM / "prometheus-rules.yml"] = rules["prometheus-rules.yml"]
    files[KUSTOMIZE / "prometheusrule.yaml"] = rules["prometheusrule.yaml"]
    files[KUSTOMIZE / "dashboards.yaml"] = dashboards["configmaps.yaml"]
    files |= {HELM / "dashboards" / name: text for name, text in dashboards.items() if name.endswith(".json")}
    files |= {REPO / doc: render((REPO / doc).read_text(), sections) for doc, sections in DOCS.items()}
    return files


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: scripts/generate [--check]", file=sys.stderr)
        return 2
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(REPO)))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if check and stale:
        print("stale: " + ", ".join(stale) + "; run scripts/generate", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in stale) if stale else "every generated file is current")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
