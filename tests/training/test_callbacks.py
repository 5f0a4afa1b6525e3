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


def _dense_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    return model


def test_the_weight_average_warms_up_its_momentum_and_is_what_validation_scores(tmp_path):
    import keras
    import numpy as np

    from unet_keras.training.callbacks import WeightAverage
    from unet_keras.training.run_directory import RunDirectory

    model = _dense_model()
    x = np.random.default_rng(0).random((8, 3), dtype="float32")
    y = x.sum(axis=1, keepdims=True)
    start = [w.numpy().copy() for w in model.trainable_variables]
    after_each_step = []
    seen = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: after_each_step.append(
            [w.numpy().copy() for w in model.trainable_variables]
        )
    )
    average = WeightAverage(0.45, RunDirectory(tmp_path), resumed=False)
    history = model.fit(
        x, y, batch_size=2, epochs=2, validation_data=(x, y), shuffle=False, verbose=0,
        callbacks=[average, seen],
    )  # fmt: skip

    expected = start
    for step, weights in enumerate(after_each_step, 1):
        # (1 + t) / (10 + t) rises past 0.45 at the 7th of the 8 steps.
        momentum = min(0.45, (1 + step) / (10 + step))
        pairs = zip(expected, weights, strict=True)
        expected = [momentum * a + (1 - momentum) * w for a, w in pairs]
    for averaged, wanted in zip(average.average, expected, strict=True):
        np.testing.assert_allclose(averaged.numpy(), wanted, rtol=1e-5)
    # Training goes on with its own weights; validation scored the average.
    for weight, last in zip(model.trainable_variables, after_each_step[-1], strict=True):
        np.testing.assert_array_equal(weight.numpy(), last)
    raw_loss = model.evaluate(x, y, verbose=0)
    with average.swapped_in():
        averaged_loss = model.evaluate(x, y, verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(averaged_loss, rel=1e-5)
    assert averaged_loss != pytest.approx(raw_loss, rel=1e-5)
    assert model.evaluate(x, y, verbose=0) == raw_loss  # swapped back out


def test_a_resumed_run_takes_up_its_saved_average_and_goes_on_from_its_own_weights(tmp_path):
    import numpy as np

    from unet_keras.training.callbacks import WeightAverage
    from unet_keras.training.run_directory import RunDirectory

    model = _dense_model()
    kernel = model.trainable_variables[0]
    kernel.assign(np.full((3, 1), 2.0, "float32"))
    model.save(tmp_path / WeightAverage.FILE)
    kernel.assign(np.full((3, 1), -1.0, "float32"))
    average = WeightAverage(0.9, RunDirectory(tmp_path), resumed=True)
    average.set_model(model)
    average.on_train_begin()
    np.testing.assert_array_equal(kernel.numpy(), -1.0)
    np.testing.assert_array_equal(average.average[0].numpy(), 2.0)
