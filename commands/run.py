"""``alseg run``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alseg.commands._console import err, out, print_json
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Quiet
from alseg.files.manifest import to_jsonable


class _LiveView:
    """Current seed/strategy/round/stage with a progress bar, and the last mIoU per strategy."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=err)
        self.task = self.progress.add_task("starting", total=None)
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
        return Group(self.progress, self.table(),
                     f"steps run {self.counts['run']}, reused {self.counts['reused']}")

    def __call__(self, event) -> None:
        where = f"seed {event.seed} · {event.strategy or 'round 0 (shared)'} · round {event.round} · {event.stage}"
        if event.kind == "start":
            self.progress.reset(self.task, total=None, description=where)
        elif event.kind == "progress":
            if event.total is not None:
                self.progress.update(self.task, total=event.total)
            if event.advance:
                self.progress.advance(self.task, event.advance)
        elif event.kind == "done":
            self.counts["run"] += 1
            err.print(f"[green]✓[/] {where} ({event.seconds:.1f} s)")
        elif event.kind == "skip":
            self.counts["reused"] += 1
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
        help="Output tree (default: a folder named after the experiment, beside its file).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Comma-separated seeds, overriding the file's (e.g. 0,1,2).")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override the file's device: auto, cpu, cuda, cuda:N, mps.")] = None,
    quiet: Quiet = False,
    json: Json = False,
) -> None:
    """Run an experiment: strategies × seeds × rounds, with a shared round 0 and resume.

    Per seed, round 0 (random initial set + first model) is computed once and shared by every strategy;
    each later round runs infer → (calibrate) → score → select → train, writing the same files a user
    would write by hand into EXP/seed-S/STRATEGY/round-RR/. Rerun the same command after an
    interruption to continue: finished steps whose inputs did not change are reused.

    Reads: EXPERIMENT and the files it names. Writes: the experiment tree.

    Example: alseg run demo/experiment.toml --seeds 0,1,2 && alseg report demo/demo
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
