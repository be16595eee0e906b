"""Docs that run (issue 28): every documented install, in a fresh environment, runs the commands the
README and docs give for it.

The repository's tracked files are copied into an empty directory (a fresh clone, with this
checkout's uncommitted edits), gpuscope and every dependency of every extra are built into one
wheelhouse, and each install gets its own virtual environment installing from that wheelhouse alone
(no index: what an extra does not bring is missing). An environment is judged on its commands' exit
codes and output: a traceback or a missing module the docs do not promise fails the test, and a
command that needs an extra the install lacks must say so in one line naming the extra.
`scripts/run` and the README's demo line are run in the fresh clone itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from simulator.stack import prometheus
from tests.helpers import REPO, free_port, wait_until
from tests.procs import exporter_process

pytestmark = pytest.mark.e2e  # builds wheels and environments, runs real servers

EXTRAS = ("dashboards", "demo", "remediate", "render")


def run(command: list[str], cwd: Path | None = None, env: dict | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def offline_env(wheels: Path) -> dict[str, str]:
    """pip installs from the wheelhouse alone, as a fresh machine with only these packages would."""
    return {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The tracked files (as edited now) in an empty directory: what `git clone` gives a new user."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    out = tmp_path_factory.mktemp("fresh") / "gpuscope"
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / name)
    return out


@pytest.fixture(scope="module")
def wheels(clone, tmp_path_factory) -> Path:
    """gpuscope, every extra's dependencies and the build backend, as wheels (pip's cache makes
    this quick after scripts/test's own install)."""
    out = tmp_path_factory.mktemp("wheels")
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--wheel-dir", str(out),
                 f"{clone}[{','.join(EXTRAS)}]", "setuptools>=77", "pip"], timeout=600)
    assert built.returncode == 0, built.stderr
    return out


def install(wheels: Path, root: Path, requirement: str) -> Path:
    """A fresh virtual environment with `requirement` installed from the wheelhouse; its bin dir."""
    made = run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    assert made.returncode == 0, made.stderr
    done = run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
                requirement], env=offline_env(wheels))
    assert done.returncode == 0, done.stderr
    return root / "bin"


def gpuscope(bin_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run([str(bin_dir / "gpuscope"), *args], timeout=timeout)


def assert_clean(result: subprocess.CompletedProcess, code: int = 0) -> None:
    """The exit code the docs promise, and no traceback on either stream."""
    assert result.returncode == code, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def assert_needs(result: subprocess.CompletedProcess, extra: str) -> None:
    """One line naming the extra to install, exit 1."""
    assert_clean(result, 1)
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"pip install 'gpuscope[{extra}]'" in result.stderr, result.stderr


def simulated_exporter(bin_dir: Path):
    """The installed `gpuscope exporter --simulate=p5.48xlarge` on a free port; yields its base URL."""
    return exporter_process("--simulate=p5.48xlarge", command=(str(bin_dir / "gpuscope"), "exporter"))


def _answers(url: str) -> bool:
    try:
        return "gpuscope_gpu_up" in requests.get(url, timeout=2).text
    except requests.RequestException:
        return False


def test_the_node_agent_alone_runs_and_checks_and_names_the_extra_of_everything_else(wheels, tmp_path):
    """`pip install gpuscope`: the exporter, a simulated scrape, `gpuscope check` against it, the
    receiver's help; every command of an extra says which extra in one line."""
    bin_dir = install(wheels, tmp_path / "venv", "gpuscope")
    assert_clean(gpuscope(bin_dir, "exporter", "--help"))
    assert_clean(gpuscope(bin_dir, "remediate", "--help"))
    assert_clean(gpuscope(bin_dir, "simulate", "--help"))
    with simulated_exporter(bin_dir) as base:
        checked = gpuscope(bin_dir, "check", f"--exporter={base}/metrics")
        assert_clean(checked)
    assert_needs(gpuscope(bin_dir, "alerts", "build", f"--out={tmp_path}/rules"), "dashboards")
    assert_needs(gpuscope(bin_dir, "dashboards", "build", f"--out={tmp_path}/dash"), "dashboards")
    assert_needs(gpuscope(bin_dir, "dashboards", "render", "--prometheus=http://127.0.0.1:9"), "render")
    assert_needs(gpuscope(bin_dir, "demo"), "demo")
    assert not (tmp_path / "rules").exists() and not (tmp_path / "dash").exists()


def test_the_dashboards_extra_builds_what_the_repository_commits(wheels, tmp_path):
    """`pip install 'gpuscope[dashboards]'`: `alerts build` and `dashboards build` write exactly the
    committed files (default settings); render needs its own extra."""
    bin_dir = install(wheels, tmp_path / "venv", "gpuscope[dashboards]")
    assert_clean(gpuscope(bin_dir, "alerts", "build", f"--out={tmp_path}/rules"))
    for name in ("prometheus-rules.yml", "prometheusrule.yaml", "grafana-alert-rules.yaml"):
        assert (tmp_path / "rules" / name).read_text() == (REPO / "alerts" / "generated" / name).read_text(), name
    assert_clean(gpuscope(bin_dir, "dashboards", "build", f"--out={tmp_path}/dash"))
    committed = sorted(p.name for p in (REPO / "dashboards" / "generated").iterdir())
    assert sorted(p.name for p in (tmp_path / "dash").iterdir()) == committed
    for name in committed:
        assert (tmp_path / "dash" / name).read_text() == (REPO / "dashboards" / "generated" / name).read_text(), name
    assert_needs(gpuscope(bin_dir, "dashboards", "render", "--prometheus=http://127.0.0.1:9"), "render")


def test_the_render_extra_draws_every_dashboard_from_a_live_prometheus(wheels, tmp_path):
    """`pip install 'gpuscope[render]'`: `dashboards render` against a real Prometheus scraping a
    simulated node writes one PNG per dashboard."""
    bin_dir = install(wheels, tmp_path / "venv", "gpuscope[render]")
    with simulated_exporter(bin_dir) as base:
        target = base.removeprefix("http://")
        with prometheus([{"job_name": "gpuscope", "static_configs": [{"targets": [target]}]}]) as prom:
            prom.wait_for('up{job="gpuscope"} == 1')
            drawn = gpuscope(bin_dir, "dashboards", "render", f"--prometheus={prom.base}", f"--out={tmp_path}/png",
                             "--minutes=1", timeout=300)
    assert_clean(drawn)
    committed = sorted(p.stem for p in (REPO / "dashboards" / "generated").glob("*.json"))
    assert sorted(p.stem for p in (tmp_path / "png").glob("*.png")) == committed


def test_the_demo_extra_alone_starts_the_demo(wheels, tmp_path):
    """`pip install 'gpuscope[demo]'` (issue 28: the demo rendered its rules with grafanalib, which
    only the dashboards extra brings): a one-node healthy demo starts every server and stops."""
    bin_dir = install(wheels, tmp_path / "venv", "gpuscope[demo]")
    env_path = f"{bin_dir}:{os.environ['PATH']}"
    result = run([str(bin_dir / "gpuscope"), "demo", "--scenario=healthy", "--nodes=1", "--duration=1s"],
                 env={**os.environ, "PATH": env_path}, timeout=120)
    assert_clean(result)
    assert "Prometheus   http://127.0.0.1:" in result.stdout and "scenario healthy" in result.stdout


def test_the_remediate_extra_is_what_the_kubernetes_scheduler_needs(wheels, tmp_path):
    """Without the remediate extra a Kubernetes policy is refused in one line naming it; with it the
    receiver gets as far as the cluster's own configuration (none here)."""
    policy = tmp_path / "policy.yml"
    policy.write_text(f"scheduler: kubernetes\naudit_log: {tmp_path}/audit.jsonl\n"
                      f"state_file: {tmp_path}/state.json\nkubernetes: {{kubeconfig: {tmp_path}/none}}\n")
    bare = install(wheels, tmp_path / "bare", "gpuscope")
    refused = gpuscope(bare, "remediate", f"--policy={policy}")
    assert_clean(refused, 1)
    assert refused.stderr.count("\n") == 1 and "pip install 'gpuscope[remediate]'" in refused.stderr
    bin_dir = install(wheels, tmp_path / "venv", "gpuscope[remediate]")
    result = gpuscope(bin_dir, "remediate", f"--policy={policy}")
    assert_clean(result, 2)
    assert result.stderr.count("\n") == 1 and f"{tmp_path}/none" in result.stderr, result.stderr


def test_the_readme_commands_from_a_fresh_clone(clone, wheels):
    """README: `scripts/run` installs into .venv and serves a simulated p5.48xlarge on :19400 (here
    another port, passed through as the README shows); then `.venv/bin/gpuscope demo` pages an EFA
    stall and resolves it (issue 28: the stall paged nothing when the rules' 1m became 6 s at a 5 s
    scrape). The demo plays a shortened copy of the built-in efa_stall scenario."""
    port = free_port()
    proc = subprocess.Popen([str(clone / "scripts" / "run"), f"--web.listen-address=127.0.0.1:{port}"], cwd=clone,
                            env=offline_env(wheels), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: proc.poll() is not None or _answers(f"http://127.0.0.1:{port}/metrics"), 240,
                   "scripts/run never served /metrics")
        assert proc.poll() is None, proc.stderr.read()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "serving a simulated p5.48xlarge" in proc.stderr.read()
    scenario = clone / "efa_stall.yml"
    scenario.write_text((REPO / "simulator/scenarios/efa_stall.yaml").read_text().replace("duration: 90s",
                                                                                            "duration: 30s"))
    result = run([str(clone / ".venv/bin/gpuscope"), "demo", f"--scenario={scenario}", "--duration=20s"],
                 cwd=clone, timeout=180)
    assert_clean(result)
    out = result.stdout
    assert "node-2: inject efa_stall" in out and "FIRING   EfaTrafficStalled critical node-2" in out, out
    assert out.index("FIRING   EfaTrafficStalled") < out.index("RESOLVED EfaTrafficStalled"), out
    leftovers = subprocess.run(["pgrep", "-f", "gpuscope-demo-"], capture_output=True, text=True).stdout
    assert leftovers == ""
