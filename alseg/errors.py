"""Error types. Library code raises these; the CLI turns them into one ``error: ...`` line and exit 1.

Every message says what failed, where (file, id) and, when there is one, what to do.
"""


class AlsegError(Exception):
    """Base class of every expected, user-facing failure."""


class InputError(AlsegError):
    """An input file is missing, malformed, of another schema version, or inconsistent with another."""


class OutputExistsError(AlsegError):
    """An output exists and ``--overwrite`` was not given."""


class OutputError(AlsegError):
    """An output cannot be written: full disk, read-only folder, a folder in its place, another alseg
    process writing it, or it is also an input."""


class UnknownName(AlsegError):
    """An unknown strategy, selector, device or similar name."""


class EmptyPoolError(AlsegError):
    """There is nothing to select from."""


class DeviceError(AlsegError):
    """The requested device is not usable here."""


class CompiledOpsRequired(AlsegError, RuntimeError):
    """A model part needs the compiled mmcv ops, which mmcv-lite does not have."""


class NonFiniteError(AlsegError, ValueError):
    """Logits, scores or embeddings hold NaN or inf."""
