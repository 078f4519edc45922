"""Start a real, throw-away Apache Kafka broker (KRaft, one node) for the tests.

The broker is Kafka's own jars from Maven Central (``org.apache.kafka:kafka_2.13`` and
``org.apache.kafka:kafka-tools`` with their runtime dependencies), fetched once with
``mvn dependency:copy-dependencies`` from a small generated pom into a cache directory next to the
Elasticsearch distribution's (``<cache>/kafka/kafka-<version>/lib``, see
:func:`tests.support.elasticsearch.cache_dir`), under the same kind of file lock.

Each :class:`KafkaBroker` gets a fresh directory, a cluster id, a broker port and a controller port
on 127.0.0.1; ``start()`` formats its storage (``kafka.tools.StorageTool format``) and runs
``kafka.Kafka server.properties`` as combined broker + controller, then waits until the broker
answers a metadata request. Topics default to one partition; the internal topics (consumer offsets,
transaction state) have replication factor 1 and few partitions, so transactions work at once.

:class:`KafkaCluster` runs three such nodes (each a broker and one of three controller voters) with
one cluster id: replication factor 3 and ``min.insync.replicas = 2`` for every topic, the internal
ones included, so a node may be killed (``kill()``) and restarted (``restart()``) under load.

Usage::

    with KafkaBroker() as kafka:
        kafka.create_topic("events", partitions=3)
        print(kafka.bootstrap)

    with KafkaCluster() as cluster:
        cluster.create_topic("events", partitions=3)
        cluster.node(cluster.leader("events", 0)).kill()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.support.elasticsearch import _LIVE, _file_lock, _mkdirs_readable, _tail, cache_dir, find_java, free_port

VERSION = os.environ.get("LOGFERRY_TEST_KAFKA_VERSION", "4.4.0")
STARTUP_TIMEOUT = 120.0
_COMPLETE_MARKER = ".logferry-complete"
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>logferry.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{v}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{v}</version></dependency>
  </dependencies>
</project>
"""


class KafkaError(RuntimeError):
    """Preparing or running the test Kafka failed."""


def kafka_cache() -> Path:
    """Where the Kafka jars are kept: beside the Elasticsearch distributions."""
    return cache_dir().parent / "kafka"


def ensure_jars(version: str = VERSION) -> Path:
    """The ``lib`` directory holding Kafka ``version``'s jars, fetched with Maven the first time.

    Safe to call from several processes at once (a file lock guards the download).
    """
    root = kafka_cache()
    home = root / f"kafka-{version}"
    if (home / _COMPLETE_MARKER).is_file():
        return home / "lib"
    _mkdirs_readable(root)
    with _file_lock(root / f".kafka-{version}.lock"):
        if not (home / _COMPLETE_MARKER).is_file():
            _download(version, root, home)
    return home / "lib"


def _download(version: str, root: Path, home: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaError("Maven (mvn) is needed to fetch Kafka: apt-get install maven")
    staging = Path(tempfile.mkdtemp(prefix=f".fetch-{version}-", dir=root))
    try:
        (staging / "pom.xml").write_text(_POM.format(v=version))
        cmd = [mvn, "-q", "-B", "-f", str(staging / "pom.xml"), "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={staging / 'lib'}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0 or not any((staging / "lib").glob("kafka_2.13-*.jar")):
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise KafkaError(f"could not fetch Kafka {version} with mvn (exit {proc.returncode})\n{tail}")
        staging.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        (home / _COMPLETE_MARKER).write_text(f"org.apache.kafka:kafka_2.13:{version}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class KafkaBroker:
    """A single-node KRaft Kafka (broker and controller in one JVM) on 127.0.0.1.

    With ``secure=True`` it also has a SASL_SSL listener (:attr:`secure_bootstrap`): TLS with a
    certificate for 127.0.0.1 signed by :attr:`ca_file`, and two users, :attr:`plain_user` (SASL
    PLAIN) and :attr:`scram_user` (SCRAM-SHA-512, added at format time), both with :attr:`password`.
    """

    plain_user = "ferry-plain"
    scram_user = "ferry-scram"

    def __init__(self, version: str = VERSION, *, heap: str = "384m", settings: dict[str, str] | None = None,
                 secure: bool = False, node_id: int = 1, cluster_id: str | None = None, voters: str | None = None,
                 ports: tuple[int, int] | None = None) -> None:
        self.version = version
        self.heap = heap
        self.extra = dict(settings or {})
        self.secure = secure
        # A node of a KafkaCluster shares the cluster id and the controller voters, with its ports chosen up front.
        self.node_id = node_id
        self.cluster_id = cluster_id or _cluster_id()
        self.voters = voters
        # Random, and recognisable: tests look for it where it must never appear (logs, status).
        self.password = f"pw-{uuid.uuid4().hex}"
        self.port, self.controller_port = ports or (0, 0)
        self.secure_port = 0
        self.workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._lib: Path | None = None

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` for clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        """``bootstrap.servers`` of the SASL_SSL listener."""
        return f"127.0.0.1:{self.secure_port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the secure listener's certificate."""
        assert self.workdir is not None
        return self.workdir / "certs" / "ca.crt"

    @property
    def pid(self) -> int | None:
        """The JVM's process id (it leads its own process group), None when not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        """The JVM's console output."""
        assert self.workdir is not None
        return self.workdir / "console.log"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Format fresh storage, launch the JVM and wait until the broker answers."""
        self.prepare()
        self._launch()
        self._wait_ready()
        return self

    def prepare(self) -> None:
        """Pick the ports, write ``server.properties`` and format the storage (the JVM is not started)."""
        self._lib = ensure_jars(self.version)
        self.workdir = Path(tempfile.mkdtemp(prefix="logferry-kafka-"))
        if not self.port:
            self.port, self.controller_port = free_port(), free_port()
        self.secure_port = free_port()
        properties = self.workdir / "server.properties"
        settings = self._settings()
        if self.secure:
            settings.update(self._secure_settings())
        properties.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        _LIVE.add(self)
        scram = [f"SCRAM-SHA-512=[name={self.scram_user},password={self.password}]"] if self.secure else []
        scram = ["--add-scram", *scram] if scram else []
        self._java("kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}", "-c", str(properties),
                   *scram, wait=True)  # "=": an id may begin with "-"

    def kill(self) -> None:
        """kill -9 the JVM, keeping its ports and data for :meth:`restart`."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._console is not None:
            self._console.close()
            self._console = None

    def restart(self) -> None:
        """Launch the JVM again on its data (after :meth:`kill`) and wait until it answers."""
        assert self._proc is None, "kill() it first"
        self._launch()
        self._wait_ready()

    def stop(self) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after 20 s) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._console is not None:
            self._console.close()
            self._console = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        _LIVE.discard(self)

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
        """Create a topic (replication factor 1) and wait until it is usable."""
        from confluent_kafka.admin import AdminClient  # the venv exists once tests run
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])
        futures[name].result(30)

    def _settings(self) -> dict[str, str]:
        assert self.workdir is not None
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            **self.extra,
        }

    def _secure_settings(self) -> dict[str, str]:
        """The SASL_SSL listener: a PEM keystore (key + certificate), PLAIN and SCRAM-SHA-512."""
        from tests.support.elasticsearch import write_certificates

        assert self.workdir is not None
        certs = self.workdir / "certs"
        write_certificates(certs)
        keystore = certs / "keystore.pem"
        keystore.write_bytes((certs / "node.key").read_bytes() + (certs / "node.crt").read_bytes())
        listener = "listener.name.secure."
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule required"
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},"
                         f"SECURE://127.0.0.1:{self.secure_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},SECURE://127.0.0.1:{self.secure_port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SECURE:SASL_SSL",
            listener + "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            listener + "plain.sasl.jaas.config": f'{plain} user_{self.plain_user}="{self.password}";',
            listener + "scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            listener + "ssl.keystore.type": "PEM",
            listener + "ssl.keystore.location": str(keystore),
        }  # fmt: skip

    def _java(self, main: str, *args: str, wait: bool = False) -> None:
        assert self._lib is not None and self.workdir is not None
        java = find_java(17) / "bin" / "java"
        cmd = [str(java), f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               "-cp", f"{self._lib}/*", main, *args]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.workdir), "LANG": "C.UTF-8"}
        if wait:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
            if proc.returncode != 0:
                raise KafkaError(f"{main} {args[0]} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
            return
        self._console = open(self.log_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=self._console,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def _launch(self) -> None:
        assert self.workdir is not None
        self._java("kafka.Kafka", str(self.workdir / "server.properties"))

    def _wait_ready(self) -> None:
        """Poll the broker with a metadata request until it names itself."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise KafkaError(f"Kafka exited with {self._proc.returncode}:\n{_tail(self.log_path, 40)}")
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except KafkaException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                self.stop()
                raise KafkaError(f"Kafka not ready after {STARTUP_TIMEOUT:.0f}s")
            time.sleep(0.2)


class KafkaCluster:
    """Three KRaft nodes on 127.0.0.1, each a broker and a controller voter, sharing one cluster id.

    Every topic (the consumer offsets and transaction state included) has three replicas and
    ``min.insync.replicas = 2``: with one node down, transactions and ``acks=all`` still commit.
    A killed node is fenced after :data:`SESSION_MS` without heartbeats (Kafka's default is
    9 s), which is when its partitions get new leaders.
    """

    SIZE = 3
    SESSION_MS = 3000

    def __init__(self, version: str = VERSION, *, heap: str = "320m") -> None:
        self.version = version
        self.heap = heap
        self.nodes: list[KafkaBroker] = []

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` naming every node."""
        return ",".join(node.bootstrap for node in self.nodes)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> Self:
        """Format the three nodes' storage and launch them side by side; wait until all three are brokers."""
        ensure_jars(self.version)
        ports = [(free_port(), free_port()) for _ in range(self.SIZE)]
        voters = ",".join(f"{n + 1}@127.0.0.1:{controller}" for n, (_, controller) in enumerate(ports))
        cluster_id = _cluster_id()
        self.nodes = [KafkaBroker(self.version, heap=self.heap, settings=self._settings(), node_id=n + 1,
                                  cluster_id=cluster_id, voters=voters, ports=ports[n]) for n in range(self.SIZE)]
        try:
            with ThreadPoolExecutor(self.SIZE) as pool:  # each format is a JVM of its own: about 2 s
                list(pool.map(KafkaBroker.prepare, self.nodes))
            for node in self.nodes:
                node._launch()
            self.wait_for_brokers(self.SIZE)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """kill -9 every node and remove their directories.

        A graceful stop would wait: the last nodes' controlled shutdown needs a quorum that the
        first ones took away. The data is thrown away anyway.
        """
        for node in self.nodes:
            node.kill()
            node.stop()

    def heal(self) -> None:
        """Restart every killed node and wait until all are brokers again.

        A test that failed with a node down must not leave the next test a two-node cluster,
        where a topic with three replicas cannot be created.
        """
        for node in self.nodes:
            if node.pid is None:
                node.restart()
        self.wait_for_brokers(self.SIZE)

    def node(self, node_id: int) -> KafkaBroker:
        """The node with ``node.id`` ``node_id``."""
        return next(node for node in self.nodes if node.node_id == node_id)

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, str] | None = None) -> None:
        """Create a topic with three replicas (``min.insync.replicas`` 2); wait until every partition has a leader."""
        from confluent_kafka.cimpl import NewTopic

        admin = self._admin()
        admin.create_topics([NewTopic(name, partitions, self.SIZE, config=config or {})])[name].result(30)
        _poll(lambda: all(p >= 0 for p in self.leaders(name).values()), f"leaders of {name}", STARTUP_TIMEOUT)

    def leaders(self, topic: str) -> dict[int, int]:
        """Partition → the ``node.id`` of its leader (-1 while it has none), as the cluster's metadata says."""
        metadata = self._admin().list_topics(topic, timeout=10)
        return {p: info.leader for p, info in metadata.topics[topic].partitions.items()}

    def leader(self, topic: str, partition: int) -> int:
        """The ``node.id`` of the leader of ``topic``'s ``partition``."""
        return self.leaders(topic)[partition]

    def coordinator(self, group: str) -> int:
        """The ``node.id`` of consumer group ``group``'s coordinator (the group must exist)."""
        admin = self._admin()  # held until the answer is in: a client destroyed meanwhile fails its requests
        described = admin.describe_consumer_groups([group])[group].result(30)
        return int(described.coordinator.id)

    def wait_for_brokers(self, count: int) -> None:
        """Poll the metadata until ``count`` brokers are registered (a killed one drops out once fenced)."""
        from confluent_kafka import KafkaException

        def registered() -> bool:
            for node in self.nodes:
                if node._proc is not None and node._proc.poll() is not None:
                    raise KafkaError(f"Kafka node {node.node_id} exited:\n{_tail(node.log_path, 40)}")
            try:
                return len(self._admin().list_topics(timeout=2).brokers) == count
            except KafkaException:
                return False  # no node answering yet
        _poll(registered, f"{count} Kafka brokers", STARTUP_TIMEOUT)

    def _admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def _settings(self) -> dict[str, str]:
        replicated = {f"{topic}.{key}": value for topic in ("offsets.topic", "transaction.state.log")
                      for key, value in (("replication.factor", "3"), ("num.partitions", "3"))}
        return {
            **replicated,
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            # A kill -9 is noticed in seconds, not Kafka's 9 s default: the failover test stays short.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": str(self.SESSION_MS),
            "replica.lag.time.max.ms": "5000",
        }


def _poll(condition: Any, what: str, timeout: float) -> None:
    """Call ``condition`` every 0.2 s until it is true; KafkaError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise KafkaError(f"no {what} after {timeout:.0f}s")
        time.sleep(0.2)


def _cluster_id() -> str:
    """A random cluster id as Kafka writes them (base64url of a UUID, no padding)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class TopicReader:
    """Reads a topic from its beginning as a downstream consumer would: read_committed, all partitions.

    ``poll()`` collects what has arrived since the last call; ``messages`` holds everything so far.
    """

    def __init__(self, bootstrap: str, topic: str, isolation: str = "read_committed") -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                                  "enable.auto.commit": False, "isolation.level": isolation, "log_level": 0})
        partitions = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.messages: list[Any] = []

    def poll(self, timeout: float = 0.5) -> list[Any]:
        """Everything read so far, after taking what arrived within ``timeout``."""
        for message in self.consumer.consume(10_000, timeout=timeout):
            if message.error() is None:
                self.messages.append(message)
        return self.messages

    def records(self) -> list[dict[str, Any]]:
        """The messages' values as records, each with its headers (``_headers``) and key (``_key``)."""
        import json

        found = []
        for message in self.messages:
            record = json.loads(message.value())
            record["_headers"] = {k: v.decode() for k, v in message.headers() or []}
            record["_key"] = message.key().decode() if message.key() is not None else None
            found.append(record)
        return found

    def close(self) -> None:
        """Leave."""
        self.consumer.close()
