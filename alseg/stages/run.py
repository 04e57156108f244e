"""``alseg run``: the round loop of an experiment, built from the same stage functions a user runs by hand.

For each seed, round 0 (a random initial labeled set and the first model) is computed once and shared by
all strategies; each later round runs ``infer`` → (``calibrate``) → ``score`` → ``select`` → ``train``
into ``EXP/seed-S/STRATEGY/round-RR/`` (docs/experiment.md). ``random`` never runs inference.

Resume: after each step a record ``<output>.step.json`` stores the step's arguments and the sha256 of its
inputs. Rerunning skips a step when its record matches and its outputs exist; a changed input (say a new
checkpoint) changes a digest and reruns that step and, through its new outputs, everything downstream.

Region rounds (a strategy whose ``unit`` is not ``image``, or an experiment with ``budget_pixels`` /
``budget_clicks``): ``infer`` → ``select --unit`` (:mod:`alseg.stages.select_regions`) → ``train`` on the
labelled state ``labeled.jsonl`` (the previous state merged with ``selected.jsonl``). Superpixel maps are
computed once per experiment into ``EXP/regions/<unit>.h5`` (a ``regions`` step before the first round) and
every select and train reads that store. Every round dir gets ``cost.json`` (:data:`COST_FORMAT`): images
touched, labelled pixels and estimated clicks so far (docs/experiment.md).

Training on several processes (``nproc = N`` in the experiment): each ``train`` step runs
``python -m torch.distributed.run --standalone --nproc-per-node N -m alseg.commands train ... --json`` as a
subprocess (:func:`torchrun_train_command`) and reads the work dir it writes, as an in-process training's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from alseg.errors import AlsegError, InputError
from alseg.experiment import Experiment, load_experiment, round_dir, seed_dir
from alseg.files.atomic import write_text_atomic
from alseg.files.idlist import read_ids, write_ids
from alseg.files.manifest import file_digest, to_jsonable
from alseg.registry import SCALAR_SCORES, get_strategy


DEFAULT_MC = 10  # MC-dropout passes of bald, mc-entropy and variation-ratio when the experiment gives none
COST_FORMAT, COST_VERSION = "alseg.cost", 1  # cost.json of every round (docs/experiment.md)
REGION_STORES = "regions"  # EXP/regions/<unit slug>.h5: one superpixel store per unit, shared by every round
Step = tuple[int, "str | None", int, str]  # (seed, strategy, round, stage): one call of a stage function


@dataclass
class RunEvent:
    """What the run is doing, for a live view. ``kind``: plan, start, skip, done, progress, metric.

    ``plan`` comes first, once: ``plan`` lists every step the run will execute (:func:`plan_steps`) and
    ``total`` is their number. ``start``/``skip``/``done``/``progress`` carry ``step``, the 1-based index of
    the step in that list, and ``n_steps``; a skipped (reused) step counts as done. ``info`` holds what a
    stage reports beside its progress (``loss`` while training).
    """

    kind: str
    seed: int
    strategy: str | None
    round: int
    stage: str
    advance: int = 0
    total: int | None = None
    miou: float | None = None
    n_labeled: int | None = None
    seconds: float | None = None
    step: int | None = None
    n_steps: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    plan: list[Step] | None = None


@dataclass
class RunResult:
    exp_dir: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # seed, strategy, round, n_labeled, miou
    steps_run: int = 0
    steps_reused: int = 0
    seconds: float = 0.0
    steps_planned: int = 0  # len(plan_steps(...)); steps_run + steps_reused equals it after a complete run


def _record_path(output: Path) -> Path:
    return output.parent / f"{output.name}.step.json" if output.suffix else output / "step.json"


def _digests(inputs: list[Path | None]) -> dict[str, str | None]:
    # file_digest: a pool file's metadata digest, so a 100 GB pool is not read again at every check
    return {str(p): file_digest(p) for p in inputs if p is not None}


def region_store_path(exp_dir: Path, unit: str) -> Path:
    """``EXP/regions/<unit slug>.h5``: the region maps of ``unit`` for the whole pool, computed once."""
    from alseg.units import parse_unit

    return Path(exp_dir) / REGION_STORES / f"{parse_unit(unit).slug}.h5"


def _state_items(state) -> list:
    """The selections that rebuild ``state`` (a labelled state) when merged into another one."""
    from alseg.files.labelled import Labelled

    return [Labelled(i, u, regions) for i, units in state.images.items() for u, regions in units.items()]


class _Runner:
    def __init__(self, exp: Experiment, exp_dir: Path, device: str, on_event: Callable[[RunEvent], None]):
        self.exp, self.exp_dir, self.device, self.on_event = exp, exp_dir, device, on_event
        self.result = RunResult(exp_dir=str(exp_dir))
        self.n_steps = len(plan_steps(exp))
        self.k = 0  # steps started or skipped so far
        self._source = None
        self._pool_pixels: int | None = None

    def _key(self, stage: str, args: dict[str, Any], inputs: list[Path | None]) -> dict[str, Any]:
        key = {"stage": stage, "args": to_jsonable(args), "inputs": _digests(inputs)}
        # paths inside the tree are recorded relative to it, so a copied or moved tree still resumes
        return json.loads(json.dumps(key).replace(str(self.exp_dir.resolve()), "$EXP"))

    def step(self, where: tuple[int, str | None, int], stage: str, output: Path, args: dict[str, Any],
             inputs: list[Path | None], fn: Callable[[Callable[..., None]], Any]) -> bool:
        """Run ``fn(progress)`` unless a matching record says ``output`` is already done. True if it ran."""
        seed, strategy, rnd = where
        self.k += 1
        at = {"step": self.k, "n_steps": self.n_steps}
        record = _record_path(output)
        key = self._key(stage, args, inputs)
        if record.is_file() and output.exists():
            try:
                if json.loads(record.read_text(encoding="utf-8")).get("key") == key:
                    self.result.steps_reused += 1
                    self.on_event(RunEvent("skip", seed, strategy, rnd, stage, **at))
                    return False
            except json.JSONDecodeError:
                pass
        self.on_event(RunEvent("start", seed, strategy, rnd, stage, **at))

        def progress(advance: int = 1, total: int | None = None, **info: Any) -> None:
            self.on_event(RunEvent("progress", seed, strategy, rnd, stage, advance=advance, total=total, info=info,
                                   **at))

        t0 = time.perf_counter()
        fn(progress)
        seconds = time.perf_counter() - t0
        write_text_atomic(record, json.dumps({"key": key, "seconds": seconds}, indent=1) + "\n")
        self.result.steps_run += 1
        self.on_event(RunEvent("done", seed, strategy, rnd, stage, seconds=seconds, **at))
        return True

    # -- the dataset at original resolution (image sizes, ground truth for clicks) ---------------------
    @property
    def source(self):
        """The pool's images and label maps through the config's train split (sizes, clicks, superpixels)."""
        if self._source is None:
            from alseg.stages.select_regions import ImageSource

            exp = self.exp
            self._source = ImageSource(str(exp.config), None if exp.data_root is None else str(exp.data_root),
                                       "train", read_ids(exp.pool_ids), str(exp.pool_ids))
        return self._source

    def pool_pixels(self) -> int:
        if self._pool_pixels is None:
            self._pool_pixels = int(sum(h * w for h, w in map(self.source.shape, read_ids(self.exp.pool_ids))))
        return self._pool_pixels

    def image_clicks(self, ids: list[str]) -> int | None:
        """Clicks to label ``ids`` whole (c_c + c_p each, docs/regions.md); None without ground truth."""
        from alseg.cost import image_clicks

        src = self.source
        if not src.has_labels(ids):
            return None
        return int(sum(image_clicks(src.labels(i), ignore=src.ignore_index) for i in ids))

    def cost(self, d: Path, args: dict[str, Any], inputs: list[Path | None],
             compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``d/cost.json`` (what is labelled after this round, cumulative): recomputed only when its
        inputs changed (a record beside it, as for steps; not a step of the plan)."""
        path = d / "cost.json"
        record = _record_path(path)
        key = self._key("cost", args, inputs)
        if path.is_file() and record.is_file():
            try:
                if json.loads(record.read_text(encoding="utf-8")).get("key") == key:
                    return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                pass
        c = compute()
        pool_pixels = int(c["pool_pixels"])
        doc = {"format": COST_FORMAT, "format_version": COST_VERSION, "round": args["round"],
               "images_touched": int(c["images_touched"]), "labelled_pixels": int(c["labelled_pixels"]),
               "pool_pixels": pool_pixels,
               "labelled_percent": 100.0 * int(c["labelled_pixels"]) / pool_pixels if pool_pixels else 0.0,
               "clicks": None if c["clicks"] is None else int(c["clicks"]), "unit": args["unit"],
               "annotation": args["annotation"]}
        write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
        write_text_atomic(record, json.dumps({"key": key}, indent=1) + "\n")
        return doc

    def image_cost(self, d: Path, rnd: int, labeled: Path, new: list[str], prev_cost: Path | None) -> dict[str, Any]:
        """cost.json of a round of whole images: ``labeled`` after it, ``new`` the ids it added."""
        def compute() -> dict[str, Any]:
            ids = read_ids(labeled)
            clicks = self.image_clicks(new)
            if prev_cost is not None and clicks is not None:
                before = json.loads(prev_cost.read_text(encoding="utf-8"))["clicks"]
                clicks = None if before is None else before + clicks
            return {"images_touched": len(ids), "labelled_pixels": sum(h * w for h, w in map(self.source.shape, ids)),
                    "pool_pixels": self.pool_pixels(), "clicks": clicks}

        args = {"round": rnd, "unit": "image", "annotation": "precise", "new": len(new)}
        return self.cost(d, args, [labeled, prev_cost], compute)

    # -- stages ----------------------------------------------------------------------------------------
    def region_maps(self, unit: str) -> None:
        """The ``regions`` step: ``unit``'s region maps of every pool image into ``EXP/regions/``, once."""
        from alseg.regions import ensure_region_maps, region_map_params

        exp = self.exp
        store = region_store_path(self.exp_dir, unit)
        store.parent.mkdir(parents=True, exist_ok=True)
        ids = read_ids(exp.pool_ids)

        def fn(progress: Callable[..., None]) -> None:
            progress(0, total=len(ids))
            ensure_region_maps(store, unit, ids, self.source.image, progress=lambda n: progress(n))

        self.step((exp.seeds[0], None, 0), "regions", store,
                  {"unit": unit, "params": region_map_params(unit), "data_root": exp.data_root},
                  [exp.pool_ids], fn)

    def train(self, where, labeled: Path, work_dir: Path, *, cost: dict[str, Any] | None = None,
              region: dict[str, Any] | None = None) -> None:
        """Train on ``labeled``; ``region`` (a labelled-state round): ``annotation`` and ``region_maps``, and
        iterations from the labelled pixels in ``cost`` counted in images of the pool's mean size."""
        from alseg.stages.train import train

        exp, seed = self.exp, where[0]
        ckpt = work_dir / "checkpoint.pth"
        if region is None:
            n_labeled = len(read_ids(labeled))
            max_iters = exp.iterations(n_labeled)
        else:
            from alseg.partial import read_labels

            n_labeled = len(read_labels(labeled)[0].ids)
            n_pool = len(read_ids(exp.pool_ids))
            max_iters = exp.iterations(Fraction(int(cost["labelled_pixels"]) * n_pool, int(cost["pool_pixels"])))
        annotation = None if region is None else region["annotation"]
        region_maps = [] if region is None else list(region["region_maps"])
        args = {"config": exp.config, "labeled": labeled, "seed": seed, "max_iters": max_iters,
                "batch_size": exp.batch_size, "val_ids": exp.val_ids, "data_root": exp.data_root,
                **({"cfg_options": exp.cfg_options} if exp.cfg_options else {}),
                **({"nproc": exp.nproc} if exp.nproc > 1 else {}),  # N processes: N x batch_size per step
                **({"annotation": annotation, "region_maps": region_maps} if region is not None else {})}

        def fn(progress: Callable[..., None]) -> None:
            if exp.nproc > 1 or exp.launcher == "torchrun":
                command = torchrun_train_command(exp, labeled=labeled, work_dir=work_dir, seed=seed,
                                                 max_iters=max_iters, device=self.device, annotation=annotation,
                                                 region_maps=region_maps)
                run_train_command(command, work_dir=work_dir, progress=progress, total=max_iters)
            else:
                train(exp.config, labeled_path=labeled, work_dir=work_dir, data_root=exp.data_root,
                      val_ids_path=exp.val_ids, device=self.device, seed=seed, max_iters=max_iters,
                      batch_size=exp.batch_size, overwrite=True, cfg_options=exp.cfg_options, progress=progress,
                      launcher="none",  # one process, whatever the environment says
                      **({"annotation": annotation, "region_maps": region_maps} if region is not None else {}))

        self.step(where, "train", ckpt, args, [exp.config, labeled, exp.val_ids, *region_maps], fn)
        metrics = json.loads((work_dir / "metrics.json").read_text(encoding="utf-8"))
        miou = float(metrics["final"]["mIoU"])
        row = {"seed": where[0], "strategy": where[1], "round": where[2], "n_labeled": n_labeled, "miou": miou}
        if cost is not None:
            row.update(unit=cost["unit"], labelled_pixels=cost["labelled_pixels"],
                       labelled_percent=cost["labelled_percent"], clicks=cost["clicks"])
        self.result.rows.append(row)
        self.on_event(RunEvent("metric", where[0], where[1], where[2], "train", miou=miou, n_labeled=n_labeled))

    def infer(self, where, ckpt: Path, ids: Path, out: Path, *, with_labels=False, embeddings=(),
              mc: dict[str, Any] | None = None) -> None:
        from alseg.stages.infer import infer

        exp = self.exp
        args = {"config": exp.config, "checkpoint": ckpt, "ids": ids, "with_labels": with_labels,
                "embeddings": list(embeddings), "data_root": exp.data_root,
                **({"cfg_options": exp.cfg_options} if exp.cfg_options else {}), **(mc or {})}
        self.step(where, "infer", out, args, [exp.config, ckpt, ids], lambda progress: infer(
            exp.config, checkpoint_path=ckpt, ids_path=ids, out_path=out, data_root=exp.data_root,
            device=self.device, batch_size=exp.infer_batch_size, with_labels=with_labels,
            embeddings=tuple(embeddings), overwrite=True, cfg_options=exp.cfg_options, progress=progress,
            resume="auto",  # a killed run's finished batches, when they came from these inputs
            **(mc or {})))

    # -- the loop --------------------------------------------------------------------------------------
    def round0(self, seed: int) -> None:
        from alseg.stages.select import select

        exp = self.exp
        d = round_dir(self.exp_dir, seed, None, 0)
        d.mkdir(parents=True, exist_ok=True)
        empty = d / "none.txt"
        if not empty.exists():
            write_ids(empty, [])
        labeled = d / "labeled.txt"
        where = (seed, None, 0)
        self.step(where, "select", labeled, {"strategy": "random", "budget": exp.sizes[0], "seed": seed},
                  [exp.pool_ids], lambda progress: select(
                      "random", budget=exp.sizes[0], labeled_path=empty, pool_ids_path=exp.pool_ids,
                      out_path=labeled, seed=seed, overwrite=True, progress=progress))
        cost = self.image_cost(d, 0, labeled, read_ids(labeled), None)
        self.train(where, labeled, d / "train", cost=cost)

    def strategy_round(self, seed: int, strategy: str, rnd: int) -> None:
        from alseg.stages.calibrate import calibrate
        from alseg.stages.score import score
        from alseg.stages.select import select

        exp = self.exp
        if exp.is_region(strategy):
            return self.region_round(seed, strategy, rnd)
        base = exp.base(strategy)  # a variant's folder is its own name; its stages are its base strategy's
        strat = get_strategy(base)
        params = dict(exp.params.get(strategy, {}))
        params.pop("strategy", None)
        params.pop("unit", None)  # "image": this path
        crc_opts = {k: params.pop(k) for k in ("alpha", "t_min", "bins", "save_risk_maps") if k in params}
        mc_opts = ({"mc": int(params.pop("mc", DEFAULT_MC)), "mc_scope": str(params.pop("mc_scope", "head"))}
                   if strat.needs == "mc" else None)
        prev = round_dir(self.exp_dir, seed, strategy, rnd - 1)
        d = round_dir(self.exp_dir, seed, strategy, rnd)
        d.mkdir(parents=True, exist_ok=True)
        prev_labeled, prev_ckpt = prev / "labeled.txt", prev / "train" / "checkpoint.pth"
        where = (seed, strategy, rnd)
        pool = scores = calib = None
        if strat.needs != "nothing":
            embeddings = []
            if base == "coreset":
                embeddings.append(params.get("embedding", "bottleneck"))
            if base == "badge" and params.get("badge_embedding") == "last-layer":
                embeddings.append("badge")
            pool = d / "pool.h5"
            # the oracle simulates a user who knows every pool image's classes: the pool carries the labels
            self.infer(where, prev_ckpt, exp.pool_ids, pool, embeddings=embeddings,
                       with_labels=bool(params.get("oracle")), mc=mc_opts)
        if base == "crc":
            calib_pool, calib = d / "calib.h5", d / "crc.json"
            self.infer(where, prev_ckpt, exp.calib_ids, calib_pool, with_labels=True)
            cal_args = {"alpha": crc_opts.get("alpha", 0.05), "t_min": crc_opts.get("t_min", 0.001),
                        "bins": crc_opts.get("bins", 1000)}
            self.step(where, "calibrate", calib, cal_args, [calib_pool, prev_labeled], lambda progress: calibrate(
                calib_pool, out_path=calib, train_ids_path=prev_labeled, overwrite=True, progress=progress,
                **cal_args))
        to_score = [base] if strat.scored else []
        if base == "stochastic-batches":
            to_score = [params.get("base_score", "entropy")]
        if to_score:
            scores = d / "scores.h5"
            score_args = {"strategies": to_score, "aggregation": params.get("aggregation", "mean"),
                          "q": params.get("q", 10.0), "save_risk_maps": crc_opts.get("save_risk_maps", 8)}
            self.step(where, "score", scores, score_args, [pool, calib], lambda progress: score(
                pool, out_path=scores, calibration_path=calib, overwrite=True, progress=progress, **score_args))
        selected = d / "selected.txt"
        budget = exp.sizes[rnd] - exp.sizes[rnd - 1]
        sel_seed = seed * 1000 + rnd  # a fresh, recorded stream per round
        if base == "clasp":
            params["round"] = f"{rnd}/{exp.rounds}"  # its beta schedule runs over the experiment's rounds
        sel_args = {"strategy": base, "budget": budget, "seed": sel_seed, **params}
        self.step(where, "select", selected, sel_args, [prev_labeled, pool, scores, calib, exp.pool_ids],
                  lambda progress: select(
                      base, budget=budget, labeled_path=prev_labeled, out_path=selected, pool_path=pool,
                      scores_path=scores, calibration_path=calib,
                      pool_ids_path=exp.pool_ids if strat.needs == "nothing" else None, seed=sel_seed,
                      device=self.device, overwrite=True, progress=progress, **params))
        labeled = d / "labeled.txt"
        write_if_changed(labeled, read_ids(prev_labeled) + read_ids(selected))
        cost = self.image_cost(d, rnd, labeled, read_ids(selected), prev / "cost.json")
        self.train(where, labeled, d / "train", cost=cost)

    def region_round(self, seed: int, strategy: str, rnd: int) -> None:
        """infer (MC passes for bald & co.; crc: + calibration split, calibrate) → select with the strategy's
        unit → ``labeled.jsonl`` (+ cost.json) → train on it."""
        from alseg.files.labelled import format_labelled, merge_labelled, read_labelled, write_labelled
        from alseg.files.manifest import manifest_path
        from alseg.partial import read_labels
        from alseg.stages.calibrate import calibrate
        from alseg.stages.select import select

        exp = self.exp
        base, unit, annotation = exp.base(strategy), exp.unit_of(strategy), exp.annotation_of(strategy)
        strat = get_strategy(base)
        opts = dict(exp.params.get(strategy, {}))
        for key in ("strategy", "unit", "annotation"):
            opts.pop(key, None)
        crc_opts = {k: opts.pop(k) for k in ("alpha", "t_min", "bins", "save_risk_maps") if k in opts}
        mc_opts = ({"mc": int(opts.pop("mc", DEFAULT_MC)), "mc_scope": str(opts.pop("mc_scope", "head"))}
                   if strat.needs == "mc" else None)
        opts.setdefault("region_reduction", exp.region_reduction)
        opts.setdefault("max_per_image", exp.max_per_image)
        if base == "clasp":
            opts["round"] = f"{rnd}/{exp.rounds}"  # its beta schedule runs over the experiment's rounds
        prev = round_dir(self.exp_dir, seed, strategy, rnd - 1)
        d = round_dir(self.exp_dir, seed, strategy, rnd)
        d.mkdir(parents=True, exist_ok=True)
        prev_labeled = prev / ("labeled.txt" if rnd == 1 else "labeled.jsonl")
        prev_ckpt = prev / "train" / "checkpoint.pth"
        where = (seed, strategy, rnd)
        pool = d / "pool.h5"  # random too: the pool file names the images and their logit grid
        self.infer(where, prev_ckpt, exp.pool_ids, pool, mc=mc_opts)
        calib = None
        if base == "crc":
            calib_pool, calib, trained = d / "calib.h5", d / "crc.json", d / "labeled_ids.txt"
            write_if_changed(trained, read_labels(prev_labeled)[0].ids)  # images the model saw any label of
            self.infer(where, prev_ckpt, exp.calib_ids, calib_pool, with_labels=True)
            cal_args = {"alpha": crc_opts.get("alpha", 0.05), "t_min": crc_opts.get("t_min", 0.001),
                        "bins": crc_opts.get("bins", 1000)}
            self.step(where, "calibrate", calib, cal_args, [calib_pool, trained], lambda progress: calibrate(
                calib_pool, out_path=calib, train_ids_path=trained, overwrite=True, progress=progress, **cal_args))
            opts["calibration_path"] = calib
        store = region_store_path(self.exp_dir, unit) if unit.startswith("superpixel:") else None
        budget = {"budget": None, "budget_pixels": exp.budget_pixels, "budget_clicks": exp.budget_clicks}
        if exp.budget_pixels is None and exp.budget_clicks is None:
            budget["budget"] = exp.sizes[rnd] - exp.sizes[rnd - 1]  # regions per round
        selected = d / "selected.jsonl"
        sel_seed = seed * 1000 + rnd
        sel_args = {"strategy": base, "unit": unit, **budget, "seed": sel_seed, "annotation": annotation, **opts,
                    "region_store": store}
        self.step(where, "select", selected, sel_args, [prev_labeled, pool, store, calib], lambda progress: select(
            base, unit=unit, labeled_path=prev_labeled, out_path=selected, pool_path=pool, seed=sel_seed,
            annotation=annotation, region_store=store, device=self.device, overwrite=True, progress=progress,
            **budget, **opts))
        labeled = d / "labeled.jsonl"
        state = merge_labelled(read_labels(prev_labeled)[0], _state_items(read_labelled(selected)))
        if not labeled.is_file() or labeled.read_text(encoding="utf-8") != format_labelled(state):
            write_labelled(labeled, state)  # atomic; left alone when unchanged (resume keys on its digest)

        def compute() -> dict[str, Any]:
            chosen = json.loads(manifest_path(selected).read_text(encoding="utf-8"))["result"]
            before = json.loads((prev / "cost.json").read_text(encoding="utf-8"))["clicks"]
            new = chosen["clicks"]
            return {"images_touched": len(state.ids), "labelled_pixels": chosen["labelled_pixels_total"],
                    "pool_pixels": chosen["pool_pixels"],
                    "clicks": None if before is None or new is None else before + new}

        cost = self.cost(d, {"round": rnd, "unit": unit, "annotation": annotation},
                         [prev / "cost.json", labeled, selected, manifest_path(selected)], compute)
        self.train(where, labeled, d / "train", cost=cost,
                   region={"annotation": annotation, "region_maps": [store] if store is not None else []})


def _cfg_option_args(cfg_options: dict[str, Any], source: Path) -> list[str]:
    """``["--cfg-options", "KEY=VALUE", ...]`` that ``alseg train`` parses back to exactly ``cfg_options``
    (mmseg's syntax has no tables, no spaces and no commas inside strings); one error line otherwise."""
    from alseg.mm import parse_cfg_options

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "None"
        if isinstance(value, (int, float, str)):
            return str(value)
        if isinstance(value, list):
            return "[" + ",".join(text(v) for v in value) + "]"
        if isinstance(value, tuple):
            return "(" + ",".join(text(v) for v in value) + ")"
        raise TypeError(type(value).__name__)

    args = []
    for key, value in cfg_options.items():
        try:
            item = f"{key}={text(value)}"
            same = parse_cfg_options([item])[key] == value
        except (TypeError, AlsegError):
            same = False
        if not same:
            raise InputError(f"{source}: cfg_options {key!r} = {value!r} cannot be passed to the torchrun training "
                             "(nproc > 1) as KEY=VALUE; set it in the config file instead")
        args += ["--cfg-options", item]
    return args


def torchrun_train_command(exp: Experiment, *, labeled: Path, work_dir: Path, seed: int, max_iters: int | None,
                           device: str, annotation: str | None = None, region_maps: list[Path] = ()) -> list[str]:
    """The command line of one training on ``exp.nproc`` local processes: torchrun (``--standalone``: its
    rendezvous takes a free port of its own, so concurrent launches never collide) running
    ``alseg train --launcher pytorch ... --overwrite --quiet --json``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(exp.nproc),
               "-m", "alseg.commands", "train", str(exp.config), "--labeled", str(labeled), "--out",
               str(work_dir), "--device", device, "--seed", str(seed), "--launcher", "pytorch"]
    for option, value in (("--data-root", exp.data_root), ("--val-ids", exp.val_ids), ("--max-iters", max_iters),
                          ("--batch-size", exp.batch_size), ("--annotation", annotation),
                          ("--region-maps", ",".join(str(p) for p in region_maps) or None)):
        if value is not None:
            command += [option, str(value)]
    return command + _cfg_option_args(exp.cfg_options, exp.path) + ["--overwrite", "--quiet", "--json"]


def run_train_command(command: list[str], *, work_dir: Path, progress: Callable[..., None],
                      total: int | None) -> None:
    """Run a training command line (:func:`torchrun_train_command`) to its end; its output is captured,
    and a failure is one error line: the training's own ``error:`` line, else the end of its output.
    Interrupted, it stops the launcher (SIGTERM, which torchrun passes on to its processes)."""
    if total is not None:
        progress(0, total)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")})
    try:
        _, errors = proc.communicate()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0:
        lines = [line.strip() for line in errors.splitlines() if line.strip()]
        said = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        # else the last exception line (torchrun ends its report with a banner of "=" signs)
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt): ", line)]
        why = said[0] if said else raised[-1] if raised else (lines[-1] if lines else "no output")
        raise AlsegError(f"{work_dir}: training failed (exit {proc.returncode} of `{' '.join(command[:6])} ...`): {why}")
    if total is not None:
        progress(total)


def _round_stages(strategy: str, region: bool = False) -> list[str]:
    """The stages ``_Runner.strategy_round`` calls for the registered ``strategy``, in order (mirrors its
    conditions; tests/test_run.py checks the plan against the events of a real run). ``region``: a region
    round (``_Runner.region_round``): infer, (crc: infer, calibrate), select, train."""
    strat = get_strategy(strategy)
    if region:
        return ["infer"] + (["infer", "calibrate"] if strategy == "crc" else []) + ["select", "train"]
    stages = ["infer"] if strat.needs != "nothing" else []
    if strategy == "crc":
        stages += ["infer", "calibrate"]  # the calibration split, then its calibration
    if strat.scored or strategy == "stochastic-batches":
        stages.append("score")
    return stages + ["select", "train"]


def plan_steps(exp: Experiment) -> list[Step]:
    """Every step ``run`` executes (or reuses) for ``exp``, in order: per seed the shared round 0 (select,
    train), then per strategy and round its stages; last the full-supervision training, if asked for.
    First, once per superpixel unit, its ``regions`` step (the maps of every pool image)."""
    steps: list[Step] = [(exp.seeds[0], None, 0, "regions") for _ in exp.superpixel_units()]
    for seed in exp.seeds:
        steps += [(seed, None, 0, "select"), (seed, None, 0, "train")]
        for strategy in exp.strategies:
            for rnd in range(1, exp.rounds + 1):
                steps += [(seed, strategy, rnd, stage)
                          for stage in _round_stages(exp.base(strategy), exp.is_region(strategy))]
    if exp.full_supervision:
        steps.append((exp.seeds[0], "full", 0, "train"))
    return steps


def _resolve_ids(exp: Experiment, exp_dir: Path) -> None:
    """Without ``pool_ids``: the config's train split (``EXP/pool.txt``); with ``calib_size``: that many ids
    carved out of the pool once, by a fixed seed independent of the experiment's seeds (``EXP/calib.txt``)."""
    if exp.pool_ids is not None and exp.calib_size is None:
        return
    import numpy as np

    if exp.pool_ids is None:
        from alseg.stages.ids import list_ids

        pool = list_ids(exp.config, split="train", data_root=exp.data_root, cfg_options=exp.cfg_options).ids
    else:
        pool = read_ids(exp.pool_ids)
    if exp.calib_size is not None:
        if exp.calib_size >= len(pool):
            raise InputError(f"{exp.path}: calib_size {exp.calib_size} leaves no pool ({len(pool)} train ids)")
        order = np.random.default_rng(20251018).permutation(len(pool))
        calib = set(pool[k] for k in order[: exp.calib_size])
        write_if_changed(exp_dir / "calib.txt", [i for i in pool if i in calib])
        exp.calib_ids = exp_dir / "calib.txt"
        pool = [i for i in pool if i not in calib]
    write_if_changed(exp_dir / "pool.txt", pool)
    exp.pool_ids = exp_dir / "pool.txt"
    exp.calib_size = None  # resolved into files: the written experiment.toml names them


def write_if_changed(path: Path, ids: list[str]) -> None:
    """Write an id list unless it already holds exactly these ids (keeps resume digests stable)."""
    if not path.is_file() or read_ids(path) != ids:
        write_ids(path, ids)


def run(
    experiment_path: str | Path,
    *,
    exp_dir: str | Path | None = None,
    seeds: list[int] | None = None,
    device: str | None = None,
    on_event: Callable[[RunEvent], None] = lambda event: None,
) -> RunResult:
    """Run (or resume) every seed × strategy × round of the experiment; returns the mIoU table."""
    t0 = time.perf_counter()
    exp = load_experiment(experiment_path)
    if seeds:
        exp.seeds = list(seeds)
    exp_dir = (Path(exp_dir) if exp_dir is not None else exp.path.parent / exp.name).resolve()
    exp_dir.mkdir(parents=True, exist_ok=True)
    _resolve_ids(exp, exp_dir)
    resolved = exp_dir / "experiment.toml"
    text = exp.to_toml()
    if not resolved.exists() or resolved.read_text(encoding="utf-8") != text:
        write_text_atomic(resolved, text)
    pool_ids = read_ids(exp.pool_ids)
    # image rounds count images; region rounds count regions (and round 0 whole images)
    need = exp.sizes[-1] if any(not exp.is_region(s) for s in exp.strategies) else exp.sizes[0]
    if need > len(pool_ids):
        raise InputError(f"{exp.path}: the last round needs {need} labeled ids, the pool has {len(pool_ids)}")
    if exp.calib_ids is not None:
        overlap = set(read_ids(exp.calib_ids)) & set(pool_ids)
        if overlap:
            raise InputError(f"{exp.calib_ids}: {len(overlap)} calibration id(s) are also pool ids "
                             f"(e.g. {sorted(overlap)[0]!r}); keep the calibration split out of the pool")
    if exp.nproc > 1 or exp.launcher == "torchrun":
        _cfg_option_args(exp.cfg_options, exp.path)  # fail before the first round, not at its training
    runner = _Runner(exp, exp_dir, device or exp.device, on_event)
    plan = plan_steps(exp)
    runner.result.steps_planned = len(plan)
    on_event(RunEvent("plan", exp.seeds[0], None, 0, "plan", total=len(plan), n_steps=len(plan), plan=plan))
    for unit in exp.superpixel_units():
        runner.region_maps(unit)
    for seed in exp.seeds:
        runner.round0(seed)
        for strategy in exp.strategies:
            for rnd in range(1, exp.rounds + 1):
                runner.strategy_round(seed, strategy, rnd)
    if exp.full_supervision:
        runner.train((exp.seeds[0], "full", 0), exp.pool_ids, exp_dir / "full" / "train")
    runner.result.seconds = time.perf_counter() - t0
    return runner.result


__all__ = ["RunEvent", "RunResult", "Step", "plan_steps", "run", "seed_dir", "SCALAR_SCORES"]
