"""The callbacks of a training run."""

import types

from unet_keras.training import distribute
from unet_keras.training.callbacks import TimeBudget


def test_the_time_budget_stops_every_worker_when_one_has_spent_it(monkeypatch):
    budget = TimeBudget(seconds=3600)
    budget.set_model(types.SimpleNamespace(distribute_strategy=None, stop_training=False))
    budget.on_train_begin()
    monkeypatch.setattr(distribute, "any_worker", lambda strategy, flag: flag)
    budget.on_train_batch_end(0)
    assert not budget.model.stop_training  # nobody is past the deadline
    monkeypatch.setattr(distribute, "any_worker", lambda strategy, flag: True)
    budget.on_train_batch_end(1)  # this worker is not past it, another one is
    assert budget.model.stop_training and budget.reached
