"""The package's public surface: cheap to import, every advertised name resolves."""

import subprocess
import sys

import unet_keras


def test_import_does_not_load_tensorflow():
    code = "import sys, unet_keras; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_every_public_name_resolves():
    for name in unet_keras.__all__:
        assert getattr(unet_keras, name).__name__ == name
