"""`gpuscope` command line: one console script, one subcommand per job.

Usage errors print one line naming the flag and exit 2, as Prometheus exporters do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from exporter import __version__
from exporter.config import DEFAULT_PORT, OPTIONS, ConfigError, config_file_from, resolve

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _exporter_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "exporter", help="run the per-node metrics daemon",
        description=f"Serve GPU, EFA/RDMA, Lustre and host metrics to Prometheus (default port {DEFAULT_PORT}). "
                    "Precedence: flag > environment variable > --config.file > default.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"gpuscope {__version__}")
    parser.add_argument("--config.file", dest="config.file", metavar="FILE",
                        help="YAML file of flag names to values (env GPUSCOPE_CONFIG_FILE)")
    for option in OPTIONS:
        kwargs = {"dest": option.name, "help": f"{option.help} (env {option.env}; default {option.default})"}
        if option.is_flag:
            parser.add_argument(f"--{option.name}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(f"--{option.name}", metavar="VALUE", **kwargs)


def _simulate_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate", help="write a simulated p5.48xlarge node (EFA, Lustre) for the exporter to read",
        description="Writes the sysfs tree of a p5.48xlarge (32 EFA devices, an FSx for Lustre client) under "
                    "DIR; then run: gpuscope exporter --path.sysfs=DIR/sys")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write (its sys/ is replaced)")
    parser.add_argument("--layout", choices=("split", "combined"), default="split",
                        help="EFA counter layout: split (kernel >= 5.15) or combined (older)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuscope", description="Observability for GPU training clusters.")
    parser.add_argument("--version", action="version", version=f"gpuscope {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _exporter_parser(subparsers)
    _simulate_parser(subparsers)
    return parser


def _run_exporter(cli: dict) -> int:
    # Imported here so `gpuscope --help` and config errors stay fast and free of server imports.
    from exporter import app, logs, webconfig

    try:
        settings = resolve(cli, os.environ, config_file_from(cli))
        logs.setup(settings.log_level, settings.log_format)
        web = webconfig.load(settings.web_config_file)
    except ConfigError as exc:
        print(f"gpuscope exporter: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return app.run(settings, web)


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "exporter":
        return _run_exporter(args)
    if command == "simulate":
        from exporter.sim.node import write_p5_node

        sysfs = write_p5_node(os.path.abspath(args["out"]), args["layout"])
        print(f"simulated p5.48xlarge written; run: gpuscope exporter --path.sysfs={sysfs}")
        return 0
    raise AssertionError(f"unhandled command {command}")
