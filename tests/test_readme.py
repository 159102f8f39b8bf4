"""The README's commands stay true: the set-up scripts exist, CI calls the test command, and every
`bitfit-deploy` command and option the README shows exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bitfit_deploy.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_invocations() -> list[tuple[str, list[str]]]:
    """(command, options) for each `bitfit-deploy CMD ...` in the README's bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for match in re.finditer(r"bitfit-deploy (\w+)([^#\n]*)", line):
            found.append((match.group(1), re.findall(r"(?<!\w)--[a-z][a-z0-9-]*", match.group(2))))
    return found


def test_setup_commands_exist_and_ci_runs_the_test_command():
    assert "bash scripts/demo.sh" in README and "bash scripts/test.sh" in README
    for script in ("scripts/demo.sh", "scripts/test.sh", ".ci/run"):
        assert (ROOT / script).is_file(), script
    assert "scripts/test.sh" in (ROOT / ".ci/run").read_text()


def test_readme_shows_every_command():
    shown = {cmd for cmd, _ in _readme_invocations()}
    assert set(cli.commands) <= shown, f"README lacks {set(cli.commands) - shown}"


@pytest.mark.parametrize("command,options", _readme_invocations())
def test_readme_options_exist(command: str, options: list[str]):
    assert command in cli.commands, f"README uses unknown command {command!r}"
    known = {opt for p in cli.commands[command].params for opt in p.opts}
    unknown = [o for o in options if o not in known]
    assert not unknown, f"`bitfit-deploy {command}` has no option {unknown}"
