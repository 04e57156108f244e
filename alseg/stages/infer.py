"""Stage ``infer``: run a trained model over an id list and stream logits (and embeddings) to a pool file.

Reads: an mmseg config, a checkpoint, an id list, images (and masks with ``with_labels``) under
``data_root``. Writes: the pool file (``alseg.pool``, see :mod:`alseg.files.hdf5`) and
``<out>.manifest.json`` beside it. Memory does not grow with the pool: each batch is written and dropped.

Sharding (``docs/scale.md``): with ``shard=(i, n)``, or under torchrun (its ``RANK``/``WORLD_SIZE``), a
process infers the i-th of n contiguous blocks of whole batches of the id list into
``<stem>.shard-i-of-n.h5``; under torchrun rank 0 then merges the shards into ``out_path``. The fused
path (``scores``) scores each batch on the device (:mod:`alseg.fused`) and writes a scores file.

MC dropout (``mc=T``, docs/algorithms.md §11.7): after the deterministic pass (stored as always), T passes
with dropout active in ``mc_scope`` (``head``: the backbone's features are reused and only the decode head
runs T times; ``full``: the whole model) feed running sums (:class:`alseg.mc.MCSums`); the pool file gets
``/mc``, three statistics per pixel, whatever T. Each batch's dropout masks come from a generator seeded by
(``mc_seed``, the batch's first row in the id list), so a resumed or sharded run writes the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alseg.errors import AlsegError, InputError
from alseg.files.atomic import (
    check_not_input,
    check_writable,
    holding_output_locks,
    output_lock,
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
    logits: str = "native"  # what the pool file keeps: native, topk:K or none
    shard: str | None = None  # "i/n" for one shard's file
    shards: list[str] = field(default_factory=list)  # the shard files merged into out_path (torchrun)
    scores_path: Path | None = None
    scores: list[str] = field(default_factory=list)
    mc: int = 0  # MC-dropout passes (0: none)
    mc_scope: str | None = None
    warnings: list[str] = field(default_factory=list)


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when torchrun started this process (its RANK and WORLD_SIZE), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise InputError(f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not "
                         "numbers; start sharded runs with torchrun or pass --shard i/n") from None
    return rank, world, local


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise InputError(f"--shard: {text!r} is not i/n with 0 <= i < n (e.g. 0/4 for the first of 4 shards)")
    return int(m.group(1)), int(m.group(2))


def shard_rows(n_ids: int, batch_size: int, shard: tuple[int, int]) -> slice:
    """Rows of shard i of n: the i-th of n contiguous blocks of whole batches (sizes differ by at most one
    batch). Joined in shard order the blocks are the id list; every image sees the same batch as in a
    one-process run, hence the same numbers."""
    i, n = shard
    n_batches = -(-n_ids // batch_size)
    if n > n_batches:
        raise InputError(f"--shard {i}/{n}: {n_ids} ids make only {n_batches} batch(es) of {batch_size}; "
                         f"use at most {n_batches} shards or a smaller --batch-size")
    first, last = (i * n_batches) // n, ((i + 1) * n_batches) // n
    return slice(first * batch_size, min(n_ids, last * batch_size))


def _slide(model) -> bool:
    return (getattr(model, "test_cfg", None) or {}).get("mode", "whole") == "slide"


def _forward(model, batch: dict, taps, names: Sequence[str], *, resolution: str, with_labels: bool, ignore: int):
    """One batch of same-size inputs -> per image: logits (K,h,w) float32 tensors on the model's device,
    labels (h,w) int64 or None, and
    the batch's embeddings {name: (b,D)}. Only each image's valid region is returned (no padding).

    ``whole`` inference runs the decode head once (taps capture its features); ``slide`` inference (as in
    mmseg's DRIVE/HRF configs) gives logits at input size only, and no embeddings.
    """
    logits, labels, embs, _ = _forward_mc(model, batch, taps, names, resolution=resolution, with_labels=with_labels,
                                          ignore=ignore)
    return logits, labels, embs


def _forward_mc(model, batch: dict, taps, names: Sequence[str], *, resolution: str, with_labels: bool, ignore: int,
                mc: tuple[int, str, Any] | None = None):
    """:func:`_forward`, and with ``mc`` = (T, scope, sums dtype) also per image the (3,h,w) float32 MC
    statistics (:func:`alseg.mc.mc_maps`) of T passes with dropout active in ``scope`` (else None), on the
    logits' grid. ``head`` reuses the backbone's features of the deterministic pass; ``slide`` inference
    runs whole passes (dropout still only in scope)."""
    import math

    import torch
    import torch.nn.functional as F

    data = model.data_preprocessor(batch, False)
    inputs, samples = data["inputs"], data["data_samples"]
    big_h, big_w = (int(s) for s in inputs.shape[-2:])
    sizes = [tuple(int(s) for s in x.shape[-2:]) for x in batch["inputs"]]  # before any test-time padding
    embs: dict = {}
    align = bool(getattr(model.decode_head, "align_corners", False))
    slide = _slide(model)
    feats = None
    if slide:
        logits = model.slide_inference(inputs, [s.metainfo for s in samples])
    else:
        feats = model.extract_feat(inputs)
        logits = model.decode_head.forward(feats)
        embs = {k: v.numpy() for k, v in taps.embeddings(names).items()}
        taps.captured.clear()
        if resolution == "full" and tuple(logits.shape[-2:]) != (big_h, big_w):
            logits = F.interpolate(logits, size=(big_h, big_w), mode="bilinear", align_corners=align)
    lh, lw = (int(s) for s in logits.shape[-2:])
    logits = logits.float()  # stays on the device: the caller copies what it stores
    maps = None
    if mc is not None:
        from alseg.mc import MCSums, dropout_scope, mc_maps

        n_passes, scope, dtype = mc
        sums = MCSums(dtype)
        with dropout_scope(model, scope):
            for _ in range(n_passes):
                if slide:
                    x = model.slide_inference(inputs, [s.metainfo for s in samples])
                else:
                    x = model.decode_head.forward(feats if scope == "head" else model.extract_feat(inputs))
                    if tuple(x.shape[-2:]) != (lh, lw):
                        x = F.interpolate(x, size=(lh, lw), mode="bilinear", align_corners=align)
                sums.add(torch.softmax(x.float(), dim=1))
        taps.captured.clear()
        maps = mc_maps(sums)
        del sums
    del feats
    out_logits, out_labels, out_mc = [], [], []
    for i, (h, w) in enumerate(sizes):
        vh, vw = min(lh, math.ceil(lh * h / big_h)), min(lw, math.ceil(lw * w / big_w))
        out_logits.append(logits[i, :, :vh, :vw])
        if maps is not None:
            out_mc.append(maps[i, :, :vh, :vw])
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
            out_labels.append(mask.cpu().numpy())
    return out_logits, (out_labels if with_labels else None), embs, (out_mc if mc is not None else None)


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def _same_size_groups(batch: dict) -> list[list[int]]:
    """Indices of the batch grouped by input size (mmseg's test preprocessor needs one size per batch)."""
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(batch["inputs"]):
        groups.setdefault(tuple(x.shape), []).append(i)
    return list(groups.values())


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
    resume: bool | str = False,
    split: str = "auto",
    cfg_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    shard: tuple[int, int] | None = None,
    logits: str = "native",
    scores: Sequence[str] = (),
    scores_out_path: str | os.PathLike | None = None,
    calibration_path: str | os.PathLike | None = None,
    aggregation: str = "mean",
    q: float = 10.0,
    mc: int = 0,
    mc_scope: str = "head",
    mc_seed: int = 0,
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
    result is the file an uninterrupted run writes. ``resume="auto"`` (with ``overwrite``; what
    ``alseg run`` passes) continues when that check passes and starts over otherwise. Two runs never write
    one output at once.

    ``shard=(i, n)`` writes only shard i of n (:func:`shard_rows`) to ``<stem>.shard-i-of-n.h5``; under
    torchrun each rank writes its shard (on ``cuda:LOCAL_RANK`` when CUDA is used) and rank 0 merges
    them into ``out_path`` (:func:`alseg.files.hdf5.merge_pools`) and removes them. With ``resume`` a
    finished shard is kept and an interrupted one continued.
    ``logits``: ``native`` (store them), ``topk:K`` (the K largest probabilities and their classes) or
    ``none``. ``scores`` (names of :data:`alseg.fused.FUSED_SCORES`) are computed on the device per
    batch and written to ``scores_out_path`` in the format of ``alseg score`` (``crc`` needs
    ``calibration_path``; ``aggregation``, ``q`` as in ``score``).
    ``mc=T`` (>= 1) also writes ``/mc``: per pixel H(p̄), H(p̄) − E and max_k V_k / T of T MC-dropout passes
    with dropout active in ``mc_scope`` (``head`` or ``full``, :func:`alseg.mc.dropout_scope`), from
    generators seeded by ``mc_seed`` and each batch's first row; the result warns when no dropout layer is
    in scope (every pass then equals the deterministic one).
    """
    from alseg.registry import MC_SCOPES

    if int(mc) != mc or mc < 0:
        raise InputError(f"--mc: {mc!r} is not a number of MC-dropout passes >= 0 (0: none; e.g. --mc 10)")
    if mc_scope not in MC_SCOPES:
        raise InputError(f"--mc-scope: unknown {mc_scope!r}; choose one of: {', '.join(MC_SCOPES)}")
    if resume not in (True, False, "auto"):
        raise InputError(f"resume must be True, False or 'auto', got {resume!r}")
    env = torchrun_env()
    if env is not None and shard is not None:
        raise InputError("--shard and torchrun both split the id list; drop --shard under torchrun")
    kwargs = dict(
        checkpoint_path=checkpoint_path, ids_path=ids_path, data_root=data_root, batch_size=batch_size,
        with_labels=with_labels, embeddings=embeddings, resolution=resolution, overwrite=overwrite, resume=resume,
        split=split, cfg_options=cfg_options, progress=progress, logits=logits, scores=scores,
        calibration_path=calibration_path, aggregation=aggregation, q=q, mc=int(mc), mc_scope=mc_scope,
        mc_seed=int(mc_seed),
    )
    if (scores_out_path is None) != (not scores):
        raise InputError("--scores and --scores-out go together: name the scores and the file to write them to")
    if scores_out_path is not None and Path(scores_out_path).resolve() == Path(out_path).resolve():
        raise InputError(f"{scores_out_path}: --scores-out and --out name one file; give the scores their own")
    if logits.strip() == "none" and not scores and not embeddings and not mc:
        raise InputError("--logits none keeps no model output: add --scores (and --scores-out) or --embeddings")
    if env is None:
        if shard is None:
            return _infer_one(config_path, out_path=out_path, scores_out_path=scores_out_path, shard=None,
                              device=device, **kwargs)
        i, n = shard
        return _infer_one(config_path, out_path=shard_path(out_path, i, n), shard=(i, n), device=device,
                          scores_out_path=None if scores_out_path is None else shard_path(scores_out_path, i, n),
                          **kwargs)
    return _infer_torchrun(config_path, env, out_path=out_path, scores_out_path=scores_out_path, device=device,
                           **kwargs)


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """``<stem>.shard-i-of-n<suffix>`` beside ``path`` (:func:`alseg.files.hdf5.shard_path`)."""
    from alseg.files.hdf5 import shard_path as _shard_path

    return _shard_path(path, index, count)


def _infer_torchrun(config_path, env, *, out_path, scores_out_path, device, **kwargs) -> InferResult:
    """One rank of a torchrun job: infer its shard, wait for all ranks, rank 0 merges."""
    import torch
    import torch.distributed as dist

    rank, world, local = env
    check_not_input([out_path, scores_out_path], [config_path, kwargs["checkpoint_path"], kwargs["ids_path"]])
    check_writable(out_path, overwrite=kwargs["overwrite"])
    if scores_out_path is not None:
        check_writable(scores_out_path, overwrite=kwargs["overwrite"])
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    backend = "nccl" if use_cuda else "gloo"
    started = not dist.is_initialized()
    if started:
        dist.init_process_group(backend=backend)
    try:
        failure = None
        result = None
        try:
            result = _infer_one(
                config_path, out_path=shard_path(out_path, rank, world), shard=(rank, world), device=device,
                scores_out_path=None if scores_out_path is None else shard_path(scores_out_path, rank, world),
                **kwargs,
            )
        except AlsegError as exc:  # every rank learns of it, so none waits for a rank that failed
            failure = exc
        reports: list[Any] = [None] * world
        mine = (str(failure), 0) if failure is not None else (None, result.n_resumed)
        dist.all_gather_object(reports, mine)
        if failure is not None:
            raise failure
        failed = [(r, msg) for r, (msg, _) in enumerate(reports) if msg]
        if failed:
            r, msg = failed[0]
            raise InputError(f"rank {r} failed ({msg}); its shard stays: fix it and rerun with --resume")
        if rank == 0:
            result = _merge_shards(result, out_path, scores_out_path, world, overwrite=kwargs["overwrite"],
                                   config_path=config_path, kwargs=kwargs,
                                   n_resumed=sum(n for _, n in reports))
        dist.barrier()  # the job ends when the merged file is there
        return result
    finally:
        if started:
            dist.destroy_process_group()


def _merge_shards(result: InferResult, out_path, scores_out_path, world: int, *, overwrite, config_path,
                  kwargs, n_resumed: int) -> InferResult:
    """Rank 0 after the barrier: shards -> ``out_path`` (and ``scores_out_path``), manifest, shards removed."""
    import dataclasses

    from alseg import mm
    from alseg.files.hdf5 import merge_pools, merge_scores, pool_digest

    start = time.perf_counter()
    pools = [shard_path(out_path, r, world) for r in range(world)]
    score_files = [] if scores_out_path is None else [shard_path(scores_out_path, r, world) for r in range(world)]
    with output_lock(out_path), (output_lock(scores_out_path) if scores_out_path else contextlib.nullcontext()):
        info = merge_pools(pools, out_path, overwrite=overwrite)
        with removed_on_failure(out_path, *([scores_out_path] if scores_out_path else [])):
            if scores_out_path is not None:
                merge_scores(score_files, scores_out_path, overwrite=overwrite,
                             attrs={"pool_path": str(out_path), "pool_sha256": pool_digest(out_path)})
            manifests = [Path(str(p) + ".manifest.json") for p in pools + score_files]
            seconds = [json.loads(m.read_text()).get("seconds") or 0.0 for m in manifests[:world] if m.is_file()]
            merged = dataclasses.replace(
                result, out_path=Path(out_path), n_images=info["n_images"], shard=None, shards=info["shards"],
                logits_shape=(info["n_images"], result.n_classes, *info["shape"]),
                seconds=max(seconds, default=0.0) + time.perf_counter() - start,
                n_resumed=n_resumed, scores_path=None if scores_out_path is None else Path(scores_out_path),
            )
            args = {k: v for k, v in kwargs.items() if k != "progress"}
            args.update(config_path=str(config_path), out_path=str(out_path), world_size=world,
                        scores_out_path=None if scores_out_path is None else str(scores_out_path))
            for path in [out_path, scores_out_path] if scores_out_path else [out_path]:
                write_manifest(path, stage="infer", args=args,
                               inputs=[mm.find_config(config_path), kwargs["checkpoint_path"], kwargs["ids_path"],
                                       kwargs["calibration_path"]],
                               outputs=[out_path, scores_out_path], seconds=merged.seconds, result=merged)
    for path in pools + score_files + manifests:  # merged: the shards were only a way to get there
        Path(path).unlink(missing_ok=True)
    return merged


@holding_output_locks("out_path", "scores_out_path")  # for the whole run: a second infer to the same file fails at once
def _infer_one(
    config_path: str | os.PathLike,
    *,
    checkpoint_path: str | os.PathLike,
    ids_path: str | os.PathLike,
    out_path: str | os.PathLike,
    data_root: str | os.PathLike | None,
    device: str,
    batch_size: int,
    with_labels: bool,
    embeddings: Sequence[str],
    resolution: str,
    overwrite: bool,
    resume: bool | str,
    split: str,
    cfg_options: Mapping[str, Any] | None,
    progress: Callable[[int, int | None], None] | None,
    shard: tuple[int, int] | None,
    logits: str,
    scores: Sequence[str],
    scores_out_path: str | os.PathLike | None,
    calibration_path: str | os.PathLike | None,
    aggregation: str,
    q: float,
    mc: int = 0,
    mc_scope: str = "head",
    mc_seed: int = 0,
) -> InferResult:
    """One process's part: the whole id list, or one shard of it, into ``out_path``."""
    start = time.perf_counter()
    progress = progress or (lambda advance=1, total=None: None)
    if resolution not in RESOLUTIONS:
        raise InputError(f"unknown resolution {resolution!r}; use native or full")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size})")
    check_not_input([out_path, manifest_path(out_path), partial_path(out_path), scores_out_path],
                    [config_path, checkpoint_path, ids_path, data_root, calibration_path])
    from alseg import fused
    from alseg.files.hdf5 import parse_logits_storage

    storage, _ = parse_logits_storage(logits)
    logits = logits.strip()
    score_names = list(dict.fromkeys(scores))
    for name in score_names:
        if name not in fused.FUSED_SCORES:
            raise InputError(f"--scores: unknown {name!r}; choose from: {', '.join(fused.FUSED_SCORES)}")
    all_ids = read_ids(ids_path)
    if not all_ids:
        raise InputError(f"{ids_path}: the id list is empty")
    ids = all_ids if shard is None else all_ids[shard_rows(len(all_ids), batch_size, shard)]
    # a shard a killed job finished is kept by --resume (after its fingerprint is compared, below)
    keep = shard is not None and resume is True and Path(out_path).is_file() and not partial_path(out_path).is_dir()
    if not keep:
        out_path = check_writable(out_path, overwrite=overwrite)
        if scores_out_path is not None:
            scores_out_path = check_writable(scores_out_path, overwrite=overwrite)

    from alseg import dataset as D
    from alseg import mm
    from alseg.device import resolve_device
    from alseg.files.hdf5 import (PoolWriter, check_pool_resume, partial_resumable, pool_digest, sha256_file,
                                  write_scores)

    names = mm.check_embedding_names(embeddings)
    torch_device = resolve_device(device)
    cfg = mm.load_config(config_path, data_root=data_root, cfg_options=cfg_options)
    index = D.resolve(cfg, all_ids, str(ids_path), split)
    index.check_files(ids if all_ids[0] in ids else [all_ids[0], *ids], masks=with_labels, source=str(ids_path))
    class_names = index.class_names or mm.class_names(cfg)
    ignore = index.ignore_index
    parse_logits_storage(logits, len(class_names))
    calibration = None
    if "crc" in score_names:
        if calibration_path is None:
            raise InputError("--scores crc needs a calibration: crc:crc.json (from `alseg calibrate`)")
        from alseg.files.calibration import check_matches_pool, read_calibration

        calibration = read_calibration(calibration_path)
        check_matches_pool(calibration, calibration_path, list(class_names), config_path)
    ckpt_sha = sha256_file(checkpoint_path) if Path(checkpoint_path).is_file() else None
    # What a resumed run must share with the interrupted one, or it would mix two models' rows.
    fingerprint = dict(
        model_config_sha256=mm.model_config_sha256(cfg),
        test_pipeline_sha256=_sha256_json(D.test_pipeline(cfg, with_labels=with_labels)),
        checkpoint_sha256=ckpt_sha or str(checkpoint_path),
        ids_sha256=_sha256_json(all_ids),
        split=index.split, data_root=str(index.data_root), resolution=resolution, embeddings=list(names),
        batch_size=batch_size,  # the same batches as an uninterrupted run, hence the same numbers
    )
    if shard is not None:  # new keys only where used: older partial folders still resume
        fingerprint["shard"] = list(shard)
    if mc:  # the dropout masks follow (mc_seed, row): a resumed run must use the same
        fingerprint["mc"] = dict(T=mc, scope=mc_scope, seed=mc_seed)
    if score_names:
        fingerprint["scores"] = dict(names=score_names, aggregation=aggregation, q=float(q),
                                     calibration_sha256=None if calibration is None else sha256_file(calibration_path))
    if keep:
        return _finished_shard(out_path, scores_out_path, fingerprint, overwrite=overwrite)
    if resume == "auto":  # the finished batches of a killed run with these inputs, else a fresh start
        resume = partial_resumable(out_path, fingerprint)
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

    warnings: list[str] = []
    mc_plan = None
    if mc:
        from alseg.mc import dropout_scope

        with dropout_scope(model, mc_scope) as active:
            pass
        if not active:
            where = "model.decode_head" if mc_scope == "head" else "the model"
            warnings.append(
                f"--mc {mc} --mc-scope {mc_scope}: no dropout layer with p > 0 in {where} of {config_path}, so every "
                "pass equals the deterministic one (BALD = 0); enable one, e.g. --cfg-options "
                "model.decode_head.dropout_ratio=0.1")
        # float64 sums; MPS has no float64
        mc_plan = (mc, mc_scope, torch.float32 if torch_device.type == "mps" else torch.float64)
    first_row = 0 if shard is None else shard_rows(len(all_ids), batch_size, shard).start

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
    if shard is not None:
        attrs.update(shard=f"{shard[0]}/{shard[1]}", fingerprint=json.dumps(fingerprint, sort_keys=True, default=str))

    def run(batch: dict, row: int | None = None):
        """Per image logits (device tensors)/labels and per batch embeddings, one input size at a time; with
        ``row`` (the batch's first row in the id list) and MC, also per image MC maps (host arrays)."""
        logits, labels, embs = [None] * len(batch["inputs"]), [None] * len(batch["inputs"]), {}
        maps: list | None = [None] * len(logits) if mc_plan is not None and row is not None else None
        with _mc_generator(torch_device, mc_seed, row) if maps is not None else contextlib.nullcontext():
            for group in _same_size_groups(batch):
                sub = {key: [batch[key][i] for i in group] for key in ("inputs", "data_samples")}
                g_logits, g_labels, g_embs, g_maps = _forward_mc(
                    model, sub, taps, names, resolution=resolution, with_labels=with_labels, ignore=ignore,
                    mc=mc_plan if maps is not None else None,
                )
                for j, i in enumerate(group):
                    logits[i] = g_logits[j]
                    labels[i] = None if g_labels is None else g_labels[j]
                    if maps is not None:
                        maps[i] = g_maps[j].cpu().numpy()
                for key, value in g_embs.items():
                    embs.setdefault(key, np.zeros((len(logits), value.shape[1]), dtype=np.float32))[group] = value
        return logits, (labels if with_labels else None), embs, maps

    with torch.inference_mode(), mm.FeatureTaps(model) as taps:
        # One image tells the embedding sizes and the chunk tile: the id list's first, in every shard, so
        # that all shards share one layout (merge then copies stored chunks as they are)
        probe = next(iter(D.test_loader(cfg, index, all_ids[:1], with_labels=with_labels, batch_size=1)))
        if names:
            model.decode_head.forward(model.extract_feat(model.data_preprocessor(probe, False)["inputs"]))
            taps.choose_bottleneck()
            dims, emb_attrs = taps.dims(names), taps.attrs(names)
            taps.captured.clear()
        else:
            dims, emb_attrs = {}, {}
        first, _, _, _ = run(probe)
        shape = tuple(int(s) for s in first[0].shape[-2:])
        del first, probe
        scorer = None
        if score_names:
            scorer = fused.FusedScorer(
                score_names, n_classes=n_classes, shape=shape, aggregation=aggregation, q=q,
                thresholds=None if calibration is None else np.asarray(calibration["query_thresholds"], np.float64),
                crc_params=None if calibration is None else {
                    "calibration": str(calibration_path), "alpha": calibration["alpha"],
                    "t_min": float(calibration["t_min"]), "calibration_sha256": sha256_file(calibration_path)},
            )

        writer = PoolWriter(
            out_path, class_names=class_names, logits_shape=shape, ignore_index=ignore, with_labels=with_labels,
            embedding_dims=dims, embedding_attrs=emb_attrs, attrs=attrs, overwrite=overwrite, resume=resume,
            fingerprint=fingerprint, logits_storage=logits, extras=scorer.extras if scorer else None,
            mc=dict(T=mc, scope=mc_scope) if mc else None,
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
                batch_logits, labels, embs, maps = run(batch, first_row + n_resumed + pos)
                pos += b
                extras = scorer(batch_ids, batch_logits) if scorer else None
                stored, classes, sizes = _stored(batch_logits, storage, writer.topk)
                if stored is not None and len({x.shape for x in stored}) == 1:  # one size: the (b,K,h,w) path
                    stored = np.stack(stored)
                    classes = None if classes is None else np.stack(classes)
                    labels = None if labels is None else np.stack(labels)
                writer.append(batch_ids, stored, labels=labels, embeddings=embs, topk_classes=classes,
                              sizes=sizes, extras=extras, mc_maps=maps)
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
        logits=logits,
        shard=None if shard is None else f"{shard[0]}/{shard[1]}",
        scores_path=scores_out_path,
        scores=score_names,
        mc=mc,
        mc_scope=mc_scope if mc else None,
        warnings=warnings,
    )
    with removed_on_failure(out_path, *([scores_out_path] if scores_out_path else [])):
        # the partial folder stays until here: --resume assembles the files again
        if scorer is not None:
            values, embs, params = scorer.scores_file({name: writer.extra(name) for name in scorer.extras})
            score_attrs: dict[str, Any] = {"pool_path": str(out_path), "pool_sha256": pool_digest(out_path)}
            if shard is not None:
                score_attrs["shard"] = f"{shard[0]}/{shard[1]}"
            write_scores(scores_out_path, ids, scores=values, embeddings=embs, params=params, attrs=score_attrs,
                         overwrite=overwrite)
        args = dict(
            config_path=str(config_path), checkpoint_path=str(checkpoint_path), ids_path=str(ids_path),
            out_path=str(out_path), data_root=None if data_root is None else str(data_root),
            device=str(torch_device), batch_size=batch_size, with_labels=with_labels, embeddings=names,
            resolution=resolution, resume=resume, split=index.split, cfg_options=dict(cfg_options or {}),
        )
        if shard is not None or logits != "native" or score_names:  # new keys only where used
            args.update(shard=None if shard is None else list(shard), logits=logits, scores=score_names,
                        scores_out_path=None if scores_out_path is None else str(scores_out_path),
                        calibration_path=None if calibration_path is None else str(calibration_path),
                        aggregation=aggregation, q=q)
        if mc:
            args.update(mc=mc, mc_scope=mc_scope, mc_seed=mc_seed)
        for path in [out_path, scores_out_path] if scorer is not None else [out_path]:
            write_manifest(
                path,
                stage="infer",
                args=args,
                inputs=[mm.find_config(config_path), checkpoint_path, ids_path, calibration_path],
                outputs=[out_path, scores_out_path],
                seconds=seconds,
                result=result,
            )
    writer.discard_partial()
    return result


@contextlib.contextmanager
def _mc_generator(torch_device, seed: int, row: int):
    """Within: torch's global generators (CPU and ``torch_device``'s, which dropout draws from) seeded by
    (``seed``, ``row``); restored on exit. One batch's masks thus depend on its place in the id list only."""
    import numpy as np
    import torch

    kind = torch_device.type
    if kind == "cpu":
        devices, device_type = [], "cuda"  # no accelerator state to save
    elif kind == "cuda":  # only this rank's device (torchrun: one per process)
        devices, device_type = [torch.cuda.current_device() if torch_device.index is None else torch_device.index], kind
    else:
        devices, device_type = None, kind
    with torch.random.fork_rng(devices=devices, device_type=device_type):
        torch.manual_seed(int(np.random.SeedSequence([int(seed), int(row)]).generate_state(1, np.uint64)[0] >> 1))
        yield


def _stored(batch_logits, storage: str, topk: int):
    """What the pool file keeps of per-image device logits: (arrays or None, top-k classes or None, sizes
    or None), copied to the host."""
    import numpy as np

    if storage == "native":
        return [x.cpu().numpy() for x in batch_logits], None, None
    if storage == "none":
        return None, None, np.array([x.shape[-2:] for x in batch_logits], dtype=np.int64).reshape(-1, 2)
    from alseg import fused

    probs, classes = [], []
    for x in batch_logits:  # one image at a time: images of a batch may differ in size
        p, c = fused.topk_probs(fused.softmax(x.half().float()[None]), topk)
        probs.append(p[0].cpu().numpy())
        classes.append(c[0].cpu().numpy())
    return probs, classes, None


def _finished_shard(out_path, scores_out_path, fingerprint: Mapping[str, Any], *, overwrite: bool) -> InferResult:
    """The result of a shard that a killed job finished, kept by ``--resume`` when it was written with
    this run's inputs and options (its ``fingerprint`` attribute); otherwise the usual "output exists"."""
    from alseg.files.hdf5 import pool_fingerprint
    from alseg.files.manifest import manifest_path as _mp

    out_path = Path(out_path)
    old = pool_fingerprint(out_path)
    new = json.loads(json.dumps(dict(fingerprint), sort_keys=True, default=str))
    m = _mp(out_path)
    whole = m.is_file() and (scores_out_path is None or Path(scores_out_path).is_file())
    if old != new or not whole:
        if overwrite:
            raise InputError(f"{out_path}: --resume keeps finished shards and --overwrite replaces them; pass one")
        differs = next((k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)), None)
        why = f"its {differs} differs from this run's" if differs else "its manifest or scores file is missing"
        raise InputError(f"{out_path}: a finished shard that --resume cannot keep ({why}); pass --overwrite "
                         "to redo it")
    try:
        result = json.loads(m.read_text(encoding="utf-8"))["result"]
    except (OSError, ValueError, KeyError):
        raise InputError(f"{m}: unreadable manifest of a finished shard; pass --overwrite to redo it") from None
    fields = {k: v for k, v in result.items() if k in InferResult.__dataclass_fields__}
    fields.update(out_path=out_path, logits_shape=tuple(fields.get("logits_shape", ())),
                  n_resumed=int(fields.get("n_images", 0)),
                  scores_path=None if scores_out_path is None else Path(scores_out_path))
    return InferResult(**fields)
