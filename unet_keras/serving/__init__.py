"""The serving stage: SavedModel export for TensorFlow Serving, and a local server with
TensorFlow Serving's API."""
