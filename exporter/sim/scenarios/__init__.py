"""Built-in fault scenarios for simulated clusters, one YAML file each; users write their own alike."""
