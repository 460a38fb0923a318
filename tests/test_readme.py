"""The README's measured tables are rendered from the committed results and say the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_committed_results():
    proc = subprocess.run([sys.executable, "scripts/render_readme.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_readme_quick_start_commands_exist():
    text = (ROOT / "README.md").read_text()
    for command in ("bash scripts/main_job.sh", "bash scripts/test.sh"):
        assert command in text and (ROOT / command.split()[1]).is_file()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
