"""The exporter's settings: flags, environment, config file and defaults, in that order of precedence.

Every flag `--a.b-c` can also be given as the environment variable `GPUSCOPE_A_B_C` (what a
DaemonSet sets) or as the key `a.b-c` in the YAML file named by `--config.file`. Each value is
checked by the same parser whatever its source, and a bad one is reported naming that source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.collectors import MODULES, REGISTERED, Roots
from exporter.options import Option, choice, parse_path
from toolkit.configfile import DEFAULT_PORT, ConfigError, load_yaml, parse_bool, parse_listen_address
from toolkit.durations import positive_seconds
from toolkit.logs import LEVELS

GENERAL: tuple[Option, ...] = (
    Option("web.listen-address", f":{DEFAULT_PORT}", parse_listen_address,
           "address to serve metrics on; ':PORT' means every interface"),
    Option("web.telemetry-path", "/metrics", parse_path, "path under which metrics are served"),
    Option("web.config.file", "", str, "exporter-toolkit web config file (TLS, basic auth); empty: plain HTTP"),
    Option("path.sysfs", "/sys", parse_path, "sysfs mount point (debugfs is looked up under it)"),
    Option("path.procfs", "/proc", parse_path, "procfs mount point"),
    Option("collector.timeout", "5s", positive_seconds,
           "longest a scrape waits for a collector before reporting it failed"),
    Option("log.level", "info", choice(*LEVELS), "log level: " + ", ".join(LEVELS)),
    Option("log.format", "logfmt", choice("logfmt", "json"), "log line format: logfmt or json"),
)
# Then a switch per collector, then each collector's own options, in MODULES order.
OPTIONS: tuple[Option, ...] = (
    *GENERAL,
    *(Option(f"collector.{name}", True, parse_bool, f"enable the {name} collector", is_flag=True) for name in MODULES),
    *(option for name in MODULES for option in REGISTERED[name].options),
)


@dataclass(frozen=True)
class ExporterSettings:
    listen_address: tuple[str, int]
    telemetry_path: str
    web_config_file: str
    roots: Roots
    collectors: tuple[str, ...]
    timeout: float
    log_level: str
    log_format: str
    values: Mapping[str, Any] = field(default_factory=dict)  # every option's value, by name, extra ones too


def resolve(cli: Mapping[str, Any], env: Mapping[str, str], config_file: str,
            extra: tuple[Option, ...] = ()) -> ExporterSettings:
    """Merge the sources option by option; raises ConfigError naming the source of a bad value.
    `extra`: options of what runs the agent (the simulator's), resolved the same way into `values`."""
    options = OPTIONS + extra
    file_values = _load_config_file(config_file, options) if config_file else {}
    values: dict[str, Any] = {}
    for option in options:
        if option.name in cli:
            raw, source = cli[option.name], f"flag --{option.name}"
        elif option.env in env:
            raw, source = env[option.env], f"environment variable {option.env}"
        elif option.name in file_values:
            raw, source = file_values[option.name], f"config file {config_file}: {option.name}"
        else:
            raw, source = option.default, "default"
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return ExporterSettings(
        listen_address=values["web.listen-address"],
        telemetry_path=values["web.telemetry-path"],
        web_config_file=values["web.config.file"],
        roots=Roots(sysfs=values["path.sysfs"], procfs=values["path.procfs"],
                    settings={name: REGISTERED[name].settings(values) for name in MODULES}),
        collectors=tuple(name for name in MODULES if values[f"collector.{name}"] and REGISTERED[name].wanted(values)),
        timeout=values["collector.timeout"],
        log_level=values["log.level"],
        log_format=values["log.format"],
        values=values,
    )


def _load_config_file(path: str, options: tuple[Option, ...]) -> dict[str, Any]:
    data = load_yaml(path, "config file")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of flag names to values")
    known = {option.name for option in options}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return data


def config_file_from(cli: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> str:
    return str(cli.get("config.file") or env.get("GPUSCOPE_CONFIG_FILE", ""))
