"""Every command line the product shows a user parses, as written.

The command lines are read out of the files that ship them — the READMEs' code,
the unit's ExecStart, the installer's messages — never copied into this test,
and run with the installed console script. A line that argparse refuses (exit 2,
a usage message; bench-ops exits 64 with its usage line) fails here; any other
outcome (the daemon is not running, the config file is missing, the agent starts)
means it parsed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_agent.cli import _parser
from tests.support import REPO

PROGRAMS = ("bench-agent", "bench-ops")
CONSOLE_SCRIPTS = Path(sys.executable).parent  # the venv the package is installed in
UNIT = REPO / "deploy" / "bench-agent.service"
DOCS = (REPO / "README.md", REPO / "deploy" / "README.md")
INSTALLER_SCRIPTS = (REPO / "deploy" / "install.sh", REPO / "deploy" / "uninstall.sh")
EXIT_USAGE = 2  # argparse's exit status for a command line it refuses


def _program_commands(shell_line: str) -> Iterator[str]:
    """The bench-agent / bench-ops commands in one shell line (after `sudo`, in `&&` lists)."""
    for command in re.split(r"\s*(?:&&|\|\||;|\|)\s*", shell_line):
        words = command.split()
        if words and words[0] == "sudo":
            words = words[1:]
        # The program by name, or by the path of a venv's bin/; with arguments
        # (a bare `bench-agent` in prose names the program).
        program = words[0] if words else ""
        is_program = program in PROGRAMS or (
            program.startswith("/")
            and Path(program).parent.name == "bin"
            and Path(program).name in PROGRAMS
        )
        if is_program and len(words) > 1:
            yield " ".join(words)


def _strip_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line)


def from_markdown(text: str) -> Iterator[str]:
    """Command lines in fenced code blocks and in inline code spans."""
    in_block = False
    pending = ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            line = _strip_comment(raw).strip()
            line = line.removeprefix("$ ")
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield from _program_commands(pending + line)
            pending = ""
        else:
            for span in re.findall(r"`([^`\n]+)`", raw):
                # "`sudo bench-agent …`" names the program, it is not a command line;
                # nor does prose's "`bench-ops fleet --once`" (every bench-ops command
                # needs its broker or its input: the whole lines are in code blocks).
                if "…" not in span and "<" not in span and not span.startswith("bench-ops"):
                    yield from _program_commands(span)


def from_unit(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            # ExecStart= may start with the prefixes -@:+! (none is used today).
            yield from _program_commands(line.removeprefix("ExecStart=").lstrip("-@:+!"))


def from_shell_messages(text: str) -> Iterator[str]:
    """Commands the scripts tell the user to type (`sudo bench-agent …` in what they echo)."""
    pattern = re.compile(r"sudo (?:{}) [^,;()]*".format("|".join(PROGRAMS)))
    # The script's plain top-level assignments (etc=/etc/bench-agent), so a
    # message reads as the user sees it.
    variables = dict(re.findall(r"^([a-z_]+)=([^\s$\"'`(]+)$", text, re.MULTILINE))
    for line in text.splitlines():
        if line.lstrip().startswith("echo"):
            message = line.replace('"', " ")
            for name, value in variables.items():
                message = message.replace(f"${name}", value).replace(f"${{{name}}}", value)
            for match in pattern.finditer(message):
                yield from _program_commands(match.group(0).strip())


def shipped_command_lines() -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for doc in DOCS:
        for command in from_markdown(doc.read_text()):
            found.setdefault(command, doc.relative_to(REPO).as_posix())
    for command in from_unit(UNIT.read_text()):
        found.setdefault(command, UNIT.relative_to(REPO).as_posix())
    for script in INSTALLER_SCRIPTS:
        for command in from_shell_messages(script.read_text()):
            found.setdefault(command, script.relative_to(REPO).as_posix())
    return sorted((source, command) for command, source in found.items())


SHIPPED = shipped_command_lines()


def test_the_command_lines_are_found_where_the_user_reads_them() -> None:
    sources = {source for source, _ in SHIPPED}
    # The extraction itself must not rot into finding nothing.
    assert {"README.md", "deploy/bench-agent.service", "deploy/install.sh"} <= sources, SHIPPED
    commands = {command for _, command in SHIPPED}
    assert "/opt/bench-agent/venv/bin/bench-agent run -c /etc/bench-agent/bench-agent.toml" in (
        commands
    )
    assert len(commands) >= 15, commands


@pytest.mark.parametrize(("source", "command"), SHIPPED, ids=[c for _, c in SHIPPED])
def test_a_shipped_command_line_parses(source: str, command: str, tmp_path: Path) -> None:
    argv = shlex.split(command)
    program = CONSOLE_SCRIPTS / Path(argv[0]).name
    assert program.is_file(), f"console script {program} is not installed"
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # The daemon is not running here: its socket is a path nothing listens on.
        "BENCH_AGENT_SOCKET": str(tmp_path / "no-daemon.sock"),
    }
    proc = subprocess.Popen(
        [str(program), *argv[1:]],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        # Still running (`run` found a config and started): it parsed.
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode != EXIT_USAGE and "usage:" not in err, (
        f"{source}: `{command}` does not parse:\n{err}"
    )
    assert "Traceback" not in err, f"{source}: `{command}`:\n{err}"
    shutil.rmtree(tmp_path, ignore_errors=True)


# -- the options before and after the command ------------------------------------


def _leaf_commands() -> list[list[str]]:
    """Every command path of the real parser (`run`, `config check`, `fault reset`, …)."""
    import argparse

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> Iterator[list[str]]:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            yield path
            return
        for name, child in subparsers[0].choices.items():
            yield from walk(child, [*path, name])

    return list(walk(_parser(), []))


REQUIRED_ARGS = {"usb": ["2", "off"], "wifi": ["auto"]}


@pytest.mark.parametrize("command", _leaf_commands(), ids=" ".join)
def test_config_socket_and_debug_work_before_and_after_every_command(command: list[str]) -> None:
    args = [*command, *REQUIRED_ARGS.get(command[0], [])]
    options = ["-c", "/etc/x.toml", "--socket", "/run/x.sock", "--debug"]
    before = vars(_parser().parse_args([*options, *args]))
    after = vars(_parser().parse_args([*args, *options]))
    inside = vars(_parser().parse_args([command[0], *options, *args[1:]]))
    assert before == after == inside
    assert before["config"] == "/etc/x.toml"
    assert before["socket"] == "/run/x.sock"
    assert before["debug"] is True


def test_an_option_given_before_the_command_is_not_reset_by_the_command() -> None:
    args = vars(_parser().parse_args(["-c", "/etc/x.toml", "--debug", "status"]))
    assert args["config"] == "/etc/x.toml"
    assert args["debug"] is True
    defaults = vars(_parser().parse_args(["status"]))
    assert defaults["config"].endswith("bench-agent.toml")
    assert defaults["debug"] is False


def test_the_later_of_two_config_options_wins() -> None:
    args = vars(_parser().parse_args(["-c", "/a.toml", "run", "-c", "/b.toml"]))
    assert args["config"] == "/b.toml"
