"""``alseg run``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from alseg.commands._console import err, format_info, out, print_json
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Quiet
from alseg.files.manifest import to_jsonable


def _clock_text(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class _Overall:
    """Where the whole run stands: step k of N, elapsed time and an estimate of the time left.

    The estimate sums, over the steps still to do, the mean wall time of the finished (not reused) steps
    of the same stage, or of all finished steps for a stage not seen yet; the running step counts with
    what its own progress projects (elapsed / fraction done) when it reports a total, else with its
    stage's mean, less the time it has already run. Reused steps count as done and take no time.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.plan: list[tuple] = []
        self.step = 0  # index (1-based) of the step being worked on, 0 before the first
        self.finished = 0  # steps done or reused
        self.running: dict | None = None  # {"stage", "t0", "done", "total"} of the step in progress
        self.durations: dict[str, list[float]] = {}

    def __call__(self, event) -> None:
        if event.kind == "plan":
            self.plan = list(event.plan or [])
        elif event.kind in ("start", "skip", "done", "progress") and event.step is not None:
            self.step = event.step
            if event.kind == "start":
                self.running = {"stage": event.stage, "t0": self.clock(), "done": 0, "total": None}
            elif event.kind == "progress" and self.running is not None:
                if event.total is not None:
                    self.running["total"] = event.total
                self.running["done"] += event.advance
            elif event.kind in ("skip", "done"):
                self.finished = event.step
                self.running = None
                if event.kind == "done" and event.seconds is not None:
                    self.durations.setdefault(event.stage, []).append(float(event.seconds))

    def remaining(self) -> float | None:
        """Estimated seconds left, or None while nothing has been timed yet."""
        done_times = [d for ds in self.durations.values() for d in ds]
        current = None  # projected total duration of the running step
        ran = 0.0
        if self.running is not None:
            ran = self.clock() - self.running["t0"]
            total, done = self.running["total"], self.running["done"]
            if total and done > 0:
                current = ran * total / done
        fallback = sum(done_times) / len(done_times) if done_times else current
        if fallback is None:
            return None

        def estimate(stage: str) -> float:
            if stage in self.durations:
                return sum(self.durations[stage]) / len(self.durations[stage])
            if self.running is not None and stage == self.running["stage"] and current is not None:
                return current
            return fallback

        left = 0.0
        rest = self.plan[self.finished:]
        if self.running is not None and rest:
            now = current if current is not None else estimate(self.running["stage"])
            left += max(now - ran, 0.0)
            rest = rest[1:]
        return left + sum(estimate(step[3]) for step in rest)

    def text(self) -> str:
        n = len(self.plan)
        left = self.remaining()
        eta = "estimating time left" if left is None else f"~{_clock_text(left)} left"
        if n and self.finished >= n:
            eta = "done"
        return f"step {self.step} of {n} · {_clock_text(self.clock() - self.t0)} elapsed · {eta}"


class _OverallColumn(ProgressColumn):
    def __init__(self, overall: _Overall) -> None:
        super().__init__()
        self.overall = overall

    def render(self, task) -> Text:  # called on every refresh, so elapsed and time left tick
        return Text(self.overall.text())


class _LiveView:
    """Overall progress (step k of N, elapsed, time left) above the current step's bar, and the last
    mIoU per strategy."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.overall = _Overall(clock)
        self.overall_bar = Progress(TextColumn("[bold]run"), BarColumn(), _OverallColumn(self.overall), console=err)
        self.overall_task = self.overall_bar.add_task("run", total=None)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=err)
        self.task = self.progress.add_task("starting", total=None, info="")
        self.last: dict[str, tuple[int, float, int]] = {}  # strategy -> (round, mIoU, n_labeled)
        self.counts = {"run": 0, "reused": 0}

    def table(self) -> Table:
        t = Table(title="last mIoU per strategy", title_justify="left")
        for col in ("strategy", "round", "labeled", "mIoU"):
            t.add_column(col, justify="left" if col == "strategy" else "right")
        for strategy, (rnd, miou, n) in self.last.items():
            t.add_row(strategy, str(rnd), str(n), f"{miou:.2f}")
        return t

    def render(self) -> Group:
        return Group(self.overall_bar, self.progress, self.table(),
                     f"steps run {self.counts['run']}, reused {self.counts['reused']}")

    def __call__(self, event) -> None:
        self.overall(event)
        if event.kind == "plan":
            self.overall_bar.update(self.overall_task, total=event.total, completed=0)
            return
        where = f"seed {event.seed} · {event.strategy or 'round 0 (shared)'} · round {event.round} · {event.stage}"
        if event.kind == "start":
            self.progress.reset(self.task, total=None, description=where, info="")
        elif event.kind == "progress":
            if event.total is not None:
                self.progress.update(self.task, total=event.total)
            if event.info:
                self.progress.update(self.task, info=format_info(event.info))
            if event.advance:
                self.progress.advance(self.task, event.advance)
        elif event.kind == "done":
            self.counts["run"] += 1
            self.overall_bar.update(self.overall_task, completed=self.overall.finished)
            err.print(f"[green]✓[/] {where} ({event.seconds:.1f} s)")
        elif event.kind == "skip":
            self.counts["reused"] += 1
            self.overall_bar.update(self.overall_task, completed=self.overall.finished)
            err.print(f"[dim]↺ {where} (reused)[/]")
        elif event.kind == "metric":
            key = event.strategy or "round 0"
            self.last[key] = (event.round, event.miou, event.n_labeled)
            err.print(f"  mIoU {event.miou:.2f} with {event.n_labeled} labeled ({key}, round {event.round})")


@cli_errors
def main(
    experiment: Annotated[Path, typer.Argument(help="Experiment file (TOML, see docs/experiment.md).",
                                               show_default=False)],
    exp_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Output tree (default: a folder named after the experiment, beside its file).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, overriding the file's (e.g. 0,1,2).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override the file's device: auto, cpu, cuda, cuda:N, mps.")] = None,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Run an experiment: strategies × seeds × rounds, with a shared round 0 and resume.

    Per seed, round 0 (random initial set + first model) is computed once and shared by every strategy;
    each later round runs infer → (calibrate) → score → select → train, writing the same files a user
    would write by hand into EXP/seed-S/STRATEGY/round-RR/. Rerun the same command after an
    interruption to continue: finished steps whose inputs did not change are reused. Progress on stderr:
    step k of N of the whole run (reused steps count as done), elapsed time and an estimate of the time
    left, above the current step's bar (with the training loss while training).

    Reads: EXPERIMENT and the files it names. Writes: the experiment tree.

    Example: alseg run experiments/demo.toml --out demo/exp --seeds 0,1,2 && alseg report demo/exp --out demo/report.html
    """
    from alseg.errors import InputError
    from alseg.stages.run import run

    seed_list = None
    if seeds:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if quiet:
        result = run(experiment, exp_dir=exp_dir, seeds=seed_list, device=device)
    else:
        view = _LiveView()
        with Live(view.render(), console=err, refresh_per_second=4, transient=True) as live:
            def on_event(event) -> None:
                view(event)
                live.update(view.render())

            result = run(experiment, exp_dir=exp_dir, seeds=seed_list, device=device, on_event=on_event)
    if json:
        print_json(to_jsonable(result))
        return
    table = Table(title=f"mIoU per round ({result.steps_run} steps run, {result.steps_reused} reused, "
                        f"{result.seconds:.0f} s)")
    for col in ("seed", "strategy", "round", "labeled", "mIoU"):
        table.add_column(col)
    for row in result.rows:
        table.add_row(str(row["seed"]), str(row["strategy"] or "(shared)"), str(row["round"]),
                      str(row["n_labeled"]), f"{row['miou']:.2f}")
    err.print(table)
    out.print(result.exp_dir)
