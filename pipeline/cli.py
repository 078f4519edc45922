"""Command line: parse arguments, call the runtime; no logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
import tomllib
from pathlib import Path

import orjson

from pipeline import __version__, generator
from pipeline.config import DEFAULT_CONFIG, Settings, load_settings, settings_from_dict
from pipeline.dev_config import DEV_CONFIG
from pipeline.errors import LogferryError


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``logferry`` command."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LogferryError as exc:
        # The daemon's stderr is the journal: one line per event there; people at a terminal get lines.
        print(f"logferry: {one_line(str(exc)) if args.func is _run else exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logferry", description="Ship AI agents' interaction logs, exactly once.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    _config_args(run)
    run.set_defaults(func=_run)
    check = sub.add_parser("check", help="validate the configuration and print it merged")
    _config_args(check)
    check.add_argument("--connect", action="store_true",
                       help="also reach each output's server with its credentials and name what answers")
    check.set_defaults(func=_check)
    gen = sub.add_parser("generate", help="write generated interaction records (tests, benchmarks)")
    gen.add_argument("--records", type=int, default=10_000)
    gen.add_argument("--start", type=int, default=0)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--max-chars", type=int, default=16384)
    gen.add_argument("--bad-every", type=int, default=0)
    gen.add_argument("--out", required=True)
    gen.set_defaults(func=_generate)
    demo = sub.add_parser("demo", help="write sample interactions through the client library, at a rate")
    demo.add_argument("--path", default="./var/log/ai-agent/agent.log")
    demo.add_argument("--rate", type=float, default=2.0, help="records per second")
    demo.add_argument("--count", type=int, default=0, help="stop after this many (0: run until interrupted)")
    demo.set_defaults(func=_demo)
    status = sub.add_parser("status", help="summarise lag, buffers and errors (exit 1: unhealthy, 3: not running)")
    _config_args(status)
    status.set_defaults(func=_status)
    tap = sub.add_parser("tap", help="print enriched records live as they flow (Ctrl-C stops)")
    _config_args(tap)
    tap.add_argument("--tag", action="append", default=[], help="only records whose tag matches (repeatable)")
    tap.add_argument("--output", action="append", default=[], help="only records routed to this output")
    tap.set_defaults(func=_tap)
    replay = sub.add_parser("replay", help="put an output's set-aside chunks back in its queue (daemon stopped)")
    _config_args(replay)
    replay.add_argument("output")
    replay.set_defaults(func=_replay)
    _import_parser(sub)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _: print(f"logferry {__version__}") or 0)
    return parser


def _import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="translate a td-agent/Fluentd config (exit 2: partly), seed positions")
    imp.add_argument("fluentd_config", type=Path, help="e.g. /etc/td-agent/td-agent.conf")
    imp.add_argument("-o", "--output", type=Path, default=None, help="write the TOML here (default: stdout)")
    imp.add_argument("--force", action="store_true", help="replace the output file if it exists")
    imp.add_argument("--state-dir", type=Path, default=None, help="state_dir to write (default /var/lib/logferry)")
    imp.add_argument("--positions", type=Path, nargs="*", default=None, metavar="FILE",
                     help="seed positions from td-agent pos_files / a Fluent Bit tail DB (none given: the config's)")
    imp.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from pipeline.importer.command import ImportRequest, run_import

    return run_import(ImportRequest(args.fluentd_config, args.output, args.positions, args.state_dir, args.force))


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, default=None, help=f"main config file (default {DEFAULT_CONFIG})")
    parser.add_argument("--conf-d", type=Path, default=None, help="drop-in directory (default: conf.d beside it)")
    parser.add_argument("--dev", action="store_true", help="use the embedded development config (./var)")


def _settings(args: argparse.Namespace) -> Settings:
    if args.dev:
        return settings_from_dict(tomllib.loads(DEV_CONFIG), origin="embedded dev config")
    return load_settings(args.config or DEFAULT_CONFIG, args.conf_d)


#: Line breaks with the indentation around them (multi-line config errors, tracebacks).
_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[ \t]*")
#: The ``user:password@`` of a URL (an Elasticsearch host, a client library's message).
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


def one_line(text: str) -> str:
    """A log message as one line, with no credentials written into URLs.

    journald (and grep) see a line as an event: a traceback's second line would be an
    event of its own, without a level or a logger name.

    >>> one_line("invalid configuration:\\n  a.b: unknown key\\n  c: bad")
    'invalid configuration: | a.b: unknown key | c: bad'
    >>> one_line("GET http://elastic:s3cret@es1:9200/_bulk failed")
    'GET http://es1:9200/_bulk failed'
    """
    return _URL_CREDENTIALS.sub("", _LINE_BREAK.sub(" | ", text.strip()))


class OneLineFormatter(logging.Formatter):
    """Formats each record, traceback included, as one line (see :func:`one_line`)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line."""
        return one_line(super().format(record))


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def _run(args: argparse.Namespace) -> int:
    from pipeline.runtime.app import serve
    from pipeline.runtime.memory import tune_malloc

    tune_malloc()  # before any worker thread exists
    settings = _settings(args)
    _setup_logging(settings.log_level)
    try:
        asyncio.run(serve(settings, reload=None if args.dev else lambda: _settings(args)))
    except LogferryError:
        raise
    except Exception:
        # A bug: its traceback goes through the one-line formatter rather than raw to the journal.
        logging.getLogger("logferry").exception("fatal error: the daemon stops")
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from pipeline.runtime.topology import build_transforms

    settings = _settings(args)
    build_transforms(settings)  # what only building finds: an unreadable HMAC key file, a bad anchor
    dumped = settings.model_dump(mode="json")  # SecretStr values come out as "**********"
    # The unit's ExecStartPre runs check: its output is in the journal, so no user:password@ of a host URL either.
    sys.stdout.write(_URL_CREDENTIALS.sub("", orjson.dumps(dumped, option=orjson.OPT_INDENT_2).decode()) + "\n")
    for name, source in settings.sources.items():
        if warning := source.exposure_warning():
            print(f"logferry: warning: sources.{name}: {warning}", file=sys.stderr)
    print("configuration OK", file=sys.stderr)
    if not getattr(args, "connect", False):
        return 0
    from pipeline.runtime.connect import connect_all  # imports the outputs' client libraries

    answers = asyncio.run(connect_all(settings))
    for answer in answers:
        print(one_line(str(answer)), file=sys.stderr)
    return 0 if all(answer.ok for answer in answers) else 1


def _generate(args: argparse.Namespace) -> int:
    written = generator.write(
        args.out, args.records, start=args.start, seed=args.seed, max_chars=args.max_chars, bad_every=args.bad_every
    )
    print(f"records={args.records} bytes={written} out={args.out}", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pipeline.client import InteractionLogger

    print(f"demo: writing {args.rate}/s interactions to {args.path} (Ctrl-C stops)", file=sys.stderr)
    with InteractionLogger(args.path) as logger:
        n = 0
        for record in generator.records(args.count or 10**12, max_chars=2000, t0=time.time(), spacing=0):
            extra = {k: v for k, v in record.items() if k not in ("input", "output", "model", "tokens", "latency_ms",
                                                                   "timestamp", "request_id")}
            logger.log_interaction(record["input"], record["output"], record["model"], tokens=record["tokens"],
                                   latency_ms=record["latency_ms"], **extra)
            n += 1
            if args.count and n >= args.count:
                break
            try:
                time.sleep(1.0 / args.rate)
            except KeyboardInterrupt:
                break
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipeline.runtime import status

    settings = _settings(args)
    address = status.endpoint(settings)
    snapshot = status.fetch(address) if address else None
    if snapshot is None:
        print(status.render_stopped(settings, address))
        return 3
    print(status.render_running(snapshot))
    return 0 if snapshot["healthy"] else 1


def _tap(args: argparse.Namespace) -> int:
    from pipeline.runtime import tap_socket

    settings = _settings(args)
    if unknown := [name for name in args.output if name not in settings.outputs]:
        raise LogferryError(f"no output named {', '.join(map(repr, unknown))}; outputs: {', '.join(settings.outputs)}")
    try:
        tap_socket.view(tap_socket.client_path(settings), args.tag, args.output, sys.stdout.buffer)
    except tap_socket.NoDaemon as exc:
        print(f"logferry: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    return 0


def _replay(args: argparse.Namespace) -> int:
    from pipeline.buffer.replay import replay_dead_chunks

    settings = _settings(args)
    if args.output not in settings.outputs:
        raise LogferryError(f"no output named {args.output!r}; outputs: {', '.join(settings.outputs)}")
    moved = replay_dead_chunks(settings.state_dir / "buffer" / args.output)
    print(f"{moved} chunks queued again for output {args.output}; they are delivered at the next start")
    return 0
