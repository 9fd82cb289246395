"""`bench-agent`: the daemon and the technician's commands. `main(argv)` returns the exit code.

Errors are one line on stderr (no traceback unless `--debug`); a configuration
error exits 78 (EX_CONFIG), which systemd's RestartPreventExitStatus honours.

The technician's commands (status, usb, wifi, fault reset, selftest, events;
techcli.py) talk to the running daemon over its control socket. Its path is
`--socket`, else `$BENCH_AGENT_SOCKET`, else `[control] socket` of the config
file when this user can read it, else the installed default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bench_agent import __version__
from bench_agent.config_loader import load_config
from bench_agent.errors import EXIT_CONFIG, ConfigError
from bench_agent.local import techcli
from bench_agent.logsetup import register_secret, setup_logging

DEFAULT_CONFIG = os.environ.get("BENCH_AGENT_CONFIG", "/etc/bench-agent/bench-agent.toml")
EXIT_FAILURE = 1


def _add_common_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """-c/--config, --socket and --debug, on the top-level parser and on every subcommand.

    A technician (and the unit's ExecStart) writes `bench-agent run -c FILE` as
    often as `bench-agent -c FILE run`, as with git or systemctl. The top level
    holds the defaults and the help; a subcommand's copy leaves the attribute
    unset (SUPPRESS) unless given, so it never overwrites a value given before
    the subcommand, and stays out of the subcommand's usage line so an error
    there is still three lines.
    """

    def default(value: object) -> object:
        return value if top_level else argparse.SUPPRESS

    def help_text(text: str) -> str:
        return text if top_level else argparse.SUPPRESS

    parser.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help=help_text("verbose logs and full tracebacks"),
    )
    parser.add_argument(
        "-c",
        "--config",
        default=default(DEFAULT_CONFIG),
        help=help_text(f"configuration file ({DEFAULT_CONFIG})"),
    )
    parser.add_argument(
        "--socket",
        default=default(os.environ.get("BENCH_AGENT_SOCKET")),
        help=help_text("the daemon's control socket (default: [control] socket of the config)"),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench-agent",
        description=__doc__.splitlines()[0],
        epilog="-c, --socket and --debug may also follow the command (bench-agent run -c FILE).",
    )
    parser.add_argument("--version", action="version", version=f"bench-agent {__version__}")
    _add_common_options(parser, top_level=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, top_level=False)

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help="run the agent in the foreground (what systemd starts)"
    )
    config = commands.add_parser("config", parents=[common], help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser(
        "check", parents=[common], help="validate the configuration file and exit"
    )
    techcli.add_subcommands(commands, parents=[common])
    return parser


def _socket_path(args: argparse.Namespace) -> str:
    if args.socket:
        return str(args.socket)
    try:
        return str(load_config(args.config).control.socket)
    except ConfigError:
        # The config may be unreadable to this user (0640): the socket is still
        # where the installer puts it.
        return techcli.DEFAULT_SOCKET


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # argparse's own errors exit 2 with a usage line: the CLI convention.
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"bench-agent: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"bench-agent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    if getattr(args, "techcli_command", None) is not None:
        code = techcli.dispatch(args, _socket_path(args))
        assert code is not None
        return code
    if args.command == "config":
        # Here, not at the top: the technician's commands need neither (nor PyNaCl).
        from bench_agent.preflight import deployment_problems  # noqa: PLC0415
        from bench_agent.remote.signing import load_trusted_keys  # noqa: PLC0415

        cfg = load_config(args.config)
        problems = deployment_problems(cfg)
        for problem in problems:
            if problem.error:
                print(f"bench-agent: config error: {cfg.source}: {problem}", file=sys.stderr)
            else:
                print(f"bench-agent: warning: {cfg.source}: {problem}", file=sys.stderr)
        if any(problem.error for problem in problems):
            return EXIT_CONFIG
        print(f"{cfg.source}: ok (bench {cfg.bench.id}, {cfg.hardware.backend} backend)")
        keys = cfg.commands.trusted_keys
        if keys.is_dir():
            ids = sorted(load_trusted_keys(keys, on_bad_key=lambda _exc: None))
            print(f"trusted ops keys in {keys}: {', '.join(ids) if ids else 'none'}")
        return 0
    if args.command == "run":
        cfg = load_config(args.config)  # before touching any hardware
        setup_logging(args.debug)
        if cfg.mqtt.password is not None:
            register_secret(cfg.mqtt.password)
        from bench_agent.service import Agent  # noqa: PLC0415 - keeps `config check` light

        return Agent(cfg).run()
    raise AssertionError(args.command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
