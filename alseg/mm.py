"""The mmsegmentation glue, in one place: configs, models, test-time data and feature hooks.

Everything here imports mm* lazily (inside functions) after :func:`alseg.compat.ensure`, so importing
this module is cheap. ``train`` and ``infer`` are the only callers.

Feature taps (forward hooks, recorded in the pool file's embedding attrs):

- ``bottleneck``: the backbone's output with the lowest spatial resolution (ties: the last one), i.e.
  the last stage of a ResNet/MiT encoder or the deepest encoder block of a UNet, global-average-pooled.
- ``penultimate``: the input of ``decode_head.conv_seg`` (the feature just before the final 1x1
  classifier; every mmseg ``BaseDecodeHead`` ends in ``cls_seg`` = dropout then ``conv_seg``), pooled.
- ``badge``: the BADGE last-layer embedding from that same per-pixel feature and ``conv_seg``'s output
  (ALGORITHMS.md section 8), computed per batch; nothing per-pixel outlives the batch.
"""

from __future__ import annotations

import ast
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
    """``["a.b=1", "c=[1,2]", "d=x"]`` -> ``{"a.b": 1, "c": [1, 2], "d": "x"}`` (Python literals, else text)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--cfg-options entry {item!r} is not KEY=VALUE")
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)
        options[key.strip()] = value
    return options


def _init_mm() -> None:
    from alseg.compat import import_mmseg

    import_mmseg()
    from mmengine.registry import init_default_scope

    init_default_scope("mmseg")


def load_config(
    config_path: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    train_ids_path: str | os.PathLike | None = None,
    val_ids_path: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    max_iters: int | None = None,
    val_interval: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    cfg_options: Mapping[str, Any] | None = None,
):
    """Read an mmseg config and apply alseg's overrides; returns an ``mmengine.Config``.

    ``cfg_options`` (dotted keys, as mmseg's ``--cfg-options``) are applied first, then the explicit
    arguments, which win. Id-list paths become the datasets' ``ann_file`` (absolute paths).
    """
    _init_mm()
    from mmengine.config import Config

    config_path = Path(config_path)
    if not config_path.is_file():
        raise InputError(f"{config_path}: config not found")
    try:
        cfg = Config.fromfile(str(config_path))
    except Exception as exc:  # mmengine raises many types for a broken config
        raise InputError(f"{config_path}: cannot read config ({type(exc).__name__}: {exc})") from None
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    loaders = [k for k in ("train_dataloader", "val_dataloader", "test_dataloader") if cfg.get(k)]
    if data_root is not None:
        cfg.data_root = str(data_root)
        for key in loaders:
            cfg[key].dataset.data_root = str(data_root)
    if train_ids_path is not None:
        cfg.train_dataloader.dataset.ann_file = str(Path(train_ids_path).resolve())
    if val_ids_path is not None:
        for key in ("val_dataloader", "test_dataloader"):
            if cfg.get(key):
                cfg[key].dataset.ann_file = str(Path(val_ids_path).resolve())
    if batch_size is not None:
        cfg.train_dataloader.batch_size = int(batch_size)
    if max_iters is not None:
        old = cfg.train_cfg.get("max_iters")
        cfg.train_cfg.max_iters = int(max_iters)
        # schedulers written for the config's own length follow the new length
        for sched in cfg.get("param_scheduler") or []:
            if old is not None and sched.get("end") == old:
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


def class_names(cfg) -> list[str]:
    """Class names from the config's dataset metainfo (``num_classes`` of the head must match)."""
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        loader = cfg.get(key)
        meta = (loader or {}).get("dataset", {}).get("metainfo") if loader else None
        if meta and meta.get("classes"):
            return [str(c) for c in meta["classes"]]
    n = int(cfg.model.decode_head.num_classes)
    return [f"class_{i}" for i in range(n)]


def ignore_index(cfg) -> int:
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        loader = cfg.get(key)
        if loader and loader.get("dataset", {}).get("ignore_index") is not None:
            return int(loader.dataset.ignore_index)
    return 255


def model_config_sha256(cfg) -> str:
    """sha256 of the resolved ``model`` section (what determines the network, not the data paths)."""
    text = json.dumps(cfg.model.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------- data


@dataclass
class DataLayout:
    """Where images and masks of a config's dataset live: ``<img_dir>/<id><img_suffix>``."""

    img_dir: Path
    seg_dir: Path
    img_suffix: str
    seg_suffix: str
    reduce_zero_label: bool = False

    def image_path(self, image_id: str) -> Path:
        return self.img_dir / f"{image_id}{self.img_suffix}"

    def mask_path(self, image_id: str) -> Path:
        return self.seg_dir / f"{image_id}{self.seg_suffix}"

    def check(self, ids: Sequence[str], *, masks: bool, what: str = "id") -> None:
        """Raise naming the first id whose image (or mask) file is missing."""
        for i in ids:
            if not self.image_path(i).is_file():
                raise InputError(f"{what} {i!r}: image not found at {self.image_path(i)}")
            if masks and not self.mask_path(i).is_file():
                raise InputError(f"{what} {i!r}: mask not found at {self.mask_path(i)}")


def data_layout(cfg, loader_key: str = "test_dataloader") -> DataLayout:
    loader = cfg.get(loader_key) or cfg.get("val_dataloader") or cfg.train_dataloader
    ds = loader.dataset
    root = Path(ds.get("data_root") or cfg.get("data_root") or ".")
    prefix = ds.get("data_prefix") or {}
    return DataLayout(
        img_dir=root / prefix.get("img_path", ""),
        seg_dir=root / prefix.get("seg_map_path", ""),
        img_suffix=ds.get("img_suffix", ".jpg"),
        seg_suffix=ds.get("seg_map_suffix", ".png"),
        reduce_zero_label=bool(ds.get("reduce_zero_label", False)),
    )


def test_pipeline(cfg, *, with_labels: bool) -> list[dict]:
    """The config's test pipeline; ``LoadAnnotations`` only when labels are wanted."""
    loader = cfg.get("test_dataloader") or cfg.get("val_dataloader")
    steps = [dict(s) for s in (loader.dataset.pipeline if loader else cfg.test_pipeline)]
    has_ann = any(s.get("type") == "LoadAnnotations" for s in steps)
    steps = [s for s in steps if with_labels or s.get("type") != "LoadAnnotations"]
    if with_labels and not has_ann:
        at = next((k + 1 for k, s in enumerate(steps) if s.get("type") == "LoadImageFromFile"), 0)
        steps.insert(at, dict(type="LoadAnnotations"))
    return steps


def make_dataloader(cfg, ids: Sequence[str], *, with_labels: bool, batch_size: int, num_workers: int = 0):
    """A torch DataLoader over ``ids`` with the config's test pipeline; batches are mmengine dicts."""
    _init_mm()
    import torch.utils.data
    from mmengine.dataset import Compose, pseudo_collate

    layout = data_layout(cfg)
    pipeline = Compose(test_pipeline(cfg, with_labels=with_labels))
    ids = list(ids)

    class _Ids(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, k: int) -> dict:
            info = dict(
                img_path=str(layout.image_path(ids[k])),
                seg_map_path=str(layout.mask_path(ids[k])),
                reduce_zero_label=layout.reduce_zero_label,
                seg_fields=[],
                label_map=None,
            )
            return pipeline(info)

    return torch.utils.data.DataLoader(
        _Ids(), batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=pseudo_collate
    )


# ---------------------------------------------------------------------------------------------- model


def checkpoint_is_alseg(path: str | os.PathLike, sha256: str | None = None) -> bool:
    """True when the ``train`` manifest beside ``path`` lists exactly this file (by sha256) as its output."""
    from alseg.files.hdf5 import sha256_file

    path = Path(path)
    manifest = path.parent / "manifest.json"
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if doc.get("format") != "alseg.manifest" or doc.get("stage") != "train":
        return False
    digest = sha256 or sha256_file(path)
    return any(
        Path(o.get("path", "")).name == path.name and o.get("sha256") == digest for o in doc.get("outputs", [])
    )


def build_model(cfg, checkpoint_path: str | os.PathLike, device, *, checkpoint_sha256: str | None = None):
    """Build ``cfg.model``, load weights, move to ``device``, ``eval()``.

    Checkpoints alseg's ``train`` wrote (its manifest lists the file's sha256) load with
    :func:`~alseg.compat.load_trusted_checkpoint`; any other file with torch's safe loader.
    """
    _init_mm()
    from mmseg.registry import MODELS

    from alseg.compat import load_trusted_checkpoint, load_untrusted_checkpoint

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
    if checkpoint_is_alseg(checkpoint_path, checkpoint_sha256):
        ckpt = load_trusted_checkpoint(checkpoint_path)
    else:
        ckpt = load_untrusted_checkpoint(checkpoint_path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("auxiliary_head.")]
    if missing or result.unexpected_keys:
        what = missing[:1] or result.unexpected_keys[:1]
        raise InputError(
            f"{checkpoint_path}: does not match the config's model "
            f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys, e.g. {what[0]!r})"
        )
    if isinstance(ckpt, dict) and "meta" in ckpt and isinstance(ckpt["meta"], dict):
        meta = ckpt["meta"].get("dataset_meta")
        if meta:
            model.dataset_meta = meta
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


def make_train_hooks(progress: Callable[[int, int | None], None], total: int):
    """``(progress_hook, metrics_hook)``: mmengine hooks that report iterations and record val metrics."""
    _init_mm()
    from mmengine.hooks import Hook

    class AlsegProgressHook(Hook):
        priority = "LOWEST"

        def before_train(self, runner) -> None:
            progress(0, total)

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            progress(1, None)

    class AlsegMetricsHook(Hook):
        priority = "LOWEST"

        def __init__(self) -> None:
            self.history: list[dict[str, Any]] = []

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.history.append({"iteration": int(runner.iter), "metrics": dict(metrics or {})})

    return AlsegProgressHook(), AlsegMetricsHook()
