"""The `gpuscope` command: one console script above the products it runs (the node agent, the
simulator, the rules and dashboards, the remediation receiver), none of which imports it."""
