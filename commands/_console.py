"""Consoles: results on stdout, everything else (tables, warnings, progress) on stderr."""

from __future__ import annotations

import contextlib
import json
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


def print_json(obj: Any) -> None:
    out.print_json(json.dumps(obj, default=str))


def format_info(info: dict[str, Any]) -> str:
    """What a stage reports beside its progress, for a bar: ``{"loss": 0.4321}`` -> ``"loss 0.432"``."""
    parts = []
    for key, value in info.items():
        parts.append(f"{key} {value:.3g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


@contextlib.contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[..., None]]:
    """Yield a ``progress(advance, total=None, **info)`` hook for library loops: a rich bar on stderr.

    ``info`` (e.g. ``loss=`` from training) is shown after the bar, the latest value of each key. The bar
    appears on the first call of the hook, so a command that fails before any work prints only its
    error line.
    """
    if quiet:
        yield lambda advance=1, total=None, **info: None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
    )
    state: dict[str, Any] = {}

    def hook(advance: int = 1, total: int | None = None, **info: Any) -> None:
        if "bar" not in state:
            state["bar"] = Progress(*columns, console=err, transient=False)
            state["bar"].start()
            state["task"] = state["bar"].add_task(description, total=None, info="")
            state["info"] = {}
        bar, task = state["bar"], state["task"]
        if info:
            state["info"].update(info)
            bar.update(task, info=format_info(state["info"]))
        if total is not None:
            bar.update(task, total=total)
        if advance:
            bar.advance(task, advance)

    try:
        yield hook
    finally:
        if "bar" in state:
            state["bar"].stop()
