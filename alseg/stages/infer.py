"""Stage ``infer``: run a trained model over an id list and stream logits (and embeddings) to a pool file.

Reads: an mmseg config, a checkpoint, an id list, images (and masks with ``with_labels``) under
``data_root``. Writes: the pool file (``alseg.pool``, see :mod:`alseg.files.hdf5`) and
``<out>.manifest.json`` beside it. Memory does not grow with the pool: each batch is written and dropped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from alseg.errors import InputError
from alseg.files.atomic import check_writable, partial_path
from alseg.files.idlist import read_ids
from alseg.files.manifest import write_manifest

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


def _forward(model, batch: dict, taps, *, resolution: str, with_labels: bool, ignore: int):
    """One batch -> (logits (b,K,h,w) float32 cpu, labels (b,h,w) or None). Taps capture features."""
    import torch
    import torch.nn.functional as F

    data = model.data_preprocessor(batch, False)
    inputs = data["inputs"]
    feats = model.extract_feat(inputs)
    logits = model.decode_head.forward(feats)
    if resolution == "full" and tuple(logits.shape[-2:]) != tuple(inputs.shape[-2:]):
        logits = F.interpolate(
            logits, size=inputs.shape[-2:], mode="bilinear", align_corners=bool(model.decode_head.align_corners)
        )
    labels = None
    if with_labels:
        masks = []
        for sample in data["data_samples"]:
            mask = sample.gt_sem_seg.data.to(torch.float32)  # (1,H,W); nearest keeps the ignore index
            masks.append(F.interpolate(mask[None], size=logits.shape[-2:], mode="nearest")[0, 0])
        labels = torch.stack(masks).round().to(torch.int64).cpu()
        labels[(labels < 0) | (labels > max(ignore, 255))] = ignore
    return logits.float().cpu(), labels


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
    progress: Callable[[int, int | None], None] | None = None,
) -> InferResult:
    """Write logits (float16, at the decode head's output resolution, or the input size with
    ``resolution="full"``), optional labels (nearest-resized to the logits) and embeddings
    (``bottleneck``, ``penultimate``, ``badge``; see :mod:`alseg.mm`) for every id in ``ids_path``.

    ``resume`` continues an interrupted run from ``<out>.partial``, skipping ids already written.
    """
    start = time.perf_counter()
    progress = progress or (lambda advance=1, total=None: None)
    if resolution not in RESOLUTIONS:
        raise InputError(f"unknown resolution {resolution!r}; use native or full")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size})")
    out_path = check_writable(out_path, overwrite=overwrite)
    ids = read_ids(ids_path)
    if not ids:
        raise InputError(f"{ids_path}: the id list is empty")

    from alseg import mm
    from alseg.device import resolve_device
    from alseg.files.hdf5 import PoolWriter, sha256_file

    names = mm.check_embedding_names(embeddings)
    torch_device = resolve_device(device)
    cfg = mm.load_config(config_path, data_root=data_root)
    mm.data_layout(cfg).check(ids, masks=with_labels)
    class_names = mm.class_names(cfg)
    ignore = mm.ignore_index(cfg)
    ckpt_sha = sha256_file(checkpoint_path) if Path(checkpoint_path).is_file() else None
    model = mm.build_model(cfg, checkpoint_path, torch_device, checkpoint_sha256=ckpt_sha)
    n_classes = int(model.decode_head.out_channels)
    if n_classes != len(class_names):
        raise InputError(
            f"{config_path}: the decode head has {n_classes} outputs but the dataset names {len(class_names)} classes"
        )

    import torch

    attrs = dict(
        resolution=resolution,
        model_config_sha256=mm.model_config_sha256(cfg),
        checkpoint_sha256=ckpt_sha,
        config_path=str(config_path),
        checkpoint_path=str(checkpoint_path),
        ids_path=str(ids_path),
        data_root=str(mm.data_layout(cfg).img_dir.parent),
    )
    with torch.inference_mode(), mm.FeatureTaps(model) as taps:
        # One image tells the shapes: logits resolution and embedding sizes.
        probe = next(iter(mm.make_dataloader(cfg, ids[:1], with_labels=False, batch_size=1)))
        logits, _ = _forward(model, probe, taps, resolution=resolution, with_labels=False, ignore=ignore)
        taps.choose_bottleneck()
        dims = taps.dims(names)
        emb_attrs = taps.attrs(names)
        shape = tuple(int(s) for s in logits.shape[-2:])
        taps.captured.clear()
        del logits, probe

        writer = PoolWriter(
            out_path, class_names=class_names, logits_shape=shape, ignore_index=ignore, with_labels=with_labels,
            embedding_dims=dims, embedding_attrs=emb_attrs, attrs=attrs, overwrite=overwrite,
            resume=resume and partial_path(out_path).exists(),
        )
        with writer:
            done = set(writer.written_ids)
            extra = [i for i in writer.written_ids if i not in set(ids)]
            if extra:
                raise InputError(f"{writer.tmp}: cannot resume: it holds id {extra[0]!r}, which is not in {ids_path}")
            todo = [i for i in ids if i not in done]
            n_resumed = len(ids) - len(todo)
            progress(0, len(ids))
            if n_resumed:
                progress(n_resumed, None)
            loader = mm.make_dataloader(cfg, todo, with_labels=with_labels, batch_size=batch_size)
            pos = 0
            for batch in loader:
                b = len(batch["inputs"])
                batch_ids = todo[pos : pos + b]
                pos += b
                logits, labels = _forward(
                    model, batch, taps, resolution=resolution, with_labels=with_labels, ignore=ignore
                )
                if tuple(logits.shape[-2:]) != shape:
                    raise InputError(
                        f"id {batch_ids[0]!r}: logits are {tuple(logits.shape[-2:])}, not {shape} like the first "
                        "image; a pool file needs one image size (add a Resize to the config's test pipeline)"
                    )
                embs = {k: v.numpy() for k, v in taps.embeddings(names).items()}
                writer.append(
                    batch_ids, logits.numpy(), labels=None if labels is None else labels.numpy(), embeddings=embs
                )
                taps.captured.clear()
                progress(b, None)
            # ids in the file follow the id list when the run was not interrupted; after a resume they
            # follow the order of writing, and ids are the join key either way.

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
    write_manifest(
        out_path,
        stage="infer",
        args=dict(
            config_path=str(config_path), checkpoint_path=str(checkpoint_path), ids_path=str(ids_path),
            out_path=str(out_path), data_root=None if data_root is None else str(data_root),
            device=str(torch_device), batch_size=batch_size, with_labels=with_labels, embeddings=names,
            resolution=resolution, resume=resume,
        ),
        inputs=[config_path, checkpoint_path, ids_path],
        outputs=[out_path],
        seconds=seconds,
        result=result,
    )
    return result
