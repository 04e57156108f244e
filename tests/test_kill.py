"""`alseg infer` survives any kill: SIGKILL / SIGTERM / SIGINT at seeded moments through the real entry point,
then `--resume`, gives exactly the datasets of an uninterrupted run; a resume with other inputs is refused;
a second writer of the same output fails at once."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.demo_data import make_demo_data
from alseg.errors import InputError
from alseg.files.hdf5 import PoolReader, PoolWriter

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
N_IDS = 40  # batches of 1: after the last kill point at least 20 batches remain, even on a loaded machine
runner = CliRunner()


def _datasets(path: Path) -> dict[str, tuple]:
    """Every dataset (dtype, shape, bytes; ids as text) and its attributes, plus the root attributes but
    `created`."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as fh:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                raw = [x.decode() for x in data] if data.dtype == object else data.tobytes()
                out[name] = (str(obj.dtype), obj.shape, raw, dict(obj.attrs))
        fh.visititems(visit)
        out["/"] = {k: v for k, v in fh.attrs.items() if k != "created"}
    return out


def _assert_same_pool(a: Path, b: Path) -> None:
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for name in da:
        assert da[name] == db[name], name


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    demo = make_demo_data(root / "demo", n_images=40, size=32, seed=0, n_val=6, n_calib=6)
    labeled = root / "labeled.txt"
    labeled.write_text("".join(f"{i}\n" for i in (demo.out_dir / "splits" / "pool.txt").read_text().split()[:8]))
    r = runner.invoke(app, ["train", CONFIG, "--labeled", str(labeled), "--out", str(root / "r0"),
                            "--data-root", str(demo.out_dir), "--device", "cpu", "--max-iters", "1",
                            "--batch-size", "4", "--quiet"])
    assert r.exit_code == 0, r.output
    ids = root / "ids.txt"
    ids.write_text("".join(f"{i}\n" for i in (demo.out_dir / "splits" / "all.txt").read_text().split()[:N_IDS]))
    ref = root / "ref" / "pool.h5"
    r = runner.invoke(app, _args(root, ref))
    assert r.exit_code == 0, r.output
    return dict(root=root, ckpt=root / "r0" / "checkpoint.pth", ids=ids, ref=ref)


def _args(root: Path, out: Path, *, ckpt: Path | None = None, ids: Path | None = None, batch_size: int = 1,
          extra=()) -> list[str]:
    return ["infer", CONFIG, "--checkpoint", str(ckpt or root / "r0" / "checkpoint.pth"),
            "--ids", str(ids or root / "ids.txt"), "--out", str(out), "--data-root", str(root / "demo"),
            "--with-labels", "--embeddings", "bottleneck,badge", "--batch-size", str(batch_size), "--device", "cpu",
            "--quiet", *extra]


def _default_sigint() -> None:
    # A shell's background job ignores SIGINT, and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): give alseg the disposition an interactive user's process has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alseg.commands", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll until ``cond()`` (True) or the process ends (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return cond()
        time.sleep(0.002)
    raise AssertionError("timed out")


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_killed_infer_resumes_to_the_uninterrupted_result(setup, tmp_path):
    root = setup["root"]
    out = tmp_path / "pool.h5"
    partial, lock = tmp_path / "pool.h5.partial", tmp_path / ".pool.h5.lock"
    rng = random.Random(0)
    # after the k-th batch; >= 8 batches stay, so a poll that wakes late still finds the run going
    k1, k2, k3 = sorted(rng.sample(range(3, N_IDS - 20), 3))
    resume = _args(root, out, extra=["--resume"])

    def n_done() -> int:
        return len(list(partial.glob("seg-*.npz"))) if partial.is_dir() else 0

    def locked_by(proc) -> bool:  # the lock file of a killed run stays until the next run takes it over
        return lock.exists() and lock.read_text().strip() == str(proc.pid)

    gaps: list[float] = []  # seconds between two batches finishing in one run (one image per batch)

    def kill_after(proc, k, sig) -> int:
        """Send ``sig`` at a random moment of the batch after the k-th: forward pass, segment write or rename."""
        count, last = [n_done()], [None]
        k = max(k, count[0] + 1)  # at least one batch of this run: the signal comes inside its loop

        def reached() -> bool:
            n = n_done()
            if n > count[0]:
                now = time.monotonic()
                if last[0] is not None and n == count[0] + 1:
                    gaps.append(now - last[0])
                count[0], last[0] = n, now
            return n >= k

        if _wait_for(reached, proc):
            time.sleep(rng.uniform(0, 0.9) * (float(np.median(gaps)) if gaps else 0.1))
            proc.send_signal(sig)
        return proc.wait(timeout=120)

    # SIGKILL after k1 batches
    assert kill_after(_start(_args(root, out)), k1, signal.SIGKILL) == -signal.SIGKILL
    assert not out.exists() and n_done() >= k1

    # a resume with another checkpoint, id list or batch size is refused with one line, and changes nothing
    other_ckpt = tmp_path / "other" / "checkpoint.pth"
    shutil.copytree(setup["ckpt"].parent, other_ckpt.parent)
    with open(other_ckpt, "ab") as fh:
        fh.write(b"\0")
    other_ids = tmp_path / "ids.txt"
    other_ids.write_text("".join(reversed(setup["ids"].read_text().splitlines(keepends=True))))
    before = sorted(p.name for p in partial.iterdir())
    for args, what in [(_args(root, out, ckpt=other_ckpt, extra=["--resume"]), "checkpoint_sha256"),
                       (_args(root, out, ids=other_ids, extra=["--resume"]), "ids_sha256"),
                       (_args(root, out, batch_size=2, extra=["--resume"]), "batch_size")]:
        r = runner.invoke(app, args)
        assert r.exit_code == 1, r.output
        line = _one_error_line(r.stderr)
        assert f"pool.h5.partial: cannot resume: {what} differs from the interrupted run's" in line, line
    r = runner.invoke(app, _args(root, out))  # neither --resume nor --overwrite: the finished batches are kept
    assert r.exit_code == 1 and "pass --resume to continue it or --overwrite" in _one_error_line(r.stderr)
    assert sorted(p.name for p in partial.iterdir()) == before

    # a second infer to the same --out, while the first runs, fails at once and leaves the first alone
    proc = _start(resume)
    assert _wait_for(lambda: locked_by(proc), proc)
    proc.send_signal(signal.SIGSTOP)
    try:
        t = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "alseg.commands", *_args(root, out, extra=["--overwrite"])],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert time.perf_counter() - t < 60
    finally:
        proc.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert _one_error_line(second.stderr).startswith(
        f"error: {out}: another alseg process is writing it (pid {proc.pid})")
    assert sorted(p.name for p in partial.iterdir()) == before
    # ... and then SIGTERM after k2 batches
    assert kill_after(proc, k2, signal.SIGTERM) == -signal.SIGTERM

    # SIGINT after k3 batches: one line, exit 130, finished batches kept
    proc = _start(resume)
    rc = kill_after(proc, k3, signal.SIGINT)
    stderr = proc.stderr.read()
    assert rc == 130, stderr
    assert "interrupted" in _one_error_line(stderr)

    # SIGKILL as soon as the assembled file's temporary appears (when the poll catches it)
    proc = _start(resume)
    if _wait_for(lambda: bool(list(tmp_path.glob(".pool.h5.*.tmp"))), proc):
        proc.kill()
    proc.wait(timeout=120)
    if not out.exists():
        r = subprocess.run([sys.executable, "-m", "alseg.commands", *resume], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    _assert_same_pool(out, setup["ref"])
    with PoolReader(out, require_labels=True) as pool:
        assert pool.ids == setup["ids"].read_text().split()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["ids.txt", "other", "pool.h5", "pool.h5.manifest.json"], leftovers


def test_writer_killed_while_assembling_resumes_to_the_same_file(tmp_path):
    """What a kill during assembly leaves (a temporary beside the output, the segments, a half-written
    segment temporary) is cleaned up by the resume, which writes the same datasets."""
    rng = np.random.default_rng(0)
    sizes = [(5, 7), (5, 7), (9, 4), (6, 6), (9, 4)]
    rows = [(f"i{j}", rng.normal(size=(3, *s)).astype(np.float32), rng.integers(0, 3, s), rng.normal(size=(1, 4)))
            for j, s in enumerate(sizes)]
    kw = dict(class_names=["a", "b", "c"], logits_shape=(5, 7), with_labels=True, embedding_dims={"e": 4})

    def write(path: Path, upto: int, **more) -> PoolWriter:
        w = PoolWriter(path, **kw, **more)
        for i, lg, lb, e in rows[len(w.written_ids) : upto]:
            w.append([i], [lg], [lb], {"e": e})
        return w

    write(tmp_path / "ref.h5", len(rows)).close()
    write(tmp_path / "p.h5", 3).close(commit=False)
    (tmp_path / ".p.h5.4242.0badcafe.tmp").write_bytes(b"half an HDF5 file")
    (tmp_path / "p.h5.partial" / ".seg-000003.npz.4242.0badcafe.tmp").write_bytes(b"half a batch")
    with pytest.raises(InputError, match=r"cannot resume: class_names differs"):
        PoolWriter(tmp_path / "p.h5", **{**kw, "class_names": ["a", "b", "x"]}, resume=True)
    w = write(tmp_path / "p.h5", len(rows), resume=True)
    assert w.written_ids == ["i0", "i1", "i2", "i3", "i4"]
    w.close()
    _assert_same_pool(tmp_path / "p.h5", tmp_path / "ref.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5", "ref.h5"]
