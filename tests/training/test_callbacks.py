"""The callbacks of a training run."""

import itertools
import types

import pytest

from unet_keras.training import distribute
from unet_keras.training.callbacks import Patience, TrainingPlan, patience_spent


class _Rate:
    def __init__(self) -> None:
        self.value = None

    def assign(self, value: float) -> None:
        self.value = value


def _planned(plan: TrainingPlan, iterations: int = 0) -> TrainingPlan:
    optimizer = types.SimpleNamespace(iterations=iterations, learning_rate=_Rate())
    plan.set_model(types.SimpleNamespace(distribute_strategy=None, stop_training=False))
    plan.model.optimizer = optimizer
    return plan


def test_the_cosine_schedule_warms_up_then_decays_to_zero_at_the_end():
    plan = TrainingPlan(1e-3, "cosine", warmup=0.1, steps=100)
    rates = [plan.learning_rate(p / 100) for p in range(101)]
    assert rates[0] == 0 and rates[5] == pytest.approx(5e-4) and rates[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[55] == pytest.approx(5e-4) and rates[100] == pytest.approx(0, abs=1e-12)
    assert TrainingPlan(1e-3, "constant").learning_rate(0.7) == 1e-3


def test_progress_is_the_steps_or_the_time_budget_whichever_ends_first(monkeypatch):
    monkeypatch.setattr(distribute, "latest", lambda strategy, value: value)
    clock = iter([1000.0, 1030.0])
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    # 30 s into this session after 20 s in the killed one: half of a 100 s budget.
    plan = TrainingPlan(1.0, seconds=100, steps=1000, spent=20, started=1000.0)
    plan = _planned(plan, iterations=100)
    assert plan.progress() == pytest.approx((0.1, 0.2))
    assert plan.progress() == pytest.approx((0.1, 0.5))
    plan = _planned(TrainingPlan(1.0, steps=40, started=0.0), iterations=30)
    assert plan.progress() == pytest.approx((0.75, 0.0))


def test_the_time_budget_stops_every_worker_when_one_has_spent_it(monkeypatch):
    plan = _planned(TrainingPlan(1e-3, "cosine", warmup=0.0, seconds=3600))
    monkeypatch.setattr(distribute, "latest", lambda strategy, value: value)
    plan.on_train_begin()
    assert plan.model.optimizer.learning_rate.value == pytest.approx(1e-3, rel=1e-3)
    plan.on_train_batch_end(0)
    assert not plan.model.stop_training  # nobody is past the deadline
    # Another worker's clock is past it: this one stops too, at the schedule's end.
    monkeypatch.setattr(distribute, "latest", lambda strategy, value: 3600.5)
    plan.on_train_batch_end(1)
    assert plan.model.stop_training and plan.reached
    assert plan.model.optimizer.learning_rate.value == pytest.approx(0, abs=1e-12)


def test_patience_stops_once_the_best_epoch_is_that_many_epochs_old():
    state = {"epoch": 0, "best_epoch": None}
    patience = Patience(state, 3)
    patience.set_model(types.SimpleNamespace(stop_training=False))
    # The checkpoint updates the shared state before patience reads it: best at epoch 2.
    for epoch, best_epoch in [(1, 1), (2, 2), (3, 2), (4, 2)]:
        state.update(epoch=epoch, best_epoch=best_epoch)
        patience.on_epoch_end(epoch - 1)
        assert not patience.model.stop_training, epoch
    state.update(epoch=5)
    patience.on_epoch_end(4)
    assert patience.model.stop_training and patience.reached
    # 0 never stops; nor does a run without a validation score yet.
    assert not patience_spent({"epoch": 500, "best_epoch": 1}, 0)
    assert not patience_spent({"epoch": 5, "best_epoch": None}, 3)
