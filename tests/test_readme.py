"""The README's two commands are what CI and new users run: keep them in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)[:2]


def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()
    assert "pytest" in tests and tests.strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_installs_the_local_cpu_torch_first():
    for cmd in readme_commands():
        assert cmd.index("pip install torch==2.13.0") < cmd.index("pip install -e")
