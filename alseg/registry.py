"""The strategy registry: one entry per strategy, saying what it needs and which selector it uses.

``select`` reads this to tell the user exactly which ``infer``/``score``/``calibrate`` step is missing,
and the CLI builds its ``--strategy`` choices from the keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from alseg.errors import UnknownName


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    needs: str  # "nothing" | "logits" | "embedding" | "calibration" | "mc" (a pool from `infer --mc T`)
    selector: str  # "random" | "top-k" | "stochastic" | "k-center" | "k-means++" | "top-diverse-k" | "stratified"
    # | "clasp"
    scalar: bool = False  # has one score per image, so --stochastic applies
    scored: bool = False  # `alseg score --strategy NAME` computes something for it
    reference: str = ""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("random", "uniform sample of the unlabeled ids (needs no model output)", "nothing", "random",
                 reference="docs/algorithms.md §1"),
        Strategy("entropy", "mean normalised pixel entropy", "logits", "top-k", scalar=True, scored=True,
                 reference="Lewis & Catlett 1994"),
        Strategy("margin", "mean 1 - (p1 - p2) over pixels", "logits", "top-k", scalar=True, scored=True,
                 reference="Roth & Small 2006"),
        Strategy("least-confidence", "mean 1 - max p over pixels", "logits", "top-k", scalar=True, scored=True,
                 reference="Joshi et al. 2009"),
        Strategy("stochastic-batches", "best of random disjoint batches by mean score (--base-score)", "logits",
                 "stochastic", reference="Gaillochet et al. 2023"),
        Strategy("coreset", "greedy k-center on pooled features (--embedding bottleneck|penultimate)", "embedding",
                 "k-center", reference="Sener & Savarese 2018"),
        Strategy("contextual-diversity", "greedy k-center on class-wise entropy-weighted softmax (symmetric KL)",
                 "logits", "k-center", scored=True, reference="Agarwal et al. 2020"),
        Strategy("badge", "k-means++ seeding on gradient embeddings (--badge-embedding logit|last-layer)", "logits",
                 "k-means++", scored=True, reference="Ash et al. 2020"),
        Strategy("crc", "CRC-AL: calibrated risk maps + co-occurrence embeddings, barycenter Top-Diverse-K",
                 "calibration", "top-diverse-k", scalar=True, scored=True, reference="Erhan & Ure 2025"),
        Strategy("random-stratified", "class-stratified random over predicted class counts (--oracle: true counts)",
                 "logits", "stratified", scored=True, reference="Lüth et al. 2025 (nnActive)"),
        Strategy("clasp", "class-stratified power sampling on entropy, beta scheduled over the rounds (--round t/T)",
                 "logits", "clasp", scored=True, reference="Lüth et al. 2026 (ClaSP PE)"),
        Strategy("bald", "mean MC-dropout mutual information H(p̄) - E[H(p)] (pool from `infer --mc T`)", "mc",
                 "top-k", scalar=True, scored=True, reference="Gal et al. 2017"),
        Strategy("mc-entropy", "mean normalised predictive entropy H(p̄) of the MC-dropout mean", "mc", "top-k",
                 scalar=True, scored=True, reference="Gal et al. 2017"),
        Strategy("variation-ratio", "mean 1 - (modal MC vote count)/T over pixels", "mc", "top-k", scalar=True,
                 scored=True, reference="Freeman 1965; Gal et al. 2017"),
    ]
}

SCALAR_SCORES = ("entropy", "margin", "least-confidence")
MC_SCORES = ("bald", "mc-entropy", "variation-ratio")  # pixel scores from the MC sums of `infer --mc T`
MC_SCOPES = ("head", "full")  # where `infer --mc` samples dropout (alseg.mc.dropout_scope)
AGGREGATIONS = ("mean", "sum", "top-q")  # pixel-to-image reductions of the scalar scores
POOL_EMBEDDINGS = ("bottleneck", "penultimate")  # coreset's feature embeddings (`infer --embeddings`)
BADGE_EMBEDDINGS = ("logit", "last-layer")
CRC_SELECTORS = ("top-diverse-k", "kcenter")
SAMPLERS = ("top", "power", "softmax", "softrank")  # how scalar scores become a batch (alseg.samplers)
SCORED = tuple(name for name, s in STRATEGIES.items() if s.scored and name != "stochastic-batches")


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UnknownName(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
