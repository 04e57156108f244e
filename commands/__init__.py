"""The ``alseg`` command line: a thin Typer skin over ``alseg.stages``.

Each stage is one module here, registered explicitly below.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="alseg",
    help=(
        "Active learning for semantic segmentation on mmsegmentation.\n\n"
        "A round: train -> infer -> score (calibrate for CRC-AL) -> select, each stage reading and writing "
        "plain files (HDF5 of logits/embeddings, id lists, JSON), so any stage can be rerun by hand."
    ),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        import platform

        from alseg import __version__

        typer.echo(f"alseg {__version__} (Python {platform.python_version()})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", help="Print alseg's version and exit.",
                                 callback=_print_version, is_eager=True),
) -> None:
    """Active learning for semantic segmentation on mmsegmentation."""


def _register() -> None:
    import importlib

    # name -> module; each module defines `main` (a command) or `app` (a sub-group).
    for name, module_name in [
        ("demo-data", "demo_data"),
        ("configs", "configs"),
        ("ids", "ids"),
        ("train", "train"),
        ("infer", "infer"),
        ("merge", "merge"),
        ("score", "score"),
        ("calibrate", "calibrate"),
        ("select", "select"),
        ("export", "export"),
        ("import", "import_masks"),
        ("run", "run"),
        ("report", "report"),
        ("device", "device"),
    ]:
        module = importlib.import_module(f"alseg.commands.{module_name}")
        if hasattr(module, "app"):
            app.add_typer(module.app, name=name)
        else:
            app.command(name)(module.main)


_register()


def expand_cfg_options(argv: list[str]) -> list[str]:
    """mmseg's ``--cfg-options a=1 b.c=[1,2]`` (several pairs after one flag) -> one flag per pair.

    Tokens after ``--cfg-options`` that hold ``=`` and do not start with ``-`` belong to it.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        out.append(token)
        i += 1
        if token == "--cfg-options":
            first = True
            while i < len(argv) and "=" in argv[i] and not argv[i].startswith("-"):
                if not first:
                    out.append("--cfg-options")
                out.append(argv[i])
                first = False
                i += 1
    return out


def repeated_option(argv: list[str]) -> str | None:
    """The first option given twice (``--cfg-options`` excepted): Click would silently keep the last one,
    and alseg's lists are comma lists (``--strategy margin,crc``)."""
    seen: set[str] = set()
    aliases = {"-s": "--strategy"}
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token in ("-", "--cfg-options") or token[1:2].isdigit():
            continue
        name = aliases.get(token.split("=", 1)[0], token.split("=", 1)[0])
        if name in seen:
            return name
        seen.add(name)
    return None


def main() -> None:
    """The ``alseg`` entry point."""
    import signal
    import sys

    # Past `ulimit -f` the kernel would kill the process with SIGXFSZ mid-write; ignored, the write fails
    # with EFBIG instead, which the stage reports as one line naming the file.
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from typer import Abort

    twice = repeated_option(sys.argv[1:])
    if twice is not None:
        print(f"error: {twice} given more than once; alseg takes one value, or a comma list ({twice} a,b)",
              file=sys.stderr)
        sys.exit(2)
    try:
        code = app(args=expand_cfg_options(sys.argv[1:]), prog_name="alseg", standalone_mode=False)
    except Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Click's usage errors (typer vendors click, so they are matched by shape): its framed panel is
        # several lines; alseg's errors are one line, naming the command and where to read more.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "alseg"
        print(f"error: {command}: {exc.format_message()} (see `{command} --help`)", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
