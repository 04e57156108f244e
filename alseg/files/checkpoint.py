"""Model checkpoints: the one reader and writer, and the one safe ``torch.load``.

alseg's own checkpoint is a pair of files:

- ``checkpoint.pth``: ``torch.save`` of a plain dict ``{"format": "alseg.checkpoint", "format_version": 1,
  "state_dict": {name: tensor}}`` (CPU tensors, str and int only), so ``torch.load(weights_only=True)``
  reads it with no allowlist at all;
- ``checkpoint.json`` beside it (format ``alseg.checkpoint``): alseg version, iteration, ``dataset_meta``
  (class names, palette), ``model_config_sha256`` and the sha256 of the ``.pth`` it describes.

Every checkpoint alseg reads, its own or anyone else's, goes through :func:`load_weights_only`:
``torch.load(weights_only=True)``; nothing is ever unpickled on the word of a file on disk (a manifest,
a sidecar, a file name). Files from elsewhere are read with a small allowlist that covers what mmengine
runner checkpoints hold besides tensors (older alseg run dirs, the mmseg model zoo): numpy arrays, dtypes
and scalars, and mmengine's ``HistoryBuffer`` log records, which load as inert :class:`DroppedObject`
stand-ins (their ``getattr`` references resolve to ``None``, never to a real attribute). Anything else
is refused with one line naming the global it needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from alseg.errors import InputError
from alseg.files.atomic import atomic_path, write_text_atomic

CHECKPOINT_FORMAT = "alseg.checkpoint"
CHECKPOINT_VERSION = 1

RESAVE_HINT = ("if you trust the file, re-save its weights as a plain state dict "
               "(torch.save({'state_dict': model.state_dict()}, 'weights.pth')) and use that")


@dataclass
class Checkpoint:
    """What a checkpoint holds for alseg: weights, and the dataset it was trained on when known.

    ``kind``: ``"alseg"`` (written by :func:`write_checkpoint`), ``"mmengine"`` (a runner checkpoint:
    older alseg run dirs, the mmseg model zoo) or ``"state_dict"`` (a bare ``{name: tensor}``).
    """

    path: Path
    kind: str
    state_dict: dict[str, Any]
    dataset_meta: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the sidecar (alseg) or the runner's meta (mmengine)


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON beside a checkpoint: ``checkpoint.pth`` -> ``checkpoint.json``."""
    return Path(path).with_suffix(".json")


# ------------------------------------------------------------------------------------------ allowlist


class DroppedObject:
    """Stands in for an mmengine bookkeeping object (``HistoryBuffer``) while loading: holds the data
    unpickling sets on it and has no behaviour. alseg never uses these records."""


def _dropped_getattr(obj: Any, name: str) -> None:
    """Stands in for ``builtins.getattr``, which a pickled ``HistoryBuffer`` uses to name its statistics
    methods; a real ``getattr`` would let a file reach any attribute, so this returns ``None``."""
    return None


def _allowlist() -> list[tuple[Any, str]]:
    """``(object, "module.name")`` pairs for ``torch.serialization.safe_globals``: numpy arrays, dtypes and
    scalars (under both numpy 1.x ``numpy.core`` and 2.x ``numpy._core`` names) and the inert mmengine stand-ins."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    pairs: list[tuple[Any, str]] = [
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        (DroppedObject, "mmengine.logging.history_buffer.HistoryBuffer"),
        (_dropped_getattr, "builtins.getattr"),
    ]
    # unpickling a dtype ends in BUILD on an instance of its class (numpy.dtypes.Float64DType, ...)
    for code in np.typecodes["All"]:
        cls = type(np.dtype(code))
        pairs.append((cls, f"numpy.dtypes.{cls.__name__}"))
    for core in ("numpy.core", "numpy._core"):
        pairs += [(multiarray._reconstruct, f"{core}.multiarray._reconstruct"),
                  (multiarray.scalar, f"{core}.multiarray.scalar")]
    return pairs


_FORCE, _FORCE_NO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def allow_runner_checkpoints() -> Iterator[None]:
    """While open, every ``torch.load`` is ``weights_only`` (mmengine's own calls too, which do not pass
    the argument and so would follow ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``) and also accepts the numpy
    objects and mmengine log records of runner checkpoints; see the module docstring."""
    import torch

    saved = {key: os.environ.get(key) for key in (_FORCE, _FORCE_NO)}
    os.environ.pop(_FORCE_NO, None)  # torch refuses both set at once
    os.environ[_FORCE] = "1"
    try:
        with torch.serialization.safe_globals(_allowlist()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refusal(path: str | os.PathLike, exc: Exception) -> InputError:
    """One line for a file ``torch.load(weights_only=True)`` would not read: the global it needs, else torch's reason."""
    text = str(exc)
    found = re.search(r"GLOBAL (\S+) was not an allowed global", text) or re.search(r"unsupported GLOBAL (\S+)", text)
    name = found.group(1) if found else None
    if name is None:
        import torch

        allowed = {n for _, n in _allowlist()}
        try:
            names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path) if n not in allowed]
        except Exception:  # not a zip checkpoint: no list to read
            names = []
        name = names[0] if names else None
    if name:
        why = f"it needs the Python global {name}, which is not plain weights"
    else:
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        why = f"torch.load(weights_only=True) cannot read it ({reason.group(1).strip() if reason else type(exc).__name__})"
    return InputError(f"{path}: refused to load: {why}; alseg reads checkpoints with torch.load(weights_only=True) "
                      f"only; {RESAVE_HINT}")


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the runner-checkpoint allowlist; one-line errors.

    The only way alseg reads a checkpoint. Raises :class:`InputError` when the file is missing, is not a
    torch file, or needs any other Python global (the message names it).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        with allow_runner_checkpoints(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols and storages
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refusal(path, exc) from None
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {first})") from None


# ----------------------------------------------------------------------------------------- read/write


def _plain(obj: Any) -> Any:
    """numpy and tuples to JSON types (palettes and class names in mmengine metadata)."""
    import numpy as np

    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return None  # a DroppedObject or anything else that is not data


def write_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, Any],
    *,
    dataset_meta: Mapping[str, Any] | None = None,
    iteration: int | None = None,
    model_config_sha256: str | None = None,
) -> Path:
    """Write ``state_dict`` ({name: tensor}) to ``path`` and its sidecar JSON, each atomically; returns ``path``."""
    import torch

    from alseg import __version__
    from alseg.files.hdf5 import sha256_file

    path = Path(path)
    tensors = {}
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
        tensors[str(name)] = value.detach().cpu()
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "state_dict": tensors}, tmp)
    doc = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "alseg_version": __version__,
        "torch_version": torch.__version__,
        "weights": path.name,
        "weights_sha256": sha256_file(path),
        "iteration": iteration,
        "model_config_sha256": model_config_sha256,
        "dataset_meta": _plain(dict(dataset_meta)) if dataset_meta else None,
    }
    write_text_atomic(sidecar_path(path), json.dumps(doc, indent=2) + "\n")
    return path


def _read_sidecar(path: Path) -> dict[str, Any]:
    from alseg.files.hdf5 import sha256_file
    from alseg.files.jsonfile import read_versioned_json

    side = sidecar_path(path)
    if not side.is_file():
        return {}
    doc = read_versioned_json(side, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    if doc.get("weights_sha256") and doc["weights_sha256"] != sha256_file(path):
        raise InputError(f"{side}: describes another {path.name} (sha256 differs); copy the .pth and .json "
                         "together, or delete the stale .json")
    return doc


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Checkpoint:
    """Read any supported checkpoint through :func:`load_weights_only`.

    alseg's own (``format: alseg.checkpoint``; ``dataset_meta`` from the sidecar, when present), an mmengine
    runner checkpoint (``state_dict`` plus ``meta.dataset_meta``, or mmseg 0.x ``meta.CLASSES``/``PALETTE``),
    or a bare ``{name: tensor}``. Raises :class:`InputError` for anything else.
    """
    import torch

    path = Path(path)
    obj = load_weights_only(path, map_location)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, not a dict of weights)")
    if obj.get("format") == CHECKPOINT_FORMAT:
        got = int(obj.get("format_version", -1))
        if got > CHECKPOINT_VERSION:
            raise InputError(f"{path}: written by a newer alseg (format_version {got} > {CHECKPOINT_VERSION}); "
                             "upgrade alseg")
        info = _read_sidecar(path)
        return Checkpoint(path, "alseg", dict(obj["state_dict"]), info.get("dataset_meta") or None, info)
    if isinstance(obj.get("state_dict"), Mapping):
        meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
        dataset_meta = meta.get("dataset_meta")
        if not dataset_meta and meta.get("CLASSES"):  # mmseg 0.x model zoo
            dataset_meta = {"classes": meta["CLASSES"], "palette": meta.get("PALETTE")}
        return Checkpoint(path, "mmengine", dict(obj["state_dict"]), _plain(dataset_meta) if dataset_meta else None,
                          _plain(meta))
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(path, "state_dict", dict(obj))
    raise InputError(f"{path}: not a checkpoint (no 'state_dict' and not a dict of tensors)")
