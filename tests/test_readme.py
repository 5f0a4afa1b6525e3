"""README's commands are the ones CI runs, so they stay true."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks(text):
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    main_job, tests = _bash_blocks(readme)[:2]
    # CI creates the venv in its own step; the install step must match README's.
    install = main_job.split(" && ")[1]
    assert install in ci.splitlines()
    assert tests in ci.splitlines()
