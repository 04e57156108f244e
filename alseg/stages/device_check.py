"""The ``device check`` stage: what this machine offers alseg, and how fast.

Reports library versions, CPU threads, CUDA devices and MPS, the device alseg picks by default
(cuda > mps > cpu) and how to override it; benchmarks each device (matmul throughput and the forward
pass of a tiny mmseg UNet, correctly synchronised); checks an HDF5 pool-file round trip; ends with a
verdict. Returns a :class:`DeviceReport`; never prints.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alseg import __version__
from alseg.errors import AlsegError

Progress = Callable[[int, "int | None"], None]

OVERRIDE_HINT = (
    "pass --device cpu, cuda, cuda:N or mps to any compute command (train, infer, score, run); "
    "the default, auto, picks cuda > mps > cpu"
)

# Matmul size (square, n x n) and dtypes per device type.
MATMUL_SIZE = {"cpu": 1024, "mps": 4096, "cuda": 8192}
# Segmentation forward: batch of images per device type, at SEG_INPUT_SIZE.
SEG_BATCH = {"cpu": 8, "mps": 16, "cuda": 32}
SEG_INPUT_SIZE = (128, 128)
SEG_NUM_CLASSES = 4
# Timing: warm-up calls (CPU has no lazy kernel/allocator set-up to amortise), then enough timed calls to
# fill about TARGET_S seconds (within MIN/MAX reps).
WARMUP = {"cpu": 1, "mps": 3, "cuda": 3}
MIN_REPS, MAX_REPS = 3, 200
MATMUL_TARGET_S = {"cpu": 0.5, "mps": 0.5, "cuda": 0.5}
SEG_TARGET_S = {"cpu": 1.5, "mps": 1.0, "cuda": 1.0}


# ------------------------------------------------------------------------------------------ results


@dataclass
class Versions:
    """Versions of Python and the libraries alseg runs on; ``None`` where a package is not installed."""

    python: str
    torch: str
    torch_cuda: str | None  # CUDA version torch was built with; None for CPU/MPS builds
    cudnn: int | None
    numpy: str | None
    mmcv: str | None
    mmcv_ops: str  # 'compiled' (full mmcv), 'lite' (alseg's stand-in for mmcv-lite) or 'absent'
    mmengine: str | None
    mmseg: str | None
    h5py: str | None
    alseg: str


@dataclass
class CudaDevice:
    index: int
    name: str
    total_memory_gib: float
    capability: str  # e.g. "9.0"
    multiprocessors: int


@dataclass
class MatmulResult:
    dtype: str
    size: int  # n of the (n, n) @ (n, n) product
    reps: int
    ms_per_matmul: float
    tflops: float  # 2 n^3 / time, in 10^12 FLOP/s


@dataclass
class SegForwardResult:
    model: str
    batch_size: int
    input_size: list[int]  # [height, width]
    reps: int
    ms_per_batch: float
    images_per_s: float


@dataclass
class DeviceBenchmark:
    device: str
    matmul: list[MatmulResult] = field(default_factory=list)
    seg_forward: SegForwardResult | None = None
    error: str | None = None  # why the benchmark failed on this device; None when it ran


@dataclass
class Hdf5Check:
    ok: bool
    detail: str


@dataclass
class DeviceReport:
    versions: Versions
    cpu_threads_torch: int
    cpu_count: int | None
    cuda_devices: list[CudaDevice]
    mps_available: bool
    default_device: str
    requested_device: str | None  # None for auto: every available device is checked
    override_hint: str
    benchmarks: list[DeviceBenchmark]  # empty with bench=False
    hdf5_roundtrip: Hdf5Check
    verdict: str
    ok: bool


# ---------------------------------------------------------------------------------------- the stage


def device_check(*, device: str | None = None, bench: bool = True, progress: Progress | None = None) -> DeviceReport:
    """Check this machine for alseg. ``device`` None/"auto" checks every available device; a name
    (cpu, cuda, cuda:N, mps) checks only that one and raises :class:`DeviceError` if it is unusable.

    ``progress(advance, total)`` is called once per step.
    """
    from alseg.device import default_device_name, resolve_device

    requested = None if device is None or device.strip().lower() == "auto" else device.strip().lower()
    resolved = resolve_device(requested) if requested is not None else None  # DeviceError propagates

    import torch

    cuda_devices = _cuda_devices()
    mps_available = _mps_available()
    if resolved is not None:
        targets = [_canonical(resolved)]
    else:
        targets = ["cpu"] + [f"cuda:{d.index}" for d in cuda_devices] + (["mps"] if mps_available else [])

    steps = 2 + (sum(_n_steps(t) for t in targets) if bench else 0)
    report_progress = progress or (lambda advance=1, total=None: None)

    versions = _versions()
    report_progress(1, steps)

    benchmarks: list[DeviceBenchmark] = []
    if bench:
        for target in targets:
            benchmarks.append(_benchmark(target, lambda: report_progress(1, steps)))

    hdf5 = _hdf5_roundtrip()
    report_progress(1, steps)

    default = default_device_name()
    ok, verdict = _verdict(default, cuda_devices, benchmarks, hdf5, bench=bench, requested=requested)
    return DeviceReport(
        versions=versions,
        cpu_threads_torch=int(torch.get_num_threads()),
        cpu_count=os.cpu_count(),
        cuda_devices=cuda_devices,
        mps_available=mps_available,
        default_device=default,
        requested_device=requested,
        override_hint=OVERRIDE_HINT,
        benchmarks=benchmarks,
        hdf5_roundtrip=hdf5,
        verdict=verdict,
        ok=ok,
    )


# -------------------------------------------------------------------------------------- environment


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _versions() -> Versions:
    import torch

    from alseg.compat import mmcv_ops_mode

    cudnn = None
    try:
        if torch.backends.cudnn.is_available():
            cudnn = int(torch.backends.cudnn.version())
    except (RuntimeError, AttributeError):  # a broken CUDA install must not hide the rest of the report
        cudnn = None
    return Versions(
        python=platform.python_version(),
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        cudnn=cudnn,
        numpy=_dist_version("numpy"),
        mmcv=_dist_version("mmcv", "mmcv-lite", "mmcv-full"),
        mmcv_ops=mmcv_ops_mode(),
        mmengine=_dist_version("mmengine", "mmengine-lite"),
        mmseg=_dist_version("mmsegmentation"),
        h5py=_dist_version("h5py"),
        alseg=__version__,
    )


def _cuda_devices() -> list[CudaDevice]:
    import torch

    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            CudaDevice(
                index=index,
                name=str(props.name),
                total_memory_gib=round(props.total_memory / 2**30, 2),
                capability=f"{props.major}.{props.minor}",
                multiprocessors=int(props.multi_processor_count),
            )
        )
    return devices


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _canonical(device) -> str:
    """``cuda`` -> ``cuda:<current>``, so results always name one physical device."""
    import torch

    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return device.type


# --------------------------------------------------------------------------------------- benchmarks


def _dtypes(device_type: str) -> list[str]:
    import torch

    if device_type == "cuda":
        return ["float32", "bfloat16", "float16"] if torch.cuda.is_bf16_supported() else ["float32", "float16"]
    if device_type == "mps":
        return ["float32", "float16"]
    return ["float32"]


def _n_steps(target: str) -> int:
    return len(_dtypes(target.split(":")[0])) + 1  # one per matmul dtype, one for the model forward


def _sync(device) -> None:
    """Wait for queued kernels, so the clock reads finished work (CUDA and MPS run asynchronously)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time(fn: Callable[[], Any], device, *, target_s: float) -> tuple[float, int]:
    """Milliseconds per call of ``fn`` on ``device``: warm-up, a probe call, then a timed loop.

    The device is synchronised before each clock read; the loop length is chosen from the probe so it
    lasts about ``target_s`` seconds (between MIN_REPS and MAX_REPS calls).
    """
    for _ in range(WARMUP[device.type]):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    probe = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(MAX_REPS, max(MIN_REPS, math.ceil(target_s / probe))))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    elapsed = time.perf_counter() - t0
    return elapsed * 1000.0 / reps, reps


def _benchmark(target: str, step: Callable[[], None]) -> DeviceBenchmark:
    """Benchmark one device. A failure while running (out of memory, a kernel built for another GPU
    architecture, a missing compiled op) is what this check exists to find, so it is recorded in
    ``error`` instead of aborting the whole report; the remaining steps are still counted."""
    import torch

    device = torch.device(target)
    result = DeviceBenchmark(device=target)
    dtypes = _dtypes(device.type)
    done = 0
    try:
        with torch.inference_mode():
            for dtype_name in dtypes:
                result.matmul.append(_bench_matmul(device, dtype_name))
                done += 1
                step()
            result.seg_forward = _bench_seg_forward(device)
            done += 1
            step()
    except (RuntimeError, AlsegError) as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        result.error = f"{type(exc).__name__}: {first_line}"
        for _ in range(len(dtypes) + 1 - done):
            step()
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        elif device.type == "mps":
            torch.mps.empty_cache()
    return result


def _randn(shape: tuple[int, ...], device, dtype, seed: int):
    """Seeded normal values made on ``device`` (on CUDA, no 8192^2 host tensor to copy over)."""
    import torch

    if device.type == "cuda":
        generator = torch.Generator(device=device).manual_seed(seed)
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


def _bench_matmul(device, dtype_name: str) -> MatmulResult:
    import torch

    n = MATMUL_SIZE[device.type]
    dtype = getattr(torch, dtype_name)
    a, b = (_randn((n, n), device, dtype, seed) for seed in (0, 1))
    out = torch.empty(n, n, device=device, dtype=dtype)
    ms, reps = _time(lambda: torch.matmul(a, b, out=out), device, target_s=MATMUL_TARGET_S[device.type])
    del a, b, out
    return MatmulResult(dtype=dtype_name, size=n, reps=reps, ms_per_matmul=ms, tflops=2.0 * n**3 / (ms / 1000.0) / 1e12)


def tiny_unet_config(num_classes: int = SEG_NUM_CLASSES) -> dict:
    """An mmseg EncoderDecoder: a 4-stage UNet (base_channels 16) with an FCN head; no pretrained weights."""
    norm_cfg = dict(type="BN", requires_grad=True)  # BN, not SyncBN: one process, and no compiled ops
    return dict(
        type="EncoderDecoder",
        backbone=dict(
            type="UNet", in_channels=3, base_channels=16, num_stages=4, strides=(1, 1, 1, 1),
            enc_num_convs=(2, 2, 2, 2), dec_num_convs=(2, 2, 2), downsamples=(True, True, True),
            enc_dilations=(1, 1, 1, 1), dec_dilations=(1, 1, 1), with_cp=False, conv_cfg=None,
            norm_cfg=norm_cfg, act_cfg=dict(type="ReLU"), upsample_cfg=dict(type="InterpConv"), norm_eval=False,
        ),
        decode_head=dict(
            type="FCNHead", in_channels=16, in_index=3, channels=16, num_convs=1, concat_input=False,
            dropout_ratio=0.1, num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode="whole"),
    )


def _build_tiny_unet():
    from alseg import compat

    compat.import_mmseg()
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    with warnings.catch_warnings():
        compat.quiet_mm_warnings()
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mmseg(\..*)?")
        # UNet's upsample layer (InterpConv) is looked up in the current scope: build under mmseg's.
        with DefaultScope.overwrite_default_scope("mmseg"):
            return MODELS.build(tiny_unet_config())


def _bench_seg_forward(device) -> SegForwardResult:
    import torch

    model = _build_tiny_unet().to(device).eval()
    batch = SEG_BATCH[device.type]
    h, w = SEG_INPUT_SIZE
    images = _randn((batch, 3, h, w), device, torch.float32, 0)
    ms, reps = _time(lambda: model(images, mode="tensor"), device, target_s=SEG_TARGET_S[device.type])
    del model, images
    return SegForwardResult(
        model="mmseg EncoderDecoder: UNet(base_channels=16, 4 stages) + FCNHead",
        batch_size=batch,
        input_size=[h, w],
        reps=reps,
        ms_per_batch=ms,
        images_per_s=batch / (ms / 1000.0),
    )


# ------------------------------------------------------------------------------------------- HDF5


def _hdf5_roundtrip() -> Hdf5Check:
    """Write a small pool file with :class:`PoolWriter` in a temp folder, read it back, compare."""
    import numpy as np

    from alseg.files.hdf5 import PoolReader, PoolWriter

    rng = np.random.default_rng(0)
    ids = ["img_000", "img_001", "img_002"]
    class_names = ["background", "road", "car"]
    shape = (8, 12)
    # float16 values, so the float16 file stores them exactly
    logits = rng.standard_normal((len(ids), len(class_names), *shape)).astype(np.float16).astype(np.float32)
    labels = rng.integers(0, len(class_names), size=(len(ids), *shape)).astype(np.uint8)
    feats = rng.standard_normal((len(ids), 5)).astype(np.float32)
    try:
        with tempfile.TemporaryDirectory(prefix="alseg-device-check-") as tmp:
            path = Path(tmp) / "pool.h5"
            with PoolWriter(
                path, class_names=class_names, logits_shape=shape, with_labels=True, embedding_dims={"feat": 5}
            ) as writer:
                writer.append(ids[:2], logits[:2], labels[:2], {"feat": feats[:2]})
                writer.append(ids[2:], logits[2:], labels[2:], {"feat": feats[2:]})
            with PoolReader(path, require_labels=True, require_embeddings=["feat"]) as reader:
                got_ids, got_logits, got_labels = [], [], []
                for batch_ids, batch_logits, batch_labels in reader.iter_batches(2, with_labels=True):
                    got_ids += batch_ids
                    got_logits.append(batch_logits)
                    got_labels.append(batch_labels)
                got_feats = reader.embedding("feat")
                got_classes = reader.class_names
    except (OSError, AlsegError, ValueError) as exc:
        return Hdf5Check(ok=False, detail=f"{type(exc).__name__}: {exc}")
    problems = []
    if got_ids != ids:
        problems.append(f"ids {got_ids} != {ids}")
    if got_classes != class_names:
        problems.append("class names differ")
    if not np.array_equal(np.concatenate(got_logits), logits):
        problems.append("logits differ")
    if not np.array_equal(np.concatenate(got_labels), labels.astype(np.int64)):
        problems.append("labels differ")
    if not np.array_equal(got_feats, feats):
        problems.append("embeddings differ")
    if problems:
        return Hdf5Check(ok=False, detail="pool file read back wrong: " + "; ".join(problems))
    return Hdf5Check(ok=True, detail=f"wrote and read back a pool file ({len(ids)} ids, logits, labels, embeddings)")


# ------------------------------------------------------------------------------------------ verdict


def _verdict(
    default: str,
    cuda_devices: list[CudaDevice],
    benchmarks: list[DeviceBenchmark],
    hdf5: Hdf5Check,
    *,
    bench: bool,
    requested: str | None,
) -> tuple[bool, str]:
    problems = [f"{b.device} failed its benchmark ({b.error})" for b in benchmarks if b.error]
    if not hdf5.ok:
        problems.append(f"HDF5 round trip failed ({hdf5.detail})")
    if problems:
        return False, "problem: " + "; ".join(problems)
    used = requested or default
    if used.startswith("cuda") and cuda_devices:
        index = int(used.split(":")[1]) if ":" in used else 0
        name = next((d.name for d in cuda_devices if d.index == index), None)
        used_text = f"{used} ({name})" if name else used
    else:
        used_text = used
    head = f"ok: alseg will use {used_text}" + (" (asked for with --device)" if requested else " by default")
    if bench:
        fast = [b for b in benchmarks if b.seg_forward is not None]
        bench_text = ", ".join(f"{b.device} {b.seg_forward.images_per_s:.0f} img/s" for b in fast)
        bench_text = f"benchmarked {bench_text}"
    else:
        bench_text = "benchmarks skipped"
    return True, f"{head}; {bench_text}; HDF5 round trip ok"
