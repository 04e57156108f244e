"""The mmsegmentation glue, in one place: configs, models, test-time data and feature hooks.

Everything here imports mm* lazily (inside functions) after :func:`alseg.compat.ensure`, so importing
this module is cheap. ``train`` and ``infer`` are the only callers.

Feature taps (forward hooks, recorded in the pool file's embedding attrs):

- ``bottleneck``: the backbone's output with the lowest spatial resolution (ties: the last one), i.e.
  the last stage of a ResNet/MiT encoder or the deepest encoder block of a UNet, global-average-pooled.
- ``penultimate``: the input of ``decode_head.conv_seg`` (the feature just before the final 1x1
  classifier; every mmseg ``BaseDecodeHead`` ends in ``cls_seg`` = dropout then ``conv_seg``), pooled.
- ``badge``: the BADGE last-layer embedding from that same per-pixel feature and ``conv_seg``'s output
  (docs/algorithms.md section 8), computed per batch; nothing per-pixel outlives the batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from alseg.errors import InputError, UnknownName

EMBEDDINGS = ("bottleneck", "penultimate", "badge")
CHECKPOINT_NAME = "checkpoint.pth"
METRICS_NAME = "metrics.json"


# --------------------------------------------------------------------------------------------- config


def parse_cfg_options(items: Iterable[str]) -> dict[str, Any]:
    """mmseg's ``--cfg-options`` syntax, parsed by mmengine's own ``DictAction``: ``["a.b=1", "c=[1,2]",
    "d=(3,4)", "e=x"]`` -> ``{"a.b": 1, "c": [1, 2], "d": (3, 4), "e": "x"}``."""
    from mmengine.config import DictAction

    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--cfg-options entry {item!r} is not KEY=VALUE")
        try:
            options[key.strip()] = DictAction._parse_iterable(text)
        except Exception as exc:  # unbalanced brackets and the like
            raise InputError(f"--cfg-options entry {item!r}: cannot parse the value ({exc})") from None
    return options


def configs_root() -> Path:
    """The folder of the configs shipped with alseg (package data ``alseg.configs``)."""
    from importlib.resources import files

    return Path(str(files("alseg.configs")))


def shipped_configs() -> list[tuple[str, Path, str]]:
    """``(name, path, first comment line)`` of every shipped config, ``_base_`` excluded, sorted by name."""
    root = configs_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.name == "__init__.py" or "_base_" in rel.parts or "__pycache__" in rel.parts:
            continue
        first = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                first = line.lstrip("# ").strip()
                break
        out.append((rel.with_suffix("").as_posix(), path, first))
    return out


def find_config(name: str | os.PathLike) -> Path:
    """A config path: ``name`` itself when it is a file; ``mmseg::unet/unet-s5-d16_fcn_4xb4-40k_drive-64x64``
    for a config shipped with mmsegmentation; else the config of that name shipped with alseg
    (``demo_unet_tiny``, ``cityscapes/deeplabv3_r18_d8``, with or without ``.py``)."""
    text = str(name)
    if text.startswith("mmseg::"):  # a config that ships with mmsegmentation, as mmengine's _base_ names them
        from mmengine.utils import get_installed_path

        path = Path(get_installed_path("mmsegmentation")) / ".mim" / "configs" / text[len("mmseg::"):]
        if not path.suffix:
            path = path.with_suffix(".py")
        if not path.is_file():
            raise InputError(f"{name}: not a config of the installed mmsegmentation ({path} does not exist)")
        return path
    path = Path(name)
    if path.is_file():
        return path
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a config file")
    root = configs_root()
    text = str(name).removesuffix(".py")
    candidates = [root / f"{text}.py"] + [p for n, p, _ in shipped_configs() if Path(n).name == text]
    for candidate in candidates:
        if candidate.is_file() and "_base_" not in candidate.relative_to(root).parts:
            return candidate
    raise InputError(f"{name}: no such config file, and no shipped config of that name (`alseg configs` lists them)")


def _init_mm() -> None:
    from alseg.compat import import_mmseg

    import_mmseg()
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")


def load_config(
    config_path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    max_iters: int | None = None,
    val_interval: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    cfg_options: Mapping[str, Any] | None = None,
):
    """Read an mmseg config (a path, or the name of a shipped config) and apply alseg's overrides;
    returns an ``mmengine.Config``.

    ``cfg_options`` (dotted keys, as mmseg's ``--cfg-options``) are applied first, then the explicit
    arguments, which win. ``data_root`` reaches every leaf dataset, wrappers included. Which ids a stage
    uses is decided by :mod:`alseg.dataset`, not here.
    """
    _init_mm()
    from mmengine.config import Config

    from alseg.dataset import set_data_root

    config_path = find_config(config_path)
    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as exc:  # mmengine raises many types for a broken config
        raise InputError(f"{config_path}: cannot read config ({type(exc).__name__}: {exc})") from None
    if cfg_options:
        try:
            cfg.merge_from_dict(dict(cfg_options))
        except Exception as exc:
            raise InputError(f"--cfg-options: cannot apply to {config_path} ({type(exc).__name__}: {exc})") from None
    loaders = [k for k in ("train_dataloader", "val_dataloader", "test_dataloader") if cfg.get(k)]
    if data_root is not None:
        cfg.data_root = str(data_root)
        for key in loaders:
            set_data_root(cfg[key].dataset, str(data_root))
    if batch_size is not None:
        cfg.train_dataloader.batch_size = int(batch_size)
    if (max_iters is not None or val_interval is not None) and not cfg.get("train_cfg"):
        raise InputError(f"{config_path}: the config has no train_cfg (add a schedule, e.g. mmseg's "
                         "_base_/schedules/schedule_20k.py)")
    if max_iters is not None:
        old = cfg.train_cfg.get("max_iters")
        cfg.train_cfg.max_iters = int(max_iters)
        # schedulers written for the config's own length follow the new length
        for sched in cfg.get("param_scheduler") or []:
            end = sched.get("end")
            if end is not None and (end == old or end > max_iters):
                sched["end"] = int(max_iters)
    if val_interval is not None:
        cfg.train_cfg.val_interval = int(val_interval)
    if cfg.get("train_cfg") and cfg.train_cfg.get("max_iters"):
        cfg.train_cfg.val_interval = min(int(cfg.train_cfg.get("val_interval", 1000)), int(cfg.train_cfg.max_iters))
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    if seed is not None:
        cfg.randomness = dict(seed=int(seed), deterministic=False)
    return cfg


def _dataset_leaf(cfg) -> Any:
    from alseg.dataset import leaf_configs

    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        loader = cfg.get(key)
        if loader and loader.get("dataset"):
            return leaf_configs(loader["dataset"])[0]
    return None


def class_names(cfg) -> list[str]:
    """Class names of the config's dataset: its ``metainfo`` override, else the dataset class's own
    ``METAINFO`` (e.g. CityscapesDataset's 19 classes), else ``class_<i>`` from the head's ``num_classes``."""
    _init_mm()
    leaf = _dataset_leaf(cfg)
    meta = (leaf or {}).get("metainfo") or {}
    if meta.get("classes"):
        return [str(c) for c in meta["classes"]]
    if leaf is not None:
        from mmseg.registry import DATASETS

        kind = leaf.get("type")
        cls = DATASETS.get(kind) if isinstance(kind, str) else kind
        classes = (getattr(cls, "METAINFO", None) or {}).get("classes")
        if classes:
            return [str(c) for c in classes]
    n = int(cfg.model.decode_head.num_classes)
    return [f"class_{i}" for i in range(n)]


def ignore_index(cfg) -> int:
    """The dataset's ignore index (mmseg's default 255)."""
    leaf = _dataset_leaf(cfg)
    value = (leaf or {}).get("ignore_index")
    return 255 if value is None else int(value)


def model_config_sha256(cfg) -> str:
    """sha256 of the resolved ``model`` section (what determines the network, not the data paths)."""
    text = json.dumps(cfg.model.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- model


def config_checkpoints(cfg) -> list[tuple[str, str]]:
    """``(key, path)`` of every checkpoint the mmengine runner would load for this config: ``load_from`` and
    every ``Pretrained`` ``init_cfg``/``pretrained`` in ``model``. URLs and other ``scheme://`` names included."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, Mapping):
            if node.get("type") in ("Pretrained", "PretrainedInit") and isinstance(node.get("checkpoint"), str):
                found.append((f"{key}.checkpoint", node["checkpoint"]))
            for k, v in node.items():
                if k == "pretrained" and isinstance(v, str):
                    found.append((f"{key}.{k}", v))
                else:
                    walk(v, f"{key}.{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    if cfg.get("load_from"):
        found.append(("load_from", str(cfg.load_from)))
    walk(cfg.get("model") or {}, "model")
    return found


def build_model(cfg, checkpoint_path: str | os.PathLike, device):
    """Build ``cfg.model``, load weights, move to ``device``, ``eval()``.

    Every checkpoint is read by :func:`alseg.files.checkpoint.read_checkpoint` (``torch.load(weights_only=True)``,
    whoever wrote it); ``dataset_meta`` (class names, palette) comes from alseg's sidecar JSON or an mmengine
    checkpoint's ``meta``.
    """
    _init_mm()
    from mmseg.registry import MODELS

    from alseg.files.checkpoint import read_checkpoint

    ckpt = read_checkpoint(checkpoint_path)  # before building: a refused file fails fast
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = None
    if model_cfg.get("backbone", {}).get("init_cfg") is not None:
        model_cfg.backbone.init_cfg = None  # the checkpoint holds every weight
    try:
        model = MODELS.build(model_cfg)
    except InputError:
        raise
    except Exception as exc:
        if exc.__class__.__name__ == "CompiledOpsRequired":
            raise
        raise InputError(f"cannot build the model of the config ({type(exc).__name__}: {exc})") from None
    state = {k[7:] if k.startswith("module.") else k: v for k, v in ckpt.state_dict.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("auxiliary_head.")]
    if missing or result.unexpected_keys:
        what = missing[:1] or result.unexpected_keys[:1]
        raise InputError(
            f"{checkpoint_path}: does not match the config's model "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys, e.g. {what[0]!r})"
        )
    if ckpt.dataset_meta:
        model.dataset_meta = ckpt.dataset_meta
    model.to(device)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------- hooks


@dataclass
class FeatureTaps:
    """Forward hooks on ``model.backbone`` and ``model.decode_head.conv_seg``; holds one batch at a time."""

    model: Any
    bottleneck_index: int | None = None
    captured: dict[str, Any] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)

    BACKBONE = "backbone"
    CLASSIFIER = "decode_head.conv_seg"

    def __enter__(self) -> "FeatureTaps":
        def on_backbone(module, inputs, output):
            self.captured["backbone"] = list(output) if isinstance(output, (list, tuple)) else [output]

        def on_classifier(module, inputs, output):
            self.captured["feature"] = inputs[0]
            self.captured["conv_logits"] = output

        conv_seg = getattr(getattr(self.model, "decode_head", None), "conv_seg", None)
        if conv_seg is None:
            raise InputError("the model's decode head has no conv_seg classifier; cannot tap features")
        self.handles = [
            self.model.backbone.register_forward_hook(on_backbone),
            conv_seg.register_forward_hook(on_classifier),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.captured.clear()

    def choose_bottleneck(self) -> int:
        """Index of the lowest-resolution backbone output (ties: the last)."""
        outs = self.captured["backbone"]
        areas = [o.shape[-1] * o.shape[-2] if o.ndim == 4 else 0 for o in outs]
        smallest = min(areas)
        self.bottleneck_index = max(k for k, a in enumerate(areas) if a == smallest)
        return self.bottleneck_index

    def embeddings(self, names: Sequence[str]) -> dict[str, Any]:
        """This batch's requested embeddings as float32 CPU tensors (b, D)."""
        out: dict[str, Any] = {}
        if "bottleneck" in names:
            if self.bottleneck_index is None:
                self.choose_bottleneck()
            out["bottleneck"] = self.captured["backbone"][self.bottleneck_index].float().mean(dim=(2, 3)).cpu()
        if "penultimate" in names:
            out["penultimate"] = self.captured["feature"].float().mean(dim=(2, 3)).cpu()
        if "badge" in names:
            from alseg.strategies import badge_last_layer_embedding

            out["badge"] = badge_last_layer_embedding(self.captured["conv_logits"], self.captured["feature"]).float().cpu()
        return out

    def dims(self, names: Sequence[str]) -> dict[str, int]:
        dims = {}
        if "bottleneck" in names:
            if self.bottleneck_index is None:
                self.choose_bottleneck()
            dims["bottleneck"] = int(self.captured["backbone"][self.bottleneck_index].shape[1])
        if "penultimate" in names:
            dims["penultimate"] = int(self.captured["feature"].shape[1])
        if "badge" in names:
            dims["badge"] = int(self.captured["feature"].shape[1] * self.captured["conv_logits"].shape[1])
        return dims

    def attrs(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        a: dict[str, dict[str, Any]] = {}
        if "bottleneck" in names:
            a["bottleneck"] = dict(layer=f"{self.BACKBONE}[{self.bottleneck_index}]", kind="global_avg_pool")
        if "penultimate" in names:
            a["penultimate"] = dict(layer=f"{self.CLASSIFIER}:input", kind="global_avg_pool")
        if "badge" in names:
            a["badge"] = dict(
                layer=f"{self.CLASSIFIER}:input,{self.CLASSIFIER}:output",
                kind="badge_last_layer",
                shape="n_classes,feature_dim",
            )
        return a


def check_embedding_names(names: Iterable[str]) -> list[str]:
    names = [n.strip() for n in names if n and n.strip()]
    for n in names:
        if n not in EMBEDDINGS:
            raise UnknownName(f"unknown embedding {n!r}; choose from: {', '.join(EMBEDDINGS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------- training


def register_iou_metric() -> str:
    """Register ``AlsegIoUMetric``: mmseg's IoUMetric that also returns per-class IoU (``IoU.<class>``, percent)."""
    _init_mm()
    import numpy as np
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.registry import METRICS

    if "AlsegIoUMetric" in METRICS.module_dict:
        return "AlsegIoUMetric"

    class AlsegIoUMetric(IoUMetric):
        default_prefix = ""  # keys stay "mIoU", "IoU.<class>"; "" also silences mmengine's no-prefix warning

        def compute_metrics(self, results: list) -> dict:
            metrics = super().compute_metrics(results)
            cols = tuple(zip(*results))
            inter = sum(cols[0]).double().cpu().numpy() if hasattr(sum(cols[0]), "double") else np.asarray(sum(cols[0]))
            union = sum(cols[1]).double().cpu().numpy() if hasattr(sum(cols[1]), "double") else np.asarray(sum(cols[1]))
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / union
            for name, value in zip(self.dataset_meta["classes"], iou):
                metrics[f"IoU.{name}"] = float(np.round(value * 100, 2)) if np.isfinite(value) else float("nan")
            return metrics

    METRICS.register_module(name="AlsegIoUMetric", module=AlsegIoUMetric, force=True)
    return "AlsegIoUMetric"


def mm_logs_to_stderr() -> None:
    """Point mmengine's console log handlers at stderr: stdout carries alseg's result and nothing else."""
    import logging
    import sys

    from mmengine.logging import MMLogger

    from alseg.compat import MMNoticeFilter

    for logger in list(MMLogger._instance_dict.values()):
        if not any(isinstance(f, MMNoticeFilter) for f in logger.filters):
            logger.addFilter(MMNoticeFilter())
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.__stdout__):
                handler.setStream(sys.stderr)


def make_train_hooks(progress: Callable[..., None], total: int):
    """``(progress_hook, metrics_hook)``: mmengine hooks that report iterations and record val metrics.

    After each iteration the progress hook calls ``progress(1, None)``; when ``progress`` takes keyword
    arguments (``**info``) it also gets ``loss=`` the iteration's total training loss (mmengine hands the
    parsed losses to ``after_train_iter`` as ``outputs``), so a two-argument hook keeps working.
    """
    _init_mm()
    import inspect

    from mmengine.hooks import Hook

    try:
        takes_info = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(progress).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: no signature to read
        takes_info = False

    class AlsegProgressHook(Hook):
        priority = "LOWEST"

        def before_train(self, runner) -> None:
            progress(0, total)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            loss = outputs.get("loss") if takes_info and isinstance(outputs, Mapping) else None
            if loss is None:
                progress(1, None)
            else:
                progress(1, None, loss=float(loss.item() if hasattr(loss, "item") else loss))

    class AlsegMetricsHook(Hook):
        priority = "LOWEST"

        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.history.append({"iteration": int(runner.iter), "metrics": dict(metrics or {})})

    return AlsegProgressHook(), AlsegMetricsHook()
