"""The local server: what runs in `unet-keras serve`, which serves exported versions with
TensorFlow Serving's gRPC and REST APIs, flags and behaviour (versions loaded on TF
Serving's own session path, request checks, codec, health, metrics).

Imports nothing itself: each module loads TensorFlow only when imported.
"""
