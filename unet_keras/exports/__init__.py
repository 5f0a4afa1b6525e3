"""The export stage: what is written at export time. The SavedModel version TensorFlow
Serving runs (its graph, signatures and warmup requests) and the BioImage.IO package.

Imports nothing itself: each module loads TensorFlow only when imported.
"""
