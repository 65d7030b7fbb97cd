"""Which device a model runs on: the names a user may give, and whether this machine has that device.

A bad name (``gpu``) or a device the machine lacks (``cuda`` without a GPU) would otherwise surface as a
torch traceback when the first model moves; here it is a UserError that lists what is available.
"""

from __future__ import annotations

import re

from sftlab.errors import UserError

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda, cuda:N (the N-th GPU), or mps"


def available_devices() -> list[str]:
    """The devices this process can use: ``cpu``, then ``cuda:0`` .. ``cuda:N-1``, then ``mps`` if present."""
    import torch  # here, so that the config schema can use this module's names without loading torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device_name(name: str) -> str:
    """``name`` when it is a device name sftlab accepts; a ValueError naming the accepted forms otherwise."""
    if not re.match(DEVICE_PATTERN, name):
        raise ValueError(f"{name!r} is not a device name; use {DEVICE_HELP}")
    return name


def resolve_device(name: str, what: str = "device") -> str:
    """``name`` checked against :data:`DEVICE_PATTERN` and this machine; ``auto`` becomes cuda or cpu.

    ``what`` names the setting in the message (``device`` in a config, ``--device`` on the command line).
    """
    try:
        check_device_name(name)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    available = available_devices()
    wanted = "cuda:0" if name == "cuda" else name
    if wanted not in available:
        raise UserError(f"{what}: {name} is not available on this machine; available: {', '.join(available)} "
                        f"(or auto)")
    return name
