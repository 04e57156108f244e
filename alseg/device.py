"""Choosing the compute device: cuda > mps > cpu by default, ``--device`` overrides it everywhere."""

from __future__ import annotations

from alseg.errors import DeviceError

DEVICE_HELP = "Compute device: auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps."


def default_device_name() -> str:
    """The device alseg uses when none is asked for."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str | None = "auto"):
    """Return a usable ``torch.device`` for ``name`` or raise :class:`DeviceError` saying why not."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        name = default_device_name()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise DeviceError(f"device {name!r} is not usable: {why}; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} is not usable: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {name!r} is not usable: Apple MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise DeviceError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return device
