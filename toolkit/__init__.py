"""The small pieces both gpuscope servers use, owned by neither product: the HTTP edge with TLS and
basic auth from an exporter-toolkit web config, logging, configuration files and durations. Like
Prometheus's exporter-toolkit, it knows nothing of what is served."""
