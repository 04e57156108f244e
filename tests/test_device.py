"""`alseg device check` through the real entry point, and the device resolution it reports."""

from __future__ import annotations

import json
import math

import numpy
import pytest
import torch
from typer.testing import CliRunner

from alseg import compat
from alseg.commands import app
from alseg.device import default_device_name, resolve_device
from alseg.errors import DeviceError

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, ["device", "check", *args])


def test_check_no_bench_json_reports_environment():
    result = _invoke("--json", "--no-bench", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True
    versions = report["versions"]
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == numpy.__version__
    assert versions["mmcv_ops"] == compat.mmcv_ops_mode()
    assert report["default_device"] == default_device_name()
    assert report["requested_device"] is None
    assert report["benchmarks"] == []
    assert report["hdf5_roundtrip"]["ok"] is True
    assert report["cpu_threads_torch"] == torch.get_num_threads()
    assert len(report["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert "--device" in report["override_hint"]
    assert report["verdict"].startswith("ok: ")


def test_check_without_json_keeps_stdout_to_the_verdict():
    result = _invoke("--no-bench", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines() == [result.stdout.strip()]
    assert result.stdout.startswith("ok: alseg will use ")
    assert "Versions" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unusable_cuda_exits_1_with_one_error_line():
    result = _invoke("--device", "cuda", "--no-bench")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: device 'cuda' is not usable")


def test_bogus_device_exits_1():
    result = _invoke("--device", "bogus", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: unknown device 'bogus'")


def test_cpu_benchmark_is_positive_and_consistent():
    result = _invoke("--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["requested_device"] == "cpu"
    assert [b["device"] for b in report["benchmarks"]] == ["cpu"]
    bench = report["benchmarks"][0]
    assert bench["error"] is None
    matmul = bench["matmul"][0]
    assert matmul["dtype"] == "float32" and matmul["size"] == 1024
    assert math.isfinite(matmul["tflops"]) and matmul["tflops"] > 0
    assert matmul["tflops"] == pytest.approx(2 * 1024**3 / (matmul["ms_per_matmul"] / 1000) / 1e12)
    seg = bench["seg_forward"]
    assert seg["batch_size"] == 8 and seg["input_size"] == [128, 128]
    assert math.isfinite(seg["ms_per_batch"]) and seg["ms_per_batch"] > 0
    assert math.isfinite(seg["images_per_s"]) and seg["images_per_s"] > 0
    assert seg["images_per_s"] == pytest.approx(seg["batch_size"] / (seg["ms_per_batch"] / 1000), rel=1e-6)
    assert seg["reps"] >= 3


def test_resolve_auto_is_the_default():
    assert resolve_device("auto") == torch.device(default_device_name())
    assert resolve_device(None) == torch.device(default_device_name())
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'bogus'"):
        resolve_device("bogus")


def test_stage_reports_progress_once_per_step():
    from alseg.stages.device_check import device_check

    calls = []
    report = device_check(device="auto", bench=False, progress=lambda advance, total: calls.append((advance, total)))
    assert calls == [(1, 2), (1, 2)]
    assert report.ok and report.hdf5_roundtrip.ok


def test_failed_benchmark_is_reported_and_exits_1(monkeypatch):
    from alseg.stages import device_check as stage

    def broken(device, dtype_name):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore")

    monkeypatch.setattr(stage, "_bench_matmul", broken)
    result = _invoke("--device", "cpu", "--json", "--quiet")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["benchmarks"][0]["error"] == (
        "RuntimeError: CUDA error: no kernel image is available for execution on the device"
    )
    assert report["verdict"].startswith("problem: cpu failed its benchmark")
    rendered = _invoke("--device", "cpu", "--quiet")
    assert rendered.exit_code == 1
    assert rendered.stdout.startswith("problem: cpu failed its benchmark")
    assert "failed" in rendered.stderr
