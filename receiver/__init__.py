"""From alert to action: `gpuscope remediate`, the Alertmanager webhook receiver that takes bad nodes
out of the scheduler (Slurm drain, Kubernetes cordon and taint) and puts them back, within rails.

policy.py reads the policy file, engine.py decides (and writes the audit log and state),
schedulers.py acts, server.py receives the webhooks. Actions see alerts (labels), never raw metrics;
resuming a node asks its exporter through the judgement of `gpuscope check` (exporter/check.py).
"""
