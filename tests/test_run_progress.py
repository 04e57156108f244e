"""Progress of `alseg run` (step k of N, elapsed, time left) and `alseg train` (the loss), without training.

The count of a real run's steps is checked against the plan in tests/test_run.py (it needs a training).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from alseg.experiment import Experiment
from alseg.stages.run import RunEvent, plan_steps


def _exp(strategies, sizes=(6, 10, 14), seeds=(0,), full=False) -> Experiment:
    return Experiment(path=Path("e.toml"), name="e", config=Path("c.py"), data_root=None, pool_ids=None,
                      val_ids=None, calib_ids=None, sizes=list(sizes), seeds=list(seeds),
                      strategies=list(strategies), full_supervision=full)


# ------------------------------------------------------------------------------------------------- N


@pytest.mark.parametrize("strategies,seeds,full,n", [
    # 2 + 2 rounds x (random 2 + margin 4 + crc 6) = 26 (the tiny run of tests/test_run.py)
    (["random", "margin", "crc"], [0], False, 26),
    # two seeds and one full-supervision training: 2 * 26 + 1
    (["random", "margin", "crc"], [0, 1], True, 53),
    # coreset: infer select train = 3; stochastic-batches, badge, contextual-diversity, entropy: infer score
    # select train = 4 -> 2 + 2 * (3 + 4 * 4) = 40
    (["coreset", "stochastic-batches", "badge", "contextual-diversity", "entropy"], [0], False, 40),
])
def test_plan_counts_by_hand(strategies, seeds, full, n):
    plan = plan_steps(_exp(strategies, seeds=seeds, full=full))
    assert len(plan) == n
    assert plan[:2] == [(seeds[0], None, 0, "select"), (seeds[0], None, 0, "train")]
    if full:
        assert plan[-1] == (seeds[0], "full", 0, "train")


def test_plan_order_of_a_crc_round():
    plan = plan_steps(_exp(["crc"], sizes=(4, 8)))
    assert [s[3] for s in plan] == ["select", "train", "infer", "infer", "calibrate", "score", "select", "train"]


# ----------------------------------------------------------------------------------------- time left


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


PLAN = [(0, None, 0, "select"), (0, None, 0, "train"), (0, "m", 1, "infer"), (0, "m", 1, "score"),
        (0, "m", 1, "select"), (0, "m", 1, "train")]


def _ev(kind, step, stage, **kw):
    return RunEvent(kind, 0, None, 0, stage, step=step, n_steps=len(PLAN), **kw)


def test_time_left_by_hand():
    from alseg.commands.run import _Overall

    clock = Clock()
    o = _Overall(clock)
    o(RunEvent("plan", 0, None, 0, "plan", total=6, plan=PLAN))
    assert o.remaining() is None and o.text() == "step 0 of 6 · 0:00:00 elapsed · estimating time left"
    o(_ev("start", 1, "select"))
    clock.t += 1
    o(_ev("done", 1, "select", seconds=1.0))
    # select took 1 s: every remaining step is estimated at 1 s (no other stage timed yet)
    assert o.remaining() == pytest.approx(5.0)
    o(_ev("start", 2, "train"))
    o(_ev("progress", 2, "train", total=10))
    clock.t += 5
    o(_ev("progress", 2, "train", advance=5))
    # train is half done after 5 s -> projects to 10 s, 5 s left; then infer 1 (mean of timed steps: select),
    # score 1, select 1 and train 10 (the running train's projection) = 5 + 13
    assert o.remaining() == pytest.approx(18.0)
    assert o.text() == "step 2 of 6 · 0:00:06 elapsed · ~0:00:18 left"
    clock.t += 5
    o(_ev("done", 2, "train", seconds=10.0))
    # nothing running: infer and score fall back to the mean of all timed steps (1 + 10) / 2 = 5.5
    assert o.remaining() == pytest.approx(5.5 + 5.5 + 1 + 10)
    o(_ev("skip", 3, "infer"))  # reused: done, and no time
    assert o.finished == 3 and o.remaining() == pytest.approx(5.5 + 1 + 10)
    o(_ev("start", 4, "score"))
    clock.t += 2
    # score has no total: its estimate (5.5) less the 2 s it has run
    assert o.remaining() == pytest.approx(3.5 + 1 + 10)
    for k, stage in ((4, "score"), (5, "select"), (6, "train")):
        o(_ev("done", k, stage, seconds=1.0))
    assert o.text().endswith("· done") and o.text().startswith("step 6 of 6")


def test_live_view_shows_overall_above_the_step_bar():
    from rich.console import Console

    import alseg.commands.run as run_cmd

    clock = Clock()
    view = run_cmd._LiveView(clock)
    view(RunEvent("plan", 0, None, 0, "plan", total=6, plan=PLAN))
    view(_ev("start", 1, "select"))
    clock.t += 2
    view(_ev("done", 1, "select", seconds=2.0))
    view(_ev("start", 2, "train"))
    view(_ev("progress", 2, "train", total=4))
    view(_ev("progress", 2, "train", advance=1, info={"loss": 1.23456}))
    console = Console(file=io.StringIO(), width=160, force_terminal=False, color_system=None)
    console.print(view.render())
    lines = console.file.getvalue().splitlines()
    overall = next(i for i, line in enumerate(lines) if "step 2 of 6" in line)
    step = next(i for i, line in enumerate(lines) if "round 0 · train" in line)
    assert overall < step and "0:00:02 elapsed" in lines[overall] and "left" in lines[overall]
    assert "loss 1.23" in lines[step] and "1/4" in lines[step]


# ------------------------------------------------------------------------------------- train progress


def test_progress_bar_shows_loss(monkeypatch):
    from rich.console import Console

    import alseg.commands._console as console_mod

    buf = io.StringIO()
    monkeypatch.setattr(console_mod, "err", Console(file=buf, width=160, force_terminal=True, color_system=None))
    with console_mod.progress_bar("train") as hook:
        hook(0, 10)
        hook(1, None, loss=0.51234)
        hook(1)  # a call without info keeps the last value
    assert "loss 0.512" in buf.getvalue() and "2/10" in buf.getvalue()
    with console_mod.progress_bar("train", quiet=True) as hook:
        hook(1, None, loss=0.5)  # the quiet hook takes the same arguments


def test_train_hook_reports_loss_only_to_hooks_that_take_it():
    import torch

    from alseg.mm import make_train_hooks

    new, old = [], []
    hook, _ = make_train_hooks(lambda advance=1, total=None, **info: new.append((advance, total, info)), 5)
    hook.before_train(None)
    hook.after_train_iter(None, 0, outputs={"loss": torch.tensor(0.75), "decode.acc_seg": torch.tensor(50.0)})
    hook.after_train_iter(None, 1, outputs=None)
    assert new == [(0, 5, {}), (1, None, {"loss": 0.75}), (1, None, {})]
    # an existing two-argument hook is called as before
    hook, _ = make_train_hooks(lambda advance=1, total=None: old.append((advance, total)), 5)
    hook.before_train(None)
    hook.after_train_iter(None, 0, outputs={"loss": torch.tensor(0.75)})
    assert old == [(0, 5), (1, None)]
