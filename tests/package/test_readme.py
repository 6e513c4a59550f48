"""README's Python examples run as written (readme_blocks.py, beside this file, says how), so they
stay true."""
import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

README_BLOCKS = Path(__file__).with_name("readme_blocks.py")


def test_readme_python_blocks_run():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, str(README_BLOCKS), "README.md"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"a README block failed:\n{done.stdout}\n{done.stderr}"


def test_a_failing_block_fails_and_a_marked_block_is_not_run(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\n```\n\n```bash\nexit 1\n```\n\n"
                    "```python\n# not run: needs a GPU\nraise SystemExit(3)\n```\n\n"
                    "```python\nassert x == 1\nraise ValueError('boom')\n```\n")
    done = subprocess.run([sys.executable, str(README_BLOCKS), str(page)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "not run (needs a GPU)" in done.stdout
    assert f'File "{page}", line 18' in done.stderr and "ValueError: boom" in done.stderr
