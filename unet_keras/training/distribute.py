"""Distribution strategies for training: the devices of one machine, or a cluster (TF_CONFIG).

Keras 3's `model.fit` does not run under TensorFlow's `MultiWorkerMirroredStrategy` as
released (keras-team/keras#20585): before the first step it reduces a nested data batch,
which the collective strategy cannot do (tensorflow/tensorflow#72388), and each step it
reduces scalar metric results along an axis they do not have. `MultiWorkerStrategy` accepts
both; everything else is TensorFlow's. The two-worker test in
tests/training/test_distribute.py holds it to identical weights on every worker and metrics
equal to a single process's.

Workers must also agree on every decision that changes how many steps they run (the epoch
a run resumes from, how far the time budget is spent), or one waits forever for the
others' collectives: `all_workers` gathers a value from each so that all decide alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import keras
import tensorflow as tf


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3's `fit` gives it."""

    def reduce(self, reduce_op: Any, value: Any, axis: int | None) -> Any:
        """`tf.distribute.Strategy.reduce`, for each tensor of a nested `value`."""

        def reduce_one(one: Any) -> tf.Tensor:
            rank = self.experimental_local_results(one)[0].shape.rank
            # Keras asks for axis 0 of scalar metric results: reduce over replicas only.
            return super(MultiWorkerStrategy, self).reduce(reduce_op, one, axis if rank else None)

        return tf.nest.map_structure(reduce_one, value)

    @tf.function
    def gather_values(self, values: tf.Tensor) -> tf.Tensor:
        """Each replica's `values`, stacked in replica order (a collective: all must call)."""
        local = self.run(lambda: values[None])
        return self.gather(local, axis=0)


def worker_task() -> tuple[str, int]:
    """This process's (task type, index) in TF_CONFIG; ("chief", 0) without a cluster."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return "chief", 0
    try:
        task = json.loads(raw)["task"]
        return str(task["type"]), int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"TF_CONFIG must be JSON like {{'cluster': {{'worker': ['host:port', ...]}}, "
            f"'task': {{'type': 'worker', 'index': 0}}}}; could not read it "
            f"({type(error).__name__}: {error})"
        ) from None


def is_chief() -> bool:
    """Whether this process writes the run's files: the chief, or worker 0 when none."""
    kind, index = worker_task()
    if kind == "chief":
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return kind == "worker" and index == 0 and "chief" not in cluster


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy for `--strategy NAME`; multiworker needs TF_CONFIG, and says so."""
    if name == "mirrored":
        # All GPUs, or else every logical CPU device (one unless configured otherwise).
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multiworker needs the TF_CONFIG environment variable (cluster "
                "and task of this worker); use --strategy mirrored for the GPUs of one machine"
            )
        kind, index = worker_task()  # a malformed TF_CONFIG fails here, before connecting
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        if index >= len(cluster.get(kind, [])):
            raise ValueError(
                f"TF_CONFIG names task {kind} {index}, but its cluster has "
                f"{len(cluster.get(kind, []))} {kind} address(es): {cluster}"
            )
        return MultiWorkerStrategy()
    return tf.distribute.get_strategy()


def sum_gradients_in(optimizer: keras.optimizers.Optimizer, dtype: str) -> None:
    """Makes `optimizer` sum its gradients over the replicas in `dtype`, then update as before.

    In bfloat16 each step sends half the bytes (the default network's all-reduce between
    two single-core workers: 31 ms in float32, 18 ms; docs/benchmarks.md). Keras's
    TensorFlow optimizer has no public hook for it, so this wraps the one method that sums.
    """
    if dtype == "float32":
        return
    sum_over_replicas = getattr(optimizer, "_all_reduce_sum_gradients", None)
    if sum_over_replicas is None:
        raise RuntimeError(
            f"cannot exchange gradients in {dtype}: this Keras's {type(optimizer).__name__} "
            "has no _all_reduce_sum_gradients; use --gradient-exchange float32"
        )

    def sum_in_dtype(grads_and_vars: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
        dtypes = [None if grad is None else grad.dtype for grad, _ in grads_and_vars]
        narrowed = [(None if g is None else tf.cast(g, dtype), v) for g, v in grads_and_vars]
        summed = sum_over_replicas(narrowed)
        return [
            (None if grad is None else tf.cast(grad, original), variable)
            for (grad, variable), original in zip(summed, dtypes, strict=True)
        ]

    optimizer._all_reduce_sum_gradients = sum_in_dtype


def all_workers(strategy: tf.distribute.Strategy, values: list[float]) -> list[list[float]]:
    """`values` from every replica of the cluster, in order; `[values]` on one machine."""
    if not isinstance(strategy, MultiWorkerStrategy):
        return [values]
    return strategy.gather_values(tf.constant(values, tf.float64)).numpy().tolist()


def latest(strategy: tf.distribute.Strategy, value: float) -> float:
    """The largest `value` over the workers (every worker's clock agrees on the latest)."""
    return max(row[0] for row in all_workers(strategy, [value]))


def check_workers_agree(strategy: tf.distribute.Strategy, settings: dict, epoch: int) -> None:
    """Refuses a cluster whose workers would run different steps (and wait forever)."""
    text = json.dumps(settings, sort_keys=True).encode()
    digest = float(int.from_bytes(hashlib.sha256(text).digest()[:6], "big"))  # exact in f64
    digests, epochs = zip(*all_workers(strategy, [digest, float(epoch)]), strict=True)
    if len(set(digests)) > 1:
        raise ValueError(
            "the workers were started with different settings: start every worker with the "
            "same command, TF_CONFIG's task being the only difference"
        )
    if len(set(epochs)) > 1:
        raise ValueError(
            f"the workers would resume after different epochs {[int(e) for e in epochs]}: "
            f"--run-dir must be on storage every worker reads (the chief's state.json and "
            f"last.keras are where all workers resume from)"
        )
