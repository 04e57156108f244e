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


@contextlib.contextmanager
def progress_bar(description: str, *, quiet: bool = False) -> Iterator[Callable[[int, int | None], None]]:
    """Yield a ``progress(advance, total=None)`` hook for library loops: a rich bar on stderr.

    The bar appears on the first call of the hook, so a command that fails before any work prints only
    its error line.
    """
    if quiet:
        yield lambda advance=1, total=None: None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
    )
    state: dict[str, Any] = {}

    def hook(advance: int = 1, total: int | None = None) -> None:
        if "bar" not in state:
            state["bar"] = Progress(*columns, console=err, transient=False)
            state["bar"].start()
            state["task"] = state["bar"].add_task(description, total=None)
        bar, task = state["bar"], state["task"]
        if total is not None:
            bar.update(task, total=total)
        if advance:
            bar.advance(task, advance)

    try:
        yield hook
    finally:
        if "bar" in state:
            state["bar"].stop()
