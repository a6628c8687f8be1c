"""Describe the machine a run is for, without importing torch.

A config's `hardware` mapping (or the CLI flags of the same names) wins; absent,
the local machine is probed with `nvidia-smi` (GPU name, memory, compute
capability) and /proc/meminfo.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess


@functools.lru_cache(maxsize=1)
def local_hardware() -> dict:
    info = {"gpu_memory_gb": None, "num_gpus": 0, "bf16_supported": False, "gpu_name": None,
            "ram_gb": _ram_gb(), "cpu_count": os.cpu_count(), "source": "local"}
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
            if rows:
                info.update(num_gpus=len(rows), gpu_name=rows[0][0], gpu_memory_gb=round(float(rows[0][1]) / 1024, 1),
                            bf16_supported=float(rows[0][2]) >= 8.0)  # bf16 needs Ampere (8.0) or newer
        except (OSError, ValueError, subprocess.SubprocessError, IndexError):
            pass
    return info


def _ram_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def resolve_hardware(config_hw: dict | None) -> dict:
    """The config's description over the local one; a GPU count of 0 means CPU."""
    hw = dict(local_hardware())
    if config_hw:
        hw.update({k: v for k, v in config_hw.items() if v is not None or k == "gpu_memory_gb"})
        hw["source"] = "config"
        if hw.get("gpu_memory_gb") and not hw.get("num_gpus"):
            hw["num_gpus"] = 1
        if "bf16_supported" not in config_hw:
            hw["bf16_supported"] = bool(hw.get("gpu_memory_gb"))  # stated GPUs are assumed modern unless told
    return hw
