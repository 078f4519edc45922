"""An imported Fluentd aggregator (in_forward) routes each client's tag as its report says.

Fluentd stops at the first ``<match>`` a tag matches; logferry's outputs take every tag their
``match`` patterns match, so the import reports the tags an earlier match took. Records
sent with Python's fluent-logger under four tags land exactly in the outputs the imported
TOML and the report name, once each.
"""

from __future__ import annotations

import orjson
import pytest

from pipeline.cli import main
from tests.conftest import new_daemon
from tests.support.daemon import Daemon, Layout, wait_for
from tests.support.elasticsearch import free_port
from tests.support.forward import wait_listening

pytestmark = pytest.mark.integration


def aggregator_conf(layout: Layout, port: int) -> str:
    """Health checks dropped, debug records to one file, other ai.* to another, the rest to a third."""
    outputs = "\n".join(f"""<match {pattern}>
  @type file
  path {layout.out}/{name}
  append true
  <format>
    @type json
  </format>
  <buffer time>
    timekey 1d
    timekey_use_utc true
    flush_mode interval
    flush_interval 0.2s
  </buffer>
</match>""" for pattern, name in (("ai.debug.**", "debug"), ("ai.**", "ai"), ("**", "rest")))
    return f"""<source>
  @type forward
  bind 127.0.0.1
  port {port}
</source>
<match health.**>
  @type null
</match>
{outputs}
"""


def ids_by_output(layout: Layout) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(layout.out.iterdir()):
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        found[path.name.split(".")[0]] = sorted(orjson.loads(line)["request_id"] for line in lines)
    return found


def test_forwarded_tags_reach_the_outputs_the_import_names(layout: Layout, daemon_factory: list[Daemon],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from fluent import sender

    port = free_port()
    conf = layout.root / "td-agent.conf"
    conf.write_text(aggregator_conf(layout, port))
    assert main(["import", str(conf), "-o", str(layout.config), "--state-dir", str(layout.state)]) == 0
    report = capsys.readouterr().err
    assert "<match **>: records of source forward (tags chosen by its clients) whose tag an earlier match took" \
        in report and "<match health.**> (" in report

    with new_daemon(layout, daemon_factory, env={"LOGFERRY_HEALTH__LISTEN": "127.0.0.1:0"}) as daemon:
        wait_listening(daemon)
        logger = sender.FluentSender("", host="127.0.0.1", port=port, nanosecond_precision=True)
        for tag in ("ai.chat", "ai.debug.trace", "health.ping", "other.job"):
            for n in range(5):
                assert logger.emit_with_time(tag, 1_790_000_000, {"request_id": f"{tag}-{n}"}), logger.last_error
        logger.close()
        wait_for(lambda: sum(map(len, ids_by_output(layout).values())) >= 35, what="35 stored records")
        assert daemon.stop() == 0

    def sent(*tags: str) -> list[str]:
        return sorted(f"{tag}-{n}" for tag in tags for n in range(5))

    # Fluentd: ai.debug.trace → debug only, ai.chat → ai only, other.job → rest, health.ping nowhere.
    # logferry, as reported: every tag an output's pattern matches, so ** takes all of them.
    assert ids_by_output(layout) == {
        "debug": sent("ai.debug.trace"),
        "ai": sent("ai.chat", "ai.debug.trace"),
        "rest": sent("ai.chat", "ai.debug.trace", "health.ping", "other.job"),
    }
