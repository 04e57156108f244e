"""``alseg device ...``: what this machine offers alseg."""

from __future__ import annotations

from typing import Annotated

import typer

from alseg.commands._console import err, out, print_json, progress_bar
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json, Quiet

app = typer.Typer(
    help="Check the compute devices alseg can use (versions, CUDA/MPS, benchmarks, HDF5).",
    no_args_is_help=True,
)

# Not the shared `Device` option: here the value says which devices to *check*, and auto means all of them.
CheckDevice = Annotated[
    str,
    typer.Option(
        "--device",
        help=(
            "Device to check: auto checks every available device (cpu, each cuda:N, mps); "
            "cpu, cuda, cuda:N or mps checks only that one and exits 1, with the reason, if it is unusable."
        ),
    ),
]
Bench = Annotated[
    bool,
    typer.Option(
        "--bench/--no-bench",
        help="Run the micro-benchmarks (matmul and a tiny UNet forward; under 10 s on CPU). --no-bench skips them.",
    ),
]


@app.command("check")
@cli_errors
def check(device: CheckDevice = "auto", json: Json = False, bench: Bench = True, quiet: Quiet = False) -> None:
    """Report versions, devices and speed, and whether alseg can run here.

    Checks: library versions (Python, torch, numpy, mmcv with lite or compiled ops, mmengine, mmseg, h5py);
    CPU threads, CUDA devices (name, memory, capability) and MPS; the default device and how to override it;
    per device, matmul throughput and a tiny mmseg UNet forward (ms/batch, images/s); an HDF5 round trip.

    Ends with a verdict line. Exit code 1 when a check fails or the asked-for --device is unusable.

    Reads: nothing. Writes: nothing (a temporary HDF5 file, removed).

    Example: alseg device check --device cuda --json
    """
    from alseg.device import resolve_device
    from alseg.stages.device_check import device_check

    if device.strip().lower() != "auto":
        resolve_device(device)  # fail with one error line before any progress bar is drawn
    with progress_bar("device check", quiet=quiet) as progress:
        report = device_check(device=device, bench=bench, progress=progress)

    if json:
        from alseg.files.manifest import to_jsonable

        print_json(to_jsonable(report))
        if not quiet:
            err.print(report.verdict, markup=False, highlight=False, soft_wrap=True)
    else:
        _render(report)
        out.print(report.verdict, markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)


def _fmt_flops(tflops: float) -> str:
    return f"{tflops:.2f} TFLOP/s" if tflops >= 1 else f"{tflops * 1000:.1f} GFLOP/s"


def _render(report) -> None:
    from rich.table import Table
    from rich.text import Text

    v = report.versions
    versions = Table(title="Versions", title_justify="left")
    versions.add_column("package")
    versions.add_column("version")
    rows = [
        ("python", v.python),
        ("torch", v.torch + (f" (CUDA {v.torch_cuda})" if v.torch_cuda else " (no CUDA)")),
        ("cudnn", v.cudnn),
        ("numpy", v.numpy),
        ("mmcv", f"{v.mmcv} ({v.mmcv_ops} ops)"),
        ("mmengine", v.mmengine),
        ("mmseg", v.mmseg),
        ("h5py", v.h5py),
        ("alseg", v.alseg),
    ]
    for name, value in rows:
        versions.add_row(name, "-" if value is None else str(value))
    err.print(versions)

    devices = Table(title="Devices", title_justify="left")
    for column in ("device", "name", "memory", "capability", "note"):
        devices.add_column(column)
    devices.add_row(
        "cpu", "", "", "", f"torch threads {report.cpu_threads_torch}, os.cpu_count {report.cpu_count}"
    )
    for d in report.cuda_devices:
        devices.add_row(f"cuda:{d.index}", d.name, f"{d.total_memory_gib:.1f} GiB", d.capability, f"{d.multiprocessors} SMs")
    if not report.cuda_devices:
        why = "torch built without CUDA" if report.versions.torch_cuda is None else "no CUDA device visible"
        devices.add_row("cuda", "", "", "", why)
    devices.add_row("mps", "", "", "", "available" if report.mps_available else "not available")
    err.print(devices)
    err.print(f"default device: {report.default_device}; to override: {report.override_hint}", markup=False)

    if report.benchmarks:
        table = Table(title="Benchmarks", title_justify="left")
        for column in ("device", "test", "size", "time", "throughput"):
            table.add_column(column)
        for b in report.benchmarks:
            for m in b.matmul:
                table.add_row(b.device, f"matmul {m.dtype}", f"{m.size}x{m.size}", f"{m.ms_per_matmul:.2f} ms", _fmt_flops(m.tflops))
            s = b.seg_forward
            if s is not None:
                table.add_row(
                    b.device, "UNet forward", f"{s.batch_size}x3x{s.input_size[0]}x{s.input_size[1]}",
                    f"{s.ms_per_batch:.1f} ms/batch", f"{s.images_per_s:.0f} images/s",
                )
            if b.error:
                table.add_row(b.device, Text("failed", style="red"), "", "", Text(b.error))
        err.print(table)
    hdf5 = report.hdf5_roundtrip
    err.print(f"HDF5 round trip: {'ok' if hdf5.ok else 'FAILED'} ({hdf5.detail})", markup=False)
