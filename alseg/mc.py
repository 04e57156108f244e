"""MC dropout, streamed (docs/algorithms.md §11.7): running sums over T stochastic passes, never the T
probability maps.

Per pixel :class:`MCSums` keeps S1 = Σ_t p_t (K values), S2 = Σ_t Σ_k p_tk log p_tk and the argmax votes
V_k. From them: p̄ = S1/T, predictive entropy H(p̄), expected entropy E = −S2/T, BALD = H(p̄) − E and the
variation ratio 1 − max_k V_k / T. Memory per image is independent of T.

:func:`dropout_scope` switches dropout on in the chosen scope (``head``: the decode head's own dropout;
``full``: every dropout layer) with every normalisation layer left in eval mode.

:func:`mc_maps` turns the sums into what a pool file keeps (``/mc``, :data:`alseg.files.hdf5.MC_STATS`):
H(p̄), the mutual information H(p̄) − E and max_k V_k / T, independent of T. :func:`mc_pixel_scores` and
:func:`mc_image_scores` (NumPy, no torch) compute the strategies ``bald``, ``mc-entropy`` and
``variation-ratio`` from those maps.

torch is imported inside the functions that need it: ``score`` and ``select`` read MC maps with NumPy only.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from alseg.errors import InputError, UnknownName

from alseg.registry import MC_SCOPES, MC_SCORES as MC_STRATEGIES  # noqa: E402,F401  (names live in the registry)

if TYPE_CHECKING:
    import torch


def _plogp(p: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros((), dtype=p.dtype,
                                                                                                 device=p.device))


class MCSums:
    """Running sums of one batch of images over the passes added so far (float64 sums by default,
    ``dtype=torch.float32`` where the device has no float64, e.g. MPS; int32 votes)."""

    def __init__(self, dtype: "torch.dtype | None" = None) -> None:
        import torch

        self.dtype = torch.float64 if dtype is None else dtype
        self.t = 0
        self.s1: torch.Tensor | None = None  # (b, K, h, w)
        self.s2: torch.Tensor | None = None  # (b, h, w)
        self.votes: torch.Tensor | None = None  # (b, K, h, w)

    def add(self, probs: torch.Tensor) -> None:
        """One pass: ``probs`` (b, K, h, w), softmax over K."""
        import torch

        if probs.ndim != 4:
            raise InputError(f"MC pass probabilities must be (b, K, h, w), got {tuple(probs.shape)}")
        p = probs.to(self.dtype)
        k = p.shape[1]
        vote = torch.nn.functional.one_hot(p.argmax(dim=1), k).permute(0, 3, 1, 2).to(torch.int32)
        if self.s1 is None:
            self.s1, self.s2, self.votes = p.clone(), _plogp(p).sum(dim=1), vote
        else:
            if p.shape != self.s1.shape:
                raise InputError(f"MC pass of shape {tuple(p.shape)} after passes of {tuple(self.s1.shape)}")
            self.s1 += p
            self.s2 += _plogp(p).sum(dim=1)
            self.votes += vote
        self.t += 1

    def _check(self) -> None:
        if self.t == 0:
            raise InputError("no MC pass was added")

    def mean_probs(self) -> torch.Tensor:
        """p̄ = S1 / T, (b, K, h, w) float64."""
        self._check()
        return self.s1 / self.t

    def predictive_entropy(self) -> torch.Tensor:
        """H(p̄) in nats, (b, h, w)."""
        return -_plogp(self.mean_probs()).sum(dim=1)

    def expected_entropy(self) -> torch.Tensor:
        """E = −S2 / T in nats, (b, h, w)."""
        self._check()
        return -self.s2 / self.t

    def bald(self) -> torch.Tensor:
        """H(p̄) − E, clipped at 0 (it is ≥ 0 up to rounding), (b, h, w)."""
        return (self.predictive_entropy() - self.expected_entropy()).clamp_min(0.0)

    def variation_ratio(self) -> torch.Tensor:
        """1 − max_k V_k / T, (b, h, w)."""
        return 1.0 - self.max_vote_fraction()

    def max_vote_fraction(self) -> "torch.Tensor":
        """max_k V_k / T, (b, h, w)."""
        self._check()
        return self.votes.max(dim=1).values.to(self.dtype) / self.t


def mc_maps(sums: MCSums) -> "torch.Tensor":
    """What ``/mc`` keeps per pixel: (b, 3, h, w) float32 [H(p̄), H(p̄) − E, max_k V_k / T] (nats, nats,
    fraction). The mutual information is stored rather than E: a small difference of two entropies keeps its
    float64 precision this way (E = H(p̄) − MI); it is clipped at 0 (it is ≥ 0 up to rounding)."""
    import torch

    return torch.stack([sums.predictive_entropy(), sums.bald(), sums.max_vote_fraction()], dim=1).float()


def mc_pixel_scores(maps: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    """Pixel scores (b, h, w) float64 of MC strategy ``name`` from ``/mc`` maps (b, 3, h, w); higher = more
    informative. ``bald``: (H(p̄) − E) / log K clipped at 0; ``mc-entropy``: H(p̄) / log K; ``variation-ratio``:
    1 − max_k V_k / T (Gal, Islam & Ghahramani 2017; docs/algorithms.md §11.7)."""
    if name not in MC_STRATEGIES:
        raise UnknownName(f"unknown MC score {name!r}; choose one of: {', '.join(MC_STRATEGIES)}")
    m = np.asarray(maps)
    if m.ndim != 4 or m.shape[1] != 3:
        raise InputError(f"MC maps must be (b, 3, h, w), got shape {m.shape}")
    if n_classes < 2:
        raise InputError(f"MC scores need at least 2 classes, got {n_classes}")
    if name == "bald":
        return np.maximum(m[:, 1].astype(np.float64), 0.0) / math.log(n_classes)
    if name == "mc-entropy":
        return m[:, 0].astype(np.float64) / math.log(n_classes)
    return 1.0 - m[:, 2].astype(np.float64)


def mc_image_scores(maps: np.ndarray, name: str, n_classes: int, *, aggregation: str = "mean", q: float = 10.0,
                    ids: Sequence[str] | None = None) -> np.ndarray:
    """Image scores (b,) float64: :func:`mc_pixel_scores` reduced by :func:`alseg.strategies.aggregate`."""
    from alseg.strategies import aggregate, check_finite

    check_finite(np.asarray(maps), ids, "MC maps")
    return aggregate(mc_pixel_scores(maps, name, n_classes), aggregation, q)


def _norm_layer(module: "torch.nn.Module") -> bool:
    import torch

    return isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
                               torch.nn.modules.instancenorm._InstanceNorm))


@contextlib.contextmanager
def dropout_scope(model: "torch.nn.Module", scope: str) -> Iterator[int]:
    """Inside: ``model`` in eval mode except the dropout layers of ``scope`` (``head``: under
    ``model.decode_head``; ``full``: all), which sample. Yields how many dropout layers are active (0 means
    every pass equals the deterministic one). Restores every module's mode on exit."""
    import torch

    if scope not in MC_SCOPES:
        raise InputError(f"--mc-scope: unknown {scope!r}; choose one of: {', '.join(MC_SCOPES)}")
    root = model.decode_head if scope == "head" else model
    modes = {m: m.training for m in model.modules()}
    model.eval()
    active = 0
    try:
        for m in root.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 and not _norm_layer(m):
                m.train()
                active += 1
        yield active
    finally:
        for m, mode in modes.items():
            m.training = mode
