"""MC dropout, streamed (docs/algorithms.md §11.7): running sums over T stochastic passes, never the T
probability maps.

Per pixel :class:`MCSums` keeps S1 = Σ_t p_t (K values), S2 = Σ_t Σ_k p_tk log p_tk and the argmax votes
V_k. From them: p̄ = S1/T, predictive entropy H(p̄), expected entropy E = −S2/T, BALD = H(p̄) − E and the
variation ratio 1 − max_k V_k / T. Memory per image is independent of T.

:func:`dropout_scope` switches dropout on in the chosen scope (``head``: the decode head's own dropout;
``full``: every dropout layer) with every normalisation layer left in eval mode.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from alseg.errors import InputError

MC_SCOPES = ("head", "full")
MC_STRATEGIES = ("bald", "mc-entropy", "variation-ratio")


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros((), dtype=p.dtype))


class MCSums:
    """Running sums of one batch of images over the passes added so far (float64 sums, int32 votes)."""

    def __init__(self) -> None:
        self.t = 0
        self.s1: torch.Tensor | None = None  # (b, K, h, w)
        self.s2: torch.Tensor | None = None  # (b, h, w)
        self.votes: torch.Tensor | None = None  # (b, K, h, w)

    def add(self, probs: torch.Tensor) -> None:
        """One pass: ``probs`` (b, K, h, w), softmax over K."""
        if probs.ndim != 4:
            raise InputError(f"MC pass probabilities must be (b, K, h, w), got {tuple(probs.shape)}")
        p = probs.to(torch.float64)
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
        self._check()
        return 1.0 - self.votes.max(dim=1).values.to(torch.float64) / self.t


def _norm_layer(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
                               torch.nn.modules.instancenorm._InstanceNorm))


@contextlib.contextmanager
def dropout_scope(model: torch.nn.Module, scope: str) -> Iterator[int]:
    """Inside: ``model`` in eval mode except the dropout layers of ``scope`` (``head``: under
    ``model.decode_head``; ``full``: all), which sample. Yields how many dropout layers are active (0 means
    every pass equals the deterministic one). Restores every module's mode on exit."""
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
