"""`gpuscope` command line: one console script, one subcommand per job, each the entry of one product
(the node agent, the simulator, rules and dashboards, the remediation receiver).

Usage errors print one line naming the flag and exit 2, as Prometheus exporters do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter import cli as agent
from exporter.cli import USAGE_ERROR
from exporter.cli import Parser as _Parser
from simulator.profiles import DEFAULT_PROFILE, PROFILES
from simulator.scenarios import SCENARIOS
from toolkit.configfile import DEFAULT_PORT, parse_count


def _exporter_parser(subparsers, with_options: bool) -> None:
    """The daemon's flags come from its option table, which imports every collector's options, and the
    simulator's: only built when the command line may be the daemon's (`gpuscope remediate` loads no
    collector)."""
    parser = subparsers.add_parser("exporter", help="run the per-node metrics daemon", description=agent.DESCRIPTION,
                                   argument_default=argparse.SUPPRESS)
    if not with_options:
        agent.add_arguments(parser, ())
        return
    from exporter.config import OPTIONS
    from simulator import serve

    agent.add_arguments(parser, OPTIONS + serve.OPTIONS)


def _simulate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate", help="run a simulated cluster: N nodes, each a real exporter on loopback, with scripted faults",
        description="Starts N simulated nodes, each served by its own `gpuscope exporter --simulate` process on "
                    "127.0.0.1, writes a Prometheus file_sd targets file, and plays a fault scenario. "
                    "Ctrl-C stops every process.")
    _cluster_arguments(parser, "healthy", "0s", "stop this long after the scenario's last step (0s: at Ctrl-C)")
    parser.add_argument("--out", default="gpuscope-sim", metavar="DIR", help="where the nodes' trees go")
    parser.add_argument("--base-port", type=_positive_int, default=19500,
                        help="node i listens on 127.0.0.1:BASE+i (default 19500)")


def _cluster_arguments(parser, scenario: str, duration: str, duration_help: str) -> None:
    """The options `simulate` and `demo` share."""
    parser.add_argument("--nodes", type=_positive_int, help="how many nodes (default: the scenario's, else 4)")
    parser.add_argument("--profile", help=f"node profile: {', '.join(PROFILES)} (default: the scenario's, else "
                                          f"{DEFAULT_PROFILE})")
    parser.add_argument("--scenario", default=scenario, metavar="NAME|FILE",
                        help=f"a built-in scenario ({', '.join(SCENARIOS)}; default {scenario}) or a YAML file")
    parser.add_argument("--duration", default=duration, help=f"{duration_help} (default {duration})")


def _settings_argument(parser) -> None:
    parser.add_argument("--config", default="", metavar="FILE",
                        help="settings file shared by rules and dashboards: selector, cluster and node label names, "
                             "thresholds, alerts switched off or given another severity (docs/configuration.md)")


def _positive_int(text: str) -> int:
    """A count flag, checked as the exporter's count options are."""
    try:
        return parse_count(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _dashboards_parser(subparsers) -> None:
    parser = subparsers.add_parser("dashboards", help="Grafana dashboards")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    build = actions.add_parser("build", help="write the dashboards' JSON and sidecar ConfigMaps")
    _settings_argument(build)
    build.add_argument("--out", default="dashboards/generated", metavar="DIR", help="default dashboards/generated")
    push = actions.add_parser("push", help="upload the dashboards through Grafana's HTTP API")
    push.add_argument("--grafana-url", required=True, help="e.g. https://grafana.example.com")
    _settings_argument(push)
    push.add_argument("--token-file", default="", metavar="FILE",
                      help="file holding a Grafana API (service account) token; else GPUSCOPE_GRAFANA_TOKEN")
    push.add_argument("--folder", default="gpuscope", help="folder uid and title (default gpuscope)")
    render = actions.add_parser("render", help="draw each dashboard from live Prometheus data into a PNG")
    render.add_argument("--prometheus", required=True, metavar="URL", help="e.g. http://127.0.0.1:9090")
    render.add_argument("--out", default="dashboards/preview", metavar="DIR", help="default dashboards/preview")
    render.add_argument("--instance", default=".*", help="value of $instance (default: all)")
    render.add_argument("--gpu", default=".*", help="value of $gpu (default: all)")
    render.add_argument("--job-id", default="", help="value of $job_id (a Slurm job)")
    render.add_argument("--namespace", default="", help="value of $namespace (Kubernetes pods of the job view)")
    render.add_argument("--pod", default=".*", help="value of $pod, a regex (default: all in the namespace)")
    render.add_argument("--minutes", type=_positive_int, default=15, help="time range drawn (default 15)")


def _demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="a simulated cluster with Prometheus and Alertmanager: watch faults raise alerts",
        description="Starts simulated nodes, Prometheus and Alertmanager (Debian's binaries from PATH) on "
                    "127.0.0.1 with the generated rules and the reference routing, plays a fault scenario and "
                    "shows which alerts go pending, fire and resolve. Ctrl-C stops every process.")
    _cluster_arguments(parser, "demo", "90s", "keep running this long after the scenario's last step")


def _alerts_parser(subparsers) -> None:
    parser = subparsers.add_parser("alerts", help="alert and recording rules")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
    build = actions.add_parser("build", help="write the Prometheus rules file, PrometheusRule and Grafana provisioning",
                               description="Renders alerts/rules/ into OUT/prometheus-rules.yml, "
                                           "OUT/prometheusrule.yaml and OUT/grafana-alert-rules.yaml.")
    _settings_argument(build)
    build.add_argument("--out", default="alerts/generated", metavar="DIR", help="default alerts/generated")
    build.add_argument("--grafana-datasource-uid", default="prometheus",
                       help="uid of the Prometheus data source the Grafana rules query (default prometheus)")


def _check_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "check", help="is this node fit to run a job? (Slurm HealthCheckProgram, prolog)",
        description="Judges one scrape of the local exporter (or of the collectors run once) and prints one line "
                    "naming what is wrong: exit 0 fit, 1 unfit, 3 could not check (never drains). docs/remediation.md")
    parser.add_argument("--exporter", default=f"http://127.0.0.1:{DEFAULT_PORT}/metrics", metavar="URL",
                        help=f"the exporter to read (default http://127.0.0.1:{DEFAULT_PORT}/metrics)")
    parser.add_argument("--collect", action="store_true", help="run the collectors once instead of reading it")
    parser.add_argument("--path.sysfs", dest="sysfs", default="/sys", help="with --collect (default /sys)")
    parser.add_argument("--path.procfs", dest="procfs", default="/proc", help="with --collect (default /proc)")
    parser.add_argument("--node.instance-type", dest="instance_type", default="",
                        help="with --collect: overrides DMI's instance type")
    parser.add_argument("--timeout", type=float, default=1.5, help="seconds for the read or collection (default 1.5)")
    parser.add_argument("--state-file", default="", metavar="FILE",
                        help="remembers critical XID counts, so only XIDs since the last check count")
    parser.add_argument("--ignore-rdma-devices", default="", metavar="REGEX",
                        help="RDMA devices whose port state is not judged (unused ports)")
    parser.add_argument("--drain", action="store_true", help="when unfit, drain this node in Slurm with the reason")
    parser.add_argument("--node-name", default="", help="Slurm node name (default SLURMD_NODENAME, else host name)")
    parser.add_argument("--scontrol", default="scontrol", metavar="PATH", help="scontrol to run (default from PATH)")


def _remediate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "remediate", help="Alertmanager webhook receiver that drains bad nodes (Slurm, Kubernetes) within rails",
        description="Receives Alertmanager notifications on POST /alerts and drains or resumes nodes as the policy "
                    "file allows: dry-run until it says enforce: true. docs/remediation.md")
    parser.add_argument("--policy", required=True, metavar="FILE", help="the policy file (docs/remediation.md)")
    parser.add_argument("--web.listen-address", dest="listen_address", default="127.0.0.1:19401",
                        help="default 127.0.0.1:19401 (loopback only)")
    parser.add_argument("--web.config.file", dest="web_config_file", default="", metavar="FILE",
                        help="TLS and basic auth, the exporter's web config format")
    parser.add_argument("--web.bearer-token-file", dest="bearer_token_file", default="", metavar="FILE",
                        help="require 'Authorization: Bearer <token>' (Alertmanager http_config.authorization)")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=("debug", "info", "warn", "error"))


def _run_check(args: dict) -> int:
    from exporter import check

    def source() -> str:
        if args["collect"]:
            return _collect_once(args["sysfs"], args["procfs"], args["instance_type"], args["timeout"])
        return check.read_exporter(args["exporter"], args["timeout"])

    return check.run(source, args["state_file"], args["ignore_rdma_devices"], args["drain"], args["node_name"],
                     args["scontrol"])


def _collect_once(sysfs: str, procfs: str, instance_type: str, timeout: float) -> str:
    """One scrape of the collectors the check's verdict reads, run in this process (no exporter needed)."""
    from exporter.collectors import Roots, build, close
    from exporter.registry import ScrapeRegistry

    roots = Roots(sysfs, procfs, settings={"identity": instance_type})
    collectors = build(("identity", "gpu", "rdma", "lustre"), roots)
    try:
        return ScrapeRegistry(collectors, timeout).render()
    finally:
        close(collectors)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; the daemon's flags only when `command` may be the daemon (None: any)."""
    parser = _Parser(prog="gpuscope", description="Observability for GPU training clusters.")
    parser.add_argument("--version", action="version", version=f"gpuscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _exporter_parser(subparsers, command in (None, "exporter"))
    _simulate_parser(subparsers)
    _alerts_parser(subparsers)
    _demo_parser(subparsers)
    _dashboards_parser(subparsers)
    _check_parser(subparsers)
    _remediate_parser(subparsers)
    return parser


def _run_exporter(cli: dict) -> int:
    """The agent, on the host's hardware or (--simulate) a simulated node's."""
    from simulator import serve

    return agent.run(cli, serve.OPTIONS, serve.node)


def needs_extra(command: str, extra: str, exc: ImportError) -> int:
    """One line naming the extra that brings a missing module (never a traceback); exit 1."""
    print(f"gpuscope {command}: error: needs the {extra} extra: pip install 'gpuscope[{extra}]' "
          f"(no module named {exc.name!r})", file=sys.stderr)
    return 1


def _build_alerts(args: dict) -> int:
    try:
        import alerts.grafana  # noqa: F401 (grafanalib, for the Grafana-managed copy of the rules)
        from alerts.render import build
        from alerts.settings import SettingsError
    except ImportError as exc:
        return needs_extra("alerts build", "dashboards", exc)
    try:
        paths = build(args["out"], args["config"], args["grafana_datasource_uid"])
    except SettingsError as exc:
        print(f"gpuscope alerts: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    print("\n".join(paths))
    return 0


def _dashboards(args: dict) -> int:
    command = f"dashboards {args['action']}"
    try:
        import requests

        from alerts.rules import load
        from alerts.settings import SettingsError
        from dashboards.build import build
        from dashboards.push import PushError, push, read_token
    except ImportError as exc:
        return needs_extra(command, "render" if args["action"] == "render" else "dashboards", exc)

    if args["action"] in ("build", "push"):
        try:
            settings = load(args["config"])
        except SettingsError as exc:
            print(f"gpuscope dashboards: error: {exc}", file=sys.stderr)
            return USAGE_ERROR
    if args["action"] == "build":
        print("\n".join(build(args["out"], settings)))
        return 0
    if args["action"] == "render":
        try:
            import matplotlib  # noqa: F401 (dashboards.render draws with it, imported where it draws)

            from dashboards.render import render_all
        except ImportError as exc:
            return needs_extra(command, "render", exc)
        values = {"instance": args["instance"], "gpu": args["gpu"], "job_id": args["job_id"], "cluster": ".*",
                  "namespace": args["namespace"], "pod": args["pod"], "__rate_interval": "1m"}
        try:
            print("\n".join(render_all(args["prometheus"], args["out"], values, args["minutes"])))
        except requests.RequestException as exc:
            print(f"gpuscope dashboards render: error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        print("\n".join(push(args["grafana_url"], read_token(args["token_file"]), args["folder"], settings)))
    except PushError as exc:
        print(f"gpuscope dashboards push: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser(next((a for a in given if not a.startswith("-")), None)).parse_args(given))
    command = args.pop("command")
    if command == "exporter":
        return _run_exporter(args)
    if command == "alerts":
        return _build_alerts(args)
    if command == "check":
        return _run_check(args)
    if command == "remediate":
        from receiver.server import run as run_receiver

        return run_receiver(args)
    if command == "dashboards":
        return _dashboards(args)
    if command == "demo":
        try:
            from simulator.demo import run_demo
        except ImportError as exc:
            return needs_extra("demo", "demo", exc)
        return run_demo(args)
    if command == "simulate":
        from simulator.run import run_simulation

        return run_simulation(args)
    raise AssertionError(f"unhandled command {command}")
