"""Command line and configuration: precedence, and one clear line with exit 2 for every bad input."""

from __future__ import annotations

import json
import socket

import bcrypt
import pytest
import requests
import yaml

from exporter import __version__
from exporter.config import DEFAULT_PORT, ConfigError, resolve
from tests.helpers import free_ports
from tests.procs import exporter_process, run_cli, run_gpuscope


def test_version():
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"gpuscope {__version__}")


def test_defaults():
    settings = resolve({}, {}, "")
    assert settings.listen_address == ("::", DEFAULT_PORT)
    assert settings.telemetry_path == "/metrics"
    assert (settings.roots.sysfs, settings.roots.procfs) == ("/sys", "/proc")
    # nccl: on for NCCL RAS on its default port; Inspector files only where a directory is named
    assert settings.collectors == ("gpu", "rdma", "lustre", "host", "nccl", "identity", "kmsg")
    assert (settings.roots.of("nccl").ras_address, settings.roots.of("nccl").directory) == ("127.0.0.1:28028", "")
    assert settings.timeout == 5.0
    with_inspector = resolve({"collector.nccl.inspector-dir": "/var/lib/nccl"}, {}, "")
    assert "nccl" in with_inspector.collectors and with_inspector.roots.of("nccl").directory == "/var/lib/nccl"
    neither = resolve({"collector.nccl.ras-address": ""}, {}, "")
    assert "nccl" not in neither.collectors


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    config = tmp_path / "gpuscope.yml"
    config.write_text("collector.timeout: 3s\npath.sysfs: /file/sys\npath.procfs: /file/proc\n"
                      "collector.lustre: false\nlog.format: json\n")
    env = {"GPUSCOPE_PATH_SYSFS": "/env/sys", "GPUSCOPE_PATH_PROCFS": "/env/proc",
           "GPUSCOPE_COLLECTOR_HOST": "false"}
    cli = {"path.procfs": "/flag/proc", "collector.host": True}
    settings = resolve(cli, env, str(config))
    assert settings.roots.procfs == "/flag/proc"      # flag beats env and file
    assert settings.roots.sysfs == "/env/sys"         # env beats file
    assert settings.timeout == 3.0                    # file beats default
    assert settings.collectors == ("gpu", "rdma", "host", "nccl", "identity", "kmsg")  # file: no lustre; flag: host
    assert settings.log_format == "json"


@pytest.mark.parametrize(("cli", "env", "message"), [
    ({"collector.timeout": "soon"}, {}, "flag --collector.timeout: invalid duration 'soon'"),
    ({}, {"GPUSCOPE_WEB_LISTEN_ADDRESS": "nowhere"}, "environment variable GPUSCOPE_WEB_LISTEN_ADDRESS"),
    ({}, {"GPUSCOPE_COLLECTOR_RDMA": "maybe"}, "GPUSCOPE_COLLECTOR_RDMA: invalid boolean 'maybe'"),
    ({"path.sysfs": "relative/sys"}, {}, "flag --path.sysfs: invalid path"),
    ({"log.level": "loud"}, {}, "flag --log.level: invalid value 'loud'"),
])
def test_bad_values_name_their_source(cli, env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve(cli, env, "")


def one_error_line(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_flag():
    one_error_line(run_cli("--collector.gpus"), "unrecognized arguments: --collector.gpus")


def test_unreadable_config_file(tmp_path):
    one_error_line(run_cli(f"--config.file={tmp_path}/absent.yml"), f"config file {tmp_path}/absent.yml",
                   "cannot read")


def test_config_file_with_unknown_setting(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("web.listen-adress: ':1'\n")
    one_error_line(run_cli(f"--config.file={config}"), str(config), "unknown setting 'web.listen-adress'")


def test_config_file_from_environment(tmp_path):
    config = tmp_path / "c.yml"
    config.write_text("[not a mapping\n")
    one_error_line(run_cli(env={"GPUSCOPE_CONFIG_FILE": str(config)}), str(config), "invalid YAML")


def web_config(tmp_path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return f"--web.config.file={path}"


def test_web_config_with_missing_certificate(tmp_path):
    (tmp_path / "key.pem").write_text("x")
    flag = web_config(tmp_path, "tls_server_config:\n  cert_file: missing.crt\n  key_file: key.pem\n")
    one_error_line(run_cli(flag), "tls_server_config.cert_file missing.crt: no such file")


def test_web_config_with_malformed_bcrypt_hash(tmp_path):
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    flag = web_config(tmp_path, f"basic_auth_users:\n  alice: '{good}'\n  bob: 'plaintext-password'\n")
    one_error_line(run_cli(flag), "basic_auth_users.bob: not a bcrypt hash")


def test_web_config_with_unknown_field(tmp_path):
    one_error_line(run_cli(web_config(tmp_path, "tls_config:\n  cert_file: a\n")), "unknown field tls_config")


def test_web_config_client_auth_needs_a_ca(tmp_path):
    flag = web_config(tmp_path, "tls_server_config:\n  cert_file: a\n  key_file: b\n"
                                "  client_auth_type: RequireAndVerifyClientCert\n")
    one_error_line(run_cli(flag), "needs tls_server_config.client_ca_file")


def test_nothing_starts_after_a_config_error(tmp_path):
    result = run_cli("--web.listen-address=127.0.0.1:0", web_config(tmp_path, "basic_auth_users: [x]\n"))
    one_error_line(result, "basic_auth_users must map user names to bcrypt hashes")
    assert "listening" not in result.stderr


def test_busy_port_is_one_log_line_and_exit_1():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(f"--web.listen-address=127.0.0.1:{port}", "--no-collector.rdma")
    assert result.returncode == 1
    assert "msg=\"cannot listen\"" in result.stderr and f"127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr



@pytest.mark.e2e
def test_simulate_runs_a_cluster_plays_the_scenario_and_stops_everything(tmp_path):
    scenario = tmp_path / "stall.yml"
    scenario.write_text("name: quick stall\nnodes: 2\nsteps:\n  - {at: 1s, node: 1, fault: {kind: efa_stall}}\n")
    port = free_ports(2)  # node i listens on port + i
    result = run_gpuscope("simulate", f"--scenario={scenario}", f"--out={tmp_path}/sim", f"--base-port={port}",
                          "--duration=1s", timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"node-1: http://127.0.0.1:{port + 1}/metrics" in result.stdout
    assert "node-1: inject {'kind': 'efa_stall'}" in result.stdout
    targets = json.loads((tmp_path / "sim" / "targets.json").read_text())
    assert [t["labels"]["instance"] for t in targets] == ["node-0", "node-1"]
    assert yaml.safe_load((tmp_path / "sim" / "node-1" / "faults.yaml").read_text()) == [{"kind": "efa_stall"}]
    for node_port in (port, port + 1):  # every exporter was stopped
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", node_port)) != 0


@pytest.mark.parametrize(("text", "message"), [
    ("steps:\n  - {at: 1s, node: 0, fault: {kind: meltdown}}\n", "steps[0].fault: unknown fault kind 'meltdown'"),
    ("steps:\n  - {at: 1s, node: 0, fault: {kind: straggler}}\n", "steps[0].fault: fault straggler needs 'gpu'"),
    ("steps:\n  - {at: soon, node: 0, fault: {kind: efa_stall}}\n", "steps[0].at: invalid duration 'soon'"),
    ("steps:\n  - {at: 1s, node: 9, fault: {kind: efa_stall}}\n", "steps[0]: 'node' must be one of job, job:4242 or an "
     "index from 0 to 3"),
    ("steps:\n  - {at: 1s, node: 0, fault: {kind: collective_stall}}\n", "use node: job"),
    ("steps:\n  - {at: 1s, node: 0, fault: {kind: rdma_port_down, device: -1}}\n", "steps[0].fault: fault "
     "rdma_port_down takes 'device', the index of an InfiniBand HCA"),
    ("profile: dgx-h100\nsteps: []\n", "runs on profile dgx-h100, not p4d.24xlarge (leave --profile out)"),
])
def test_simulate_rejects_a_bad_scenario_naming_the_field(tmp_path, text, message):
    scenario = tmp_path / "bad.yml"
    scenario.write_text(text)
    result = run_gpuscope("simulate", f"--scenario={scenario}", f"--out={tmp_path}/sim", "--profile=p4d.24xlarge")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(scenario) in result.stderr and message in result.stderr
    assert not (tmp_path / "sim").exists()


def test_demo_without_prometheus_says_how_to_install_it(tmp_path):
    result = run_gpuscope("demo", env={"PATH": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "prometheus not found on PATH: install it with `apt-get install prometheus" in result.stderr


def test_a_simulated_node_never_deletes_what_the_user_owns(tmp_path):
    """--simulate.dir replaces only a tree the simulator wrote (it carries a marker): the user's
    own `sys` directory is refused and kept, a file is refused, and the simulator's own tree is
    reused across restarts (issue 21: `--simulate.dir=DIR` used to delete DIR/sys)."""
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "notes.txt").write_text("mine\n")
    refused = run_cli("--simulate=p5.48xlarge", f"--simulate.dir={tmp_path}", "--web.listen-address=127.0.0.1:0")
    assert refused.returncode == 2
    assert f"{tmp_path}/sys exists and was not written by gpuscope's simulator: refusing to replace it" \
        in refused.stderr and refused.stderr.count("\n") == 1
    assert (tmp_path / "sys" / "notes.txt").read_text() == "mine\n"
    not_a_directory = run_cli("--simulate=p5.48xlarge", f"--simulate.dir={tmp_path / 'sys' / 'notes.txt'}")
    assert not_a_directory.returncode == 2
    assert not_a_directory.stderr == (f"gpuscope exporter: error: flag --simulate.dir: {tmp_path}/sys/notes.txt "
                                      "is not a directory\n")
    own = tmp_path / "node"
    for _ in range(2):  # the second start replaces the first one's tree
        with exporter_process("--simulate=p5.48xlarge", f"--simulate.dir={own}") as base:
            assert "gpuscope_gpu_up" in requests.get(f"{base}/metrics", timeout=10).text
    assert (own / "sys" / ".gpuscope-simulated").exists()
