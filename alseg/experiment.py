"""The experiment file (TOML) of ``alseg run``: parsing, validation and the tree layout (docs/experiment.md)."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from alseg.errors import InputError
from alseg.registry import STRATEGIES

TRAIN_LAUNCHERS = ("torchrun",)  # how `run` starts a training of nproc processes (docs/experiment.md)
ANNOTATIONS = ("precise", "dominant")  # simulated annotation of a region (docs/regions.md)


@dataclass
class Experiment:
    path: Path
    name: str
    config: Path
    data_root: Path | None
    pool_ids: Path | None  # None: every id of the config's train split (written to EXP/pool.txt by `run`)
    val_ids: Path | None
    calib_ids: Path | None
    sizes: list[int]  # labeled count after round 0, 1, ..., R; with budget_pixels/budget_clicks just [initial]
    seeds: list[int]
    strategies: list[str]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "auto"
    max_iters: int | None = None
    iters_per_image: float | None = None  # with max_iters: train max(max_iters, ceil(iters_per_image x labeled))
    batch_size: int | None = None
    infer_batch_size: int = 8
    full_supervision: bool = False
    calib_size: int | None = None  # carve this many calibration ids out of the pool (when calib_ids is absent)
    cfg_options: dict[str, Any] = field(default_factory=dict)
    nproc: int = 1  # training processes per node; > 1: each round trains under torchrun (DDP)
    launcher: str | None = None  # "torchrun": a subprocess per training (the default when nproc > 1)
    unit: str = "image"  # query unit of every strategy without its own [params.NAME] unit
    annotation: str = "precise"  # precise | dominant: how a region's labels are simulated
    budget_pixels: str | int | None = None  # per round: "5%" of the pool's pixels or a pixel count
    budget_clicks: int | None = None  # per round: estimated clicks (docs/regions.md, "Click cost")
    max_per_image: int | None = None  # region units: at most this many regions of one image per round
    region_reduction: str = "mean"  # region units: mean | sum | max | top-q of the pixel scores
    n_rounds: int | None = None  # R with budget_pixels/budget_clicks (sizes is then [initial])

    def base(self, name: str) -> str:
        """The registry strategy behind ``name``: itself, or a variant's ``strategy`` key
        (``[params.entropy-power]`` with ``strategy = "entropy"``)."""
        return str(self.params.get(name, {}).get("strategy", name))

    def is_oracle(self, name: str) -> bool:
        """True for a simulation-only strategy (``oracle = true``): the report marks it."""
        return bool(self.params.get(name, {}).get("oracle", False))

    @property
    def rounds(self) -> int:
        return self.n_rounds if self.n_rounds is not None else len(self.sizes) - 1

    def unit_of(self, name: str) -> str:
        """The query unit of strategy ``name``: its ``[params.NAME] unit``, else the experiment's."""
        from alseg.units import parse_unit

        return str(parse_unit(str(self.params.get(name, {}).get("unit", self.unit))))

    def annotation_of(self, name: str) -> str:
        return str(self.params.get(name, {}).get("annotation", self.annotation))

    def is_region(self, name: str) -> bool:
        """True when ``name``'s rounds go through the region path (a labelled-state file per round): a
        unit other than image, or a budget in pixels or clicks (then unit image takes whole images)."""
        return self.unit_of(name) != "image" or self.budget_pixels is not None or self.budget_clicks is not None

    def superpixel_units(self) -> list[str]:
        """The superpixel units of the strategies, in first-use order: one region-map store each."""
        units = [self.unit_of(s) for s in self.strategies]
        return list(dict.fromkeys(u for u in units if u.startswith("superpixel:")))

    def iterations(self, n_labeled: int | Fraction) -> int | None:
        """Training iterations for a labeled set of ``n_labeled`` images (None: the config's own).

        A fixed count trains larger labeled sets for fewer epochs; ``iters_per_image`` keeps the epochs
        from falling as the set grows, with ``max_iters`` as the floor. A region state counts its labelled
        pixels in images of the pool's mean size (a :class:`~fractions.Fraction`, see ``run``).
        """
        if self.iters_per_image is None:
            return self.max_iters
        if isinstance(n_labeled, int):
            return max(int(self.max_iters or 0), math.ceil(self.iters_per_image * n_labeled))
        return max(int(self.max_iters or 0), math.ceil(Fraction(str(self.iters_per_image)) * n_labeled))

    def to_toml(self) -> str:
        def q(v: Any) -> str:
            if isinstance(v, (list, tuple)):
                return "[" + ", ".join(q(x) for x in v) + "]"
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, (int, float)):
                return repr(v)
            return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [f"# resolved from {self.path}"]
        defaults = {"nproc": 1, "unit": "image", "annotation": "precise", "region_reduction": "mean"}
        size_keys = ("sizes",) if self.n_rounds is None else ("initial", "rounds")
        for key in ("name", "config", "data_root", "pool_ids", "val_ids", "calib_ids", *size_keys, "seeds",
                    "strategies", "device", "max_iters", "iters_per_image", "batch_size", "infer_batch_size",
                    "full_supervision", "calib_size", "nproc", "launcher", "unit", "annotation", "budget_pixels",
                    "budget_clicks", "max_per_image", "region_reduction"):
            value = self.sizes[0] if key == "initial" else getattr(self, key)
            if value is not None and not (key in defaults and value == defaults[key]):
                lines.append(f"{key} = {q(value)}")
        if self.cfg_options:
            lines.append("\n[cfg_options]")
            lines += [f"{q(k)} = {q(v if isinstance(v, (bool, int, float, str, list)) else repr(v))}"
                      for k, v in self.cfg_options.items()]
        for strategy, opts in self.params.items():
            lines.append(f"\n[params.{strategy}]")
            lines += [f"{k} = {q(v)}" for k, v in opts.items()]
        return "\n".join(lines) + "\n"


SELECT_PARAMS = {"stochastic", "groups", "base_score", "embedding", "badge_embedding", "tau", "selector",
                 "aggregation", "q", "sampler", "beta", "oracle", "exclude_classes", "min_count", "class_share"}
VARIANT_PARAMS = {"strategy"}  # [params.NAME] strategy = "entropy": NAME is a variant of a registered strategy
MC_PARAMS = {"mc", "mc_scope"}  # `infer --mc T --mc-scope S` for bald, mc-entropy, variation-ratio
CRC_PARAMS = {"alpha", "t_min", "bins", "save_risk_maps"}
REGION_PARAMS = {"unit", "annotation", "max_per_image", "region_reduction", "q", "sampler", "beta"}  # region rounds


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: experiment file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an experiment TOML file") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); save the experiment file as UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    base = path.resolve().parent

    def need(key: str) -> Any:
        if key not in doc:
            raise InputError(f"{path}: missing key {key!r} (see docs/experiment.md)")
        return doc[key]

    def p(key: str, required: bool = True) -> Path | None:
        value = need(key) if required else doc.get(key)
        return None if value is None else (base / value).resolve()

    known = {"name", "config", "data_root", "pool_ids", "val_ids", "calib_ids", "initial", "budget", "rounds",
             "sizes", "seeds", "strategies", "params", "device", "max_iters", "iters_per_image", "batch_size",
             "infer_batch_size", "full_supervision", "calib_size", "cfg_options", "nproc", "launcher", "unit",
             "annotation", "budget_pixels", "budget_clicks", "max_per_image", "region_reduction"}
    by_cost = "budget_pixels" in doc or "budget_clicks" in doc  # rounds buy pixels or clicks, not images
    required = ["config", "strategies"]
    required += ["initial", "rounds"] if by_cost else [] if "sizes" in doc else ["initial", "budget", "rounds"]
    missing = [key for key in required if key not in doc]
    if missing:
        raise InputError(f"{path}: missing key(s) {', '.join(missing)} (see docs/experiment.md)")
    unknown = sorted(set(doc) - known)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(unknown)} (see docs/experiment.md)")

    def typed(key: str, kinds: type | tuple[type, ...], what: str, default: Any = None, minimum: float | None = None):
        """``doc[key]`` checked against ``kinds`` (a bool is no number here) and ``minimum``; one line if not."""
        value = doc.get(key, default)
        if value is None:
            return None
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok or (minimum is not None and value < minimum):
            raise InputError(f"{path}: {key} must be {what}, got {value!r}")
        return value

    def int_list(key: str, what: str) -> list[int] | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise InputError(f"{path}: {key} must be {what}, got {value!r}")
        return value

    n_rounds = None
    if by_cost:
        given = [k for k in ("budget_pixels", "budget_clicks", "budget", "sizes") if k in doc]
        if len(given) > 1:
            raise InputError(f"{path}: give one budget per round: {' or '.join(given)}, not both "
                             "(budget_pixels and budget_clicks buy regions or whole images; budget counts images)")
        initial = typed("initial", int, "a positive integer (images labeled in round 0)", minimum=1)
        n_rounds = typed("rounds", int, "a positive integer", minimum=1)
        sizes = [initial]
    elif "sizes" in doc:
        sizes = int_list("sizes", "a list of labeled-set sizes, e.g. [16, 32, 48]")
    else:
        initial = typed("initial", int, "a positive integer (images labeled in round 0)", minimum=1)
        budget = typed("budget", int, "a positive integer (images selected per round)", minimum=1)
        rounds = typed("rounds", int, "a positive integer", minimum=1)
        sizes = [initial + r * budget for r in range(rounds + 1)]
    if (len(sizes) < 2 and not by_cost) or sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise InputError(f"{path}: sizes must start at ≥ 1 and increase, got {sizes}")
    strategies = doc["strategies"]
    if not isinstance(strategies, list) or not strategies or not all(isinstance(x, str) for x in strategies):
        raise InputError(f"{path}: strategies must be a list of names, e.g. [\"random\", \"margin\"]")
    params_doc = doc.get("params", {})
    if not isinstance(params_doc, dict) or not all(isinstance(v, dict) for v in params_doc.values()):
        raise InputError(f"{path}: params must hold tables, e.g. [params.crc] then alpha = 0.1")
    params = {str(k): dict(v) for k, v in params_doc.items()}
    if len(set(strategies)) != len(strategies):
        raise InputError(f"{path}: strategies lists a name twice; give a variant its own name (docs/experiment.md)")
    for name in strategies:
        base_name = params.get(name, {}).get("strategy", name)
        if base_name not in STRATEGIES:
            if name not in STRATEGIES and "strategy" in params.get(name, {}):
                raise InputError(f"{path}: [params.{name}] strategy = {base_name!r} is not a strategy; choose from "
                                 f"{', '.join(STRATEGIES)}")
            raise InputError(f"{path}: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}, or define a "
                             f"variant: [params.{name}] with strategy = \"entropy\" (docs/experiment.md)")
        if name in STRATEGIES and base_name != name:
            raise InputError(f"{path}: [params.{name}] strategy = {base_name!r}: a registered strategy cannot be renamed; "
                             "give the variant a new name")
        if params.get(name, {}).get("oracle") and "oracle" not in name:
            raise InputError(f"{path}: [params.{name}] oracle = true: name it so it says so (e.g. "
                             f"\"{base_name}-oracle\"): its folders, tables and plots must mark it as a simulation")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise InputError(f"{path}: strategy name {name!r} must be letters, digits and _.+- (it names a folder)")
    for key in ("name", "config", "data_root", "pool_ids", "val_ids", "calib_ids", "device"):
        typed(key, str, "a string")
    seeds = int_list("seeds", "a list of integer seeds, e.g. [0, 1, 2]") or [0]
    max_iters = typed("max_iters", int, "a positive integer", minimum=1)
    iters_per_image = typed("iters_per_image", (int, float), "a positive number", minimum=0)
    if iters_per_image is not None and max_iters is None:
        raise InputError(f"{path}: iters_per_image needs max_iters (the fewest iterations of any round)")
    batch_size = typed("batch_size", int, "a positive integer", minimum=1)
    infer_batch_size = typed("infer_batch_size", int, "a positive integer", default=8, minimum=1)
    full_supervision = typed("full_supervision", bool, "true or false", default=False)
    nproc = typed("nproc", int, "a positive integer (training processes per node)", default=1, minimum=1)
    launcher = typed("launcher", str, f"one of: {', '.join(TRAIN_LAUNCHERS)}")
    if launcher is not None and launcher not in TRAIN_LAUNCHERS:
        raise InputError(f"{path}: launcher must be one of: {', '.join(TRAIN_LAUNCHERS)}, got {launcher!r}")
    regions = _region_keys(path, doc, params, strategies, typed)
    for strategy, opts in params.items():
        base_name = opts.get("strategy", strategy)
        if strategy in strategies and regions["region"](strategy):
            own = ((CRC_PARAMS if base_name == "crc" else set()) | ({"exclude_classes", "class_share"}
                   if base_name == "clasp" else set()) | (MC_PARAMS if STRATEGIES[base_name].needs == "mc" else set()))
            extra = sorted(set(opts) - REGION_PARAMS - VARIANT_PARAMS - own)
            if extra:
                raise InputError(f"{path}: [params.{strategy}] {', '.join(extra)}: not a parameter of a region round "
                                 f"(unit {regions['unit_of'](strategy)}); these are: {', '.join(sorted(REGION_PARAMS | own))}")
            continue
        allowed = (SELECT_PARAMS | VARIANT_PARAMS | {"unit"} | (CRC_PARAMS if base_name == "crc" else set())
                   | (MC_PARAMS if STRATEGIES.get(base_name) is not None and STRATEGIES[base_name].needs == "mc" else set()))
        extra = sorted(set(opts) - allowed)
        if extra:
            region_only = sorted(set(extra) & REGION_PARAMS)
            if region_only and strategy in strategies:
                raise InputError(f"{path}: [params.{strategy}] {', '.join(region_only)}: only for region rounds (a unit "
                                 "patch:S, superpixel:N or pixel:P, or budget_pixels / budget_clicks)")
            raise InputError(f"{path}: [params.{strategy}] has unknown key(s) {', '.join(extra)}")
    from alseg.mm import find_config

    config_value = str(need("config"))
    config = (base / config_value).resolve()
    if not config.is_file():  # the name of a shipped config, or mmseg::...
        config = find_config(config_value).resolve()
    cfg_options = doc.get("cfg_options", {})
    if not isinstance(cfg_options, dict):
        raise InputError(f"{path}: cfg_options must be a table of dotted keys, e.g. [cfg_options] then \"a.b\" = 1")
    from alseg.mm import parse_cfg_options

    cfg_options = {str(k): (parse_cfg_options([f"{k}={v}"])[str(k)] if isinstance(v, str) else v)
                   for k, v in cfg_options.items()}
    calib_size = doc.get("calib_size")
    if calib_size is not None and (not isinstance(calib_size, int) or calib_size < 1 or "calib_ids" in doc):
        raise InputError(f"{path}: calib_size must be a positive integer, and is used only without calib_ids")
    exp = Experiment(
        path=path.resolve(), name=str(doc.get("name", path.stem)), config=config, data_root=p("data_root", False),
        pool_ids=p("pool_ids", False), val_ids=p("val_ids", False), calib_ids=p("calib_ids", False), sizes=sizes,
        seeds=seeds, strategies=list(strategies), params=params, device=str(doc.get("device", "auto")),
        max_iters=max_iters, iters_per_image=iters_per_image, batch_size=batch_size, infer_batch_size=infer_batch_size,
        full_supervision=full_supervision,
        calib_size=calib_size, cfg_options=cfg_options, nproc=nproc, launcher=launcher,
        unit=regions["unit"], annotation=regions["annotation"], budget_pixels=regions["budget_pixels"],
        budget_clicks=regions["budget_clicks"], max_per_image=regions["max_per_image"],
        region_reduction=regions["region_reduction"], n_rounds=n_rounds,
    )
    for key in ("config", "data_root", "pool_ids", "val_ids", "calib_ids"):
        value = getattr(exp, key)
        if value is not None and not value.exists():
            raise InputError(f"{path}: {key} {value} does not exist")
    if "crc" in [exp.base(s) for s in strategies] and exp.calib_ids is None and exp.calib_size is None:
        raise InputError(f"{path}: strategy 'crc' needs calib_ids (a labeled calibration split) or calib_size")
    return exp


def _region_keys(path: Path, doc: dict, params: dict[str, dict], strategies: list[str], typed) -> dict[str, Any]:
    """The region keys of the experiment (top level and per strategy), checked; one line per wrong value."""
    from alseg.regions import REDUCTIONS
    from alseg.stages.select_regions import REGION_STRATEGIES
    from alseg.units import parse_unit

    def unit_text(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise InputError(f"{path}: {where} must be a string (image, patch:S, superpixel:N or pixel:P), got {value!r}")
        try:
            return str(parse_unit(value))
        except InputError as exc:
            raise InputError(f"{path}: {where}: {exc}") from None

    def check(opts: dict, where: str) -> None:
        if "annotation" in opts and opts["annotation"] not in ANNOTATIONS:
            raise InputError(f"{path}: {where}annotation must be one of: {', '.join(ANNOTATIONS)}, got {opts['annotation']!r}")
        if "region_reduction" in opts and opts["region_reduction"] not in REDUCTIONS:
            raise InputError(f"{path}: {where}region_reduction must be one of: {', '.join(REDUCTIONS)}, "
                             f"got {opts['region_reduction']!r}")
        m = opts.get("max_per_image")
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise InputError(f"{path}: {where}max_per_image must be a positive integer, got {m!r}")

    out: dict[str, Any] = {"unit": unit_text(doc.get("unit", "image"), "unit"),
                           "annotation": doc.get("annotation", "precise"),
                           "region_reduction": doc.get("region_reduction", "mean"),
                           "max_per_image": doc.get("max_per_image"),
                           "budget_clicks": typed("budget_clicks", int, "a positive integer (clicks per round)", minimum=1)}
    check(out, "")
    bp = doc.get("budget_pixels")
    if bp is not None:
        ok = (isinstance(bp, int) and not isinstance(bp, bool) and bp >= 1) or (
            isinstance(bp, str) and re.fullmatch(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)%", bp.strip()) is not None
            and 0.0 < float(bp.strip()[:-1]) <= 100.0)
        if not ok:
            raise InputError(f"{path}: budget_pixels must be a percentage of the pool's pixels (\"5%\") or a pixel "
                             f"count (50000), got {bp!r}")
        bp = bp.strip() if isinstance(bp, str) else bp
    out["budget_pixels"] = bp
    for name, opts in params.items():
        if "unit" in opts:
            opts["unit"] = unit_text(opts["unit"], f"[params.{name}] unit")
        check(opts, f"[params.{name}] ")
    by_cost = bp is not None or out["budget_clicks"] is not None
    unit_of = lambda name: str(params.get(name, {}).get("unit", out["unit"]))  # noqa: E731
    region = lambda name: by_cost or unit_of(name) != "image"  # noqa: E731
    for name in strategies:
        base_name = str(params.get(name, {}).get("strategy", name))
        if region(name) and base_name not in REGION_STRATEGIES:
            why = f"unit {unit_of(name)}" if unit_of(name) != "image" else "budget_pixels / budget_clicks"
            raise InputError(f"{path}: strategy {name!r} ({why}) takes regions or whole images by pixel scores: "
                             f"use {', '.join(REGION_STRATEGIES)} (or a variant of one)")
        max_per_image = params.get(name, {}).get("max_per_image", out["max_per_image"])
        if region(name) and base_name == "clasp" and (by_cost or max_per_image is not None or not re.match(
                r"(patch|superpixel):", unit_of(name))):
            raise InputError(f"{path}: strategy {name!r}: clasp over regions takes unit patch:S or superpixel:N with "
                             "a budget in regions (budget or sizes, no budget_pixels / budget_clicks) and no "
                             "max_per_image: its class quotas count regions")
    out["unit_of"], out["region"] = unit_of, region
    return out


def seed_dir(exp_dir: Path, seed: int) -> Path:
    return exp_dir / f"seed-{seed}"


def round_dir(exp_dir: Path, seed: int, strategy: str | None, round_index: int) -> Path:
    """``EXP/seed-S/round-00`` (shared) or ``EXP/seed-S/STRATEGY/round-RR``: the one place paths are built."""
    if round_index == 0:
        return seed_dir(exp_dir, seed) / "round-00"
    return seed_dir(exp_dir, seed) / str(strategy) / f"round-{round_index:02d}"
