"""Writes every generated file of the repository from its one source, or checks them (`--check`).

    scripts/generate            # rewrite them all
    scripts/generate --check    # write nothing; exit 1 naming each stale file

Rules (alerts/rules/) and dashboards (dashboards/views.py) are rendered with the default settings.
Each file has one copy: the Helm chart and the kustomize base need theirs inside their own
directories (neither reads a file from outside), so the rules file and the dashboards live there, and
alerts/generated/ and dashboards/generated/ (where `gpuscope alerts build` and `dashboards build`
write, and where a plain Prometheus looks) link to them; the Grafana-managed rules live in
alerts/generated/ alone. The flag and metric tables in docs/ come from the option table and the
catalog.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alerts.render import render_all
from alerts.settings import Settings
from dashboards.build import render_files
from gpuscope.reference import DOCS, render

REPO = Path(__file__).resolve().parents[1]
HELM = REPO / "deploy" / "helm" / "gpuscope" / "files"
KUSTOMIZE = REPO / "deploy" / "kubernetes" / "base"


def homes() -> dict[Path, Path]:
    """{path in a build directory: the one copy it links to} for the files the deployments need."""
    rules, dashboards = REPO / "alerts" / "generated", REPO / "dashboards" / "generated"
    links = {rules / "prometheus-rules.yml": HELM / "prometheus-rules.yml",
             rules / "prometheusrule.yaml": KUSTOMIZE / "prometheusrule.yaml",
             dashboards / "configmaps.yaml": KUSTOMIZE / "dashboards.yaml"}
    return links | {dashboards / name: HELM / "dashboards" / name
                    for name in render_files(Settings()) if name.endswith(".json")}


def outputs() -> dict[Path, str]:
    """{path: text} of every generated file, each at its one copy."""
    files = {REPO / "alerts" / "generated" / name: text for name, text in render_all(Settings()).items()}
    files |= {REPO / "dashboards" / "generated" / name: text for name, text in render_files(Settings()).items()}
    for link, home in homes().items():
        files[home] = files.pop(link)
    files |= {REPO / doc: render((REPO / doc).read_text(), sections) for doc, sections in DOCS.items()}
    return files


def _linked(link: Path, home: Path) -> bool:
    return link.is_symlink() and os.readlink(link) == os.path.relpath(home, link.parent)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: scripts/generate [--check]", file=sys.stderr)
        return 2
    stale = []
    for path, text in outputs().items():
        if path.exists() and not path.is_symlink() and path.read_text() == text:
            continue
        stale.append(str(path.relative_to(REPO)))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            path.write_text(text)
    for link, home in homes().items():
        if _linked(link, home):
            continue
        stale.append(str(link.relative_to(REPO)))
        if not check:
            link.unlink(missing_ok=True)
            link.symlink_to(os.path.relpath(home, link.parent))
    if check and stale:
        print("stale: " + ", ".join(stale) + "; run scripts/generate", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in stale) if stale else "every generated file is current")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
