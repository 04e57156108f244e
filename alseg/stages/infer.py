"""Stage ``infer``: run a trained model over an id list and stream logits (and embeddings) to a pool file.

Reads: an mmseg config, a checkpoint, an id list, images (and masks with ``with_labels``) under
``data_root``. Writes: the pool file (``alseg.pool``, see :mod:`alseg.files.hdf5`) and
``<out>.manifest.json`` beside it. Memory does not grow with the pool: each batch is written and dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alseg.errors import InputError
from alseg.files.atomic import (
    check_not_input,
    check_writable,
    holding_output_locks,
    partial_path,
    removed_on_failure,
)
from alseg.files.idlist import read_ids
from alseg.files.manifest import manifest_path, write_manifest

RESOLUTIONS = ("native", "full")


@dataclass
class InferResult:
    """What ``infer`` wrote. ``logits_shape`` is (n_images, n_classes, H, W); ``embeddings`` name -> dim."""

    out_path: Path
    n_images: int
    n_classes: int
    logits_shape: tuple[int, int, int, int]
    embeddings: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    resolution: str = "native"
    n_resumed: int = 0
    device: str = "cpu"


def _slide(model) -> bool:
    return (getattr(model, "test_cfg", None) or {}).get("mode", "whole") == "slide"


def _forward(model, batch: dict, taps, names: Sequence[str], *, resolution: str, with_labels: bool, ignore: int):
    """One batch of same-size inputs -> per image: logits (K,h,w) float32, labels (h,w) int64 or None, and
    the batch's embeddings {name: (b,D)}. Only each image's valid region is returned (no padding).

    ``whole`` inference runs the decode head once (taps capture its features); ``slide`` inference (as in
    mmseg's DRIVE/HRF configs) gives logits at input size only, and no embeddings.
    """
    import math

    import torch
    import torch.nn.functional as F

    data = model.data_preprocessor(batch, False)
    inputs, samples = data["inputs"], data["data_samples"]
    big_h, big_w = (int(s) for s in inputs.shape[-2:])
    sizes = [tuple(int(s) for s in x.shape[-2:]) for x in batch["inputs"]]  # before any test-time padding
    embs: dict = {}
    align = bool(getattr(model.decode_head, "align_corners", False))
    if _slide(model):
        logits = model.slide_inference(inputs, [s.metainfo for s in samples])
    else:
        logits = model.decode_head.forward(model.extract_feat(inputs))
        embs = {k: v.numpy() for k, v in taps.embeddings(names).items()}
        taps.captured.clear()
        if resolution == "full" and tuple(logits.shape[-2:]) != (big_h, big_w):
            logits = F.interpolate(logits, size=(big_h, big_w), mode="bilinear", align_corners=align)
    lh, lw = (int(s) for s in logits.shape[-2:])
    logits = logits.float().cpu()
    out_logits, out_labels = [], []
    for i, (h, w) in enumerate(sizes):
        vh, vw = min(lh, math.ceil(lh * h / big_h)), min(lw, math.ceil(lw * w / big_w))
        out_logits.append(logits[i, :, :vh, :vw].numpy())
        if with_labels:
            from alseg.labels import labels_on_grid

            mask = samples[i].gt_sem_seg.data[0]  # (h', w') label ids, ignore index kept
            mask = (mask.round() if mask.is_floating_point() else mask).to(torch.int64)
            if tuple(mask.shape) == (big_h, big_w):
                mask = mask[:h, :w]  # padded with the batch: keep the image's part
            if tuple(mask.shape) == (h, w):
                # Each logit cell takes the label at its centre in the padded input the (lh, lw) grid spans
                # (mmseg's align_corners=False geometry, docs/algorithms.md §9.1); centres in padding: ignore.
                mask = F.pad(mask, (0, big_w - w, 0, big_h - h), value=ignore)
                mask = labels_on_grid(mask, (lh, lw))[:vh, :vw]
            else:  # a mask at another size than its image: the same centre rule over the valid cells
                mask = labels_on_grid(mask, (vh, vw))
            mask[(mask < 0) | (mask > max(ignore, 255))] = ignore
            out_labels.append(mask.numpy())
    return out_logits, (out_labels if with_labels else None), embs


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _same_size_groups(batch: dict) -> list[list[int]]:
    """Indices of the batch grouped by input size (mmseg's test preprocessor needs one size per batch)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(batch["inputs"]):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())


@holding_output_locks("out_path")  # for the whole run: a second infer to the same file fails at once
def infer(
    config_path: str | os.PathLike,
    *,
    checkpoint_path: str | os.PathLike,
    ids_path: str | os.PathLike,
    out_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    batch_size: int = 8,
    with_labels: bool = False,
    embeddings: Sequence[str] = (),
    resolution: str = "native",
    overwrite: bool = False,
    resume: bool = False,
    split: str = "auto",
    cfg_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> InferResult:
    """Write logits (float16, at the decode head's output resolution, or the input size with
    ``resolution="full"``), optional labels (each logit cell takes the mask's label at the cell centre,
    :func:`alseg.labels.labels_on_grid`) and embeddings
    (``bottleneck``, ``penultimate``, ``badge``; see :mod:`alseg.mm`) for every id in ``ids_path``.

    Ids are looked up in the config's ``split`` (``auto``: the first of train, val, test that holds them
    all) through mmseg's dataset classes and run through the config's test pipeline; images may differ in
    size (each is stored with its valid size, see :mod:`alseg.files.hdf5`).
    ``resume`` continues an interrupted run from the finished batches in ``<out>.partial/``, after
    checking that config, checkpoint, id list and options are the same (see :class:`PoolWriter`); the
    result is the file an uninterrupted run writes. Two runs never write one output at once.
    """
    start = time.perf_counter()
    progress = progress or (lambda advance=1, total=None: None)
    if resolution not in RESOLUTIONS:
        raise InputError(f"unknown resolution {resolution!r}; use native or full")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size})")
    check_not_input([out_path, manifest_path(out_path), partial_path(out_path)],
                    [config_path, checkpoint_path, ids_path, data_root])
    out_path = check_writable(out_path, overwrite=overwrite)
    ids = read_ids(ids_path)
    if not ids:
        raise InputError(f"{ids_path}: the id list is empty")

    from alseg import dataset as D
    from alseg import mm
    from alseg.device import resolve_device
    from alseg.files.hdf5 import PoolWriter, check_pool_resume, sha256_file

    names = mm.check_embedding_names(embeddings)
    torch_device = resolve_device(device)
    cfg = mm.load_config(config_path, data_root=data_root, cfg_options=cfg_options)
    index = D.resolve(cfg, ids, str(ids_path), split)
    index.check_files(ids, masks=with_labels, source=str(ids_path))
    class_names = index.class_names or mm.class_names(cfg)
    ignore = index.ignore_index
    ckpt_sha = sha256_file(checkpoint_path) if Path(checkpoint_path).is_file() else None
    # What a resumed run must share with the interrupted one, or it would mix two models' rows.
    fingerprint = dict(
        model_config_sha256=mm.model_config_sha256(cfg),
        test_pipeline_sha256=_sha256_json(D.test_pipeline(cfg, with_labels=with_labels)),
        checkpoint_sha256=ckpt_sha or str(checkpoint_path),
        ids_sha256=_sha256_json(ids),
        split=index.split, data_root=str(index.data_root), resolution=resolution, embeddings=list(names),
        batch_size=batch_size,  # the same batches as an uninterrupted run, hence the same numbers
    )
    check_pool_resume(out_path, overwrite=overwrite, resume=resume, fingerprint=fingerprint)  # before the model
    model = mm.build_model(cfg, checkpoint_path, torch_device)
    n_classes = int(model.decode_head.out_channels)
    if n_classes != len(class_names):
        raise InputError(
            f"{config_path}: the decode head has {n_classes} outputs but the dataset names {len(class_names)} classes"
        )
    if _slide(model):
        if names:
            raise InputError(f"{config_path}: embeddings need whole-image inference, but model.test_cfg.mode is "
                             "'slide'; pass --cfg-options model.test_cfg.mode=whole or drop --embeddings")
        resolution = "full"  # slide inference stitches logits at input size

    import numpy as np
    import torch

    attrs = dict(
        resolution=resolution,
        model_config_sha256=mm.model_config_sha256(cfg),
        checkpoint_sha256=ckpt_sha,
        config_path=str(config_path),
        checkpoint_path=str(checkpoint_path),
        ids_path=str(ids_path),
        data_root=index.data_root,
        split=index.split,
    )

    def run(batch: dict):
        """Per image logits/labels and per batch embeddings, forwarding one input size at a time."""
        logits, labels, embs = [None] * len(batch["inputs"]), [None] * len(batch["inputs"]), {}
        for group in _same_size_groups(batch):
            sub = {key: [batch[key][i] for i in group] for key in ("inputs", "data_samples")}
            g_logits, g_labels, g_embs = _forward(
                model, sub, taps, names, resolution=resolution, with_labels=with_labels, ignore=ignore
            )
            for j, i in enumerate(group):
                logits[i] = g_logits[j]
                labels[i] = None if g_labels is None else g_labels[j]
            for key, value in g_embs.items():
                embs.setdefault(key, np.zeros((len(logits), value.shape[1]), dtype=np.float32))[group] = value
        return logits, (labels if with_labels else None), embs

    with torch.inference_mode(), mm.FeatureTaps(model) as taps:
        # One image tells the embedding sizes.
        probe = next(iter(D.test_loader(cfg, index, ids[:1], with_labels=with_labels, batch_size=1)))
        if names:
            model.decode_head.forward(model.extract_feat(model.data_preprocessor(probe, False)["inputs"]))
            taps.choose_bottleneck()
            dims, emb_attrs = taps.dims(names), taps.attrs(names)
            taps.captured.clear()
        else:
            dims, emb_attrs = {}, {}
        first, _, _ = run(probe)
        shape = tuple(int(s) for s in first[0].shape[-2:])
        del first, probe

        writer = PoolWriter(
            out_path, class_names=class_names, logits_shape=shape, ignore_index=ignore, with_labels=with_labels,
            embedding_dims=dims, embedding_attrs=emb_attrs, attrs=attrs, overwrite=overwrite, resume=resume,
            fingerprint=fingerprint,
        )
        with writer:
            n_resumed = len(writer.written_ids)
            if writer.written_ids != ids[:n_resumed]:  # the fingerprint makes this a prefix; rows keep list order
                raise InputError(f"{writer.tmp}: cannot resume: its images are not the first {n_resumed} of "
                                 f"{ids_path}; pass --overwrite to start over")
            todo = ids[n_resumed:]
            progress(0, len(ids))
            if n_resumed:
                progress(n_resumed, None)
            loader = D.test_loader(cfg, index, todo, with_labels=with_labels, batch_size=batch_size)
            pos = 0
            for batch in loader:
                b = len(batch["inputs"])
                batch_ids = todo[pos : pos + b]
                pos += b
                logits, labels, embs = run(batch)
                if len({lg.shape for lg in logits}) == 1:  # one size: the plain (b,K,h,w) path
                    logits = np.stack(logits)
                    labels = None if labels is None else np.stack(labels)
                writer.append(batch_ids, logits, labels=labels, embeddings=embs)
                progress(b, None)
            # Rows follow the id list, resumed or not: finished batches are a prefix of it.
            writer.close(commit=True, keep_partial=True)
        shape = writer.shape

    seconds = time.perf_counter() - start
    result = InferResult(
        out_path=out_path,
        n_images=len(ids),
        n_classes=n_classes,
        logits_shape=(len(ids), n_classes, *shape),
        embeddings=dims,
        seconds=seconds,
        resolution=resolution,
        n_resumed=n_resumed,
        device=str(torch_device),
    )
    with removed_on_failure(out_path):  # the partial folder stays: --resume assembles the file again
        write_manifest(
            out_path,
            stage="infer",
            args=dict(
                config_path=str(config_path), checkpoint_path=str(checkpoint_path), ids_path=str(ids_path),
                out_path=str(out_path), data_root=None if data_root is None else str(data_root),
                device=str(torch_device), batch_size=batch_size, with_labels=with_labels, embeddings=names,
                resolution=resolution, resume=resume, split=index.split, cfg_options=dict(cfg_options or {}),
            ),
            inputs=[mm.find_config(config_path), checkpoint_path, ids_path],
            outputs=[out_path],
            seconds=seconds,
            result=result,
        )
    writer.discard_partial()
    return result
