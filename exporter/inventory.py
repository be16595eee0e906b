"""What each GPU instance type should have: GPUs, EFA devices, NVLinks per GPU, NVSwitches.

Rules compare what a node shows with this, so a node that boots with 7 of its 8 GPUs, or 31 of
its 32 EFA devices, pages from its first scrape without any history. A type not listed here has no
expectations and never pages on them. Each figure cites its public source.

Sources:
- [ec2] AWS, "Amazon EC2 instance type specifications, accelerated computing",
  https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html (GPUs, EFA network cards).
- [efa] AWS EC2 User Guide, "Maximize network bandwidth on Amazon EC2 instances with multiple
  network cards", https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html
  (a p5.48xlarge request with 32 EFA devices).
- [a100] NVIDIA A100 Tensor Core GPU datasheet: third-generation NVLink, 12 links per GPU; HGX A100
  8-GPU baseboard: six NVSwitches.
- [h100] NVIDIA H100 Tensor Core GPU datasheet (SXM5): fourth-generation NVLink, 18 links per GPU;
  HGX H100/H200 8-GPU baseboard: four third-generation NVSwitches.
- [b200] NVIDIA HGX B200 datasheet: fifth-generation NVLink, 18 links per GPU; two NVLink switch chips.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Inventory:
    gpus: int
    efa_devices: int
    nvlinks_per_gpu: int
    nvswitches: int


INVENTORY: dict[str, Inventory] = {
    "p4d.24xlarge": Inventory(gpus=8, efa_devices=4, nvlinks_per_gpu=12, nvswitches=6),  # [ec2] [a100]
    "p4de.24xlarge": Inventory(gpus=8, efa_devices=4, nvlinks_per_gpu=12, nvswitches=6),  # [ec2] [a100]
    "p5.48xlarge": Inventory(gpus=8, efa_devices=32, nvlinks_per_gpu=18, nvswitches=4),  # [ec2] [efa] [h100]
    "p5e.48xlarge": Inventory(gpus=8, efa_devices=32, nvlinks_per_gpu=18, nvswitches=4),  # [ec2] [h100]
    "p5en.48xlarge": Inventory(gpus=8, efa_devices=16, nvlinks_per_gpu=18, nvswitches=4),  # [ec2] [h100]
    "p6-b200.48xlarge": Inventory(gpus=8, efa_devices=8, nvlinks_per_gpu=18, nvswitches=2),  # [ec2] [b200]
}
COMPONENTS = ("gpus", "efa_devices", "nvlinks_per_gpu", "nvswitches")
