"""The remediation receiver's own alerts."""

from __future__ import annotations

from alerts.records import counter_rise
from alerts.rules.base import Alert, Group
from alerts.settings import Settings
from exporter import catalog as c


def remediation_alerts(s: Settings) -> Group:
    """The receiver's rails at work: every refusal is something a person should look at (a storm held
    back, a node that failed its check after its alert resolved, a scheduler that said no). Every
    decision series starts at 0 in the receiver, so the first refusal is an increase."""
    refused = f'{c.REMEDIATION_DECISIONS.name}{{outcome="refused"}}'
    return Group("gpuscope-remediation", (
        Alert("GpuscopeRemediationRefused", f"sum by (instance, action, reason) {counter_rise(refused, '15m')} > 0",
              "0m", "warning", "The remediation receiver refused to act",
              "gpuscope remediate on {{ $labels.instance }} refused to {{ $labels.action }} "
              "{{ $value | humanize }} times in 15 minutes ({{ $labels.reason }}): its audit log says which nodes "
              "and why."),
        Alert("GpuscopeRemediationDown", f"up{{{s.remediation_selector}}} == 0", s.exporter_down_for, "warning",
              "The remediation receiver does not answer",
              "Prometheus cannot scrape gpuscope remediate at {{ $labels.instance }}: alerts that should drain a "
              "node are not acted on (they still page)."),
    ), s.remediation_selector)
