"""Outputs: one writer at a time, unique temporaries, outputs that are inputs refused, write failures as one
line, and `select --update` all or nothing."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alseg.commands import app
from alseg.errors import OutputError
from alseg.files.atomic import (
    atomic_path,
    check_not_input,
    output_lock,
    temp_path,
    write_error,
    write_text_atomic,
)
from alseg.files.idlist import read_ids, write_ids

from conftest import make_pool

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _holder(path: Path) -> subprocess.Popen:
    """A second process that holds the output lock of ``path`` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from alseg.files.atomic import output_lock
        with output_lock({str(path)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


# -------------------------------------------------------------------------------------------- lock


def test_second_writer_fails_at_once_and_a_dead_holders_lock_does_not_block(tmp_path):
    out = tmp_path / "pool.h5"
    proc = _holder(out)
    try:
        t = time.perf_counter()
        with pytest.raises(OutputError, match=rf"pool\.h5: another alseg process is writing it \(pid {proc.pid}\)"):
            with output_lock(out):
                pass
        assert time.perf_counter() - t < 1.0
        with pytest.raises(OutputError, match="another alseg process"):
            write_text_atomic(out, "x")
        assert not out.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the kernel dropped the dead holder's lock; its lock file is reused, then removed
    with output_lock(out):
        with output_lock(out):  # re-entrant within one process
            write_text_atomic(out, "mine")
    assert out.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.h5"]


def test_temporaries_are_unique_and_removed(tmp_path):
    out = tmp_path / "a.txt"
    names = {temp_path(out).name for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(".a.txt.") and n.endswith(".tmp") and f".{os.getpid()}." in n for n in names)
    with pytest.raises(ValueError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert list(tmp_path.iterdir()) == []
    # a killed writer's temporary is removed the next time the output's lock is taken; others are kept
    stale = tmp_path / ".a.txt.99999.deadbeef.tmp"
    other = tmp_path / ".a.txt.manifest.json.99999.deadbeef.tmp"
    stale.write_text("half")
    other.write_text("half")
    write_text_atomic(out, "whole")
    assert not stale.exists() and other.exists() and out.read_text() == "whole"


# ------------------------------------------------------------------------------------- same paths


def test_output_that_is_an_input_is_refused(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x\n")
    (tmp_path / "link.txt").symlink_to(a)
    os.link(a, tmp_path / "hard.txt")
    for same in (a, tmp_path / "." / "a.txt", tmp_path / "link.txt", tmp_path / "hard.txt"):
        with pytest.raises(OutputError, match="this output is also an input"):
            check_not_input([same], [None, a])
    check_not_input([tmp_path / "b.txt"], [a, None])  # a new file, elsewhere: fine
    with pytest.raises(OutputError):
        check_not_input([tmp_path / "new.txt"], [tmp_path / "sub" / ".." / "new.txt"])  # neither exists yet


def test_cli_refuses_to_overwrite_its_input(tmp_path, ids40):
    pool = make_pool(tmp_path / "pool.h5", ids40[:6], with_labels=True)
    os.link(pool, tmp_path / "hard.h5")
    lab = tmp_path / "lab.txt"
    write_ids(lab, ids40[:2])
    before = {p: _sha(p) for p in (pool, lab)}
    cases = [
        ["score", str(pool), "--strategy", "margin", "--out", str(pool), "--overwrite"],
        ["score", str(pool), "--strategy", "margin", "--out", str(tmp_path / "hard.h5"), "--overwrite"],
        ["calibrate", str(pool), "--out", str(pool), "--overwrite"],
        ["select", "--strategy", "margin", "--budget", "2", "--labeled", str(lab), "--pool", str(pool),
         "--out", str(lab), "--overwrite"],
        ["select", "--strategy", "margin", "--budget", "2", "--labeled", str(lab), "--pool", str(pool),
         "--out", str(pool), "--overwrite"],
        ["infer", str(ROOT / "configs" / "demo_unet_tiny.py"), "--checkpoint", str(pool), "--ids", str(lab),
         "--out", str(lab), "--overwrite"],
        ["train", str(ROOT / "configs" / "demo_unet_tiny.py"), "--labeled", str(lab), "--out", str(lab),
         "--overwrite"],
    ]
    for args in cases:
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert "this output is also an input" in _error_line(r)
    assert before == {p: _sha(p) for p in (pool, lab)}


def test_folder_where_a_file_is_expected(tmp_path, ids40):
    pool = make_pool(tmp_path / "pool.h5", ids40[:4])
    (tmp_path / "dir.h5").mkdir()
    (tmp_path / "file").write_text("")
    for out, message in [(tmp_path / "dir.h5", "dir.h5: is a folder; give a file name"),
                         (tmp_path / "file" / "s.h5", "s.h5: cannot write ("),
                         (tmp_path / "file" / "sub" / "s.h5", "cannot write (Not a directory)")]:
        r = runner.invoke(app, ["score", str(pool), "--strategy", "margin", "--out", str(out), "--overwrite"])
        assert r.exit_code == 1, r.output
        assert message in _error_line(r)


def test_a_failed_stage_leaves_no_folders_behind(tmp_path):
    r = runner.invoke(app, ["score", str(tmp_path / "missing.h5"), "--strategy", "margin",
                            "--out", str(tmp_path / "new" / "sub" / "s.h5")])
    assert r.exit_code == 1 and "missing.h5: file not found" in _error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_write_error_names_the_file_and_the_reason():
    e = write_error("x/out.h5", OSError(errno.ENOSPC, "No space left on device"))
    assert str(e) == "x/out.h5: cannot write (No space left on device); the disk is full; free some space and rerun"
    # h5py puts the C errno into its message
    e = write_error("s.h5", OSError("Can't write data (file write failed: errno = 27, error message = 'File too large')"))
    assert str(e).startswith("s.h5: cannot write (File too large); the file size limit is reached")


def test_file_size_limit_is_one_error_line_and_nothing_half_written(tmp_path, ids40):
    """`ulimit -f` through the real entry point: SIGXFSZ is ignored, EFBIG becomes one line."""
    pool = make_pool(tmp_path / "pool.h5", ids40[:20])
    lab = tmp_path / "lab.txt"
    write_ids(lab, [f"a_long_labeled_id_{i:05d}" for i in range(400)])  # ~10 KB: over the limit when rewritten
    before = _sha(lab)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        sys.argv = ["alseg"] + sys.argv[1:]
        from alseg.commands import main
        main()
    """)
    out = tmp_path / "out"
    out.mkdir()
    runs = {
        "score": ["score", str(pool), "--strategy", "margin,contextual-diversity",
                  "--out", str(out / "s.h5"), "--quiet"],
        "select": ["select", "--strategy", "margin", "--budget", "3", "--labeled", str(lab), "--pool", str(pool),
                   "--out", str(out / "sel.txt"), "--update", "--device", "cpu", "--quiet"],
    }
    for name, args in runs.items():
        r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
        assert r.returncode == 1, (name, r.returncode, r.stderr)
        assert "cannot write (File too large); the file size limit is reached (ulimit -f)" in _error_line(r), name
    assert sorted(p.name for p in out.iterdir()) == []
    assert _sha(lab) == before and not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]


def test_pool_writer_past_the_file_size_limit_keeps_its_batches(tmp_path):
    """Each batch fits under the limit, the assembled file does not: one error naming it, the batches
    kept, and a resume without the limit writes the file."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        import numpy as np
        from alseg.errors import AlsegError
        from alseg.files.hdf5 import PoolWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resume = sys.argv[1] == "resume"
        if not resume:
            resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))
        rng = np.random.default_rng(0)
        try:
            with PoolWriter({str(tmp_path / "p.h5")!r}, class_names=["a", "b", "c"], logits_shape=(64, 64),
                            resume=resume) as w:
                for i in range(len(w.written_ids), 4):
                    w.append([f"i{{i}}"], rng.normal(size=(1, 3, 64, 64)))
        except AlsegError as exc:
            print(exc)
            sys.exit(1)
    """)
    r = subprocess.run([sys.executable, "-c", script, "fresh"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "p.h5: cannot write (File too large)" in r.stdout and "rerun with --resume" in r.stdout, r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5.partial"]
    assert len(list((tmp_path / "p.h5.partial").glob("seg-*.npz"))) == 4
    r = subprocess.run([sys.executable, "-c", script, "resume"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]


# ------------------------------------------------------------------------------------- select --update


def _select(tmp_path, pool, lab, *extra):
    return runner.invoke(app, ["select", "--strategy", "margin", "--budget", "3", "--labeled", str(lab),
                               "--pool", str(pool), "--out", str(tmp_path / "sel.txt"), "--update",
                               "--device", "cpu", "--quiet", *extra])


def test_update_is_all_or_nothing(tmp_path, ids40, monkeypatch):
    pool = make_pool(tmp_path / "pool.h5", ids40[:12])
    lab = tmp_path / "lab.txt"
    write_ids(lab, ids40[:2])
    sel, man = tmp_path / "sel.txt", tmp_path / "sel.txt.manifest.json"

    # another process is writing the labeled list: refused at once, nothing written
    proc = _holder(lab)
    try:
        r = _select(tmp_path, pool, lab)
    finally:
        proc.kill()
        proc.wait()
    assert r.exit_code == 1 and f"another alseg process is writing it (pid {proc.pid})" in _error_line(r)
    assert not sel.exists() and not man.exists() and read_ids(lab) == ids40[:2]

    # the labeled list cannot be renamed into place (the last step): selection and manifest are taken back
    real_replace = os.replace

    def failing_replace(src, dst, *a, **k):
        if Path(dst) == lab:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", failing_replace)
    r = _select(tmp_path, pool, lab)
    monkeypatch.setattr(os, "replace", real_replace)
    assert r.exit_code == 1 and "lab.txt: cannot write (No space left on device)" in _error_line(r)
    assert not sel.exists() and not man.exists() and read_ids(lab) == ids40[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.txt", "pool.h5"]

    # a plain rerun works and appends one batch
    r = _select(tmp_path, pool, lab)
    assert r.exit_code == 0, r.output
    first = read_ids(sel)
    assert len(first) == 3 and read_ids(lab) == ids40[:2] + first and man.exists()

    # --overwrite that fails at the manifest: the earlier selection and manifest come back, the list is as it was
    kept = {p: p.read_bytes() for p in (sel, man, lab)}
    import alseg.stages.select as S

    def failing_manifest(*a, **k):
        raise OutputError("sel.txt.manifest.json: cannot write (No space left on device)")

    monkeypatch.setattr(S, "write_manifest", failing_manifest)
    r = _select(tmp_path, pool, lab, "--overwrite")
    assert r.exit_code == 1
    assert kept == {p: p.read_bytes() for p in (sel, man, lab)}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".lock"))]


def test_update_refuses_labeled_list_that_is_another_input(tmp_path, ids40):
    pool = make_pool(tmp_path / "pool.h5", ids40[:8])
    ids = tmp_path / "ids.txt"
    write_ids(ids, ids40[:8])
    r = runner.invoke(app, ["select", "--strategy", "random", "--budget", "2", "--labeled", str(ids),
                            "--pool-ids", str(ids), "--out", str(tmp_path / "s.txt"), "--update"])
    assert r.exit_code == 1 and "this output is also an input" in _error_line(r)
    assert read_ids(ids) == ids40[:8] and not (tmp_path / "s.txt").exists()


def test_calibration_output_locked_and_manifest_failure_leaves_nothing(tmp_path, ids40, monkeypatch):
    pool = make_pool(tmp_path / "calib.h5", ids40[:10], with_labels=True)
    out = tmp_path / "crc.json"
    import alseg.stages.calibrate as C

    def failing_manifest(*a, **k):
        raise OutputError("crc.json.manifest.json: cannot write (No space left on device)")

    monkeypatch.setattr(C, "write_manifest", failing_manifest)
    r = runner.invoke(app, ["calibrate", str(pool), "--out", str(out)])
    assert r.exit_code == 1 and not out.exists()
    monkeypatch.undo()
    r = runner.invoke(app, ["calibrate", str(pool), "--out", str(out)])
    assert r.exit_code == 0, r.output
