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
    "unet_keras.lazy",
    "unet_keras.settings",
    "unet_keras.record",
    "unet_keras.geometry",
    "unet_keras.windows",
    "unet_keras.contract",
    "unet_keras.rest_format",
    "unet_keras.io.atomic",
    "unet_keras.io.data_settings",
    "unet_keras.io.masks",
    "unet_keras.io.normalization",
    "unet_keras.io.readers",
    "unet_keras.io.synthetic",
    "unet_keras.io.writers",
    "unet_keras.io.ome_zarr",
    "unet_keras.io.pyramid",
    "unet_keras.io.context",
    "unet_keras.io.stacks",
    "unet_keras.training.training_settings",
    "unet_keras.training.prepare",
    "unet_keras.training.weights",
    "unet_keras.inference.inference_settings",
    "unet_keras.inference.overlays",
    "unet_keras.inference.instances",
    # An ONNX model is predicted with neither TensorFlow nor Keras loaded.
    "unet_keras.inference.segmenter",
    "unet_keras.inference.onnx_network",
    "unet_keras.inference.predict",
    "unet_keras.evaluation.evaluation_settings",
    "unet_keras.evaluation.scores",
    "unet_keras.evaluation.figures",
    "unet_keras.exports.export_settings",
    "unet_keras.exports.onnx_export",
    "unet_keras.exports.onnx_tiles",
    "unet_keras.server.server_settings",
    "unet_keras.client",
    "unet_keras.client.command",
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
    "unet_keras.lazy": 0,
    "unet_keras.settings": 0,
    "unet_keras.record": 0,
    "unet_keras.geometry": 0,
    "unet_keras.windows": 0,
    "unet_keras.contract": 0,
    "unet_keras.rest_format": 0,
    "unet_keras.io": 1,
    "unet_keras.pretrained_models": 1,
    "unet_keras.model": 2,
    "unet_keras.saving": 2,
    "unet_keras.ensemble_settings": 2,
    "unet_keras.ensemble": 2,
    "unet_keras.training": 3,
    "unet_keras.inference": 4,
    "unet_keras.evaluation": 5,
    "unet_keras.exports": 6,
    "unet_keras.server": 7,
    "unet_keras.client": 8,
    "unet_keras.workflows": 9,
    "unet_keras.cli": 10,
}
PACKAGE = Path(unet_keras.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _stage(module: str) -> int | None:
    """The stage of a unet_keras module (None for the package itself)."""
    parts = module.split(".")
    for length in (2, 3):
        name = ".".join(parts[:length])
        if name in STAGES:
            return STAGES[name]
    return None


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import nodes under `if TYPE_CHECKING:`, which never run."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped |= {child for statement in node.body for child in ast.walk(statement)}
    return skipped


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The unet_keras modules a file imports when it runs (at the top or in a function),
    each with the packages above it, whose `__init__` runs first."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents |= {".".join(parts[:n]) for n in range(2, len(parts) + 1)}
    return {name for name in with_parents if name in modules}


def test_every_module_has_a_stage():
    unstaged = [name for name in _modules() if name != "unet_keras" and _stage(name) is None]
    assert not unstaged, f"add these to STAGES: {unstaged}"


def test_no_module_imports_a_later_stage():
    modules = _modules()
    later = [
        f"{module} imports {name}"
        for module, path in modules.items()
        for name in sorted(_imports(path, modules))
        if _stage(module) is not None and (_stage(name) or 0) > _stage(module)
    ]
    assert not later, later


def test_no_import_cycles():
    """Tarjan's strongly connected components of the import graph: none holds two modules."""
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, cycles


def test_no_two_modules_share_a_file_name():
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            names.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}


def test_no_module_is_over_450_lines():
    long = {
        str(path.relative_to(PACKAGE)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > 450
    }
    assert not long, long
