"""The training stage: preparing examples, the paper's weight map and elastic deformation,
the `tf.data` pipeline, losses and metrics, and `model.fit` with its run directory.

Imports nothing itself: each module loads TensorFlow only when imported.
"""
