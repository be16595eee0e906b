"""`gpuscope exporter`, the node agent's command: its flags come from the option table, then it serves.

Usage errors print one line naming the flag and exit 2, as Prometheus exporters do. `python -m
exporter` runs the agent alone on the host's hardware; the `gpuscope` command adds the simulator's
options and node (gpuscope/cli.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, NoReturn

from exporter import __version__
from toolkit.configfile import DEFAULT_PORT

if TYPE_CHECKING:
    from exporter.config import ExporterSettings, Option

USAGE_ERROR = 2
DESCRIPTION = (f"Serve GPU, EFA/RDMA, Lustre and host metrics to Prometheus (default port {DEFAULT_PORT}). "
               "Precedence: flag > environment variable > --config.file > default.")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """--version, --config.file and a flag per option (env and default named in its help)."""
    parser.add_argument("--version", action="version", version=f"gpuscope {__version__}")
    parser.add_argument("--config.file", dest="config.file", metavar="FILE",
                        help="YAML file of flag names to values (env GPUSCOPE_CONFIG_FILE)")
    for option in options:
        kwargs = {"dest": option.name, "help": f"{option.help} (env {option.env}; default {option.default})"}
        if option.is_flag:
            parser.add_argument(f"--{option.name}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            parser.add_argument(f"--{option.name}", metavar="VALUE", **kwargs)


def run(cli: dict, extra: tuple[Option, ...] = (),
        node: Callable[[ExporterSettings], AbstractContextManager[ExporterSettings]] | None = None) -> int:
    """Resolves the settings (the agent's options and `extra`), then serves on `node` (default: the host)."""
    # Imported here so `gpuscope --help` and config errors stay fast and free of server imports.
    from exporter import app
    from exporter.config import ConfigError, config_file_from, resolve
    from toolkit import logs, webconfig

    try:
        settings = resolve(cli, os.environ, config_file_from(cli), extra)
        logs.setup(settings.log_level, settings.log_format)
        web = webconfig.load(settings.web_config_file)
    except ConfigError as exc:
        print(f"gpuscope exporter: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    return app.run(settings, web, node or app.host_node)


def main(argv: Sequence[str] | None = None) -> int:
    from exporter.config import OPTIONS

    parser = Parser(prog="gpuscope exporter", description=DESCRIPTION, argument_default=argparse.SUPPRESS)
    add_arguments(parser, OPTIONS)
    return run(vars(parser.parse_args(argv)))
