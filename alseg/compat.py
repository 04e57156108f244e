"""The mm* compatibility layer. Import this (``alseg.compat.ensure()``) before any mmseg import.

It does two things (checkpoint loading lives in :mod:`alseg.files.checkpoint`):

1. With mmcv-lite (no compiled ``mmcv._ext``), ``import mmseg.models`` fails because mmseg imports
   ``mmcv.ops`` at module level. We register a stand-in ``mmcv.ops`` package that loads the pure-PyTorch
   ops (``point_sample`` and friends) from mmcv-lite's own source files, and answers every other name with
   a placeholder that raises :class:`~alseg.errors.CompiledOpsRequired` when used, naming the op and the
   fix. When the compiled mmcv is installed nothing is touched.
2. Warning noise from mm* at import time is filtered (only ``warnings``, never errors).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

from alseg.errors import CompiledOpsRequired

FULL_OPS_FIX = "install the compiled mmcv with `install/setup.sh --full-ops` (builds mmcv 2.1.0, about 10 minutes)"

# Pure-PyTorch ops in mmcv-lite's ops folder: file -> public names. They import only torch.
PURE_OPS = {
    "point_sample": ("point_sample", "bilinear_grid_sample", "rel_roi_point_to_rel_img_point"),
}

# Which model parts need which compiled op (for the error message).
OP_USERS = {
    "CrissCrossAttention": "CCHead (CCNet decode head)",
    "PSAMask": "PSAHead (PSANet decode head)",
    "DeformConv": "deformable convolutions (DCN backbones)",
    "DeformConv2d": "deformable convolutions (DCN backbones)",
    "ModulatedDeformConv2d": "modulated deformable convolutions (DCNv2 backbones)",
    "sigmoid_focal_loss": "FocalLoss",
    "SyncBatchNorm": "MMSyncBN normalisation layers",
    "MultiScaleDeformableAttention": "Mask2Former / deformable-attention pixel decoders",
}

_MM_WARNING_PATTERNS = (
    r".*MultiScaleDeformableAttention.*",
    r".*Fail to import ``MultiScaleDeformableAttention``.*",
    r".*pkg_resources is deprecated.*",
    r".*is deprecated.*",
    r".*torch.meshgrid: in an upcoming release.*",
    r".*On January 1, 2023, MMCV will release v2.0.0.*",
    r".*TypedStorage is deprecated.*",
    r".*The `clip_grad` parameter.*",
)
_MM_MODULES = r"(mmcv|mmengine|mmseg|mmdet|torch|pkg_resources|setuptools)(\..*)?"

_state = {"ensured": False, "mode": None}


def has_compiled_mmcv() -> bool:
    """True when mmcv's compiled extension is importable (full mmcv, not mmcv-lite)."""
    try:
        return importlib.util.find_spec("mmcv._ext") is not None
    except (ImportError, ValueError):
        return False


def mmcv_ops_mode() -> str:
    """'compiled' (real mmcv.ops), 'lite' (alseg's stand-in) or 'absent' (no mmcv)."""
    if importlib.util.find_spec("mmcv") is None:
        return "absent"
    return "compiled" if has_compiled_mmcv() else "lite"


def compiled_only(name: str) -> Any:
    """A placeholder for a compiled-only mmcv op: importable, but raises a clear error when used."""
    user = OP_USERS.get(name, "a model part")
    message = (
        f"mmcv.ops.{name} needs the compiled mmcv ops (used by {user}); this environment has mmcv-lite. "
        f"Fix: {FULL_OPS_FIX}, or choose a model without this part"
    )

    class Placeholder:
        __doc__ = message
        __name__ = name
        __qualname__ = name
        is_alseg_placeholder = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise CompiledOpsRequired(message)

        def __init_subclass__(cls, **kwargs: Any) -> None:  # pragma: no cover - defensive
            super().__init_subclass__(**kwargs)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never constructed
            raise CompiledOpsRequired(message)

    Placeholder.__name__ = name
    Placeholder.__qualname__ = name
    return Placeholder


class _OpsStandIn(types.ModuleType):
    """``mmcv.ops`` for mmcv-lite: pure ops are real, everything else is a placeholder."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = compiled_only(name)
        setattr(self, name, value)
        return value


def _install_ops_standin() -> None:
    import mmcv  # noqa: F401  (mmcv-lite itself imports fine)

    ops_dir = Path(mmcv.__file__).parent / "ops"
    standin = _OpsStandIn("mmcv.ops", __doc__)
    standin.__path__ = [str(ops_dir)]  # a package, so `mmcv.ops.point_sample` resolves
    standin.__file__ = str(ops_dir / "__init__.py")
    standin.is_alseg_standin = True
    sys.modules["mmcv.ops"] = standin
    mmcv.ops = standin  # type: ignore[attr-defined]
    for module_name, names in PURE_OPS.items():
        full = f"mmcv.ops.{module_name}"
        spec = importlib.util.spec_from_file_location(full, ops_dir / f"{module_name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(standin, module_name, module)
        for name in names:
            setattr(standin, name, getattr(module, name))


def quiet_mm_warnings() -> None:
    """Filter the warnings mm* emits at import time and in its runner. Errors are never filtered."""
    for pattern in _MM_WARNING_PATTERNS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=_MM_MODULES)
    warnings.filterwarnings("ignore", category=FutureWarning, module=_MM_MODULES)
    # mm*'s own notices (deprecations, "draw is False", reduce_zero_label, build_loss) are UserWarnings
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(mmcv|mmengine|mmseg)(\..*)?")


class MMNoticeFilter:
    """A logging filter for mmengine's loggers: drops its deprecation/alias notices (WARNING level only)."""

    NOTICES = ("will be deprecated", "is the alias of", "is deprecated")

    def filter(self, record) -> bool:
        if record.levelno > 30:  # ERROR and above always pass
            return True
        message = record.getMessage()
        return not any(notice in message for notice in self.NOTICES)


def ensure() -> str:
    """Make ``import mmseg.models`` work here. Idempotent; returns the mmcv ops mode.

    Call before importing mmseg. With compiled mmcv present nothing is replaced.
    """
    if _state["ensured"]:
        return _state["mode"]
    quiet_mm_warnings()
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    # OpenCV (mmcv's image decoder) logs a WARN line for a truncated PNG before the error that alseg
    # reports as one line; read before cv2 is first imported.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    mode = mmcv_ops_mode()
    if mode == "lite" and not getattr(sys.modules.get("mmcv.ops"), "is_alseg_standin", False):
        _install_ops_standin()
    _state.update(ensured=True, mode=mode)
    return mode


def import_mmseg() -> types.ModuleType:
    """``ensure()`` then import mmseg with its models and datasets registered; returns ``mmseg``."""
    ensure()
    with warnings.catch_warnings():
        quiet_mm_warnings()
        import mmseg
        import mmseg.datasets  # noqa: F401  registers datasets and transforms
        import mmseg.models  # noqa: F401  registers models
        from mmseg.utils import register_all_modules

        register_all_modules(init_default_scope=False)
    return mmseg
