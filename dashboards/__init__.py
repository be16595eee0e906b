"""gpuscope's Grafana dashboards as code (grafanalib), from the fleet down to one GPU."""
