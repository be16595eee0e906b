"""A simulated node's kernel log, in /dev/kmsg's record format, and the boot time it counts from.

The node "booted" BOOT_AGE seconds before it started (`<root>/proc/stat` says when), and its log
holds what a healthy node's does hours later: driver noise (the NVSwitch device opens, network
interfaces coming up, all from leptonai/gpud's kmsg capture), a few hours-old XID warnings and a
non-fatal SXID, and a line a user wrote into /dev/kmsg that looks like an XID (facility 1, not the
kernel's). Faults append records now: an XID line, the multi-line "fallen off the bus" message
newer drivers print instead of XID 79, an SXID.
"""

from __future__ import annotations

import os
import time

BOOT_AGE = 6 * 3600.0
KERNEL_INFO, KERNEL_WARNING, USER_NOTICE = 6, 4, 13  # PRIO = facility * 8 + level
NOISE = (  # (seconds after boot, message)
    (206.764307, "nvidia-nvswitch2: open (major=510)"),
    (206.764317, "nvidia-nvswitch3: open (major=510)"),
    (227.986636, "IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes ready"),
    (251.895583, "Initializing XFRM netlink socket"),
    (3600.0, "NVRM: Xid (PCI:0000:75:00): 13, pid=8812, name=python, Graphics SM Warp Exception on (GPC 2, TPC 1)"),
    (7200.0, "NVRM: Xid (PCI:0000:86:00): 94, pid=9113, name=python, Contained: CE User Channel (0x2)"),
    (9000.0, "nvidia-nvswitch1: SXid (PCI:0000:06:00.0): 12028, Non-fatal, Link 32 egress non-posted PRIV error"),
    (10800.0, "nvidia-peermem nv_get_p2p_free_callback:127 ERROR detected invalid context"),
)
USER_FAKE_XID = "NVRM: Xid (PCI:0000:53:00): 79, pid=1, name=echo, written by a user, not the kernel"


class KernelLog:
    """Appends records to `<root>/kmsg`, timestamped from the node's boot (`<root>/proc/stat`)."""

    def __init__(self, root: str, clock=time.time) -> None:
        self.path = os.path.join(root, "kmsg")
        self.procfs = os.path.join(root, "proc")
        self._clock = clock
        self._sequence = 0
        os.makedirs(self.procfs, exist_ok=True)
        if not os.path.exists(os.path.join(self.procfs, "stat")):  # a restarted exporter keeps its node's boot
            with open(os.path.join(self.procfs, "stat"), "w", encoding="ascii") as handle:
                handle.write(f"btime {int(clock() - BOOT_AGE)}\n")
        self.boot_time = self._read_boot_time()
        if not os.path.exists(self.path):
            for offset, message in NOISE:
                self._append(message, offset, KERNEL_WARNING if "Xid" in message else KERNEL_INFO)
            self._append(USER_FAKE_XID, clock() - self.boot_time - 60, USER_NOTICE)

    def xid(self, pci: str, xid: int) -> None:
        """An XID now; 79 as the multi-line "fallen off the bus" message of newer drivers."""
        now = self._clock() - self.boot_time
        if xid == 79:
            for line in (f"NVRM: The NVIDIA GPU {pci}.0", "NVRM: (PCI ID: 10de:2330) installed in this system has",
                         "NVRM: fallen off the bus and is not responding to commands."):
                self._append(line, now, KERNEL_WARNING)
            return
        self._append(f"NVRM: Xid (PCI:{pci}): {xid}, pid=4242, name=python, simulated", now, KERNEL_WARNING)

    def sxid(self, switch: int, sxid: int, fatal: bool) -> None:
        severity = "Fatal" if fatal else "Non-fatal"
        self._append(f"nvidia-nvswitch{switch}: SXid (PCI:0000:{5 + switch:02x}:00.0): {sxid}, {severity}, "
                     f"Link 12 simulated", self._clock() - self.boot_time, KERNEL_WARNING)

    def _append(self, message: str, seconds_after_boot: float, prio: int) -> None:
        self._sequence += 1
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{prio},{self._sequence},{int(seconds_after_boot * 1e6)},-;{message}\n")

    def _read_boot_time(self) -> float:
        with open(os.path.join(self.procfs, "stat"), encoding="ascii") as handle:
            return float(handle.read().split()[1])
