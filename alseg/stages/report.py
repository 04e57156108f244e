"""``alseg report``: one self-contained HTML report of an experiment tree (``docs/experiment.md``).

Reads: ``EXP/experiment.toml``, every ``train/metrics.json``, the stage manifests (``*.manifest.json``,
``train/manifest.json``) for the time per stage, ``selected.txt``, the gallery round's ``pool.h5`` /
``scores.h5``, ``crc.json``, images and masks under ``data_root`` and ``data_root/classes.json``.
Writes: ``<out>.html`` (figures embedded as base64 PNG data URIs, inline CSS, no scripts, no external
resources) and the same PNGs in ``<out stem>_files/`` beside it.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly (no pyplot), so
the report never changes matplotlib's global backend or state.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from alseg.files.jsonfile import read_versioned_json
from alseg.stages import no_progress as _noop
from alseg import stats
from alseg.errors import InputError, OutputExistsError
from alseg.files.atomic import atomic_path, write_text_atomic
from alseg.files.idlist import read_ids
from alseg.files.manifest import read_manifest

# Column order of the time-per-stage table; other stage names found in manifests follow, sorted.
STAGES = ("infer", "score", "calibrate", "select", "train")
METRICS_FORMAT = "alseg.metrics"
_ROUND_RE = re.compile(r"^round-(\d+)$")
_SEED_RE = re.compile(r"^seed-(\d+)$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

SECTIONS = (
    ("summary", "Summary"),
    ("curves", "Learning curves"),
    ("penalty", "Penalty matrix"),
    ("table", "Per-round table"),
    ("gallery", "Gallery"),
    ("classes", "Class histogram"),
    ("crc", "CRC-AL calibration"),
)



# --------------------------------------------------------------------------------------------- collect


@dataclass
class RoundRun:
    """One (seed, strategy, round) of the tree; round 0 is the seed's shared ``round-00``."""

    seed: int
    strategy: str
    round: int
    n_labeled: int
    miou: float
    round_dir: Path
    seconds: dict[str, float]
    selected: list[str]
    pool_path: Path | None = None
    scores_path: Path | None = None
    crc_path: Path | None = None


@dataclass
class Experiment:
    exp_dir: Path
    name: str
    data_root: Path | None
    seeds: list[int]
    strategies: list[str]
    runs: list[RoundRun]  # round 0 appears once per (seed, strategy), as the first point of each curve
    full_miou: float | None
    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def rounds(self) -> list[int]:
        return sorted({r.round for r in self.runs})

    def records(self) -> list[stats.Record]:
        return [stats.Record(r.seed, r.strategy, r.round, r.n_labeled, r.miou) for r in self.runs]

    def run(self, seed: int, strategy: str, round_: int) -> RoundRun | None:
        for r in self.runs:
            if (r.seed, r.strategy, r.round) == (seed, strategy, round_):
                return r
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def read_metrics(path: Path) -> tuple[float, int | None]:
    """``(final mIoU in percent, n_labeled or None)`` from a ``train/metrics.json``."""
    doc = read_versioned_json(path, METRICS_FORMAT, 1)
    try:
        miou = float(doc["final"]["mIoU"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: has no numeric final.mIoU") from None
    n = doc.get("n_labeled")
    return miou, (int(n) if n is not None else None)


def _stage_seconds(round_dir: Path) -> dict[str, float]:
    """Seconds per stage summed over the manifests of one round folder (two ``infer`` runs for crc)."""
    seconds: dict[str, float] = {}
    paths = sorted(round_dir.glob("*.manifest.json")) + [round_dir / "train" / "manifest.json"]
    for path in paths:
        if not path.is_file():
            continue
        doc = read_manifest(path)
        stage, secs = doc.get("stage"), doc.get("seconds")
        if stage and isinstance(secs, (int, float)):
            seconds[stage] = seconds.get(stage, 0.0) + float(secs)
    return seconds


def _round_dirs(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        m = _ROUND_RE.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def _n_labeled(round_dir: Path, metrics_path: Path, n: int | None) -> int:
    if n is not None:
        return n
    labeled = round_dir / "labeled.txt"
    if not labeled.is_file():
        raise InputError(f"{metrics_path}: has no n_labeled and {labeled} is missing")
    return len(read_ids(labeled))


def collect(exp_dir: str | Path) -> Experiment:
    """Walk an experiment tree (``docs/experiment.md``) into an :class:`Experiment`.

    Round 0 (``seed-S/round-00``, shared) is prepended to every strategy's runs of that seed. A round
    folder without ``train/metrics.json`` (still running) is left out with a warning; malformed files
    raise :class:`InputError` naming the file.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir}: experiment directory not found")
    toml_path = exp_dir / "experiment.toml"
    if not toml_path.is_file():
        raise InputError(f"{toml_path}: not found; is {exp_dir} an experiment written by `alseg run`?")
    try:
        config = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{toml_path}: not valid TOML ({exc})") from None
    data_root = None
    if config.get("data_root"):
        data_root = Path(config["data_root"])
        if not data_root.is_absolute():
            data_root = (exp_dir / data_root).resolve()
    warnings: list[str] = []

    seed_dirs = sorted(
        ((int(m.group(1)), p) for p in exp_dir.iterdir() if p.is_dir() and (m := _SEED_RE.match(p.name))),
    )
    if not seed_dirs:
        raise InputError(f"{exp_dir}: no seed-*/ folders; the experiment has not run yet (alseg run)")

    declared = [str(s) for s in config.get("strategies", [])]
    found: set[str] = set()
    runs: list[RoundRun] = []
    for seed, seed_dir in seed_dirs:
        r0_dir = seed_dir / "round-00"
        r0_metrics = r0_dir / "train" / "metrics.json"
        if not r0_metrics.is_file():
            raise InputError(f"{r0_metrics}: not found; round 0 of seed {seed} has not been trained")
        miou0, n0 = read_metrics(r0_metrics)
        n0 = _n_labeled(r0_dir, r0_metrics, n0)
        secs0 = _stage_seconds(r0_dir)
        strategy_dirs = sorted(p for p in seed_dir.iterdir() if p.is_dir() and not _ROUND_RE.match(p.name))
        for sdir in strategy_dirs:
            rounds = _round_dirs(sdir)
            if not rounds:
                continue
            found.add(sdir.name)
            runs.append(RoundRun(seed, sdir.name, 0, n0, miou0, r0_dir, dict(secs0), []))
            for rd, rdir in rounds.items():
                if rd == 0:
                    raise InputError(f"{rdir}: round 0 is shared; it belongs in {r0_dir}")
                metrics = rdir / "train" / "metrics.json"
                if not metrics.is_file():
                    warnings.append(f"{metrics} missing (round not finished?); round {rd} of {sdir.name}, "
                                    f"seed {seed} left out")
                    continue
                miou, n = read_metrics(metrics)
                runs.append(RoundRun(
                    seed, sdir.name, rd, _n_labeled(rdir, metrics, n), miou, rdir, _stage_seconds(rdir),
                    read_ids(rdir / "selected.txt", allow_missing=True),
                    pool_path=(rdir / "pool.h5") if (rdir / "pool.h5").is_file() else None,
                    scores_path=(rdir / "scores.h5") if (rdir / "scores.h5").is_file() else None,
                    crc_path=(rdir / "crc.json") if (rdir / "crc.json").is_file() else None,
                ))
    if not found:
        raise InputError(f"{seed_dirs[0][1]}: no strategy folders with round-NN/ inside; nothing to report")
    strategies = [s for s in declared if s in found] + sorted(found - set(declared))
    order = {s: i for i, s in enumerate(strategies)}
    runs.sort(key=lambda r: (order[r.strategy], r.seed, r.round))

    full_miou = None
    full_metrics = exp_dir / "full" / "train" / "metrics.json"
    if full_metrics.is_file():
        full_miou = read_metrics(full_metrics)[0]
    return Experiment(
        exp_dir=exp_dir, name=str(config.get("name", exp_dir.name)), data_root=data_root,
        seeds=[s for s, _ in seed_dirs], strategies=strategies, runs=runs, full_miou=full_miou,
        config=config, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------- result


@dataclass
class TableRow:
    strategy: str
    round: int
    n_labeled: float
    miou_mean: float
    miou_std: float
    n_seeds: int
    seconds: dict[str, float]  # mean over seeds, per stage


@dataclass
class ReportResult:
    out_path: str
    png_paths: list[str]
    strategies: list[str]
    seeds: list[int]
    rounds: list[int]
    table: list[TableRow]
    penalty: list[list[float]]  # (S, S), row i beats column j
    phi: list[float]  # (S,)
    rounds_compared: list[list[int]]
    full_supervision_miou: float | None
    gallery_round: int | None
    class_names: list[str] = field(default_factory=list)
    class_shares: dict[str, list[float]] = field(default_factory=dict)  # per strategy, share per class
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- drawing


class _Style:
    """Colours shared by every figure."""

    def __init__(self, strategies: list[str], class_names: list[str], palette: np.ndarray):
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        self.strategy_color = {s: cmap(i % 10) for i, s in enumerate(strategies)}
        self.class_names = class_names
        self.palette = palette  # (K, 3) uint8


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _class_info(exp: Experiment, runs: list[RoundRun]) -> tuple[list[str], np.ndarray, int]:
    """Class names, palette (K,3) uint8 and ignore index: classes.json, else a pool file, else tab20."""
    names: list[str] | None = None
    palette = None
    ignore = 255
    if exp.data_root is not None and (exp.data_root / "classes.json").is_file():
        path = exp.data_root / "classes.json"
        doc = _read_json(path)
        names = doc.get("classes") or doc.get("class_names") if isinstance(doc, dict) else None
        if not names:
            raise InputError(f"{path}: has no 'classes' list")
        names = [str(n) for n in names]
        if doc.get("palette"):
            palette = np.asarray(doc["palette"], dtype=np.int64)
            if palette.shape != (len(names), 3):
                raise InputError(f"{path}: palette must be {len(names)} [r, g, b] triples")
        ignore = int(doc.get("ignore_index", 255))
    if names is None:
        for r in runs:
            if r.pool_path is not None:
                from alseg.files.hdf5 import PoolReader

                with PoolReader(r.pool_path) as pool:
                    names, ignore = list(pool.class_names), pool.ignore_index
                break
    if names is None:
        for r in runs:
            if r.crc_path is not None:
                from alseg.files.calibration import read_calibration

                names = list(read_calibration(r.crc_path)["class_names"])
                break
    if names is None:
        names = []
    if palette is None:
        from matplotlib import colormaps

        cmap = colormaps["tab20"]
        palette = np.array([[int(255 * c) for c in cmap(k % 20)[:3]] for k in range(max(len(names), 1))])
    return names, palette.astype(np.uint8), ignore


def _find_file(folder: Path, image_id: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{image_id}{suffix}"
        if path.is_file():
            return path
    raise InputError(f"{folder / (image_id + '.png')}: not found (id {image_id!r})")


def _load_image(data_root: Path, image_id: str) -> np.ndarray:
    from PIL import Image

    with Image.open(_find_file(data_root / "img_dir", image_id)) as im:
        return np.asarray(im.convert("RGB"))


def _load_mask(data_root: Path, image_id: str) -> np.ndarray:
    from PIL import Image

    path = _find_file(data_root / "ann_dir", image_id)
    with Image.open(path) as im:
        mask = np.asarray(im)
    if mask.ndim != 2:
        raise InputError(f"{path}: a mask must be one channel of class indices, got shape {mask.shape}")
    return mask


def _colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    out = np.full(label.shape + (3,), 255, dtype=np.uint8)  # ignore / unknown classes: white
    valid = label < len(palette)
    out[valid] = palette[label[valid]]
    return out


def _upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (h, w) map to ``shape``."""
    h, w = a.shape
    rows = np.minimum((np.arange(shape[0]) * h) // shape[0], h - 1)
    cols = np.minimum((np.arange(shape[1]) * w) // shape[1], w - 1)
    return a[rows][:, cols]


def _fig_curves(exp: Experiment, curves: dict[str, stats.Curve], style: _Style):
    fig = _new_figure(9.5, 4.8)
    ax = fig.add_subplot()
    for s, c in curves.items():
        color = style.strategy_color[s]
        ax.plot(c.n_labeled, c.mean, marker="o", color=color, label=s)
        ax.fill_between(c.n_labeled, c.mean - c.std, c.mean + c.std, color=color, alpha=0.18, linewidth=0)
    if exp.full_miou is not None:
        ax.axhline(exp.full_miou, color="black", linestyle="--", linewidth=1.2,
                   label=f"full supervision ({exp.full_miou:.1f})")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("mIoU (%)")
    n = len(exp.seeds)
    ax.set_title(f"mIoU vs labeled images (mean ± std over {n} seed{'s' if n != 1 else ''})")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def _fig_penalty(pm: stats.PenaltyMatrix):
    s = len(pm.strategies)
    fig = _new_figure(max(4.5, 1.1 * s + 2.5), max(3.5, 0.8 * (s + 1) + 1.6))
    ax = fig.add_subplot()
    data = np.vstack([pm.P, pm.phi[None, :]])
    im = ax.imshow(data, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i in range(s + 1):
        for j in range(s):
            if i == j:
                ax.text(j, i, "—", ha="center", va="center", color="grey")
                continue
            v = data[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black")
    ax.axhline(s - 0.5, color="black", linewidth=2)
    ax.set_xticks(range(s), pm.strategies, rotation=30, ha="right")
    ax.set_yticks(range(s + 1), list(pm.strategies) + ["Φ (mean)"])
    ax.set_xlabel("j (beaten)")
    ax.set_ylabel("i (better)")
    ax.set_title("share of rounds where i is significantly better than j")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def _fig_gallery(rows: list[dict[str, Any]], has_pool: bool, style: _Style, title: str):
    cols = ["image", "prediction", "uncertainty", "ground truth"] if has_pool else ["image", "ground truth"]
    n = len(rows)
    fig = _new_figure(2.3 * len(cols), 2.3 * n + 0.5)
    fig.suptitle(title, fontsize=11)
    axes = fig.subplots(n, len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if col == "image":
                ax.imshow(row["image"], interpolation="nearest")
                ax.set_ylabel(f"#{r + 1} {row['id']}", fontsize=8)
            elif col == "prediction":
                ax.imshow(_colorize(row["pred"], style.palette), interpolation="nearest")
            elif col == "uncertainty":
                ax.imshow(row["image"], interpolation="nearest")
                ax.imshow(row["unc"], cmap="magma", vmin=0, vmax=1, alpha=0.65, interpolation="nearest")
                ax.set_xlabel(row["unc_kind"], fontsize=8)
            else:
                ax.imshow(_colorize(row["gt"], style.palette), interpolation="nearest")
            if r == 0:
                ax.set_title(col, fontsize=10)
    return fig


def _fig_class_hist(shares: dict[str, np.ndarray], style: _Style):
    k = len(style.class_names)
    s = len(shares)
    fig = _new_figure(max(8.0, 0.3 * k * max(s, 1) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(s, 1)
    x = np.arange(k)
    for i, (name, share) in enumerate(shares.items()):
        ax.bar(x + (i - (s - 1) / 2) * width, share, width, label=name, color=style.strategy_color[name])
    ax.set_xticks(x, style.class_names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylabel("share of labeled pixels")
    ax.set_title("ground-truth pixels of the selected images (all rounds, all seeds)", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def _fig_crc_thresholds(cal: dict[str, Any], style: _Style):
    names = list(cal["class_names"])
    k = len(names)
    t = np.asarray(cal["thresholds"], dtype=np.float64)
    unc = np.asarray(cal["uncalibrated"], dtype=bool)
    fig = _new_figure(max(7.5, 0.7 * k + 3), 4.0)
    ax = fig.add_subplot()
    colors = [tuple(c / 255 for c in style.palette[i % len(style.palette)]) for i in range(k)]
    top = max(1.0, float(t.max(initial=0)) + 0.1)
    n_img = list(cal.get("n_images") or [None] * k)
    for i in np.flatnonzero(unc):  # a hatched column behind the (zero) threshold marks the class
        ax.bar(i, top, color="whitesmoke", edgecolor="firebrick", hatch="//", linewidth=0.8, zorder=0)
        ax.text(i, 0.5 * top, f"uncalibrated\n(n = {n_img[i]})", ha="center", va="center", fontsize=8,
                color="firebrick", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
    ax.bar(np.arange(k), t, color=colors, edgecolor="black", zorder=2)
    ax.axhline(float(cal["t_min"]), color="grey", linestyle=":", linewidth=1, label=f"t_min = {cal['t_min']}")
    ax.set_xticks(np.arange(k), names, rotation=30 if k > 6 else 0, ha="right" if k > 6 else "center")
    ax.set_ylim(0, top)
    ax.set_ylabel("threshold t̂_k")
    ax.set_title(f"CRC thresholds per class (α = {cal['alpha']}; hatched = uncalibrated)")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _fig_crc_risk(cal: dict[str, Any], style: _Style):
    names = list(cal["class_names"])
    grid = np.asarray(cal["grid"], dtype=np.float64)
    risk = np.asarray(cal["risk"], dtype=np.float64)
    unc = np.asarray(cal["uncalibrated"], dtype=bool)
    fig = _new_figure(9.5, 4.6)
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        color = tuple(c / 255 for c in style.palette[i % len(style.palette)])
        ax.plot(grid, risk[i], color=color, linestyle="--" if unc[i] else "-", linewidth=1.6,
                label=name + (" (uncalibrated)" if unc[i] else ""))
        if not unc[i]:
            ax.plot([cal["thresholds"][i]], [np.interp(cal["thresholds"][i], grid, risk[i])], "o", color=color)
    ax.axhline(float(cal["alpha"]), color="black", linestyle=":", linewidth=1.2, label=f"α = {cal['alpha']}")
    ax.set_xlabel("threshold t")
    ax.set_ylabel("empirical risk R̂_k(t) (mean FNR)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("empirical risk curves (dots: chosen thresholds)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncols=2 if len(names) > 12 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------- report


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt_seconds(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def _legend_html(style: _Style) -> str:
    """Palette swatches, so the prediction / ground-truth colours of the gallery can be read."""
    items = "".join(
        f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{_esc(name)}</span>'
        for name, (r, g, b) in zip(style.class_names, style.palette.tolist()))
    return f'<p class="legend">{items}<span class="sw"><i style="background:#fff"></i>ignore</span></p>'


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;line-height:1.4;padding:0 16px}
h1{border-bottom:2px solid #444;padding-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td.l,th.l{text-align:left}tr.phi td{font-weight:bold;background:#fafafa}
img{max-width:100%;height:auto;border:1px solid #eee;margin:6px 0}
.note{color:#555;font-size:13px}.warn{color:#a33}
.gallery{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.gallery figure{margin:0}
figcaption{font-size:13px;font-weight:bold}
.legend{font-size:13px}.sw{margin-right:14px;white-space:nowrap}
.sw i{display:inline-block;width:12px;height:12px;border:1px solid #888;margin-right:4px;vertical-align:-1px}
"""


def report(
    exp_dir: str | Path,
    *,
    out_path: str | Path,
    gallery_round: int | None = None,
    gallery_size: int = 6,
    overwrite: bool = False,
    progress: Callable[..., None] = _noop,
) -> ReportResult:
    """Write the HTML report of ``exp_dir`` to ``out_path`` and its PNGs to ``<out stem>_files/``.

    ``gallery_round``: the round whose selections the gallery shows (default: the last round of the
    first seed that has a ``pool.h5``); ``gallery_size``: top-ranked selected ids shown per strategy.
    """
    out_path = Path(out_path)
    files_dir = out_path.with_name(out_path.stem + "_files")
    if not overwrite:
        if out_path.exists():
            raise OutputExistsError(f"{out_path}: output exists; pass --overwrite to replace it")
        if files_dir.is_dir() and any(files_dir.iterdir()):
            raise OutputExistsError(f"{files_dir}: output exists; pass --overwrite to replace it")
    if gallery_size < 1:
        raise InputError(f"gallery size must be >= 1, got {gallery_size}")

    exp = collect(exp_dir)
    warnings = list(exp.warnings)
    records = exp.records()
    curves = stats.learning_curves(records)
    pm = stats.penalty_matrix(records)
    names, palette, ignore = _class_info(exp, exp.runs)
    style = _Style(exp.strategies, names, palette)
    first_seed = exp.seeds[0]
    has_data = exp.data_root is not None and exp.data_root.is_dir()
    if not has_data:
        warnings.append(f"data_root {exp.data_root} not found; gallery and class histogram left out")

    # the gallery round
    selecting = [r for r in exp.runs if r.seed == first_seed and r.round >= 1]
    if gallery_round is None:
        with_pool = [r.round for r in selecting if r.pool_path is not None]
        with_sel = [r.round for r in selecting if r.selected]
        gallery_round = max(with_pool) if with_pool else (max(with_sel) if with_sel else None)
    elif gallery_round not in {r.round for r in selecting}:
        have = ", ".join(str(r) for r in sorted({r.round for r in selecting})) or "none"
        raise InputError(f"{exp.exp_dir}: round {gallery_round} not found for seed {first_seed} (rounds: {have})")

    crc_runs = [r for r in exp.runs if r.seed == first_seed and r.crc_path is not None]
    crc_run = None
    if crc_runs:
        at_round = [r for r in crc_runs if r.round == gallery_round]
        crc_run = at_round[0] if at_round else max(crc_runs, key=lambda r: r.round)

    n_steps = 4 + len(exp.strategies) + (2 if crc_run else 0)
    progress(0, total=n_steps)
    pngs: dict[str, bytes] = {}

    def draw(name: str, fig) -> bytes:
        pngs[name] = _png_bytes(fig)
        progress(1)
        return pngs[name]

    draw("learning_curves.png", _fig_curves(exp, curves, style))
    draw("penalty.png", _fig_penalty(pm))

    # gallery
    gallery_html: list[str] = []
    mask_cache: dict[str, np.ndarray] = {}

    def mask(image_id: str) -> np.ndarray:
        if image_id not in mask_cache:
            mask_cache[image_id] = _load_mask(exp.data_root, image_id)
        return mask_cache[image_id]

    for strategy in exp.strategies:
        run = exp.run(first_seed, strategy, gallery_round) if gallery_round is not None else None
        if not has_data or run is None or not run.selected:
            why = ("no data_root" if not has_data else
                   f"no selection in round {gallery_round} of seed {first_seed}")
            gallery_html.append(f'<p class="note">{_esc(strategy)}: {_esc(why)}.</p>')
            progress(1)
            continue
        top = run.selected[:gallery_size]
        rows = [{"id": i, "image": _load_image(exp.data_root, i), "gt": mask(i)} for i in top]
        if run.pool_path is not None:
            _fill_predictions(run, rows)
        fname = f"gallery_{_safe_name(strategy)}.png"
        title = f"{strategy}: top {len(top)} of round {gallery_round} (seed {first_seed})"
        data = draw(fname, _fig_gallery(rows, run.pool_path is not None, style, title))
        note = "" if run.pool_path is not None else " (no pool.h5: image and ground truth only)"
        gallery_html.append(f"<figure><figcaption>{_esc(strategy)}{_esc(note)}</figcaption>"
                            f"{_img(data, 'gallery ' + strategy)}</figure>")

    # class histogram
    shares: dict[str, np.ndarray] = {}
    if has_data:
        k = len(names)
        for strategy in exp.strategies:
            counts = np.zeros(max(k, 1), dtype=np.int64)
            for r in exp.runs:
                if r.strategy != strategy or r.round < 1:
                    continue
                for image_id in r.selected:
                    m = mask(image_id)
                    m = m[(m != ignore) & (m < len(counts))]
                    counts += np.bincount(m.ravel().astype(np.int64), minlength=len(counts))
            total = counts.sum()
            shares[strategy] = counts / total if total else counts.astype(np.float64)
        if not names:
            style.class_names = [f"class {i}" for i in range(max(k, 1))]
        draw("class_hist.png", _fig_class_hist(shares, style))
    else:
        progress(1)

    cal = None
    if crc_run is not None:
        from alseg.files.calibration import read_calibration

        cal = read_calibration(crc_run.crc_path)
        draw("crc_thresholds.png", _fig_crc_thresholds(cal, style))
        if cal.get("grid") is not None and cal.get("risk") is not None:
            draw("crc_risk.png", _fig_crc_risk(cal, style))
        else:
            progress(1)

    table = _table_rows(exp, curves)
    doc = _html(exp, pm, curves, table, pngs, gallery_html, gallery_round, first_seed, shares, style, cal,
                crc_run, warnings)

    files_dir.mkdir(parents=True, exist_ok=True)
    png_paths = []
    for name, data in pngs.items():
        path = files_dir / name
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        png_paths.append(str(path))
    write_text_atomic(out_path, doc)
    progress(1)
    return ReportResult(
        out_path=str(out_path), png_paths=png_paths, strategies=list(exp.strategies), seeds=list(exp.seeds),
        rounds=exp.rounds, table=table, penalty=pm.P.tolist(), phi=pm.phi.tolist(),
        rounds_compared=pm.n_compared.tolist(), full_supervision_miou=exp.full_miou,
        gallery_round=gallery_round, class_names=list(style.class_names),
        class_shares={k: v.tolist() for k, v in shares.items()}, warnings=warnings,
    )


def _fill_predictions(run: RoundRun, rows: list[dict[str, Any]]) -> None:
    """Prediction (argmax) and uncertainty (CRC risk map if stored, else normalised entropy) per row."""
    from alseg.files.hdf5 import PoolReader, ScoresReader
    from alseg.strategies import pixel_entropy, softmax

    risk: dict[str, np.ndarray] = {}
    if run.scores_path is not None:
        with ScoresReader(run.scores_path) as scores:
            risk = scores.risk_maps_by_id(r["id"] for r in rows)  # cropped to each image's size
    by_id = {r["id"]: r for r in rows}
    with PoolReader(run.pool_path) as pool:  # logits come cropped to each image's valid size
        for ids, logits, _ in pool.iter_batches(8, ids=[r["id"] for r in rows]):
            entropy = pixel_entropy(softmax(logits, axis=1))
            for b, image_id in enumerate(ids):
                row = by_id[image_id]
                shape = row["image"].shape[:2]
                row["pred"] = _upsample(logits[b].argmax(axis=0), shape)
                if image_id in risk:
                    row["unc"], row["unc_kind"] = _upsample(risk[image_id], shape), "CRC risk map"
                else:
                    row["unc"], row["unc_kind"] = _upsample(entropy[b], shape), "entropy"


def _table_rows(exp: Experiment, curves: dict[str, stats.Curve]) -> list[TableRow]:
    rows = []
    for strategy, c in curves.items():
        for i, rd in enumerate(c.rounds):
            runs = [r for r in exp.runs if r.strategy == strategy and r.round == rd]
            stages = sorted({k for r in runs for k in r.seconds})
            seconds = {k: float(np.mean([r.seconds[k] for r in runs if k in r.seconds])) for k in stages}
            rows.append(TableRow(strategy, int(rd), float(c.n_labeled[i]), float(c.mean[i]), float(c.std[i]),
                                 int(c.n_seeds[i]), seconds))
    return rows


def _html(exp, pm, curves, table, pngs, gallery_html, gallery_round, first_seed, shares, style, cal, crc_run,
          warnings) -> str:
    h: list[str] = []
    add = h.append
    add(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>alseg report: {_esc(exp.name)}'
        f"</title><style>{_CSS}</style></head><body>")
    add(f"<h1>alseg report: {_esc(exp.name)}</h1>")
    titles = dict(SECTIONS)

    # summary
    add(f'<h2 id="summary">{titles["summary"]}</h2><table>')
    last = max(exp.rounds)
    finals = {s: c.mean[-1] for s, c in curves.items() if c.rounds[-1] == last}
    best = max(finals, key=finals.get) if finals else None
    summary = [
        ("experiment", exp.exp_dir), ("seeds", ", ".join(map(str, exp.seeds))),
        ("strategies", ", ".join(exp.strategies)), ("rounds", f"0..{last} (round 0 shared per seed)"),
        ("data root", exp.data_root),
        ("full supervision mIoU", "—" if exp.full_miou is None else f"{exp.full_miou:.2f}"),
        ("best at the last round", "—" if best is None else f"{best} ({finals[best]:.2f} mIoU)"),
        ("lowest Φ (beaten least)", "—" if len(exp.seeds) < 2 else
         f"{pm.strategies[int(np.argmin(pm.phi))]} (Φ = {pm.phi.min():.2f})"),
    ]
    for k, v in summary:
        add(f'<tr><th class="l">{_esc(k)}</th><td class="l">{_esc(v)}</td></tr>')
    add("</table>")
    for w in warnings:
        add(f'<p class="note warn">warning: {_esc(w)}</p>')

    # curves
    add(f'<h2 id="curves">{titles["curves"]}</h2>')
    add(_img(pngs["learning_curves.png"], "learning curves"))
    add('<p class="note">Bands: mean ± sample std (ddof = 1) over seeds; no band with one seed. '
        + ("Dashed line: full supervision." if exp.full_miou is not None else "No full-supervision run "
           "(EXP/full/train/metrics.json) was found.") + "</p>")

    # penalty
    add(f'<h2 id="penalty">{titles["penalty"]}</h2>')
    if len(exp.seeds) < 2:
        add('<p class="note warn">Significance needs ≥ 2 seeds: this experiment has '
            f"{len(exp.seeds)} seed, so no round could be tested and the matrix is all zero.</p>")
    add(_img(pngs["penalty.png"], "penalty matrix"))
    add('<table><tr><th class="l">i \\ j</th>' + "".join(f"<th>{_esc(s)}</th>" for s in pm.strategies) + "</tr>")
    for i, s in enumerate(pm.strategies):
        cells = "".join(
            "<td>—</td>" if i == j else f'<td title="{pm.n_compared[i, j]} rounds compared">{pm.P[i, j]:.2f}</td>'
            for j in range(len(pm.strategies)))
        add(f'<tr><th class="l">{_esc(s)}</th>{cells}</tr>')
    add('<tr class="phi"><td class="l">Φ</td>' + "".join(f"<td>{v:.2f}</td>" for v in pm.phi) + "</tr></table>")
    n_rounds = int(pm.n_compared.max(initial=0))
    add(f'<p class="note">Cell (i, j): share of rounds R ≥ 1 ({n_rounds} compared) where strategy i is '
        "significantly better than j (paired two-sided t-test over seeds, p &lt; 0.05, mean difference &gt; 0). "
        "Φ: column means, how often a strategy is beaten; lower is better.</p>")

    # table
    add(f'<h2 id="table">{titles["table"]}</h2>')
    stages = [s for s in STAGES if any(s in r.seconds for r in table)]
    stages += sorted({k for r in table for k in r.seconds} - set(stages))
    add('<table><tr><th class="l">strategy</th><th>round</th><th>labeled</th><th>mIoU (mean ± std)</th>'
        "<th>seeds</th>" + "".join(f"<th>{_esc(s)} (s)</th>" for s in stages) + "</tr>")
    for r in table:
        secs = "".join(f"<td>{_fmt_seconds(r.seconds[s])}</td>" if s in r.seconds else "<td>—</td>"
                       for s in stages)
        add(f'<tr><td class="l">{_esc(r.strategy)}</td><td>{r.round}</td><td>{r.n_labeled:g}</td>'
            f"<td>{r.miou_mean:.2f} ± {r.miou_std:.2f}</td><td>{r.n_seeds}</td>{secs}</tr>")
    add('</table><p class="note">Time per stage: wall seconds from the manifests, mean over seeds; round 0 '
        "is shared and shows its training time.</p>")

    # gallery
    add(f'<h2 id="gallery">{titles["gallery"]}</h2>')
    if gallery_round is None:
        add('<p class="note">No round with selections yet.</p>')
    else:
        add(f'<p class="note">Top selected images of round {gallery_round}, seed {first_seed}: image | '
            "prediction of the selecting model | uncertainty overlay (CRC risk map where stored, else "
            "normalised entropy, 0 dark to 1 bright) | ground truth.</p>")
        add(_legend_html(style))
    add('<div class="gallery">' + "".join(gallery_html) + "</div>")

    # class histogram
    add(f'<h2 id="classes">{titles["classes"]}</h2>')
    if "class_hist.png" in pngs:
        add(_img(pngs["class_hist.png"], "class histogram"))
        add('<table><tr><th class="l">strategy</th>' + "".join(f"<th>{_esc(c)}</th>" for c in style.class_names)
            + "</tr>")
        for s, share in shares.items():
            add(f'<tr><td class="l">{_esc(s)}</td>' + "".join(f"<td>{100 * v:.1f}%</td>" for v in share) + "</tr>")
        add("</table>")
    else:
        add('<p class="note">No data_root: the masks needed for the class histogram are not available.</p>')

    # crc
    add(f'<h2 id="crc">{titles["crc"]}</h2>')
    if cal is None:
        add('<p class="note">No crc.json in this experiment (no CRC-AL strategy ran).</p>')
    else:
        rel = crc_run.crc_path.relative_to(exp.exp_dir) if crc_run.crc_path.is_relative_to(exp.exp_dir) \
            else crc_run.crc_path
        add(f'<p class="note">From {_esc(rel)} (α = {cal["alpha"]}, t_min = {cal["t_min"]}).</p>')
        add(_img(pngs["crc_thresholds.png"], "CRC thresholds"))
        if "crc_risk.png" in pngs:
            add(_img(pngs["crc_risk.png"], "CRC risk curves"))
        ev = cal.get("evaluation")
        if ev:
            fnr = ev.get("fnr") or [None] * len(cal["class_names"])
            n_img = ev.get("n_images") or [None] * len(cal["class_names"])
            add('<table><tr><th class="l">class</th><th>threshold</th><th>calibration images</th>'
                "<th>held-out FNR</th><th>held-out images</th></tr>")
            for i, c in enumerate(cal["class_names"]):
                f = "—" if fnr[i] is None else f"{fnr[i]:.3f}"
                flag = " (uncalibrated)" if cal["uncalibrated"][i] else ""
                add(f'<tr><td class="l">{_esc(c)}{flag}</td><td>{float(cal["thresholds"][i]):.3f}</td>'
                    f'<td>{cal["n_images"][i]}</td><td>{f}</td><td>{n_img[i] if n_img[i] is not None else "—"}'
                    "</td></tr>")
            add("</table>")
            cov = ev.get("coverage")
            sizes = ev.get("set_size_counts") or ev.get("set_size_hist")
            line = f"Held-out pixel coverage: {'—' if cov is None else f'{100 * cov:.1f}%'}"
            if ev.get("mean_set_size") is not None:
                line += f"; mean prediction-set size {ev['mean_set_size']:.2f}"
            if sizes:
                line += "; set sizes 0..K: " + ", ".join(str(x) for x in sizes)
            add(f'<p class="note">{_esc(line)}.</p>')
        else:
            add('<p class="note">No held-out evaluation in this calibration (calibrate --evaluate).</p>')
    add("</body></html>\n")
    return "\n".join(h)
