"""Stage ``train``: fit an mmseg model on exactly the labeled ids, evaluate on the val split.

Reads: an mmseg config, the labeled id list (a subset of the config's train split) or a labelled-state file
(:mod:`alseg.files.labelled`: whole images and regions), images and masks under ``data_root``, region-map
stores for superpixel units, the config's val split (or a subset of it). Writes into ``work_dir``: ``checkpoint.pth`` (final weights,
a plain dict of tensors that ``torch.load(weights_only=True)`` reads) with ``checkpoint.json`` beside it (class
names, palette, iteration; see :mod:`alseg.files.checkpoint`), ``metrics.json`` (format ``alseg.metrics``) and
``manifest.json``; mmengine adds its own timestamped log folder.

Partial labels (docs/regions.md, "Training on partial labels"): an image labelled in regions is trained on
the union of its regions, annotated ``precise`` or ``dominant``, and the dataset's ignore index elsewhere,
through the transform of :mod:`alseg.partial` inserted after ``LoadAnnotations``. Superpixel maps come from
the ``region_maps`` stores, or are computed into ``work_dir/train.regions-<unit>.h5``. ``metrics.json``
records the annotation and the labelled pixel count under ``labels``.

Checkpoints the config makes mmengine load (``load_from``, ``Pretrained`` init) are read first through alseg's
safe loader, before anything is written; a work dir this call created is removed again when it fails.

Distributed (``torchrun --nproc-per-node N -m alseg.commands train ...``, or ``launcher="slurm"`` under srun):
every process runs this function; mmengine wraps the model in DistributedDataParallel and its samplers give
each rank a disjoint shard of the labeled ids (``batch_size`` is per process). Rank 0 alone writes the files
above, in the same format as a single process, and alone removes a work dir it created on failure; the
other ranks write nothing (mmengine logs rank 0 only), wait at a barrier until rank 0 has written, and
return ``None``. Only rank 0 takes alseg's output locks, because it
is the only writer: a second rank locking the same file would be refused as "another alseg process". BN
layers stay per-rank BN (each rank normalises its own batch; rank 0's running statistics are saved);
set ``sync_bn='torch'`` in the config (CUDA only) for SyncBN.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from alseg.errors import DeviceError, InputError, OutputExistsError, UnknownName
from alseg.files.atomic import check_not_input, write_text_atomic
from alseg.files.idlist import read_ids
from alseg.files.manifest import to_jsonable, write_manifest

METRICS_FORMAT = "alseg.metrics"
METRICS_VERSION = 1


@dataclass
class TrainResult:
    """What ``train`` produced. IoU values are percentages (0-100), as mmseg reports them."""

    work_dir: Path
    checkpoint_path: Path
    metrics_path: Path
    n_labeled: int
    iterations: int
    seconds: float
    final_miou: float
    best_miou: float
    per_class_iou: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    annotation: str | None = None  # precise|dominant when some image is labelled in regions, else None
    labelled_pixels: int = 0  # pixels inside labelled regions plus every pixel of fully labelled images
    labelled_percent: float = 100.0  # of all pixels of the labelled images


LAUNCHERS = ("auto", "none", "pytorch", "slurm")
# the environment each launcher sets: rank, world size, rank on this node
_LAUNCH_ENV = {"pytorch": ("RANK", "WORLD_SIZE", "LOCAL_RANK"), "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")}


@dataclass(frozen=True)
class Launch:
    """This process's place in a training: mmengine's ``launcher`` (none, pytorch, slurm) and its rank."""

    launcher: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.launcher != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes outputs and reports progress."""
        return self.rank == 0


def detect_launch(launcher: str = "auto", environ: Mapping[str, str] | None = None) -> Launch:
    """Which launcher started this process. ``auto``: ``pytorch`` when torchrun's ``RANK``, ``WORLD_SIZE``
    and ``LOCAL_RANK`` are set, else ``none``. ``pytorch``/``slurm`` need their variables (torchrun's, or
    srun's ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``)."""
    env = os.environ if environ is None else environ
    if launcher not in LAUNCHERS:
        raise UnknownName(f"unknown launcher {launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if launcher == "auto":
        launcher = "pytorch" if all(k in env for k in _LAUNCH_ENV["pytorch"]) else "none"
    if launcher == "none":
        return Launch()
    keys = _LAUNCH_ENV[launcher]
    missing = [k for k in keys if k not in env]
    if missing:
        how = "torchrun" if launcher == "pytorch" else "srun"
        raise InputError(f"--launcher {launcher}: {', '.join(missing)} not set; start alseg train under {how}, "
                         "or pass --launcher none")
    try:
        rank, world_size, local_rank = (int(env[k]) for k in keys)
    except ValueError:
        raise InputError(f"--launcher {launcher}: {', '.join(f'{k}={env[k]!r}' for k in keys)}: not integers") from None
    if not 0 <= rank < world_size or local_rank < 0:
        raise InputError(f"--launcher {launcher}: rank {rank} is not in a world of {world_size} processes")
    return Launch(launcher, rank, world_size, local_rank)


def _rank_device(device: str, launch: Launch):
    """The torch device of this rank: ``--device``, and under a launcher on CUDA ``cuda:LOCAL_RANK``."""
    from alseg.device import resolve_device

    torch_device = resolve_device(device)
    if not launch.distributed:
        return torch_device
    if torch_device.type == "cuda":
        if torch_device.index is not None and torch_device.index != launch.local_rank:
            raise DeviceError(f"--device {device}: under {launch.launcher} each process uses cuda:LOCAL_RANK "
                              f"(here cuda:{launch.local_rank}); pass --device cuda")
        return resolve_device(f"cuda:{launch.local_rank}")
    if torch_device.type != "cpu":
        raise DeviceError(f"--device {device}: distributed training runs on cuda (nccl) or cpu (gloo)")
    import torch

    if torch.cuda.is_available():  # mmengine moves the model to its own device choice before wrapping it
        raise DeviceError("--device cpu under a launcher while CUDA is visible: mmengine would place the model on "
                          "the GPU; hide the GPUs (CUDA_VISIBLE_DEVICES=) or pass --device cuda")
    if launch.launcher == "slurm":  # mmengine's slurm start sets a CUDA device unconditionally
        raise DeviceError("--launcher slurm needs CUDA; on CPU start the processes with torchrun (--launcher pytorch)")
    return torch_device


def _setup_distributed(cfg, launch: Launch, torch_device) -> None:
    """Point mmengine's runner at the launcher: ``launcher``, the backend (nccl on CUDA, gloo on CPU) and a
    DDP wrapper without ``device_ids`` on CPU (DDP refuses them for CPU modules). For ``pytorch`` alseg
    starts the process group itself, since mmengine's start calls ``torch.cuda.set_device`` even on CPU;
    the runner then finds it started and keeps it."""
    cfg.launcher = launch.launcher
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    env_cfg = cfg.get("env_cfg") or {}
    dist_cfg = dict(env_cfg.get("dist_cfg") or {}, backend=backend)
    cfg.env_cfg = dict(env_cfg, dist_cfg=dist_cfg)
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", bool(cfg.get("find_unused_parameters", False)))
    wrapper["device_ids"] = [launch.local_rank] if torch_device.type == "cuda" else None
    cfg.model_wrapper_cfg = wrapper
    if launch.launcher == "pytorch":
        import datetime

        import torch
        import torch.distributed as dist

        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
        if not dist.is_initialized():
            timeout = dist_cfg.get("timeout")
            kwargs = {} if timeout is None else {"timeout": datetime.timedelta(seconds=timeout)}
            dist.init_process_group(backend=backend, **kwargs)


def _summarise(metrics: Mapping[str, Any], names: list[str], iteration: int) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        v = float(v)
        return None if math.isnan(v) else v

    return {
        "iteration": iteration,
        "mIoU": num(metrics.get("mIoU", float("nan"))),
        "aAcc": num(metrics.get("aAcc", float("nan"))),
        "mAcc": num(metrics.get("mAcc", float("nan"))),
        "per_class_iou": {n: num(metrics.get(f"IoU.{n}", float("nan"))) for n in names},
    }


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet: what creating ``path`` would create."""
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            break
        missing = p
    return missing


def _removes_created_work_dir(fn):
    """On any failure, remove the work dir (and the parents) this call created: none is left half-made.

    Under a launcher only rank 0 does: it is the only writer. Under torchrun it looks before any rank can
    create the folder (the others create it only after the process group has started, which waits for
    rank 0); under slurm a faster rank may create it first, and then it is left in place."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any):
        try:
            is_main = detect_launch(kwargs.get("launcher", "auto")).is_main
        except Exception:  # a bad launcher: fn raises the same error before creating anything
            is_main = True
        created = _first_missing(Path(kwargs["work_dir"])) if is_main else None
        try:
            return fn(*args, **kwargs)
        except BaseException:
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            raise

    return wrapper


def _check_config_checkpoints(cfg, config_path) -> None:
    """Read every local checkpoint the runner would load (``load_from``, ``Pretrained`` init) through
    :func:`~alseg.files.checkpoint.load_weights_only`, so a refused or missing file fails before the runner
    exists. URLs (``https://``, ``open-mmlab://``) are left to mmengine, which loads them with
    ``torch.load(weights_only=True)`` under the same allowlist."""
    from alseg import mm
    from alseg.files.checkpoint import load_weights_only

    if cfg.get("resume"):
        raise InputError(f"{config_path}: resume=True: alseg train starts a fresh run in --out; to start "
                         "from a checkpoint's weights set load_from=<checkpoint> instead")
    seen: set[str] = set()
    for key, name in mm.config_checkpoints(cfg):
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name) or name in seen:
            continue
        seen.add(name)
        try:
            load_weights_only(name)
        except InputError as exc:
            raise InputError(f"{key}: {exc}") from None


@_removes_created_work_dir
def train(
    config_path: str | os.PathLike,
    *,
    labeled_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    val_ids_path: str | os.PathLike | None = None,
    device: str = "auto",
    seed: int = 0,
    max_iters: int | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    cfg_options: Mapping[str, Any] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    launcher: str = "auto",
    annotation: str = "precise",
    region_maps: Sequence[str | os.PathLike] = (),
) -> TrainResult | None:
    """Train the config's model on the ids in ``labeled_path``; see the module docstring for files.

    ``launcher`` (see :func:`detect_launch`): ``auto`` trains distributed when started by torchrun. Returns
    the result on rank 0 (and in a single process), ``None`` on the other ranks, which report no progress.

    The labeled ids are looked up in the config's train split (mmseg's dataset class, its ``ann_file``
    and wrappers; see :mod:`alseg.dataset`) and trained on through its train pipeline. Validation uses the
    config's val split, or only the ids of ``val_ids_path`` (which must be in that split).
    ``max_iters``/``batch_size`` override the config; ``cfg_options`` are dotted-key overrides applied first.

    ``labeled_path`` may be a labelled-state file: images labelled in regions are trained on their regions
    only, annotated by ``annotation`` (``precise``|``dominant``); superpixel units need their maps, from the
    ``region_maps`` stores or computed here (see the module docstring).
    """
    start = time.perf_counter()
    launch = detect_launch(launcher)
    if progress is None or not launch.is_main:
        progress = lambda advance=1, total=None: None  # noqa: E731
    work_dir = Path(work_dir)
    checkpoint_path = work_dir / "checkpoint.pth"
    metrics_path = work_dir / "metrics.json"
    # what train writes must not be what it reads (a work dir named like the labeled list, or the data root)
    region_maps = [Path(p) for p in (region_maps or ())]
    check_not_input([work_dir, checkpoint_path, metrics_path, work_dir / "manifest.json", work_dir / "checkpoint.json"],
                    [config_path, labeled_path, val_ids_path, data_root, *region_maps])
    blocked = next((p for p in (work_dir, *work_dir.parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise InputError(f"{blocked}: is a file; --out must be a folder (or a path alseg can create)")
    if checkpoint_path.exists() and not overwrite:
        raise OutputExistsError(f"{checkpoint_path}: output exists; pass --overwrite to replace it")
    from alseg import partial

    partial.check_annotation(annotation)
    state, is_state = partial.read_labels(labeled_path)  # a plain id list reads exactly as before
    labeled = state.ids
    n_partial = len(labeled) - len(state.full_ids)
    if not labeled:
        raise InputError(f"{labeled_path}: the labeled id list is empty; label some images first (e.g. select --strategy random)")
    if max_iters is not None and max_iters < 1:
        raise InputError(f"max_iters must be >= 1 (got {max_iters})")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"batch_size must be >= 1 (got {batch_size})")

    from alseg import mm

    torch_device = _rank_device(device, launch)
    cfg = mm.load_config(
        config_path, data_root=data_root, work_dir=work_dir, max_iters=max_iters, batch_size=batch_size, seed=seed,
        cfg_options=cfg_options,
    )
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    for key in ("train_cfg", "optim_wrapper", "train_dataloader"):
        if not cfg.get(key):
            raise InputError(f"{mm.find_config(config_path)}: the config has no {key}; alseg train needs a "
                             "training schedule (e.g. inherit mmseg's _base_/schedules/schedule_20k.py)")
    from alseg import dataset as D

    # The labeled ids, found in the train split by mmseg's own dataset classes, through its train pipeline.
    train_index = D.build_index(cfg, "train")
    train_index.locate(labeled, str(labeled_path))
    train_index.check_files(labeled, masks=True, source=str(labeled_path))
    cfg.train_dataloader.dataset = D.subset_config(cfg.train_dataloader.dataset, labeled_path, "train", seed)
    stores = partial.open_stores(region_maps)  # each must be a region-map store, used or not
    if n_partial:
        head_ignore = int(cfg.model.decode_head.get("ignore_index", 255))
        if head_ignore != train_index.ignore_index:
            raise InputError(f"{mm.find_config(config_path)}: the dataset's ignore_index is {train_index.ignore_index} "
                             f"but model.decode_head.ignore_index is {head_ignore}; partial labels need them equal "
                             "(else unlabelled pixels are trained on)")
    if not cfg.get("val_dataloader"):
        raise InputError(f"{config_path}: the config has no val_dataloader; alseg train evaluates on it")
    if val_ids_path is not None:
        val_ids = read_ids(val_ids_path)
        if not val_ids:
            raise InputError(f"{val_ids_path}: the val id list is empty")
        val_index = D.build_index(cfg, "val")
        val_index.locate(val_ids, str(val_ids_path))
        val_index.check_files(val_ids, masks=True, source=str(val_ids_path))
        cfg.val_dataloader.dataset = D.subset_config(cfg.val_dataloader.dataset, val_ids_path, "val", seed)
        n_val = len(val_ids)
    else:
        n_val = len(D.build_index(cfg, "val").ids)
        if not n_val:
            raise InputError(f"{config_path}: the config's val split holds no images under its data_root")
    names = train_index.class_names or mm.class_names(cfg)
    n_head = int(cfg.model.decode_head.num_classes)
    if n_head != len(names):
        raise InputError(f"{config_path}: the decode head has num_classes={n_head} but the dataset names "
                         f"{len(names)} classes; set model.decode_head.num_classes")

    metric_type = mm.register_iou_metric()
    for key in ("val_evaluator",):
        ev = cfg.get(key)
        if ev and ev.get("type") == "IoUMetric":
            ev["type"] = metric_type
    # train and validate only: alseg's infer is the test stage
    cfg.test_dataloader = None
    cfg.test_evaluator = None
    cfg.test_cfg = None
    cfg.log_level = "WARNING"
    if cfg.get("default_hooks"):
        cfg.default_hooks.checkpoint = None
        if cfg.default_hooks.get("logger"):
            cfg.default_hooks.logger.interval = max(int(cfg.default_hooks.logger.get("interval", 50)), 1)
    total = int(cfg.train_cfg.max_iters)
    _check_config_checkpoints(cfg, config_path)
    if launch.distributed:
        _setup_distributed(cfg, launch, torch_device)  # before any rank creates the work dir
    work_dir.mkdir(parents=True, exist_ok=True)
    labels = _prepare_labels(cfg, state, train_index, stores, labeled_path=labeled_path, annotation=annotation,
                             is_state=is_state, work_dir=work_dir, launch=launch)
    result = _run(cfg, config_path=config_path, labeled_path=labeled_path, work_dir=work_dir, data_root=data_root,
                  val_ids_path=val_ids_path, seed=seed, cfg_options=cfg_options, progress=progress, launch=launch,
                  torch_device=torch_device, names=names, n_val=n_val, n_labeled=len(labeled), total=total,
                  start=start, labels=labels, annotation=annotation, region_maps=region_maps)
    if launch.distributed:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the outputs: every rank leaves now
        dist.destroy_process_group()  # on success only: after a failure a pending collective could hang it
    return result


def _prepare_labels(cfg, state, train_index, stores: Mapping[str, Path], *, labeled_path, annotation: str,
                    is_state: bool, work_dir: Path, launch: Launch) -> dict[str, Any]:
    """Resolve and count the labelled pixels (a bad region fails here, in one line naming the labelled
    file), compute missing superpixel maps (rank 0; the others wait) and, when some image is labelled in
    regions, insert the partial-label transform into the train pipeline. Returns ``metrics.json``'s
    ``labels`` record."""
    from alseg import partial
    from alseg.files.labelled import FULL

    n_partial = sum(1 for units in state.images.values() if FULL not in units)
    region_maps: dict[str, Any] = {}
    if n_partial:
        image_path = lambda i: train_index.data_info(i)["img_path"]  # noqa: E731
        if launch.is_main:
            region_maps = partial.ensure_superpixel_stores(state, stores, work_dir, image_path)
        if launch.distributed:
            import torch.distributed as dist

            dist.barrier()  # rank 0 has written the computed maps
            if not launch.is_main:
                region_maps = partial.ensure_superpixel_stores(state, stores, work_dir, image_path, compute=False)
    lookup = partial.StoreLookup({u: r["path"] for u, r in region_maps.items()})
    try:
        count = partial.count_labels(state, lambda i: train_index.data_info(i)["seg_map_path"], lookup,
                                     str(labeled_path))
    finally:
        lookup.close()
    if n_partial:
        partial.insert_transform(
            cfg.train_dataloader.dataset, train_index.leaves, labelled_file=str(Path(labeled_path).resolve()),
            annotation=annotation, region_maps={u: str(Path(r["path"]).resolve()) for u, r in region_maps.items()},
            ignore_index=train_index.ignore_index)
    return {
        "source": "labelled state" if is_state else "id list",
        "annotation": annotation if n_partial else None,
        "n_full": count.n_full,
        "n_partial": count.n_partial,
        "regions": count.per_unit,
        "labelled_pixels": count.labelled_pixels,
        "image_pixels": count.image_pixels,
        "labelled_percent": count.labelled_percent,
        "ignore_index": train_index.ignore_index,
        "region_maps": region_maps,
    }


def _run(cfg, *, config_path, labeled_path, work_dir: Path, data_root, val_ids_path, seed: int, cfg_options,
         progress, launch: Launch, torch_device, names: list[str], n_val: int, n_labeled: int, total: int,
         start: float, labels: dict[str, Any], annotation: str, region_maps: Sequence[Path]) -> TrainResult | None:
    """Build mmengine's runner, train, and (on rank 0) write the checkpoint, metrics and manifest."""
    from mmengine.model import is_model_wrapper
    from mmengine.runner import Runner

    from alseg import mm
    from alseg.files.checkpoint import allow_runner_checkpoints, refusal, sidecar_path, write_checkpoint

    checkpoint_path, metrics_path = work_dir / "checkpoint.pth", work_dir / "metrics.json"

    progress_hook, metrics_hook = mm.make_train_hooks(progress, total)
    # mmengine logs to stdout; alseg's stdout carries only the result, so its console goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        mm.mm_logs_to_stderr()
        try:
            runner = Runner.from_cfg(cfg)
        except Exception as exc:
            if isinstance(exc, InputError) or exc.__class__.__name__ == "CompiledOpsRequired":
                raise
            raise InputError(f"{config_path}: cannot build the runner ({type(exc).__name__}: {exc})") from None
        mm.mm_logs_to_stderr()
        runner.register_hook(progress_hook, priority="LOWEST")
        runner.register_hook(metrics_hook, priority="LOWEST")
        if not launch.distributed:
            runner.model.to(torch_device)  # the runner picks cuda when present; --device wins
        try:
            with allow_runner_checkpoints():  # mmengine's own torch.load of load_from / Pretrained weights
                runner.train()
        except pickle.UnpicklingError as exc:
            raise refusal("a checkpoint the config names (load_from or a Pretrained init_cfg)", exc) from None
        except InputError as exc:
            # raised in a DataLoader worker, it comes back with the worker's traceback in its message
            last = str(exc).strip().splitlines()[-1]
            raise InputError(last.removeprefix("alseg.errors.InputError: ")) from None
        if not metrics_hook.history or metrics_hook.history[-1]["iteration"] != runner.iter:
            runner.val()
    history = [_summarise(h["metrics"], names, h["iteration"]) for h in metrics_hook.history]
    final = history[-1]
    best = max(history, key=lambda h: -1.0 if h["mIoU"] is None else h["mIoU"])

    if not launch.is_main:
        return None  # rank 0 alone writes (and locks) the outputs; train() waits for it at a barrier
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    metainfo = getattr(runner.train_dataloader.dataset, "metainfo", None) or {}
    dataset_meta = {"classes": list(names), "palette": metainfo.get("palette")}
    write_checkpoint(checkpoint_path, model.state_dict(), dataset_meta=dataset_meta, iteration=int(runner.iter),
                     model_config_sha256=mm.model_config_sha256(cfg))

    doc = {
        "format": METRICS_FORMAT,
        "format_version": METRICS_VERSION,
        "units": "percent",
        "final": final,
        "best": best,
        "history": history,
        "class_names": names,
        "n_labeled": n_labeled,
        "labels": labels,
        "n_val": n_val,
        "iterations": int(runner.iter),
    }
    write_text_atomic(metrics_path, json.dumps(to_jsonable(doc), indent=2) + "\n")
    seconds = time.perf_counter() - start
    result = TrainResult(
        work_dir=work_dir,
        checkpoint_path=checkpoint_path,
        metrics_path=metrics_path,
        n_labeled=n_labeled,
        iterations=int(runner.iter),
        seconds=seconds,
        final_miou=final["mIoU"] if final["mIoU"] is not None else float("nan"),
        best_miou=best["mIoU"] if best["mIoU"] is not None else float("nan"),
        per_class_iou=final["per_class_iou"],
        device=str(torch_device),
        annotation=labels["annotation"],
        labelled_pixels=labels["labelled_pixels"],
        labelled_percent=labels["labelled_percent"],
    )
    write_manifest(
        work_dir,
        stage="train",
        args=dict(
            config_path=str(config_path), labeled_path=str(labeled_path), work_dir=str(work_dir),
            data_root=None if data_root is None else str(data_root),
            val_ids_path=None if val_ids_path is None else str(val_ids_path), device=str(torch_device),
            seed=seed, max_iters=int(cfg.train_cfg.max_iters), batch_size=int(cfg.train_dataloader.batch_size),
            cfg_options=dict(cfg_options or {}), launcher=launch.launcher, world_size=launch.world_size,
            annotation=annotation, region_maps=[str(p) for p in region_maps],
        ),
        inputs=[mm.find_config(config_path), labeled_path, val_ids_path, *region_maps],
        outputs=[checkpoint_path, sidecar_path(checkpoint_path), metrics_path,
                 *(Path(r["path"]) for r in labels["region_maps"].values() if r["source"] == "computed")],
        seconds=seconds,
        result=result,
    )
    return result
