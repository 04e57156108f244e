"""The Python API: every stage as a function, with the CLI's option names as keyword arguments.

``alseg train CONFIG --labeled l.txt --out r1`` is ``api.train(CONFIG, labeled="l.txt", out="r1")``: a
dash in an option name becomes an underscore, a comma list may be given as a list, ``--cfg-options`` as a
dict or as mmseg's ``KEY=VALUE`` strings. Each function returns the stage's result (a dataclass; the
CLI's ``--json`` prints the same object), writes the same files and raises
:class:`alseg.errors.AlsegError` where the CLI prints its one-line error. ``progress`` takes the CLI bar's
hook, ``progress(advance, total=None, **info)``; by default nothing is shown.

    from alseg import api
    api.train("demo_unet_tiny", labeled="labeled.txt", out="r1/model", data_root="demo/data")

``docs/python-api.md`` runs a whole round this way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

PathLike = str | os.PathLike
Progress = Callable[..., None] | None
CfgOptions = Mapping[str, Any] | Sequence[str] | None

__all__ = ["train", "infer", "score", "calibrate", "select", "run", "report"]


def _cfg(cfg_options: CfgOptions) -> dict[str, Any]:
    if not cfg_options:
        return {}
    if isinstance(cfg_options, Mapping):
        return dict(cfg_options)
    from alseg.mm import parse_cfg_options

    return parse_cfg_options(list(cfg_options))


def _names(value: str | Iterable[str] | None) -> list[str]:
    """A comma list as the CLI takes it, or a Python list of names."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _paths(value: PathLike | Iterable[PathLike] | None) -> list[PathLike]:
    """A comma list of paths as the CLI takes it, one path, or a Python list of paths."""
    if value is None:
        return []
    if isinstance(value, str):
        return _names(value)
    return [value] if isinstance(value, os.PathLike) else list(value)


def _progress(progress: Progress) -> Callable[..., None]:
    return progress or (lambda advance=1, total=None, **info: None)


def train(config: PathLike, *, labeled: PathLike, out: PathLike, data_root: PathLike | None = None,
          val_ids: PathLike | None = None, device: str = "auto", seed: int = 0, max_iters: int | None = None,
          batch_size: int | None = None, cfg_options: CfgOptions = None, launcher: str = "auto",
          annotation: str = "precise", region_maps: PathLike | Iterable[PathLike] | None = None,
          overwrite: bool = False, progress: Progress = None):
    """``alseg train``: train on exactly the ``labeled`` ids (an id list or a labelled-state file, regions
    annotated ``precise``|``dominant``); writes checkpoint, metrics and manifest to ``out``."""
    from alseg.stages.train import train as _train

    return _train(config, labeled_path=labeled, work_dir=out, data_root=data_root, val_ids_path=val_ids,
                  device=device, seed=seed, max_iters=max_iters, batch_size=batch_size, overwrite=overwrite,
                  cfg_options=_cfg(cfg_options), progress=_progress(progress), launcher=launcher,
                  annotation=annotation, region_maps=_paths(region_maps))


def infer(config: PathLike, *, checkpoint: PathLike, ids: PathLike, out: PathLike, data_root: PathLike | None = None,
          split: str = "auto", with_labels: bool = False, embeddings: str | Iterable[str] | None = None,
          resolution: str = "native", batch_size: int = 8, device: str = "auto", cfg_options: CfgOptions = None,
          shard: str | None = None, logits: str = "native", scores: str | Iterable[str] | None = None,
          scores_out: PathLike | None = None, calibration: PathLike | None = None, aggregation: str = "mean",
          q: float = 10.0, mc: int = 0, mc_scope: str = "head", mc_seed: int = 0, resume: bool = False,
          overwrite: bool = False, progress: Progress = None):
    """``alseg infer``: logits (and labels, embeddings, fused scores, MC-dropout statistics) of the ``ids``
    images into ``out``."""
    from alseg.fused import parse_scores
    from alseg.stages.infer import infer as _infer, parse_shard

    from alseg.errors import InputError

    names, crc_path = parse_scores(",".join(_names(scores))) if scores else ([], None)
    if crc_path is not None and calibration is not None and Path(crc_path) != Path(calibration):
        raise InputError(f"scores: crc:{crc_path} and calibration {calibration} name two calibrations; give one")
    calibration = crc_path or calibration
    return _infer(config, checkpoint_path=checkpoint, ids_path=ids, out_path=out, data_root=data_root, device=device,
                  batch_size=batch_size, with_labels=with_labels, embeddings=_names(embeddings), resolution=resolution,
                  overwrite=overwrite, resume=resume, split=split, cfg_options=_cfg(cfg_options),
                  progress=_progress(progress), shard=parse_shard(shard) if shard else None, logits=logits,
                  scores=names, scores_out_path=scores_out, calibration_path=calibration, aggregation=aggregation, q=q,
                  mc=mc, mc_scope=mc_scope, mc_seed=mc_seed)


def score(pool: PathLike, *, strategy: str | Iterable[str], out: PathLike, calibration: PathLike | None = None,
          aggregation: str = "mean", q: float = 10.0, save_risk_maps: int = 0, batch_size: int = 16,
          device: str = "cpu", overwrite: bool = False, progress: Progress = None, unit: str = "image",
          region_reduction: str = "mean", region_store: PathLike | None = None, dataset_config: str | None = None,
          data_root: PathLike | None = None, workers: int | None = None):
    """``alseg score``: image scores and strategy embeddings of every image of ``pool`` into ``out`` (with a
    region ``unit``: the score of every region, for ``select(unit=..., scores=...)``). ``workers`` > 1
    spawns scoring processes: a script needs the ``if __name__ == "__main__":`` guard."""
    from alseg.stages.score import score as _score

    return _score(pool, strategies=_names(strategy), out_path=out, calibration_path=calibration,
                  aggregation=aggregation, q=q, save_risk_maps=save_risk_maps, batch_size=batch_size,
                  device=device, workers=workers, overwrite=overwrite, progress=_progress(progress), unit=unit,
                  region_reduction=region_reduction, region_store=region_store, dataset_config=dataset_config,
                  data_root=data_root)


def calibrate(pool: PathLike, *, out: PathLike, alpha: float = 0.05, bins: int = 1000, t_min: float = 0.001,
              train_ids: PathLike | None = None, evaluate: PathLike | None = None, batch_size: int = 16,
              device: str = "cpu", overwrite: bool = False, progress: Progress = None):
    """``alseg calibrate``: CRC-AL class-wise thresholds from a labeled calibration pool into ``out``."""
    from alseg.stages.calibrate import calibrate as _calibrate

    return _calibrate(pool, out_path=out, alpha=alpha, bins=bins, t_min=t_min, train_ids_path=train_ids,
                      evaluate_path=evaluate, batch_size=batch_size, device=device, overwrite=overwrite,
                      progress=_progress(progress))


def select(*, strategy: str, budget: int | None = None, labeled: PathLike, out: PathLike, pool: PathLike | None = None,
           scores: PathLike | None = None, pool_ids: PathLike | None = None, calibration: PathLike | None = None,
           seed: int = 0, stochastic: bool = False, groups: int | None = None, base_score: str = "entropy",
           embedding: str = "bottleneck", badge_embedding: str = "logit", tau: float = 0.5,
           selector: str = "top-diverse-k", aggregation: str = "mean", q: float = 10.0, sampler: str = "top",
           beta: float = 1.0, device: str = "auto", update: bool = False, overwrite: bool = False,
           progress: Progress = None, oracle: bool = False, round: str | None = None,  # noqa: A002
           exclude_classes: str | None = None, min_count: int = 1, class_share: float = 0.66,
           unit: str = "image", budget_pixels: str | int | None = None, budget_clicks: int | None = None,
           region_reduction: str = "mean", max_per_image: int | None = None, annotation: str = "precise",
           dataset_config: str | None = None, data_root: PathLike | None = None,
           region_store: PathLike | None = None):
    """``alseg select``: the ``budget`` images to label next, written to ``out`` (and appended to ``labeled``
    with ``update``). With a region ``unit`` (``patch:S``, ``superpixel:N``, ``pixel:P``) the regions to label
    next under one of ``budget`` (regions), ``budget_pixels`` (``"2%"`` or a count) or ``budget_clicks``,
    written to ``out`` as a labelled-state file and merged into ``labeled`` with ``update`` (docs/regions.md)."""
    from alseg.stages.select import select as _select

    return _select(strategy, budget=budget, labeled_path=labeled, out_path=out, pool_path=pool, scores_path=scores,
                   pool_ids_path=pool_ids, calibration_path=calibration, seed=seed, stochastic=stochastic,
                   groups=groups, base_score=base_score, embedding=embedding, badge_embedding=badge_embedding,
                   tau=tau, selector=selector, aggregation=aggregation, q=q, device=device, update=update,
                   overwrite=overwrite, progress=_progress(progress), sampler=sampler, beta=beta, oracle=oracle,
                   round=round, exclude_classes=exclude_classes, min_count=min_count, class_share=class_share,
                   unit=unit, budget_pixels=budget_pixels, budget_clicks=budget_clicks,
                   region_reduction=region_reduction, max_per_image=max_per_image, annotation=annotation,
                   dataset_config=dataset_config, data_root=data_root, region_store=region_store)


def run(experiment: PathLike, *, out: PathLike | None = None, seeds: str | Iterable[int] | None = None,
        device: str | None = None, on_event: Callable[..., None] | None = None):
    """``alseg run``: the experiment's strategies × seeds × rounds into ``out``; rerun to resume."""
    from alseg.stages.run import run as _run

    seed_list = None if seeds is None else [int(s) for s in _names(seeds if isinstance(seeds, str) else map(str, seeds))]
    kwargs: dict[str, Any] = {"exp_dir": None if out is None else Path(out), "seeds": seed_list, "device": device}
    if on_event is not None:
        kwargs["on_event"] = on_event
    return _run(experiment, **kwargs)


def report(exp_dir: PathLike, *, out: PathLike, round: int | None = None, gallery_size: int = 6,  # noqa: A002
           overwrite: bool = False, progress: Progress = None):
    """``alseg report``: the HTML report of an experiment (or of rounds made by hand) into ``out``."""
    from alseg.stages.report import report as _report

    return _report(exp_dir, out_path=out, gallery_round=round, gallery_size=gallery_size, overwrite=overwrite,
                   progress=_progress(progress))
