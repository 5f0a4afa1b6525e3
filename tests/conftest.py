"""Shared pytest setup."""

import os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) drowns test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
