"""One module per stage: read files -> call pure code -> write files -> return a result dataclass.

Long loops report through a ``progress(advance, total=None, **info)`` callable that the CLI fills with a
bar; ``info`` (e.g. ``loss=0.41``) is shown beside it, and hooks that take no ``**info`` still work.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[..., None]


def no_progress(advance: int = 1, total: int | None = None) -> None:
    """The default progress hook: does nothing."""
    return None
