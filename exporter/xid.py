"""How gpuscope classes NVIDIA's XIDs: the alert rules' defaults and `gpuscope check` read these.

From NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors): CRITICAL needs
the node drained and the GPU reset or serviced (79 fallen off the bus, 48/63-64 ECC, 119/120 GSP,
...); WARNING degrades a job but the GPU may recover; APPLICATION is the job's own fault.
"""

CRITICAL: tuple[int, ...] = (46, 48, 62, 64, 74, 79, 95, 109, 119, 120, 136, 140, 143, 154, 158)
WARNING: tuple[int, ...] = (32, 92, 94)
APPLICATION: tuple[int, ...] = (13, 31, 43, 45, 63)
