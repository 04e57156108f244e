"""``alseg run``: the round loop of an experiment, built from the same stage functions a user runs by hand.

For each seed, round 0 (a random initial labeled set and the first model) is computed once and shared by
all strategies; each later round runs ``infer`` → (``calibrate``) → ``score`` → ``select`` → ``train``
into ``EXP/seed-S/STRATEGY/round-RR/`` (docs/experiment.md). ``random`` never runs inference.

Resume: after each step a record ``<output>.step.json`` stores the step's arguments and the sha256 of its
inputs. Rerunning skips a step when its record matches and its outputs exist; a changed input (say a new
checkpoint) changes a digest and reruns that step and, through its new outputs, everything downstream.

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
from pathlib import Path
from typing import Any, Callable

from alseg.errors import AlsegError, InputError
from alseg.experiment import Experiment, load_experiment, round_dir, seed_dir
from alseg.files.atomic import write_text_atomic
from alseg.files.idlist import read_ids, write_ids
from alseg.files.manifest import file_digest, to_jsonable
from alseg.registry import SCALAR_SCORES, get_strategy


DEFAULT_MC = 10  # MC-dropout passes of bald, mc-entropy and variation-ratio when the experiment gives none
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


class _Runner:
    def __init__(self, exp: Experiment, exp_dir: Path, device: str, on_event: Callable[[RunEvent], None]):
        self.exp, self.exp_dir, self.device, self.on_event = exp, exp_dir, device, on_event
        self.result = RunResult(exp_dir=str(exp_dir))
        self.n_steps = len(plan_steps(exp))
        self.k = 0  # steps started or skipped so far

    def step(self, where: tuple[int, str | None, int], stage: str, output: Path, args: dict[str, Any],
             inputs: list[Path | None], fn: Callable[[Callable[..., None]], Any]) -> bool:
        """Run ``fn(progress)`` unless a matching record says ``output`` is already done. True if it ran."""
        seed, strategy, rnd = where
        self.k += 1
        at = {"step": self.k, "n_steps": self.n_steps}
        record = _record_path(output)
        key = {"stage": stage, "args": to_jsonable(args), "inputs": _digests(inputs)}
        # paths inside the tree are recorded relative to it, so a copied or moved tree still resumes
        key = json.loads(json.dumps(key).replace(str(self.exp_dir.resolve()), "$EXP"))
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

    # -- stages ----------------------------------------------------------------------------------------
    def train(self, where, labeled: Path, work_dir: Path) -> None:
        from alseg.stages.train import train

        exp, seed = self.exp, where[0]
        ckpt = work_dir / "checkpoint.pth"
        max_iters = exp.iterations(len(read_ids(labeled)))
        args = {"config": exp.config, "labeled": labeled, "seed": seed, "max_iters": max_iters,
                "batch_size": exp.batch_size, "val_ids": exp.val_ids, "data_root": exp.data_root,
                **({"cfg_options": exp.cfg_options} if exp.cfg_options else {}),
                **({"nproc": exp.nproc} if exp.nproc > 1 else {})}  # N processes: N x batch_size per step

        def fn(progress: Callable[..., None]) -> None:
            if exp.nproc > 1 or exp.launcher == "torchrun":
                command = torchrun_train_command(exp, labeled=labeled, work_dir=work_dir, seed=seed,
                                                 max_iters=max_iters, device=self.device)
                run_train_command(command, work_dir=work_dir, progress=progress, total=max_iters)
            else:
                train(exp.config, labeled_path=labeled, work_dir=work_dir, data_root=exp.data_root,
                      val_ids_path=exp.val_ids, device=self.device, seed=seed, max_iters=max_iters,
                      batch_size=exp.batch_size, overwrite=True, cfg_options=exp.cfg_options, progress=progress,
                      launcher="none")  # one process, whatever the environment says

        self.step(where, "train", ckpt, args, [exp.config, labeled, exp.val_ids], fn)
        metrics = json.loads((work_dir / "metrics.json").read_text(encoding="utf-8"))
        miou = float(metrics["final"]["mIoU"])
        n_labeled = len(read_ids(labeled))
        self.result.rows.append({"seed": where[0], "strategy": where[1], "round": where[2],
                                 "n_labeled": n_labeled, "miou": miou})
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
        self.train(where, labeled, d / "train")

    def strategy_round(self, seed: int, strategy: str, rnd: int) -> None:
        from alseg.stages.calibrate import calibrate
        from alseg.stages.score import score
        from alseg.stages.select import select

        exp = self.exp
        base = exp.base(strategy)  # a variant's folder is its own name; its stages are its base strategy's
        strat = get_strategy(base)
        params = dict(exp.params.get(strategy, {}))
        params.pop("strategy", None)
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
        self.train(where, labeled, d / "train")


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
                           device: str) -> list[str]:
    """The command line of one training on ``exp.nproc`` local processes: torchrun (``--standalone``: its
    rendezvous takes a free port of its own, so concurrent launches never collide) running
    ``alseg train --launcher pytorch ... --overwrite --quiet --json``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(exp.nproc),
               "-m", "alseg.commands", "train", str(exp.config), "--labeled", str(labeled), "--out",
               str(work_dir), "--device", device, "--seed", str(seed), "--launcher", "pytorch"]
    for option, value in (("--data-root", exp.data_root), ("--val-ids", exp.val_ids), ("--max-iters", max_iters),
                          ("--batch-size", exp.batch_size)):
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


def _round_stages(strategy: str) -> list[str]:
    """The stages ``_Runner.strategy_round`` calls for the registered ``strategy``, in order (mirrors its
    conditions; tests/test_run.py checks the plan against the events of a real run)."""
    strat = get_strategy(strategy)
    stages = ["infer"] if strat.needs != "nothing" else []
    if strategy == "crc":
        stages += ["infer", "calibrate"]  # the calibration split, then its calibration
    if strat.scored or strategy == "stochastic-batches":
        stages.append("score")
    return stages + ["select", "train"]


def plan_steps(exp: Experiment) -> list[Step]:
    """Every step ``run`` executes (or reuses) for ``exp``, in order: per seed the shared round 0 (select,
    train), then per strategy and round its stages; last the full-supervision training, if asked for."""
    steps: list[Step] = []
    for seed in exp.seeds:
        steps += [(seed, None, 0, "select"), (seed, None, 0, "train")]
        for strategy in exp.strategies:
            for rnd in range(1, exp.rounds + 1):
                steps += [(seed, strategy, rnd, stage) for stage in _round_stages(exp.base(strategy))]
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
    if exp.sizes[-1] > len(pool_ids):
        raise InputError(f"{exp.path}: the last round needs {exp.sizes[-1]} labeled ids, the pool has {len(pool_ids)}")
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
