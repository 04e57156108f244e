"""Hostile input through the real ``alseg`` entry point (a subprocess per case).

Every case must end with: exit code != 0 (and no signal), exactly one line on stderr, starting with
``error:`` and naming the file (or option) at fault, no ``Traceback`` anywhere, no new file left in the
case's folder (no partial output, no temporary, no lock), and every input's sha256 unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "demo_unet_tiny.py")
pytestmark = pytest.mark.slow


@dataclass
class World:
    """A small real round: demo data, a 2-iteration checkpoint, pool/calibration/scores files."""

    root: Path
    data: Path
    ckpt: Path
    pool: Path  # logits + bottleneck embeddings of the pool ids
    calib: Path  # logits + labels of the calibration ids
    crc: Path
    scores: Path  # margin + crc
    labeled: Path
    pool_ids: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from alseg.demo_data import make_demo_data
    from alseg.files.idlist import read_ids, write_ids
    from alseg.stages.calibrate import calibrate
    from alseg.stages.infer import infer
    from alseg.stages.score import score
    from alseg.stages.train import train

    root = tmp_path_factory.mktemp("hostile")
    data = make_demo_data(root / "data", n_images=40, size=32, seed=5, n_val=6, n_calib=10).out_dir
    pool_ids = data / "splits" / "pool.txt"
    labeled = write_ids(root / "labeled.txt", read_ids(pool_ids)[:6])
    common = dict(data_root=data, device="cpu")
    train(CONFIG, labeled_path=labeled, work_dir=root / "train", val_ids_path=data / "splits" / "val.txt",
          seed=0, max_iters=2, batch_size=4, **common)
    ckpt = root / "train" / "checkpoint.pth"
    pool, calib = root / "pool.h5", root / "calib.h5"
    infer(CONFIG, checkpoint_path=ckpt, ids_path=pool_ids, out_path=pool, embeddings=["bottleneck"], **common)
    infer(CONFIG, checkpoint_path=ckpt, ids_path=data / "splits" / "calib.txt", out_path=calib, with_labels=True,
          **common)
    crc = root / "crc.json"
    calibrate(calib, out_path=crc, alpha=0.2)
    scores = root / "scores.h5"
    score(pool, strategies=["margin", "crc"], out_path=scores, calibration_path=crc)
    return World(root, data, ckpt, pool, calib, crc, scores, labeled, pool_ids)


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def run_alseg(args: list[str], *, cwd: Path, fsize: int | None = None, timeout: int = 300):
    def limit():  # a "full disk": files cannot grow past fsize bytes (SIGXFSZ is ignored by alseg)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "alseg.commands", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, preexec_fn=limit)


@dataclass
class Case:
    name: str
    build: Callable[[World, Path], list[str]]  # returns argv; may write inputs into the case folder
    names: str  # what the error line must mention (a file name or an option)
    inputs: Callable[[World, Path], list[Path]] = lambda w, d: []
    fsize: int | None = None
    root_ok: bool = True  # False: the case needs permissions that root ignores
    extra: Callable[[World, Path], None] | None = None  # more checks after the run
    tags: list[str] = field(default_factory=list)


CASES: list[Case] = []


def case(name: str, names: str, *, inputs=None, fsize=None, root_ok=True, extra=None):
    def register(build):
        CASES.append(Case(name, build, names, inputs or (lambda w, d: []), fsize, root_ok, extra))
        return build
    return register


def copy(src: Path, d: Path, name: str | None = None) -> Path:
    dst = d / (name or src.name)
    shutil.copy(src, dst)
    return dst


def edit_h5(src: Path, dst: Path, fn: Callable[[h5py.File], None]) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "a") as fh:
        fn(fh)
    return dst


def replace_dataset(fh: h5py.File, name: str, value: np.ndarray) -> None:
    del fh[name]
    fh.create_dataset(name, data=value)


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def crc_doc(w: World) -> dict:
    return json.loads(w.crc.read_text())


# ---------------------------------------------------------------- score: the pool file
POOL_IN = lambda w, d: [w.pool] + sorted(d.glob("*.h5")) + sorted(d.glob("*.json"))  # noqa: E731


def score_args(pool: Path, d: Path, *extra: str) -> list[str]:
    return ["score", str(pool), "--strategy", "margin", "--out", str(d / "out.h5"), "--quiet", *extra]


@case("score: pool file missing", "nope.h5")
def _(w, d):
    return score_args(d / "nope.h5", d)


@case("score: pool is a directory", "adir", inputs=POOL_IN)
def _(w, d):
    (d / "adir").mkdir()
    return score_args(d / "adir", d)


@case("score: pool is an empty file", "empty.h5", inputs=POOL_IN)
def _(w, d):
    (d / "empty.h5").write_bytes(b"")
    return score_args(d / "empty.h5", d)


@case("score: pool is a text file", "text.h5", inputs=POOL_IN)
def _(w, d):
    (d / "text.h5").write_text("id\nimg_0001\n")
    return score_args(d / "text.h5", d)


@case("score: pool truncated", "trunc.h5", inputs=POOL_IN)
def _(w, d):
    raw = w.pool.read_bytes()
    (d / "trunc.h5").write_bytes(raw[: len(raw) // 2])
    return score_args(d / "trunc.h5", d)


@case("score: corrupt HDF5 metadata", "corrupt.h5", inputs=POOL_IN)
def _(w, d):
    raw = bytearray(w.pool.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(96, 4096, 64):  # object headers and B-tree nodes live near the start
        raw[pos] ^= 0xFF
    (d / "corrupt.h5").write_bytes(bytes(raw))
    return score_args(d / "corrupt.h5", d)


@case("score: 3-D logits", "logits3d.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "logits3d.h5", lambda fh: replace_dataset(fh, "logits", fh["logits"][:, 0]))
    return score_args(d / "logits3d.h5", d)


@case("score: fewer logits rows than ids", "short.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "short.h5", lambda fh: replace_dataset(fh, "logits", fh["logits"][:-3]))
    return score_args(d / "short.h5", d)


@case("score: fewer sizes rows than ids", "nosizes.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "nosizes.h5", lambda fh: replace_dataset(fh, "sizes", fh["sizes"][:-1]))
    return score_args(d / "nosizes.h5", d)


@case("score: class_names not JSON", "names.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "names.h5", lambda fh: fh.attrs.__setitem__("class_names", "background, road"))
    return score_args(d / "names.h5", d)


@case("score: n_classes attribute disagrees with the logits", "nclasses.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "nclasses.h5", lambda fh: fh.attrs.__setitem__("n_classes", 9))
    return score_args(d / "nclasses.h5", d)


@case("score: class_names count disagrees with the logits", "names3.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "names3.h5", lambda fh: fh.attrs.__setitem__("class_names", json.dumps(["a", "b", "c"])))
    return score_args(d / "names3.h5", d)


@case("score: a scores file given as the pool", "scores.h5", inputs=lambda w, d: [w.scores])
def _(w, d):
    return score_args(w.scores, d)


@case("score: pool of a future format version", "future.h5", inputs=POOL_IN)
def _(w, d):
    edit_h5(w.pool, d / "future.h5", lambda fh: fh.attrs.__setitem__("format_version", 99))
    return score_args(d / "future.h5", d)


@case("score: NaN logits", "nan.h5", inputs=POOL_IN)
def _(w, d):
    def poison(fh):
        x = fh["logits"][...]
        x[2, 1, 3, 3] = np.nan
        fh["logits"][...] = x
    edit_h5(w.pool, d / "nan.h5", poison)
    return score_args(d / "nan.h5", d)


@case("score: duplicate ids in the pool", "dup.h5", inputs=POOL_IN)
def _(w, d):
    def dup(fh):
        ids = fh["ids"][...]
        ids[1] = ids[0]
        fh["ids"][...] = ids
    edit_h5(w.pool, d / "dup.h5", dup)
    return score_args(d / "dup.h5", d)


@case("score: an empty id in the pool", "blank.h5", inputs=POOL_IN)
def _(w, d):
    def blank(fh):
        ids = fh["ids"][...]
        ids[3] = b""
        fh["ids"][...] = ids
    edit_h5(w.pool, d / "blank.h5", blank)
    return score_args(d / "blank.h5", d)


# ---------------------------------------------------------------- score: options and outputs
@case("score: --batch-size 0", "--batch-size", inputs=POOL_IN)
def _(w, d):
    return score_args(w.pool, d, "--batch-size", "0")


@case("score: --batch-size not a number", "--batch-size", inputs=POOL_IN)
def _(w, d):
    return score_args(w.pool, d, "--batch-size", "many")


@case("score: --save-risk-maps -3", "--save-risk-maps", inputs=POOL_IN)
def _(w, d):
    return ["score", str(w.pool), "-s", "crc", "--calibration", str(w.crc), "--save-risk-maps", "-3",
            "--out", str(d / "out.h5"), "--quiet"]


@case("score: unknown strategy", "nope", inputs=POOL_IN)
def _(w, d):
    return ["score", str(w.pool), "-s", "nope", "--out", str(d / "out.h5"), "--quiet"]


@case("score: unknown option", "--bogus", inputs=POOL_IN)
def _(w, d):
    return score_args(w.pool, d, "--bogus")


@case("score: --aggregation unknown", "--aggregation", inputs=POOL_IN)
def _(w, d):
    return score_args(w.pool, d, "--aggregation", "median-ish")


@case("score: --q out of range", "--q", inputs=POOL_IN)
def _(w, d):
    return score_args(w.pool, d, "--aggregation", "top-q", "--q", "150")


@case("score: crc without --calibration", "--calibration", inputs=POOL_IN)
def _(w, d):
    return ["score", str(w.pool), "-s", "crc", "--out", str(d / "out.h5"), "--quiet"]


def crc_score(w: World, d: Path, cal: Path) -> list[str]:
    return ["score", str(w.pool), "-s", "crc", "--calibration", str(cal), "--out", str(d / "out.h5"), "--quiet"]


CRC_IN = lambda w, d: [w.pool] + sorted(d.glob("*.json"))  # noqa: E731


@case("score: calibration file missing", "missing.json", inputs=CRC_IN)
def _(w, d):
    return crc_score(w, d, d / "missing.json")


@case("score: calibration not JSON", "notjson.json", inputs=CRC_IN)
def _(w, d):
    (d / "notjson.json").write_text("{thresholds: [0.1,")
    return crc_score(w, d, d / "notjson.json")


@case("score: calibration thresholds as strings", "strings.json", inputs=CRC_IN)
def _(w, d):
    doc = crc_doc(w)
    doc["thresholds"] = [str(t) for t in doc["thresholds"]]
    doc["query_thresholds"] = [str(t) for t in doc["query_thresholds"]]
    return crc_score(w, d, write_json(d / "strings.json", doc))


@case("score: calibration thresholds out of [0, 1]", "range.json", inputs=CRC_IN)
def _(w, d):
    doc = crc_doc(w)
    doc["query_thresholds"] = [1.5] * len(doc["query_thresholds"])
    return crc_score(w, d, write_json(d / "range.json", doc))


@case("score: calibration class names reordered", "reordered.json", inputs=CRC_IN)
def _(w, d):
    doc = crc_doc(w)
    doc["class_names"] = doc["class_names"][::-1]
    return crc_score(w, d, write_json(d / "reordered.json", doc))


@case("score: calibration with fewer classes", "fewer.json", inputs=CRC_IN)
def _(w, d):
    doc = crc_doc(w)
    for key in ("class_names", "thresholds", "query_thresholds", "calibrated", "uncalibrated", "n_images"):
        if isinstance(doc.get(key), list):
            doc[key] = doc[key][:-1]
    return crc_score(w, d, write_json(d / "fewer.json", doc))


@case("score: calibration of another format", "other.json", inputs=CRC_IN)
def _(w, d):
    return crc_score(w, d, write_json(d / "other.json", {"format": "something.else", "format_version": 1}))


@case("score: calibration is a directory", "caldir", inputs=CRC_IN)
def _(w, d):
    (d / "caldir").mkdir()
    return crc_score(w, d, d / "caldir")


@case("score: --out is the pool file", "pool.h5", inputs=lambda w, d: [w.pool])
def _(w, d):
    return ["score", str(w.pool), "-s", "margin", "--out", str(w.pool), "--overwrite", "--quiet"]


@case("score: --out is a directory", "outdir", inputs=POOL_IN)
def _(w, d):
    (d / "outdir").mkdir()
    return ["score", str(w.pool), "-s", "margin", "--out", str(d / "outdir"), "--overwrite", "--quiet"]


@case("score: --out under a file", "afile", inputs=POOL_IN)
def _(w, d):
    (d / "afile").write_text("x")
    return ["score", str(w.pool), "-s", "margin", "--out", str(d / "afile" / "out.h5"), "--quiet"]


@case("score: --out exists without --overwrite", "exists.h5", inputs=lambda w, d: [w.pool, d / "exists.h5"])
def _(w, d):
    (d / "exists.h5").write_text("keep me")
    return ["score", str(w.pool), "-s", "margin", "--out", str(d / "exists.h5"), "--quiet"]


@case("score: read-only output folder", "ro", inputs=POOL_IN, root_ok=False)
def _(w, d):
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return ["score", str(w.pool), "-s", "margin", "--out", str(d / "ro" / "out.h5"), "--quiet"]


@case("score: disk full", "out.h5", inputs=POOL_IN, fsize=4096)
def _(w, d):
    return ["score", str(w.pool), "-s", "margin,crc", "--calibration", str(w.crc), "--save-risk-maps", "8",
            "--out", str(d / "out.h5"), "--quiet"]


# ---------------------------------------------------------------- calibrate
CAL_IN = lambda w, d: [w.calib] + sorted(d.glob("*.h5"))  # noqa: E731


def cal_args(pool: Path, d: Path, *extra: str) -> list[str]:
    return ["calibrate", str(pool), "--out", str(d / "crc.json"), "--quiet", *extra]


@case("calibrate: pool without labels", "pool.h5", inputs=lambda w, d: [w.pool])
def _(w, d):
    return cal_args(w.pool, d)


@case("calibrate: --alpha 0", "--alpha", inputs=CAL_IN)
def _(w, d):
    return cal_args(w.calib, d, "--alpha", "0")


@case("calibrate: --alpha 1.5", "--alpha", inputs=CAL_IN)
def _(w, d):
    return cal_args(w.calib, d, "--alpha", "1.5")


@case("calibrate: --bins 0", "--bins", inputs=CAL_IN)
def _(w, d):
    return cal_args(w.calib, d, "--bins", "0")


@case("calibrate: --t-min 1", "--t-min", inputs=CAL_IN)
def _(w, d):
    return cal_args(w.calib, d, "--t-min", "1")


@case("calibrate: --out is the calibration pool", "calib.h5", inputs=CAL_IN)
def _(w, d):
    return ["calibrate", str(w.calib), "--out", str(w.calib), "--overwrite", "--quiet"]


@case("calibrate: --evaluate missing", "held.h5", inputs=CAL_IN)
def _(w, d):
    return cal_args(w.calib, d, "--evaluate", str(d / "held.h5"))


@case("calibrate: labels dataset of the wrong shape", "badlabels.h5", inputs=CAL_IN)
def _(w, d):
    edit_h5(w.calib, d / "badlabels.h5", lambda fh: replace_dataset(fh, "labels", fh["labels"][:, :5, :5]))
    return cal_args(d / "badlabels.h5", d)


@case("calibrate: label values beyond the classes", "labels99.h5", inputs=CAL_IN)
def _(w, d):
    def poison(fh):
        y = fh["labels"][...]
        y[0, 4, 4] = 99
        fh["labels"][...] = y
    edit_h5(w.calib, d / "labels99.h5", poison)
    return cal_args(d / "labels99.h5", d)


@case("calibrate: disk full", "crc.json", inputs=CAL_IN, fsize=600)
def _(w, d):
    return cal_args(w.calib, d)


# ---------------------------------------------------------------- select
SEL_IN = lambda w, d: [w.pool, w.scores, w.labeled, w.crc] + sorted(d.glob("*.txt")) + sorted(d.glob("*.h5"))  # noqa


def sel_args(w: World, d: Path, *extra: str, labeled: Path | None = None, strategy="margin") -> list[str]:
    return ["select", "-s", strategy, "--budget", "3", "--labeled", str(labeled or w.labeled), "--scores",
            str(w.scores), "--out", str(d / "selected.txt"), "--quiet", *extra]


@case("select: --labeled missing", "nolab.txt", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d, labeled=d / "nolab.txt")


@case("select: --labeled is a directory", "labdir", inputs=SEL_IN)
def _(w, d):
    (d / "labdir").mkdir()
    return sel_args(w, d, labeled=d / "labdir")


@case("select: labeled list not UTF-8", "latin.txt", inputs=SEL_IN)
def _(w, d):
    (d / "latin.txt").write_bytes(b"caf\xe9\n")
    return sel_args(w, d, labeled=d / "latin.txt")


@case("select: labeled id outside the dataset", "escape.txt", inputs=SEL_IN)
def _(w, d):
    (d / "escape.txt").write_text("../../etc/x\n")
    return sel_args(w, d, labeled=d / "escape.txt")


@case("select: absolute labeled id", "abs.txt", inputs=SEL_IN)
def _(w, d):
    (d / "abs.txt").write_text("/etc/passwd\n")
    return sel_args(w, d, labeled=d / "abs.txt")


@case("select: labeled id twice", "twice.txt", inputs=SEL_IN)
def _(w, d):
    (d / "twice.txt").write_text("a\nb\na\n")
    return sel_args(w, d, labeled=d / "twice.txt")


@case("select: --budget 0", "--budget", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d)[:4] + ["0"] + sel_args(w, d)[5:]


@case("select: --budget=-5", "--budget", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d)[:3] + ["--budget=-5"] + sel_args(w, d)[5:]


@case("select: --out is the labeled list", "labeled.txt", inputs=SEL_IN)
def _(w, d):
    args = sel_args(w, d, "--overwrite")
    args[args.index("--out") + 1] = str(w.labeled)
    return args


@case("select: --out is a directory", "seldir", inputs=SEL_IN)
def _(w, d):
    (d / "seldir").mkdir()
    args = sel_args(w, d, "--overwrite")
    args[args.index("--out") + 1] = str(d / "seldir")
    return args


@case("select: scores of another pool than --pool", "scores.h5", inputs=SEL_IN)
def _(w, d):
    # a pool file holding 4 ids fewer than the scores file: the scores come from another pool
    cut = ("ids", "sizes", "logits", "embeddings/bottleneck")
    edit_h5(w.pool, d / "other.h5", lambda fh: [replace_dataset(fh, k, fh[k][:-4]) for k in cut])
    return sel_args(w, d, "--pool", str(d / "other.h5"))


@case("select: scores file without that strategy", "entropy", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d, strategy="entropy")


@case("select: coreset with fewer embedding rows than ids", "shortemb.h5", inputs=SEL_IN)
def _(w, d):
    edit_h5(w.pool, d / "shortemb.h5",
            lambda fh: replace_dataset(fh, "embeddings/bottleneck", fh["embeddings/bottleneck"][:-2]))
    return ["select", "-s", "coreset", "--budget", "3", "--labeled", str(w.labeled), "--pool", str(d / "shortemb.h5"),
            "--out", str(d / "selected.txt"), "--quiet", "--device", "cpu"]


@case("select: coreset with an embedding the pool lacks", "penultimate", inputs=SEL_IN)
def _(w, d):
    return ["select", "-s", "coreset", "--budget", "3", "--labeled", str(w.labeled), "--pool", str(w.pool),
            "--embedding", "penultimate", "--out", str(d / "selected.txt"), "--quiet", "--device", "cpu"]


@case("select: unknown strategy", "nope", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d, strategy="nope")


@case("select: --tau negative", "--tau", inputs=SEL_IN)
def _(w, d):
    return ["select", "-s", "crc", "--budget", "3", "--labeled", str(w.labeled), "--scores", str(w.scores),
            "--pool", str(w.pool), "--calibration", str(w.crc), "--tau", "-1", "--out", str(d / "selected.txt"),
            "--quiet"]


@case("select: --groups 0", "--groups", inputs=SEL_IN)
def _(w, d):
    return sel_args(w, d, "--stochastic", "--groups", "0")


@case("select: empty --pool-ids", "emptyids.txt", inputs=SEL_IN)
def _(w, d):
    (d / "emptyids.txt").write_text("")
    return ["select", "-s", "random", "--budget", "3", "--labeled", str(w.labeled), "--pool-ids",
            str(d / "emptyids.txt"), "--out", str(d / "selected.txt"), "--quiet"]


def _no_update_trace(w: World, d: Path) -> None:
    from alseg.files.idlist import read_ids

    lab, orig = d / "lab.txt", read_ids(d / "lab.orig")
    assert read_ids(lab) == orig  # not extended
    r = run_alseg(sel_args(w, d, "--update", labeled=lab), cwd=d)  # a rerun without the fault works
    assert r.returncode == 0, r.stderr
    assert len(read_ids(lab)) == len(orig) + 3  # one batch, not two
    assert read_ids(d / "selected.txt") == read_ids(lab)[-3:]


@case("select --update: disk full while extending the labeled list", "lab.txt", fsize=2048,
      inputs=lambda w, d: [w.pool, w.scores, d / "lab.txt"], extra=_no_update_trace)
def _(w, d):
    # a long labeled list (ids outside the pool are allowed there): the updated list is what overflows
    text = w.labeled.read_text() + "".join(f"extra/{'x' * 40}_{i:04d}\n" for i in range(60))
    (d / "lab.txt").write_text(text)
    (d / "lab.orig").write_text(text)
    return sel_args(w, d, "--update", labeled=d / "lab.txt")


# ---------------------------------------------------------------- infer and train (mmseg)
def infer_args(w: World, d: Path, ids: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["infer", CONFIG, "--checkpoint", str(w.ckpt), "--ids", str(ids), "--out", str(d / "p.h5"),
            "--data-root", str(data or w.data), "--device", "cpu", "--quiet", *extra]


INF_IN = lambda w, d: [w.ckpt] + sorted(d.glob("*.txt")) + sorted(d.rglob("*.png"))  # noqa: E731


@case("infer: id outside the dataset", "up.txt", inputs=INF_IN)
def _(w, d):
    (d / "up.txt").write_text("../../etc/x\n")
    return infer_args(w, d, d / "up.txt")


@case("infer: id not in the dataset", "ghost.txt", inputs=INF_IN)
def _(w, d):
    (d / "ghost.txt").write_text("img_9999\n")
    return infer_args(w, d, d / "ghost.txt")


def _corrupt_data(w: World, d: Path, what: str) -> tuple[Path, Path]:
    from alseg.files.idlist import read_ids

    data = d / "data"
    shutil.copytree(w.data, data)
    first = read_ids(w.pool_ids)[0]
    folder = "img_dir" if what == "image" else "ann_dir"
    target = next((data / folder).rglob(f"{first}*"))
    raw = target.read_bytes()
    target.write_bytes(raw[: len(raw) // 3])  # a truncated PNG
    ids = d / "one.txt"
    ids.write_text(first + "\n")
    return data, target


@case("infer: truncated image", "img_dir", inputs=INF_IN)
def _(w, d):
    data, _ = _corrupt_data(w, d, "image")
    return infer_args(w, d, d / "one.txt", data=data)


@case("infer: truncated mask with --with-labels", "ann_dir", inputs=INF_IN)
def _(w, d):
    data, _ = _corrupt_data(w, d, "mask")
    return infer_args(w, d, d / "one.txt", "--with-labels", data=data)


@case("infer: checkpoint is garbage", "garbage.pth", inputs=INF_IN)
def _(w, d):
    (d / "garbage.pth").write_bytes(b"\x80\x04not a checkpoint")
    (d / "ids.txt").write_text(w.pool_ids.read_text())
    args = infer_args(w, d, d / "ids.txt")
    args[args.index("--checkpoint") + 1] = str(d / "garbage.pth")
    return args


@case("infer: --out is the id list", "ids.txt", inputs=INF_IN)
def _(w, d):
    (d / "ids.txt").write_text(w.pool_ids.read_text())
    args = infer_args(w, d, d / "ids.txt", "--overwrite")
    args[args.index("--out") + 1] = str(d / "ids.txt")
    return args


@case("train: --out is a file", "wd", inputs=lambda w, d: [w.labeled, d / "wd"])
def _(w, d):
    (d / "wd").write_text("not a folder")
    return ["train", CONFIG, "--labeled", str(w.labeled), "--out", str(d / "wd"), "--data-root", str(w.data),
            "--device", "cpu", "--max-iters", "1", "--quiet"]


@case("train: labeled id not in the train split", "ghost.txt", inputs=lambda w, d: [d / "ghost.txt"])
def _(w, d):
    (d / "ghost.txt").write_text("img_9999\n")
    return ["train", CONFIG, "--labeled", str(d / "ghost.txt"), "--out", str(d / "wd"), "--data-root",
            str(w.data), "--device", "cpu", "--max-iters", "1", "--quiet"]


@case("train: truncated mask of a labeled image", "ann_dir", inputs=INF_IN)
def _(w, d):
    data, _ = _corrupt_data(w, d, "mask")
    return ["train", CONFIG, "--labeled", str(d / "one.txt"), "--out", str(d / "wd"), "--data-root", str(data),
            "--device", "cpu", "--max-iters", "2", "--quiet"]


@case("train: truncated image, data loader workers", "img_dir", inputs=INF_IN)
def _(w, d):
    data, _ = _corrupt_data(w, d, "image")
    return ["train", CONFIG, "--labeled", str(d / "one.txt"), "--out", str(d / "wd"), "--data-root", str(data),
            "--device", "cpu", "--max-iters", "2", "--quiet", "--cfg-options", "train_dataloader.num_workers=2"]


@case("train: config missing", "nope_config.py", inputs=lambda w, d: [w.labeled])
def _(w, d):
    return ["train", str(d / "nope_config.py"), "--labeled", str(w.labeled), "--out", str(d / "wd"),
            "--device", "cpu", "--quiet"]


# ---------------------------------------------------------------- run, report, demo-data, ids
def _toml(d: Path, body: bytes) -> Path:
    path = d / "exp.toml"
    path.write_bytes(b'config = "demo_unet_tiny"\nstrategies = ["random"]\n' + body)
    return path


@case("run: budget is a string", "exp.toml", inputs=lambda w, d: [d / "exp.toml"])
def _(w, d):
    return ["run", str(_toml(d, b'initial = 4\nbudget = "four"\nrounds = 1\n')), "--quiet"]


@case("run: experiment not UTF-8", "exp.toml", inputs=lambda w, d: [d / "exp.toml"])
def _(w, d):
    return ["run", str(_toml(d, b'name = "caf\xe9"\ninitial = 4\nbudget = 2\nrounds = 1\n')), "--quiet"]


@case("run: experiment is not TOML", "exp.toml", inputs=lambda w, d: [d / "exp.toml"])
def _(w, d):
    return ["run", str(_toml(d, b"initial = = 4\n")), "--quiet"]


@case("run: experiment is a directory", "expdir", inputs=lambda w, d: [])
def _(w, d):
    (d / "expdir").mkdir()
    return ["run", str(d / "expdir"), "--quiet"]


@case("report: experiment folder missing", "noexp", inputs=lambda w, d: [])
def _(w, d):
    return ["report", str(d / "noexp"), "--out", str(d / "r.html")]


@case("demo-data: --out is a file", "taken", inputs=lambda w, d: [d / "taken"])
def _(w, d):
    (d / "taken").write_text("a file")
    return ["demo-data", "--out", str(d / "taken"), "--n-images", "8", "--overwrite"]


@case("ids: config missing", "nope_cfg.py", inputs=lambda w, d: [])
def _(w, d):
    return ["ids", str(d / "nope_cfg.py")]


def test_enough_cases():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_hostile(world, tmp_path, c: Case):
    if not c.root_ok and os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    d = tmp_path / "case"
    d.mkdir()
    args = c.build(world, d)
    inputs = [p for p in c.inputs(world, d) if p.exists()]
    before = {p: sha(p) for p in inputs}
    files_before = listing(d) | listing(world.root)
    r = run_alseg(args, cwd=d, fsize=c.fsize)
    out = r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode > 0, f"exit {r.returncode}: {out[-2000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert c.names in lines[0], lines[0]
    if (d / "ro").exists():
        (d / "ro").chmod(0o755)
    assert {p: sha(p) for p in inputs} == before, "an input changed"
    assert (listing(d) | listing(world.root)) == files_before, f"left behind: {(listing(d) | listing(world.root)) - files_before}"
    if c.extra:
        c.extra(world, d)


def test_bom_labeled_list_is_read_without_the_bom(world, tmp_path):
    """A BOM at the start of the labeled list must not make its first id selectable again."""
    from alseg.files.idlist import read_ids

    lab = tmp_path / "bom.txt"
    lab.write_bytes(b"\xef\xbb\xbf" + world.labeled.read_bytes())
    labeled, pool = read_ids(world.labeled), read_ids(world.pool_ids)
    args = ["select", "-s", "margin", "--budget", str(len(pool) - len(labeled)), "--labeled", str(lab), "--scores",
            str(world.scores), "--out", str(tmp_path / "sel.txt"), "--update", "--quiet"]
    r = run_alseg(args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert labeled[0] not in read_ids(tmp_path / "sel.txt")
    ids = read_ids(lab)
    assert ids.count(labeled[0]) == 1 and sorted(ids) == sorted(pool)
