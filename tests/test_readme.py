"""README.md stays true: its commands are CI's, its layout is the tree, its settings table
is the settings', and the names its examples use exist."""

import re
from pathlib import Path

import unet_keras
from unet_keras.cli import settings_table
from unet_keras.training.training_settings import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks(text):
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    main_job, tests = _bash_blocks(README)[:2]
    # CI creates the venv in its own step; the install step must match README's.
    install = main_job.split(" && ")[1]
    assert install in ci.splitlines()
    assert tests in ci.splitlines()


def _layout_paths() -> list[str]:
    """The paths README's Layout section lists, one per line of its block."""
    section = README[README.index("## Layout") :]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]


def test_layout_lists_every_module_and_only_what_exists():
    listed = _layout_paths()
    missing = [path for path in listed if not (ROOT / path).exists()]
    assert not missing, f"README's Layout names paths that do not exist: {missing}"
    modules = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "unet_keras").rglob("*.py")
        if path.name != "__init__.py" or path.parent.name in ("unet_keras", "client")
    }
    unlisted = sorted(modules - set(listed))
    assert not unlisted, f"README's Layout leaves out {unlisted}"
    packages = {
        f"{path.relative_to(ROOT)}/"
        for path in ROOT.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.name != "unet_keras"
    }
    ignored = {"runs/", "build/", "dist/", "unet_keras.egg-info/", "__pycache__/"}
    top = {str(p.relative_to(ROOT)) for p in ROOT.glob("*.py")} | {"quickstart.sh"}
    assert sorted((packages - ignored) - {p.split("/")[0] + "/" for p in listed}) == []
    assert top <= set(listed) | {"setup.py"}


def test_settings_table_is_made_from_the_settings():
    start = README.index("<!-- settings table")
    block = README[README.index("\n", start) : README.index("<!-- end of settings table")]
    expected = settings_table(TrainConfig)
    assert block.strip() == expected, f"regenerate README's table:\n{expected}"


def test_the_examples_use_public_names():
    used = set(re.findall(r"\buk\.(\w+)", README))
    assert used and not used - set(unet_keras.__all__), used - set(unet_keras.__all__)
