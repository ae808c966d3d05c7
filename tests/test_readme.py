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


# README.fr.md is the French translation of README.md. Its prose is translated; everything a
# reader copies or looks up (code blocks, `inline code`, section structure) must stay identical.
# When you change README.md, change README.fr.md in the same commit.

LINKS = {"README.md": "[Français](README.fr.md)", "README.fr.md": "[English](README.md)"}


def readme_structure(name):
    """(fenced code blocks in order, inline code spans, `##` headings, table rows) of a README."""
    blocks, prose, fence = [], [], None
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        if fence is None:
            m = re.match(r" {0,3}(`{3,}|~{3,})", line)
            if m:
                fence = m.group(1)
                blocks.append([line])
            else:
                prose.append(line)
        else:
            blocks[-1].append(line)
            if line.strip() == fence[0] * len(line.strip()) and len(line.strip()) >= len(fence):
                fence = None
    assert fence is None, f"{name}: unclosed code fence"
    spans = set(re.findall(r"(`+)(.+?)\1", "\n".join(prose)))
    headings = [line for line in prose if line.startswith("## ")]
    table_rows = [line for line in prose if line.lstrip().startswith("|")]
    return ["\n".join(b) for b in blocks], {s for _, s in spans}, headings, table_rows


def test_readmes_link_to_each_other():
    for name, link in LINKS.items():
        assert (ROOT / name).read_text(encoding="utf-8").splitlines()[0] == link


def test_french_readme_is_in_step_with_english():
    en_blocks, en_spans, en_headings, en_rows = readme_structure("README.md")
    fr_blocks, fr_spans, fr_headings, fr_rows = readme_structure("README.fr.md")
    assert len(fr_blocks) == len(en_blocks), "README.fr.md has a different number of code blocks"
    for i, (en, fr) in enumerate(zip(en_blocks, fr_blocks), 1):
        assert fr == en, f"code block {i} differs between README.md and README.fr.md:\n{en}"
    assert len(fr_headings) == len(en_headings), (
        f"## sections: README.md has {en_headings}, README.fr.md has {fr_headings}")
    assert len(fr_rows) == len(en_rows), "tables have a different number of rows"
    assert not en_spans - fr_spans, f"`code` in README.md missing from README.fr.md: {en_spans - fr_spans}"
    assert not fr_spans - en_spans, f"`code` in README.fr.md not in README.md: {fr_spans - en_spans}"


def test_default_recipe_figures_name_the_command_that_reproduces_them():
    """The README's measured figures (time, tokens/s, bits per byte for each tokenizer) sit beside
    the command that produced them, and that command is one gpt2lab accepts."""
    import subprocess
    import sys

    for name in LINKS:
        text = (ROOT / name).read_text(encoding="utf-8")
        paragraph = next(p for p in text.split("\n\n") if "(`gpt2lab train`)" in p)  # the recipe's figures
        commands = re.findall(r"`(gpt2lab train[^`]*)`", paragraph)
        assert "gpt2lab train" in commands and any("--tokenizer gpt2" in c for c in commands), (name, commands)
        assert "--tokenizer char" in paragraph
        help_text = subprocess.run([sys.executable, "-m", "gpt2lab", "train", "--help"], capture_output=True,
                                   text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}).stdout
        for flag in re.findall(r"--[a-z-]+", " ".join(commands)):
            assert flag in help_text, f"{name}: {flag} is not a gpt2lab train flag"
