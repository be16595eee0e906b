"""A real Prometheus scrapes real exporter processes: plain HTTP, HTTPS with basic auth, a simulated p5."""

from __future__ import annotations

import bcrypt
import pytest

from simulator.rdma_tree import p5_efa_devices, write_rdma_tree
from simulator.stack import prometheus
from tests.procs import exporter_process
from tests.test_server import pki  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e  # real Prometheus (and Alertmanager) over simulated nodes


def test_prometheus_scrapes_plain_tls_and_simulated_exporters(tmp_path, fixtures, pki):  # noqa: F811
    sysfs = str(tmp_path / "sys")
    write_rdma_tree(sysfs, p5_efa_devices())
    lustre = fixtures / "HewlettPackard-lustre_exporter"
    web = pki["dir"] / "web-e2e.yml"
    web.write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
                   f"basic_auth_users:\n  prom: '{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}'\n")
    flags = (f"--path.sysfs={sysfs}", f"--path.procfs={lustre / 'proc'}", "--no-collector.host",
             "--no-collector.gpu")
    with exporter_process(*flags) as plain, \
            exporter_process(*flags, f"--web.config.file={web}", scheme="https", verify=pki["ca"]) as secure, \
            exporter_process("--simulate=p5.48xlarge", "--collector.gpu.gpm-interval=1s") as simulated:
        jobs = [
            {"job_name": "plain", "static_configs": [{"targets": [plain.split("//")[1]]}]},
            {"job_name": "simulated", "static_configs": [{"targets": [simulated.split("//")[1]]}]},
            {"job_name": "secure", "scheme": "https", "tls_config": {"ca_file": pki["ca"]},
             "basic_auth": {"username": "prom", "password": "pw"},
             "static_configs": [{"targets": [secure.split("//")[1]]}]},
        ]
        with prometheus(jobs) as prom:
            up = prom.wait_for('count(up == 1) == 3')
            assert up[0]["value"][1] == "3", prom.targets()
            efa = prom.wait_for('count by (job) (gpuscope_efa_receive_bytes_total)')
            assert {r["metric"]["job"]: r["value"][1] for r in efa} == {"plain": "32", "secure": "32",
                                                                        "simulated": "32"}
            gpus = prom.wait_for('count(gpuscope_gpu_up{job="simulated"} == 1)')
            assert gpus[0]["value"][1] == "8"
            tensor = prom.wait_for('gpuscope_gpu_tensor_active_ratio{job="simulated", gpu="3"}')
            assert tensor[0]["value"][1] == "0.57"
            power = prom.query('gpuscope_gpu_power_limit_watts{job="simulated", gpu="0"}')
            assert power[0]["value"][1] == "700"
            tx = prom.query('gpuscope_efa_transmit_bytes_total{device="rdmap79s0", job="secure"}')
            assert tx[0]["value"][1] == "1000"
            lustre_ok = prom.query('gpuscope_lustre_import_healthy{job="plain", target="OST0006"}')
            assert lustre_ok[0]["value"][1] == "1"
            assert {r["value"][1] for r in prom.query("gpuscope_collector_success")} == {"1"}
