"""Command line and configuration: precedence, and one clear line with exit 2 for every bad input."""

from __future__ import annotations

import socket

import bcrypt
import pytest

from exporter import __version__
from exporter.collectors.lustre import LustreCollector
from exporter.collectors.rdma import RdmaCollector
from exporter.config import DEFAULT_PORT, ConfigError, resolve
from tests.helpers import samples, scrape, series, value
from tests.procs import run_cli, run_gpuscope


def test_version():
    result = run_cli("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"gpuscope {__version__}")


def test_defaults():
    settings = resolve({}, {}, "")
    assert settings.listen_address == ("::", DEFAULT_PORT)
    assert settings.telemetry_path == "/metrics"
    assert (settings.roots.sysfs, settings.roots.procfs) == ("/sys", "/proc")
    assert settings.collectors == ("gpu", "rdma", "lustre", "host")
    assert settings.timeout == 5.0


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
    assert settings.collectors == ("gpu", "rdma", "host")  # file disabled lustre, flag re-enabled host
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



def test_simulate_writes_a_node_the_exporter_reads(tmp_path):
    result = run_gpuscope("simulate", f"--out={tmp_path}/node")
    assert result.returncode == 0, result.stderr
    assert f"--path.sysfs={tmp_path}/node/sys" in result.stdout
    parsed = samples(scrape([RdmaCollector(f"{tmp_path}/node/sys"),
                             LustreCollector(f"{tmp_path}/node/sys", f"{tmp_path}/none")]))
    assert len(series(parsed, "gpuscope_efa_retransmit_timeout_events_total")) == 32
    assert value(parsed, "gpuscope_efa_transmit_bytes_total", device="rdmap79s0", port="1") == 48_213_556_011_008
    assert value(parsed, "gpuscope_lustre_read_bytes_total", fs="fsx") == 912_337_190_912
    assert len(series(parsed, "gpuscope_lustre_import_healthy")) == 5
    assert value(parsed, "gpuscope_lustre_health_check_healthy") == 1
