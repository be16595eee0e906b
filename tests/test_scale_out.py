"""The shipped scale-out configuration (deploy/scale-out): accepted by the tools that run it, and
sharding exactly as the end-to-end test's agents do (tests/test_e2e_alerts.py)."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from alerts.render import FILES
from simulator.stack import shard_config
from tests.helpers import REPO

SCALE_OUT = REPO / "deploy" / "scale-out"


def run(*command: str) -> subprocess.CompletedProcess:
    binary = shutil.which(command[0])
    assert binary, f"{command[0]} missing: scripts/test installs it"
    return subprocess.run([binary, *command[1:]], capture_output=True, text=True, timeout=60)


def test_the_agent_config_is_valid_for_prometheus_in_agent_mode():
    result = run("promtool", "check", "config", "--agent", str(SCALE_OUT / "prometheus-agent.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_agent_shards_as_the_tested_agents_do():
    job = yaml.safe_load((SCALE_OUT / "prometheus-agent.yml").read_text())["scrape_configs"][0]
    assert job["job_name"] == "gpuscope"
    assert job["relabel_configs"] == shard_config("gpuscope", "targets.json", 0, 2)["relabel_configs"]


def test_vmalert_accepts_the_shipped_flags_and_the_generated_rules():
    lines = (SCALE_OUT / "vmalert.args").read_text().splitlines()
    flags = [line for line in lines if line and not line.startswith("#")]
    rules = str(REPO / "alerts" / "generated" / FILES[0])
    flags = [f"-rule={rules}" if flag.startswith("-rule=") else flag for flag in flags]
    result = run("vmalert", "-dryRun", *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    assert run("vmalert", "-dryRun", "-no-such-flag=1", f"-rule={rules}").returncode != 0  # the check can fail
