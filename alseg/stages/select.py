"""``alseg select``: choose ``budget`` unlabeled ids with a strategy (docs/algorithms.md §1-9).

Reads: the labeled id list, and depending on the strategy (see ``alseg.registry``) a pool file, a scores
file, a calibration file or just a list of pool ids (``random``). Writes: the selected ids (rank order),
its manifest and, with ``update``, the labeled list with the selection appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from alseg.stages import no_progress as _noop
from alseg.errors import EmptyPoolError, InputError, UnknownName
from alseg.files.atomic import check_not_input, check_writable, holding_output_locks, removed_on_failure, replace_last
from alseg.files.hdf5 import PoolReader, ScoresReader
from alseg.files.idlist import read_ids, write_ids
from alseg.files.manifest import manifest_path, write_manifest
from alseg.registry import BADGE_EMBEDDINGS, CRC_SELECTORS, POOL_EMBEDDINGS, SCALAR_SCORES, get_strategy
from alseg.registry import MC_SCORES



@dataclass
class SelectResult:
    out_path: str
    strategy: str
    selected: list[str]
    budget: int
    n_unlabeled: int
    n_labeled: int
    seed: int
    warnings: list[str] = field(default_factory=list)
    labeled_updated: str | None = None
    seconds: float = 0.0
    oracle: bool = False  # chosen from ground-truth class counts: a simulation, never a real selection
    details: dict = field(default_factory=dict)  # what the strategy used: clasp's beta, excluded classes


class _Sources:
    """Where arrays come from: the scores file when given, else computed on the fly from the pool file."""

    def __init__(self, pool_path, scores_path, calibration_path, *, aggregation, q, batch_size, progress):
        self.pool_path, self.scores_path, self.calibration_path = pool_path, scores_path, calibration_path
        self.aggregation, self.q, self.batch_size, self.progress = aggregation, q, batch_size, progress

    def need_pool(self, what: str) -> PoolReader:
        if self.pool_path is None:
            raise InputError(f"{what} needs --pool pool.h5 (from `alseg infer`)")
        return PoolReader(self.pool_path)

    def check_same_pool(self) -> None:
        """With both --scores and --pool, the scores must have been computed from this very pool file."""
        if self.scores_path is None or self.pool_path is None:
            return
        with ScoresReader(self.scores_path) as s:
            recorded, score_ids = s.attrs.get("pool_sha256"), set(s.ids)
        if recorded:
            from alseg.files.hdf5 import POOL_DIGEST_PREFIX, pool_digest, sha256_file

            # `score` records the pool's metadata digest (a few MB read); an older scores file the sha256
            # of every byte, which only a full read can check
            now = pool_digest(self.pool_path) if recorded.startswith(POOL_DIGEST_PREFIX) else sha256_file(self.pool_path)
            if recorded != now:
                raise InputError(f"{self.scores_path}: scored from another pool file than {self.pool_path} "
                                 "(its pool_sha256 differs); rerun `alseg score` on this pool")
            return
        with PoolReader(self.pool_path) as p:
            if set(p.ids) != score_ids:
                raise InputError(f"{self.scores_path}: holds other ids than {self.pool_path}; rerun `alseg score` on "
                                 "this pool")

    def file_ids(self) -> list[str]:
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                return list(s.ids)
        if self.pool_path is not None:
            with PoolReader(self.pool_path) as p:
                return list(p.ids)
        return []

    def scalar(self, name: str, ids: list[str]) -> np.ndarray:
        """Image scores of ``ids`` (entropy, margin, least-confidence, crc)."""
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if name in s.score_names:
                    return s.score(name, ids)
                if self.pool_path is None:
                    s.score(name, ids)  # raises: names the file and the missing dataset
        if name == "crc":
            return self._crc(ids)[0]
        if name in MC_SCORES:
            return self._mc(name, ids)
        from alseg import strategies as S

        out = np.empty(len(ids), dtype=np.float64)
        with self.need_pool(f"strategy {name!r} without --scores") as pool:
            self.progress(0, total=len(ids))
            row = 0
            for batch_ids, logits, _ in pool.iter_batches(self.batch_size, ids=ids):
                out[row : row + len(batch_ids)] = S.image_scores(
                    logits, name, aggregation=self.aggregation, q=self.q, ids=batch_ids
                )
                row += len(batch_ids)
                self.progress(len(batch_ids))
        return out

    def _stream_probs(self, ids: list[str], what: str, fn: Callable[[np.ndarray], tuple]) -> list[np.ndarray]:
        """``fn(probs)`` of every batch of ``ids`` from the pool's logits, its outputs concatenated."""
        from alseg import strategies as S

        parts: list[tuple] = []
        with self.need_pool(what) as pool:
            self.progress(0, total=len(ids))
            for batch_ids, logits, _ in pool.iter_batches(self.batch_size, ids=ids):
                S.check_finite(logits, batch_ids)
                parts.append(fn(S.softmax(logits, axis=1)))
                self.progress(len(batch_ids))
        return [np.concatenate([part[j] for part in parts]) for j in range(len(parts[0]))] if parts else []

    def class_names(self) -> list[str]:
        if self.pool_path is not None:
            with PoolReader(self.pool_path) as pool:
                return list(pool.class_names)
        with ScoresReader(self.scores_path) as s:
            for name in ("class-counts", "clasp-class"):
                if name in s.embedding_names and "class_names" in s.params(name):
                    return list(s.params(name)["class_names"])
        raise InputError(f"{self.scores_path}: records no class names; pass --pool pool.h5 as well")

    def class_counts(self, ids: list[str], *, oracle: bool) -> np.ndarray:
        """n_c(x) of ``ids`` (§11.5): predicted (scores file or pool logits), or with ``oracle`` the pool's
        ground-truth labels."""
        from alseg import strategies as S

        if oracle:
            if self.pool_path is None:
                raise InputError("--oracle counts ground-truth classes: it needs --pool pool.h5 from "
                                 "`alseg infer --with-labels` (simulation only)")
            with PoolReader(self.pool_path) as pool:
                if not pool.has_labels:
                    raise InputError(f"{self.pool_path}: holds no ground-truth labels, which --oracle needs "
                                     "(simulation only); run `alseg infer --with-labels` on labeled data")
                k = pool.n_classes
                out = np.empty((len(ids), k), dtype=np.int64)
                row = 0
                self.progress(0, total=len(ids))
                for batch_ids, _, labels in pool.iter_batches(self.batch_size, ids=ids, with_labels=True):
                    out[row : row + len(batch_ids)] = S.class_counts(labels, k)
                    row += len(batch_ids)
                    self.progress(len(batch_ids))
            return out
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if "class-counts" in s.embedding_names:
                    return s.embedding("class-counts", ids)
        (out,) = self._stream_probs(ids, "strategy 'random-stratified' without --scores",
                                    lambda probs: (S.class_counts(S.predicted_classes(probs), probs.shape[1]),))
        return out

    def clasp(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(s_c (n, K), s (n,)) of ``ids`` (§11.6), from the scores file or the pool's logits."""
        from alseg import strategies as S

        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if "clasp" in s.score_names:
                    return s.embedding("clasp-class", ids), s.score("clasp", ids)
        s_c, s = self._stream_probs(ids, "strategy 'clasp' without --scores", S.clasp_scores)
        return s_c, s

    def _mc(self, name: str, ids: list[str]) -> np.ndarray:
        """Image scores of MC strategy ``name`` (bald, mc-entropy, variation-ratio) from the pool's ``/mc``
        maps (`infer --mc T`), streamed; as `score` computes them."""
        from alseg.mc import mc_image_scores

        out = np.empty(len(ids), dtype=np.float64)
        with self.need_pool(f"strategy {name!r} without --scores") as pool:
            batches = pool.iter_mc(self.batch_size, ids=ids)  # a pool without /mc: one line, before any bar
            self.progress(0, total=len(ids))
            row = 0
            for batch_ids, maps in batches:
                out[row : row + len(batch_ids)] = mc_image_scores(
                    maps, name, pool.n_classes, aggregation=self.aggregation, q=self.q, ids=batch_ids
                )
                row += len(batch_ids)
                self.progress(len(batch_ids))
        return out

    def _crc(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if "crc" in s.score_names:
                    return s.score("crc", ids), s.embedding("crc", ids)
        if self.calibration_path is None:
            raise InputError(
                "strategy 'crc' needs --scores scores.h5 from `alseg score --strategy crc`, "
                "or --pool pool.h5 with --calibration crc.json"
            )
        from alseg import crc as C
        from alseg.files.calibration import check_matches_pool, read_calibration
        from alseg.strategies import check_finite, softmax

        cal = read_calibration(self.calibration_path)
        thresholds = np.asarray(cal["query_thresholds"], dtype=np.float64)  # only uncalibrated classes floored
        u = np.empty(len(ids), dtype=np.float64)
        v = None
        with self.need_pool("strategy 'crc' without --scores") as pool:
            check_matches_pool(cal, self.calibration_path, pool.class_names, self.pool_path)
            v = np.empty((len(ids), pool.n_classes**2), dtype=np.float32)
            row = 0
            for batch_ids, logits, _ in pool.iter_batches(self.batch_size, ids=ids):
                check_finite(logits, batch_ids)
                bu, bv, _ = C.crc_image_scores(softmax(logits, axis=1), thresholds)
                u[row : row + len(batch_ids)], v[row : row + len(batch_ids)] = bu, bv
                row += len(batch_ids)
                self.progress(len(batch_ids))
        return u, v

    def crc(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self._crc(ids)

    def pool_embedding(self, name: str, ids: list[str]) -> np.ndarray:
        with self.need_pool(f"embedding {name!r}") as pool:
            return pool.embedding(name, ids)

    def contextual_diversity(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if "contextual-diversity" in s.embedding_names:
                    return s.embedding("contextual-diversity", ids), s.embedding("contextual-diversity-present", ids)
        from alseg import strategies as S

        with self.need_pool("strategy 'contextual-diversity' without --scores") as pool:
            k = pool.n_classes
            P = np.empty((len(ids), k, k), dtype=np.float32)
            present = np.empty((len(ids), k), dtype=bool)
            row = 0
            for batch_ids, logits, _ in pool.iter_batches(self.batch_size, ids=ids):
                S.check_finite(logits, batch_ids)
                P[row : row + len(batch_ids)], present[row : row + len(batch_ids)] = S.contextual_diversity(logits)
                row += len(batch_ids)
                self.progress(len(batch_ids))
        return P, present

    def badge_logit(self, ids: list[str]) -> np.ndarray:
        if self.scores_path is not None:
            with ScoresReader(self.scores_path) as s:
                if "badge-logit" in s.embedding_names:
                    return s.embedding("badge-logit", ids)
        from alseg import strategies as S

        with self.need_pool("strategy 'badge' without --scores") as pool:
            # the same pooling as `score` (from the pool's largest size), so both give the same rows
            h, w = pool.shape
            params = S.badge_logit_params(pool.n_classes, h, w, variable_size=pool.variable_size)
            out = np.empty((len(ids), S.badge_logit_dim(pool.n_classes, h, w, params)), dtype=np.float32)
            row = 0
            for batch_ids, logits, _ in pool.iter_batches(self.batch_size, ids=ids):
                S.check_finite(logits, batch_ids)
                out[row : row + len(batch_ids)] = S.badge_logit_rows(logits, params)
                row += len(batch_ids)
                self.progress(len(batch_ids))
        return out


def parse_round(text: str | None) -> tuple[int, int]:
    """``"t/T"`` -> (t, T), query round t (1-based) of T."""
    try:
        t, total = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise InputError(f"--round must be t/T (query round t of T, e.g. 2/5), got {text!r}") from None
    if total < 1 or not 1 <= t <= total:
        raise InputError(f"--round must be t/T with 1 <= t <= T, got {text!r}")
    return t, total


def excluded_classes(spec: str | list[str] | tuple[str, ...] | None, class_names: list[str]) -> list[int]:
    """Class indices left out of the strata (§11.5-11.6). ``None``: a class named ``background`` (any case),
    if there is one; ``"none"``: no class; else names or indices, comma-separated."""
    if spec is None:
        return [i for i, c in enumerate(class_names) if c.strip().lower() == "background"]
    items = [x.strip() for x in (spec.split(",") if isinstance(spec, str) else spec) if str(x).strip()]
    if [x.lower() for x in items] == ["none"]:
        return []
    out = []
    for item in items:
        if item in class_names:
            out.append(class_names.index(item))
        elif item.isdigit() and int(item) < len(class_names):
            out.append(int(item))
        else:
            raise InputError(f"--exclude-classes: {item!r} is neither a class name nor an index 0..{len(class_names) - 1} "
                             f"(classes: {', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})")
    return sorted(set(out))


def _split_labeled(labeled: list[str], available: set[str], source: str, warnings: list[str]) -> list[str]:
    """Labeled ids usable as references (present in the file); warn about the others."""
    refs = [i for i in labeled if i in available]
    if len(refs) < len(labeled):
        missing = [i for i in labeled if i not in available]
        warnings.append(
            f"{len(missing)} labeled id(s) are not in {source} (e.g. {missing[0]!r}) and are not used as references; "
            "run `alseg infer` over unlabeled ∪ labeled ids to use them"
        )
    return refs


def _write_updating_labeled(out_path: Path, chosen: list[str], labeled_path: Path, labeled: list[str],
                            manifest: dict) -> None:
    """All or nothing: the selection, its manifest and the updated labeled list, or none of them
    (:func:`alseg.files.atomic.replace_last`: the list is renamed into place last)."""
    def write_outputs() -> None:
        write_ids(out_path, chosen)
        write_manifest(out_path, **manifest)

    replace_last(labeled_path, "".join(f"{i}\n" for i in labeled).encode("utf-8"),
                 [out_path, manifest_path(out_path)], write_outputs)


# Both outputs are locked for the whole call: the labeled list must not change between reading and updating it.
@holding_output_locks("out_path", labeled_path="update")
def select(
    strategy: str,
    *,
    budget: int | None = None,
    labeled_path: str | Path,
    out_path: str | Path,
    pool_path: str | Path | None = None,
    scores_path: str | Path | None = None,
    pool_ids_path: str | Path | None = None,
    calibration_path: str | Path | None = None,
    seed: int = 0,
    stochastic: bool = False,
    groups: int | None = None,
    base_score: str = "entropy",
    embedding: str = "bottleneck",
    badge_embedding: str = "logit",
    tau: float = 0.5,
    selector: str = "top-diverse-k",
    aggregation: str = "mean",
    q: float = 10.0,
    device: str = "auto",
    batch_size: int = 16,
    update: bool = False,
    overwrite: bool = False,
    progress: Callable[..., None] = _noop,
    sampler: str = "top",
    beta: float = 1.0,
    oracle: bool = False,
    round: str | None = None,  # noqa: A002  (the CLI's --round t/T)
    exclude_classes: str | list[str] | None = None,
    min_count: int = 1,
    class_share: float = 0.66,
    unit: str = "image",
    budget_pixels: str | int | None = None,
    budget_clicks: int | None = None,
    region_reduction: str = "mean",
    max_per_image: int | None = None,
    annotation: str = "precise",
    dataset_config: str | None = None,
    data_root: str | Path | None = None,
    region_store: str | Path | None = None,
):
    """Select ``budget`` ids from the unlabeled candidates and write them to ``out_path``; with a region
    ``unit`` (or a pixel or click budget), a region round (:mod:`alseg.stages.select_regions`)."""
    if str(unit).strip() != "image" or budget_pixels is not None or budget_clicks is not None:
        from alseg.stages.select_regions import select_region_round

        return select_region_round(
            strategy, unit=unit, budget=budget, budget_pixels=budget_pixels, budget_clicks=budget_clicks,
            labeled_path=labeled_path, out_path=out_path, pool_path=pool_path, scores_path=scores_path,
            pool_ids_path=pool_ids_path, calibration_path=calibration_path, seed=seed, stochastic=stochastic,
            oracle=oracle, region_reduction=region_reduction, q=q, max_per_image=max_per_image, sampler=sampler,
            beta=beta, annotation=annotation, config=dataset_config, data_root=data_root, batch_size=batch_size,
            update=update, overwrite=overwrite, progress=progress, region_store=region_store, round=round,
            exclude_classes=exclude_classes, class_share=class_share)
    if budget is None:
        raise InputError("--budget N is required: the number of images to select")
    from alseg import selectors as sel

    t0 = time.perf_counter()
    strat = get_strategy(strategy)
    if budget < 1:
        raise InputError(f"--budget must be at least 1, got {budget}")
    if stochastic and not strat.scalar:
        raise InputError(f"--stochastic applies to scalar scores ({', '.join(SCALAR_SCORES)}, crc), not {strategy!r}")
    if groups is not None and groups < 1:
        raise InputError(f"--groups must be at least 1, got {groups}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    from alseg.samplers import SAMPLERS, sample

    if sampler not in SAMPLERS:
        raise UnknownName(f"--sampler: unknown {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if sampler != "top" and (strategy not in (*SCALAR_SCORES, *MC_SCORES, "crc") or stochastic):
        raise InputError(f"--sampler {sampler} samples by a scalar score: use it with entropy, margin, "
                         f"least-confidence, bald, mc-entropy, variation-ratio or crc (its risk u), without "
                         f"--stochastic; not with {strategy!r}")
    if oracle and strategy != "random-stratified":
        raise InputError(f"--oracle applies to random-stratified only (ground-truth class counts), not {strategy!r}")
    if min_count < 1:
        raise InputError(f"--min-count must be >= 1 (cells of a class that put an image in its stratum), got {min_count}")
    if not 0.0 <= class_share <= 1.0:
        raise InputError(f"--class-share must be in [0, 1], got {class_share}")
    round_t = None
    if strategy == "clasp":
        if round is None:
            raise InputError("strategy 'clasp' needs --round t/T (query round t of T; `alseg run` passes it), "
                             "which sets its power-sampling beta")
        round_t = parse_round(round)
    if base_score not in SCALAR_SCORES:
        raise UnknownName(f"unknown --base-score {base_score!r}; choose one of: {', '.join(SCALAR_SCORES)}")
    if embedding not in POOL_EMBEDDINGS:
        raise UnknownName(f"unknown --embedding {embedding!r}; choose one of: {', '.join(POOL_EMBEDDINGS)}")
    if badge_embedding not in BADGE_EMBEDDINGS:
        raise UnknownName(f"unknown --badge-embedding {badge_embedding!r}; choose one of: {', '.join(BADGE_EMBEDDINGS)}")
    if selector not in CRC_SELECTORS:
        raise UnknownName(f"unknown --selector {selector!r}; choose one of: {', '.join(CRC_SELECTORS)}")
    if not 0.0 <= tau <= 1.0:
        raise InputError(f"--tau must be in [0, 1], got {tau}")
    inputs = [pool_path, scores_path, pool_ids_path, calibration_path]
    # --update rewrites --labeled, which is also an input by design; --out must be neither
    check_not_input([out_path, manifest_path(out_path)], [labeled_path, *inputs])
    if update:
        check_not_input([labeled_path], inputs)
    out_path = check_writable(out_path, overwrite=overwrite)
    labeled = read_ids(labeled_path)
    labeled_set = set(labeled)
    src = _Sources(pool_path, scores_path, calibration_path, aggregation=aggregation, q=q,
                   batch_size=batch_size, progress=progress)
    src.check_same_pool()

    if pool_ids_path is not None:
        candidates, cand_src = read_ids(pool_ids_path), str(pool_ids_path)
    else:
        candidates = src.file_ids()
        cand_src = str(scores_path or pool_path)
        if not candidates and pool_path is None and scores_path is None:
            need = "--pool-ids all.txt" if strat.needs == "nothing" else "--pool pool.h5 or --scores scores.h5"
            raise InputError(f"strategy {strategy!r} needs candidates: pass {need}")
    unlabeled = [i for i in candidates if i not in labeled_set]
    if not unlabeled:
        raise EmptyPoolError(
            f"{cand_src}: no unlabeled ids to select from ({len(candidates)} candidate(s), all in {labeled_path})"
        )
    warnings: list[str] = []
    if budget >= len(unlabeled):
        if budget > len(unlabeled):
            warnings.append(f"budget {budget} exceeds the {len(unlabeled)} unlabeled id(s); selecting all of them")
        budget = len(unlabeled)
    rng = np.random.default_rng(seed)
    ids_u = np.asarray(unlabeled, dtype=object)
    details: dict = {}
    dev = "cpu"
    if strat.selector in ("k-center", "k-means++", "top-diverse-k"):
        from alseg.device import resolve_device

        dev = str(resolve_device(device))

    if strategy == "random":
        chosen = sel.random_select(ids_u, budget, rng=rng)
    elif strategy == "stochastic-batches" or (stochastic and strategy in (*SCALAR_SCORES, *MC_SCORES)):
        name = base_score if strategy == "stochastic-batches" else strategy
        chosen = sel.stochastic_batches(src.scalar(name, unlabeled), ids_u, budget, rng=rng, groups=groups)
    elif strategy in (*SCALAR_SCORES, *MC_SCORES):
        chosen = sample(src.scalar(strategy, unlabeled), ids_u, budget, sampler=sampler, beta=beta, rng=rng)
    elif strategy == "coreset":
        with src.need_pool("strategy 'coreset'") as pool:
            available = set(pool.ids)
        refs = _split_labeled(labeled, available, str(pool_path), warnings)
        chosen = sel.kcenter(src.pool_embedding(embedding, unlabeled), src.pool_embedding(embedding, refs), ids_u,
                             budget, distance="euclidean", device=dev)
    elif strategy == "contextual-diversity":
        available = set(src.file_ids())
        refs = _split_labeled(labeled, available, cand_src, warnings)
        chosen = sel.kcenter(src.contextual_diversity(unlabeled), src.contextual_diversity(refs), ids_u, budget,
                             distance="symkl", device=dev)
    elif strategy == "badge":
        emb = src.badge_logit(unlabeled) if badge_embedding == "logit" else src.pool_embedding("badge", unlabeled)
        chosen = sel.kmeans_pp(emb, ids_u, budget, rng=rng, device=dev)
    elif strategy == "crc":
        u_u, v_u = src.crc(unlabeled)
        if sampler != "top":  # sampling by the CRC risk u alone (§11.4), no diversity step
            chosen = sample(u_u, ids_u, budget, sampler=sampler, beta=beta, rng=rng)
        elif stochastic:
            chosen = sel.stochastic_batches(u_u, ids_u, budget, rng=rng, groups=groups)
        else:
            from alseg import crc as C

            refs = _split_labeled(labeled, set(src.file_ids()), cand_src, warnings)
            u_l, v_l = src.crc(refs) if refs else (np.zeros(0), np.zeros((0, v_u.shape[1]), dtype=np.float32))
            fn = C.top_diverse_k if selector == "top-diverse-k" else C.barycenter_kcenter
            chosen = fn(u_u, v_u, ids_u, u_l, v_l, budget, tau=tau, device=dev)
    elif strategy == "random-stratified":
        from alseg.samplers import stratified_random

        exclude = excluded_classes(exclude_classes, src.class_names())
        chosen = stratified_random(src.class_counts(unlabeled, oracle=oracle), ids_u, budget, rng=rng,
                                   min_count=min_count, exclude=exclude)
        details = {"counts": "ground truth (oracle)" if oracle else "predicted",
                   "excluded_classes": [src.class_names()[c] for c in exclude]}
    elif strategy == "clasp":
        from alseg.samplers import beta_schedule, clasp

        exclude = excluded_classes(exclude_classes, src.class_names())
        s_c, s_img = src.clasp(unlabeled)
        beta = beta_schedule(*round_t)
        chosen = clasp(s_c, s_img, ids_u, budget, beta=beta, rng=rng, share=class_share, exclude=exclude)
        details = {"round": f"{round_t[0]}/{round_t[1]}", "beta": beta, "class_share": class_share,
                   "excluded_classes": [src.class_names()[c] for c in exclude]}
    else:  # pragma: no cover - registry and branches are kept in step by tests
        raise UnknownName(f"strategy {strategy!r} has no selection rule")

    chosen = [str(i) for i in chosen]
    assert len(chosen) == len(set(chosen)) == budget and not (set(chosen) & labeled_set)
    result = SelectResult(
        out_path=str(out_path), strategy=strategy, selected=chosen, budget=budget, n_unlabeled=len(unlabeled),
        n_labeled=len(labeled), seed=seed, warnings=warnings, labeled_updated=str(labeled_path) if update else None,
        seconds=time.perf_counter() - t0, oracle=oracle, details=details,
    )
    manifest = dict(
        stage="select",
        args={"strategy": strategy, "budget": budget, "labeled_path": labeled_path, "pool_path": pool_path,
              "scores_path": scores_path, "pool_ids_path": pool_ids_path, "calibration_path": calibration_path,
              "seed": seed, "stochastic": stochastic, "groups": groups, "base_score": base_score,
              "sampler": sampler, "beta": beta, "oracle": oracle, "round": round,
              "exclude_classes": exclude_classes, "min_count": min_count, "class_share": class_share,
              "embedding": embedding, "badge_embedding": badge_embedding, "tau": tau, "selector": selector,
              "aggregation": aggregation, "q": q, "update": update},
        inputs=[labeled_path, *inputs], outputs=[out_path], seconds=result.seconds, result=result,
    )
    if update:
        _write_updating_labeled(out_path, chosen, Path(labeled_path), labeled + chosen, manifest)
    else:
        write_ids(out_path, chosen)
        with removed_on_failure(out_path):
            write_manifest(out_path, **manifest)
    return result
