"""The package's public surface: cheap to import, every advertised name resolves."""

import subprocess
import sys

import pytest

import unet_keras

# Modules that must stay free of TensorFlow: the package itself, the data stage, the
# foundations the client shares, scoring, and the client.
TENSORFLOW_FREE = (
    "unet_keras",
    "unet_keras.config",
    "unet_keras.io.atomic",
    "unet_keras.io.masks",
    "unet_keras.io.normalization",
    "unet_keras.io.readers",
    "unet_keras.io.synthetic",
    "unet_keras.io.writers",
)


@pytest.mark.parametrize("module", TENSORFLOW_FREE)
def test_module_does_not_load_tensorflow(module):
    code = f"import sys, {module}; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"


def test_every_public_name_resolves():
    for name in unet_keras.__all__:
        assert getattr(unet_keras, name).__name__ == name
