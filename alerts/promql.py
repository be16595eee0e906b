"""Fits gpuscope's PromQL to a user's labels: the scrape job's selector and the cluster and node label names.

Rules and panels are written once, against gpuscope's canonical labels (`instance` names the node,
`cluster` the cluster); `localize` rewrites an expression for the settings in force, as a monitoring
mixin's `_config` does: the selector goes on every raw `gpuscope_*` series (recorded series are
derived from selected ones and need none), and the two label names are renamed wherever PromQL
names a label: matchers, `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` lists and
`label_values`. Templates (`{{ $labels.instance }}`, legends `{{instance}}`) go through
`localize_template`. Dashboard variables (`$instance`) and recording-rule names
(`instance:gpuscope_gpus:count`) are names of ours, not labels, and stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# A raw gpuscope series: not part of a recorded name (`level:gpuscope_x:op`) or another identifier.
_SERIES = re.compile(r"(?<![\w:])(gpuscope_[a-z0-9_]+)\b(?!:)(\{[^{}]*\})?")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)(\s*)\(([^()]*)\)")
_MATCHER_NAME = re.compile(r"(?<![\w\"$.])([a-zA-Z_]\w*)(?=\s*(?:=~|!~|!=|=))")
_BRACES = re.compile(r"\{([^{}]*)\}")
_LABEL_VALUES = re.compile(r"(label_values\(.*,\s*)(\w+)(\s*\))")
# One label matcher: name, operator, double-quoted value.
MATCHER = r'\s*[a-zA-Z_]\w*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*'
MATCHERS = re.compile(rf"^{MATCHER}(?:,{MATCHER})*$")


def select(expr: str, selector: str) -> str:
    """`expr` with `selector` (label matchers, e.g. `job="gpuscope"`) on every raw gpuscope series."""
    if not selector:
        return expr

    def add(match: re.Match[str]) -> str:
        inner = (match[2] or "{}")[1:-1].strip()
        return f"{match[1]}{{{selector}{', ' + inner if inner else ''}}}"

    return _SERIES.sub(add, expr)


def rename_labels(expr: str, names: Mapping[str, str]) -> str:
    """`expr` with each label named in `names` renamed, where PromQL names a label."""
    names = {old: new for old, new in names.items() if old != new}
    if not names:
        return expr

    def label_list(match: re.Match[str]) -> str:
        labels = ", ".join(names.get(label.strip(), label.strip()) for label in match[3].split(",") if label.strip())
        return f"{match[1]}{match[2]}({labels})"

    def matchers(match: re.Match[str]) -> str:
        return "{" + _MATCHER_NAME.sub(lambda m: names.get(m[1], m[1]), match[1]) + "}"

    expr = _GROUPING.sub(label_list, expr)
    expr = _BRACES.sub(matchers, expr)
    return _LABEL_VALUES.sub(lambda m: m[1] + names.get(m[2], m[2]) + m[3], expr)


def localize_template(text: str, names: Mapping[str, str]) -> str:
    """An annotation or legend with its label references renamed: `$labels.x` and `{{x}}`."""
    for old, new in names.items():
        text = re.sub(rf"\$labels\.{old}\b", f"$labels.{new}", text)
        text = re.sub(rf"\{{\{{\s*{old}\s*\}}\}}", f"{{{{{new}}}}}", text)
    return text


def localize(expr: str, selector: str, names: Mapping[str, str]) -> str:
    """The expression for a user's selector and label names (see the module docstring). Labels are
    renamed first: the selector is already written in the user's labels."""
    return select(rename_labels(expr, names), selector)
