"""The package's public surface: cheap to import, every advertised name resolves."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import unet_keras

# Modules that must stay free of TensorFlow: the package and its command, the data stage,
# the foundations the client shares, scoring and figures, and the client.
TENSORFLOW_FREE = (
    "unet_keras",
    "unet_keras.cli",
    "unet_keras.workflows",
    "unet_keras.config",
    "unet_keras.geometry",
    "unet_keras.contract",
    "unet_keras.io.atomic",
    "unet_keras.io.masks",
    "unet_keras.io.normalization",
    "unet_keras.io.readers",
    "unet_keras.io.synthetic",
    "unet_keras.io.writers",
    "unet_keras.io.volumes",
    "unet_keras.training.prepare",
    "unet_keras.training.weights",
    "unet_keras.inference.overlays",
    "unet_keras.inference.instances",
    "unet_keras.evaluation.scores",
    "unet_keras.evaluation.figures",
    "unet_keras.client",
    "unet_keras.client.cli",
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


# Stages in the order data flows; a module may import its own stage and earlier ones.
STAGES = {
    "unet_keras.config": 0,
    "unet_keras.geometry": 0,
    "unet_keras.contract": 0,
    "unet_keras.io": 1,
    "unet_keras.model": 2,
    "unet_keras.saving": 2,
    "unet_keras.training": 3,
    "unet_keras.inference": 4,
    "unet_keras.evaluation": 5,
    "unet_keras.serving": 6,
    "unet_keras.client": 7,
    "unet_keras.workflows": 8,
    "unet_keras.cli": 9,
}


def _stage(module: str) -> int | None:
    """The stage of a unet_keras module (None for the package itself)."""
    parts = module.split(".")
    for length in (2, 3):
        name = ".".join(parts[:length])
        if name in STAGES:
            return STAGES[name]
    return None


def _imports(path: Path) -> set[str]:
    """Every unet_keras module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name if _stage(name) is not None else node.module for name in names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("unet_keras.")}


def test_no_module_imports_a_later_stage():
    package = Path(unet_keras.__file__).parent
    later = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        stage = _stage(module)
        if stage is None:
            continue
        later += [
            f"{module} imports {name}"
            for name in sorted(_imports(path))
            if (_stage(name) or 0) > stage
        ]
    assert not later, later
