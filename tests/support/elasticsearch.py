"""Start a real, throw-away Elasticsearch for the tests.

Stdlib only, so it can run before the project's dependencies are installed.

The server is Elastic's *test distribution*
(``org.elasticsearch.distribution.integ-test-zip:elasticsearch:<version>:zip`` on Maven Central),
fetched with ``mvn dependency:copy`` and unzipped once into a cache directory:

* ``$LOGFERRY_CACHE/elasticsearch`` if ``LOGFERRY_CACHE`` is set;
* otherwise ``/var/cache/logferry-test/elasticsearch`` when running as root (``/root`` is 0700, and the
  server runs as an unprivileged user who must be able to read the distribution);
* otherwise ``~/.cache/logferry/elasticsearch`` (``$XDG_CACHE_HOME`` respected).

Elasticsearch refuses to run as root: as root, the server runs as the system user ``logferry-test``
(``LOGFERRY_TEST_ES_USER``), created with ``useradd`` when missing; as any other user, it runs as that user.

The test distribution holds only the modules ``transport-netty4``, ``x-pack-core``, ``x-pack-security`` and
``apm``: core indexing, ``_bulk``, ``_count``, ``_search``, mappings and (legacy and composable) index
templates work; data streams, ILM, ingest pipelines, painless, ``_delete_by_query``/``_reindex``,
``analysis-common`` analyzers and ``mapper-extras`` field types do not, and neither do ``GET /`` and
``HEAD /`` (no ``rest-root`` module: 405), so a client's ``info()``/``ping()`` fail against it.

Set ``LOGFERRY_TEST_ES_URL`` to use an existing cluster instead (see :func:`external_url`); a secured one
takes its credentials from the URL (``https://user:password@host:9200``) or from ``LOGFERRY_TEST_ES_USERNAME``
/ ``LOGFERRY_TEST_ES_PASSWORD`` or ``LOGFERRY_TEST_ES_API_KEY``, and the CA of its certificate from
``LOGFERRY_TEST_ES_CA`` (see :func:`external_access`). (``LOGFERRY_TEST_ES_USER`` is taken: it names the
system user the throw-away server runs as.)

:class:`SecuredElasticsearchServer` starts a node with security on: TLS on HTTP (a CA and a node certificate
made here with ``cryptography``, imported only then), a file-realm superuser and an API key.

:class:`SearchServer` is the one server helper: a :class:`Distribution` says which test distribution it
runs (``ELASTICSEARCH`` here; :mod:`tests.support.opensearch` gives ``OPENSEARCH``), and everything else
(download, cache, user, ports, start, outages, stop) is shared.

:func:`request` and the helpers built on it authenticate by themselves: each URL gets the
:class:`ClusterAccess` of its cluster (:func:`access_for`).

Usage::

    with ElasticsearchServer("8.19.21") as es:
        status, body = request("GET", es.url + "/_cluster/health")
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self
from urllib.parse import unquote, urlsplit, urlunsplit

from tests.support.users import UserError, ensure_system_user

ARTIFACT = "org.elasticsearch.distribution.integ-test-zip:elasticsearch"
ES_USER = os.environ.get("LOGFERRY_TEST_ES_USER", "logferry-test")
#: Versions verified to download and start here (kept in step with scripts/es-versions.txt).
VERIFIED_VERSIONS = ("8.19.21", "9.5.4")
DEFAULT_VERSION = os.environ.get("LOGFERRY_TEST_ES_VERSION", VERIFIED_VERSIONS[0])
DEFAULT_STARTUP_TIMEOUT = 180.0
_COMPLETE_MARKER = ".logferry-complete"
_ERROR_LINE = re.compile(r"\]\[(ERROR|FATAL)\s*\]|^(ERROR|Exception|Caused by|[\w.$]+(Exception|Error)\b)")
_BIND_ERRORS = ("BindException", "Address already in use", "BindTransportException", "BindHttpException")


@dataclass(frozen=True)
class Distribution:
    """A search server's test distribution on Maven Central and how it is launched.

    ``name`` is the zip's, the launcher's (``bin/<name>``), the config file's (``<name>.yml``) and the
    cache folder's name; ``env`` the prefix of its environment variables (``<env>_JAVA_HOME``, …).
    """

    name: str
    title: str
    artifact: str
    env: str
    java: Mapping[int, int]  # the Java release each major version needs at least (others: 21)

    def java_needed(self, version: str) -> int:
        """The oldest Java release that runs ``version``."""
        return self.java.get(_major(version), 21)


ELASTICSEARCH = Distribution("elasticsearch", "Elasticsearch", ARTIFACT, "ES", {7: 11, 8: 17})


class ElasticsearchError(RuntimeError):
    """Preparing or running the test Elasticsearch failed."""


class ElasticsearchStartError(ElasticsearchError):
    """The server did not reach yellow/green health; the message holds the tail of its log."""


@dataclass(frozen=True)
class ClusterAccess:
    """How to get into a cluster: credentials (basic or API key) and which certificates to trust.

    The empty default is an open cluster over HTTP (or HTTPS trusted by the system's CAs).
    """

    username: str | None = None
    password: str | None = None
    api_key: str | None = None  # base64 "id:key", as the "encoded" of POST /_security/api_key
    ca_file: Path | None = None
    verify_certs: bool = True

    def headers(self) -> dict[str, str]:
        """The Authorization header, if any (an API key wins over a user)."""
        if self.api_key:
            return {"Authorization": f"ApiKey {self.api_key}"}
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        return {}

    def output_options(self) -> dict[str, Any]:
        """The same access as options of an ``elasticsearch`` output, for the configs the tests write.

        The secret goes inline: the file is the test's own. Tests of the other ways (``password_file``,
        the environment) build their options themselves.
        """
        options: dict[str, Any] = {}
        if self.api_key:
            options["api_key"] = self.api_key
        elif self.username is not None:
            options.update(username=self.username, password=self.password or "")
        if self.ca_file is not None:
            options["ca_file"] = str(self.ca_file)
        if not self.verify_certs:
            options["verify_certs"] = False
        return options


#: The access of clusters other than the external one, by origin (``scheme://host:port``).
_ACCESS: dict[str, ClusterAccess] = {}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}".lower()


def without_userinfo(url: str) -> str:
    """``url`` without ``user:password@``.

    >>> without_userinfo("https://elastic:s3cret@es:9200/x"), without_userinfo("http://es:9200")
    ('https://es:9200/x', 'http://es:9200')
    """
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def register_access(url: str, access: ClusterAccess | None) -> None:
    """Use ``access`` for every request to the cluster at ``url`` (None forgets it)."""
    if access is None:
        _ACCESS.pop(_origin(url), None)
    else:
        _ACCESS[_origin(url)] = access


def external_url() -> str | None:
    """The user's own cluster (``LOGFERRY_TEST_ES_URL``, without any credentials), or None to start one here."""
    url = os.environ.get("LOGFERRY_TEST_ES_URL", "").strip()
    return without_userinfo(url).rstrip("/") or None


def external_access() -> ClusterAccess:
    """The access of ``LOGFERRY_TEST_ES_URL``: ``user:password@`` in it, else ``LOGFERRY_TEST_ES_USERNAME`` and
    ``LOGFERRY_TEST_ES_PASSWORD``, or ``LOGFERRY_TEST_ES_API_KEY``; ``LOGFERRY_TEST_ES_CA`` (a PEM file) verifies
    its certificate."""
    env = os.environ
    parts = urlsplit(env.get("LOGFERRY_TEST_ES_URL", "").strip())
    username = unquote(parts.username) if parts.username else env.get("LOGFERRY_TEST_ES_USERNAME") or None
    password = unquote(parts.password or "") if parts.username else env.get("LOGFERRY_TEST_ES_PASSWORD")
    ca = env.get("LOGFERRY_TEST_ES_CA")
    return ClusterAccess(username=username, password=password if username else None,
                         api_key=env.get("LOGFERRY_TEST_ES_API_KEY") or None,
                         ca_file=Path(ca).expanduser().resolve() if ca else None)


def access_for(url: str) -> ClusterAccess:
    """The access of the cluster ``url`` points at: credentials in the URL itself win, then those of a
    server started here, then the external cluster's (:func:`external_access`)."""
    origin = _origin(url)
    access = _ACCESS.get(origin)
    if access is None:
        external = external_url()
        access = external_access() if external and _origin(external) == origin else ClusterAccess()
    parts = urlsplit(url)
    if parts.username is not None:
        access = replace(access, username=unquote(parts.username), password=unquote(parts.password or ""), api_key=None)
    return access


@functools.lru_cache(maxsize=32)
def _opener(access: ClusterAccess) -> urllib.request.OpenerDirector:
    """urllib without any proxy from the environment (the servers are on loopback), trusting ``access``'s CA."""
    context = ssl.create_default_context(cafile=str(access.ca_file) if access.ca_file else None)
    if not access.verify_certs:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))


def request(
    method: str,
    url: str,
    body: bytes | str | Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    access: ClusterAccess | None = None,
) -> tuple[int, Any]:
    """One HTTP request, without proxies; returns (status, decoded JSON body or raw text).

    HTTP error statuses are returned, not raised. A Mapping body is sent as JSON; bytes/str as given
    (use ``application/x-ndjson`` in ``headers`` for ``_bulk``). Credentials and TLS trust are
    ``access``, by default those of the cluster (:func:`access_for`).
    """
    access = access_for(url) if access is None else access
    data: bytes | None
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **access.headers()}
    if isinstance(body, Mapping):
        data = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    hdrs.update(headers or {})
    req = urllib.request.Request(without_userinfo(url), data=data, method=method, headers=hdrs)
    try:
        with _opener(access).open(req, timeout=timeout) as resp:
            status, raw = int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# distribution


def cache_dir(name: str = ELASTICSEARCH.name) -> Path:
    """Where distributions named ``name`` are unzipped (see the module docstring)."""
    env = os.environ.get("LOGFERRY_CACHE")
    if env:
        return Path(env).expanduser().resolve() / name
    if os.geteuid() == 0:
        return Path("/var/cache/logferry-test") / name
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "logferry" / name


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _mkdirs_readable(path: Path) -> None:
    """Create path (and parents) as 0755 directories."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        p.chmod(0o755)


def _download(version: str, dest: Path, dist: Distribution = ELASTICSEARCH) -> Path:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ElasticsearchError(f"Maven (mvn) is needed to fetch {dist.title}: apt-get install maven")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-q", "-B", "dependency:copy",
        f"-Dartifact={dist.artifact}:{version}:zip",
        f"-DoutputDirectory={dest}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    zip_path = dest / f"{dist.name}-{version}.zip"
    if proc.returncode != 0 or not zip_path.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise ElasticsearchError(
            f"could not fetch {dist.artifact}:{version}:zip with mvn (exit {proc.returncode}); "
            f"only some versions are published, see scripts/es-versions.txt\n{tail}"
        )
    return zip_path


def _extract(zip_path: Path, into: Path) -> Path:
    """Unzip keeping the executable bits and making everything world-readable; return the top dir."""
    with zipfile.ZipFile(zip_path) as zf:
        tops = {name.split("/", 1)[0] for name in zf.namelist()}
        if len(tops) != 1:
            raise ElasticsearchError(f"unexpected layout in {zip_path}: {sorted(tops)[:5]}")
        for info in zf.infolist():
            target = Path(zf.extract(info, into))
            mode = (info.external_attr >> 16) & 0o777
            if info.is_dir():
                target.chmod(0o755)
            else:
                target.chmod((mode | 0o644) & 0o755 if mode & 0o111 else 0o644)
    return into / tops.pop()


def ensure_distribution(version: str, dist: Distribution = ELASTICSEARCH) -> Path:
    """Return the home of the unzipped test distribution ``version``, fetching it the first time.

    Safe to call from several processes at once (a file lock guards the download).
    """
    root = cache_dir(dist.name)
    home = root / f"{dist.name}-{version}"
    if (home / _COMPLETE_MARKER).is_file():
        return home
    _mkdirs_readable(root)
    with _file_lock(root / f".{dist.name}-{version}.lock"):
        if (home / _COMPLETE_MARKER).is_file():
            return home
        zip_path = _download(version, root / "downloads", dist)
        staging = Path(tempfile.mkdtemp(prefix=f".extract-{version}-", dir=root))
        try:
            top = _extract(zip_path, staging)
            shutil.rmtree(home, ignore_errors=True)
            top.rename(home)
            (home / _COMPLETE_MARKER).write_text(f"{dist.artifact}:{version}:zip\n")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        zip_path.unlink(missing_ok=True)  # Maven keeps its own copy in ~/.m2
    return home


# --------------------------------------------------------------------------------------------
# java and user


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def _java_major(java_home: Path) -> int | None:
    try:
        text = (java_home / "release").read_text()
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if not m:
        return None
    first = int(m.group(1))
    return int(m.group(2) or 0) if first == 1 else first


def find_java_home(es_version: str, dist: Distribution = ELASTICSEARCH) -> Path:
    """A JDK able to run ``es_version``: LOGFERRY_ES_JAVA_HOME if set, else the oldest suitable JDK
    among JAVA_HOME, the default java and /usr/lib/jvm/* (Elasticsearch: Java 17+ for 8.x, 21+ for 9.x;
    OpenSearch: 11+ for 2.x, 21+ for 3.x)."""
    forced = os.environ.get(f"LOGFERRY_{dist.env}_JAVA_HOME")
    if forced:
        return Path(forced)
    need = dist.java_needed(es_version)
    try:
        return find_java(need)
    except ElasticsearchError:
        raise ElasticsearchError(
            f"{dist.title} {es_version} needs Java {need}+; none found (set LOGFERRY_{dist.env}_JAVA_HOME)"
        ) from None


def find_java(need: int) -> Path:
    """The oldest JDK of at least major version ``need`` among JAVA_HOME, the default java and /usr/lib/jvm/*."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    java = shutil.which("java")
    if java:
        candidates.append(Path(java).resolve().parent.parent)
    jvm_dir = Path("/usr/lib/jvm")
    if jvm_dir.is_dir():
        candidates.extend(sorted(jvm_dir.iterdir()))
    found: dict[Path, int] = {}
    for cand in candidates:
        real = cand.resolve()
        major = _java_major(real)
        if major is not None and major >= need and (real / "bin" / "java").is_file():
            found.setdefault(real, major)
    if not found:
        raise ElasticsearchError(f"no Java {need}+ found (JAVA_HOME, java on PATH, /usr/lib/jvm)")
    return min(found, key=lambda p: (found[p], str(p)))


def _ensure_user() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = ensure_system_user(ES_USER)
    except UserError as exc:
        raise ElasticsearchError(str(exc)) from None
    return pw.pw_uid, pw.pw_gid


def _check_readable_by(path: Path, uid: int, gid: int) -> None:
    for p in (path, *path.parents):
        st = p.stat()
        shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
        if not (st.st_mode >> shift) & 0o1:
            raise ElasticsearchError(
                f"{p} cannot be entered by user {ES_USER!r}, so it cannot read {path}: "
                "set LOGFERRY_CACHE to a directory it can read, e.g. /var/cache/logferry-test"
            )


def _chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    os.chown(path, *ids)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), *ids, follow_symlinks=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _yaml_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return json.dumps(str(value))  # a JSON string is a YAML scalar


def _absolutize_jvm_options(path: Path, logs: Path) -> None:
    """Older distributions write gc.log, hs_err and heap dumps relative to ES_HOME (``logs/``, ``data``),
    which the server user cannot write: point them at the instance's logs directory."""
    text = path.read_text()
    text = re.sub(r"(file=|ErrorFile=)(?:logs/)?(gc\.log|hs_err_pid%p\.log)", rf"\g<1>{logs}/\g<2>", text)
    text = re.sub(r"^(-XX:HeapDumpPath=)data$", rf"\g<1>{logs}", text, flags=re.M)
    path.write_text(text)


# --------------------------------------------------------------------------------------------
# server

class _Stoppable(Protocol):
    def stop(self) -> None: ...


# Every server started by tests/support (search servers, Kafka brokers): stopped at exit, even
# if a test run is interrupted.
_LIVE: weakref.WeakSet[_Stoppable] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class SearchServer:
    """A single-node search server (its :class:`Distribution`: ``distribution``) on 127.0.0.1 for tests.

    ``start()`` picks free HTTP/transport ports and a fresh data directory, then waits for yellow/green.
    ``stop_start()`` / ``outage()`` stop the JVM and start it again on the same ports and data directory.
    ``freeze()`` / ``thaw()`` SIGSTOP/SIGCONT it (a hung server: TCP connects, nothing answers).
    ``stop()`` ends it (SIGTERM, then SIGKILL after ``stop_timeout``) and removes its directory.
    """

    scheme = "http"
    distribution = ELASTICSEARCH

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        *,
        heap: str = "512m",
        settings: Mapping[str, str | int | float | bool] | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = 60.0,
        base_dir: str | os.PathLike[str] | None = None,
        keep_dir: bool = False,
    ) -> None:
        self._version = version
        self._heap = heap
        self._extra = dict(settings or {})
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._base_dir = base_dir
        self._keep_dir = keep_dir or os.environ.get("LOGFERRY_TEST_ES_KEEP") == "1"
        self._ids: tuple[int, int] | None = None
        self._home: Path | None = None
        self._java: Path | None = None
        self._workdir: Path | None = None
        self._http_port: int | None = None
        self._transport_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._launches = 0
        self.cluster_name = f"logferry-test-{secrets.token_hex(4)}"

    # -- properties -------------------------------------------------------------------------
    @property
    def version(self) -> str:
        return self._version

    @property
    def http_port(self) -> int:
        if self._http_port is None:
            raise ElasticsearchError("server not started")
        return self._http_port

    @property
    def transport_port(self) -> int:
        if self._transport_port is None:
            raise ElasticsearchError("server not started")
        return self._transport_port

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def access(self) -> ClusterAccess:
        """How the tests get in (nothing needed here; see :class:`SecuredElasticsearchServer`)."""
        return ClusterAccess()

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise ElasticsearchError("server not started")
        return self._workdir

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        """Console output of the server (all launches appended)."""
        return self.workdir / "console.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start with a fresh data directory and free ports; wait for yellow/green health."""
        if self.running:
            return self
        self.stop()  # a previous instance stopped with stop_process(): drop its directory
        self._ids = _ensure_user()
        cache = cache_dir(self.distribution.name)
        if self._ids is not None:  # fail before a download the server user could not read
            _check_readable_by(next(p for p in (cache, *cache.parents) if p.exists()), *self._ids)
        self._home = ensure_distribution(self._version, self.distribution)
        self._java = find_java_home(self._version, self.distribution)
        if self._ids is not None:
            _check_readable_by(self._home / "lib", *self._ids)
        for attempt in range(3):
            self._new_workdir()
            try:
                self._launch()
                self._wait_ready()
                return self
            except ElasticsearchStartError as exc:
                bind_race = any(marker in str(exc) for marker in _BIND_ERRORS)
                self.stop()
                if not bind_race or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server and remove its directory (unless keep_dir / LOGFERRY_TEST_ES_KEEP=1)."""
        self.stop_process()
        if self._http_port is not None:
            register_access(self.url, None)
        if self._workdir is not None and not self._keep_dir:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._workdir = None
        self._http_port = self._transport_port = None
        _LIVE.discard(self)

    def stop_process(self, *, graceful: bool = True) -> None:
        """End the JVMs but keep ports and data: SIGTERM (or SIGKILL when not graceful), wait, SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the launcher leads its own process group
            self._signal_group(pgid, signal.SIGCONT)
            self._signal_group(pgid, signal.SIGTERM if graceful else signal.SIGKILL)
            deadline = time.monotonic() + self.stop_timeout
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(pgid, signal.SIGKILL)
                proc.wait()
            # the server JVM is a child of the launcher: wait for the whole group to be gone
            while self._group_alive(pgid):
                if time.monotonic() > deadline:
                    self._signal_group(pgid, signal.SIGKILL)
                time.sleep(0.1)
        if self._console is not None:
            self._console.close()
            self._console = None

    def start_process(self) -> None:
        """Start the JVM again on the same ports and data directory (after stop_process)."""
        if self.running:
            return
        if self._workdir is None:
            raise ElasticsearchError("start_process() needs a server started once (call start())")
        self._launch()
        self._wait_ready()

    def stop_start(self, downtime: float = 0.0, *, graceful: bool = True) -> None:
        """An outage: stop the server, stay down ``downtime`` seconds, start it on the same port/data."""
        self.stop_process(graceful=graceful)
        time.sleep(downtime)
        self.start_process()

    @contextlib.contextmanager
    def outage(self, *, graceful: bool = True) -> Iterator[None]:
        """``with es.outage(): ...`` -- down inside the block, up again (same port and data) after it."""
        self.stop_process(graceful=graceful)
        try:
            yield
        finally:
            self.start_process()

    def freeze(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but nothing answers."""
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc is not None:
            self._signal_group(self._proc.pid, signal.SIGCONT)

    def rss_bytes(self) -> int:
        """Resident memory of all the server's processes (launcher JVM + server JVM)."""
        if self._proc is None:
            return 0
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self._proc.pid:  # fields[2] is the process group id
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss in pages
        return total

    def server_version(self) -> str:
        """The running node's version, from ``/_nodes/_local`` (the test distribution has no
        ``rest-root`` module, so ``GET /`` and ``HEAD /`` answer 405)."""
        status, body = request("GET", self.url + "/_nodes/_local?filter_path=nodes.*.version", access=self.access)
        if status != 200:
            raise ElasticsearchError(f"/_nodes/_local: HTTP {status} {body}")
        return str(next(iter(body["nodes"].values()))["version"])

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _settings(self) -> dict[str, str | int | float | bool]:
        workdir = self.workdir
        settings: dict[str, str | int | float | bool] = {
            "cluster.name": self.cluster_name,
            "node.name": "node-0",
            "network.host": "127.0.0.1",
            "http.port": self.http_port,
            "transport.port": self.transport_port,
            "discovery.type": "single-node",
            "path.data": str(workdir / "data"),
            "path.logs": str(workdir / "logs"),
            "cluster.routing.allocation.disk.threshold_enabled": False,
            "action.destructive_requires_name": False,
            **self._security_settings(),
        }
        settings.update(self._extra)
        return settings

    def _security_settings(self) -> dict[str, str | int | float | bool]:
        """None: the test distributions have no security plugin unless told otherwise."""
        return {}

    def _prepare_config(self, config: Path) -> None:
        """Called with the instance's fresh config directory before it is handed to the server user."""

    def _new_workdir(self) -> None:
        assert self._home is not None
        prefix = "es" if self.distribution is ELASTICSEARCH else self.distribution.name
        workdir = Path(tempfile.mkdtemp(prefix=f"logferry-{prefix}-{self._version}-", dir=self._base_dir))
        self._workdir = workdir
        self._http_port, self._transport_port = free_port(), free_port()
        while self._transport_port == self._http_port:
            self._transport_port = free_port()
        shutil.copytree(self._home / "config", workdir / "config")
        for sub in ("data", "logs", "tmp"):
            (workdir / sub).mkdir()
        _absolutize_jvm_options(workdir / "config" / "jvm.options", workdir / "logs")
        lines = [f"{key}: {_yaml_value(value)}" for key, value in self._settings().items()]
        (workdir / "config" / f"{self.distribution.name}.yml").write_text("\n".join(lines) + "\n")
        self._prepare_config(workdir / "config")
        workdir.chmod(0o755)
        _chown_tree(workdir, self._ids)
        register_access(self.url, self.access)
        _LIVE.add(self)

    def _environment(self) -> dict[str, str]:
        assert self._java is not None
        workdir, env = self.workdir, self.distribution.env
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            f"{env}_JAVA_HOME": str(self._java),
            f"{env}_PATH_CONF": str(workdir / "config"),
            f"{env}_TMPDIR": str(workdir / "tmp"),
            f"{env}_JAVA_OPTS": f"-Xms{self._heap} -Xmx{self._heap}",
        }

    def _launch(self) -> None:
        assert self._home is not None
        workdir = self.workdir
        self._launches += 1
        console = open(workdir / "console.log", "ab")  # closed in stop_process()
        console.write(f"\n===== logferry: launch {self._launches} of {self._version} =====\n".encode())
        console.flush()
        kwargs: dict[str, Any] = {}
        if self._ids is not None:
            kwargs = {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}
        self._console = console
        self._proc = subprocess.Popen(
            [str(self._home / "bin" / self.distribution.name)],
            cwd=workdir / "logs",
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
        _LIVE.add(self)

    def _log_tail(self, lines: int = 60) -> str:
        tail = _tail(self.log_path, 400)
        errors = [ln[:500] for ln in tail.splitlines() if _ERROR_LINE.search(ln)][:8]
        parts = ["--- errors ---", *errors] if errors else []
        parts += [f"--- {self.log_path} (last {lines} lines) ---", *tail.splitlines()[-lines:]]
        return "\n".join(parts)

    def _fail(self, why: str) -> ElasticsearchStartError:
        msg = f"{self.distribution.title} {self._version} on {self.url}: {why}\n{self._log_tail()}"
        self.stop_process(graceful=False)
        return ElasticsearchStartError(msg)

    def _wait_ready(self) -> None:
        """Poll /_cluster/health until yellow or green, the process exits, or the timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        health = self.url + "/_cluster/health?wait_for_status=yellow&timeout=2s"
        last = "no answer yet"
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise self._fail(f"exited with status {rc} before becoming ready")
            try:
                status, body = request("GET", health, timeout=10, access=self.access)
                if status == 200 and isinstance(body, dict) and body.get("status") in ("green", "yellow"):
                    return
                last = f"HTTP {status}: {str(body)[:200]}"
            except OSError as exc:  # connection refused/reset while starting
                last = repr(exc)
            if time.monotonic() > deadline:
                raise self._fail(f"not yellow/green after {self.startup_timeout:.0f}s (last: {last})")
            time.sleep(0.25)


class ElasticsearchServer(SearchServer):
    """A single-node Elasticsearch on 127.0.0.1 for tests (see :class:`SearchServer`)."""

    distribution = ELASTICSEARCH

    def _security_settings(self) -> dict[str, str | int | float | bool]:
        """Security off: plain HTTP, no credentials."""
        return {"xpack.security.enabled": False}


class SecuredElasticsearchServer(ElasticsearchServer):
    """A single-node Elasticsearch with security on, as a production cluster would run.

    HTTP is TLS only, with a node certificate for 127.0.0.1 and localhost signed by a CA made for this
    instance (:attr:`ca_file`, see :func:`write_certificates`); :attr:`username` / :attr:`password` is a
    file-realm user with the ``superuser`` role, added with ``bin/elasticsearch-users useradd``; once the
    node is up an API key is created through the REST API as that user (:attr:`api_key`, base64 ``id:key``).
    Requests to :attr:`url` use :attr:`access` (the user and the CA) unless told otherwise.

    API keys live in the ``.security`` index, whose mapping needs the ``analysis-common`` module, which the
    test distribution lacks: there the key cannot be made, :attr:`api_key` stays None and
    :attr:`api_key_problem` says why (the node itself works).
    """

    scheme = "https"

    def __init__(self, version: str = DEFAULT_VERSION, *, username: str = "logferry", **kwargs: Any) -> None:
        super().__init__(version, **kwargs)
        self.username = username
        # Random, and recognisable: tests look for it where it must never appear (logs, status).
        self.password = f"pw-{secrets.token_urlsafe(18)}"
        self.api_key: str | None = None
        self.api_key_problem: str | None = None

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the node's HTTP certificate."""
        return self.workdir / "config" / "certs" / "ca.crt"

    @property
    def access(self) -> ClusterAccess:
        """The superuser, over TLS verified with :attr:`ca_file`."""
        return ClusterAccess(self.username, self.password, ca_file=self.ca_file)

    @property
    def api_key_access(self) -> ClusterAccess:
        """The API key, over TLS verified with :attr:`ca_file`."""
        if self.api_key is None:
            raise ElasticsearchError("server not started")
        return ClusterAccess(api_key=self.api_key, ca_file=self.ca_file)

    def start(self) -> Self:
        """Start (see :meth:`ElasticsearchServer.start`), then try to create the API key."""
        if self.running:
            return self
        self.api_key = self.api_key_problem = None
        super().start()
        status, body = request("POST", self.url + "/_security/api_key", {"name": "logferry-test"}, access=self.access)
        if status == 200 and isinstance(body, dict) and "encoded" in body:
            self.api_key = str(body["encoded"])
        else:
            error = body.get("error") if isinstance(body, dict) else body
            reason = error.get("reason") if isinstance(error, dict) else error
            self.api_key_problem = f"POST /_security/api_key: HTTP {status} {str(reason)[:300]}"
        return self

    def _security_settings(self) -> dict[str, str | int | float | bool]:
        # Paths are relative to the config directory. Transport TLS is not needed by a single node.
        return {
            "xpack.security.enabled": True,
            "xpack.security.http.ssl.enabled": True,
            "xpack.security.http.ssl.key": "certs/node.key",
            "xpack.security.http.ssl.certificate": "certs/node.crt",
            "xpack.security.http.ssl.certificate_authorities": "certs/ca.crt",
        }

    def _prepare_config(self, config: Path) -> None:
        write_certificates(config / "certs")
        self._cli_tool("elasticsearch-users", "useradd", self.username, "-p", self.password, "-r", "superuser")

    def _cli_tool(self, tool: str, *args: str) -> None:
        """Run one of the distribution's command-line tools on this instance's config directory.

        Run as ourselves even as root: the files it writes are handed to the server user afterwards.
        """
        assert self._home is not None
        proc = subprocess.run([str(self._home / "bin" / tool), *args], env=self._environment(),
                              capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            # The arguments may hold the password: name only the tool and the subcommand.
            raise ElasticsearchError(f"{tool} {args[0]} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")


def write_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> None:
    """A CA (``ca.crt``) and a node certificate for ``hosts`` signed by it (``node.crt``, ``node.key``), as PEM.

    EC P-256 keys: quick to make, and both the JDK and Python's ssl take them. Valid from an hour
    ago (clock skew) for two days.
    """
    # Imported here: the rest of this module is stdlib only (it runs before the venv exists).
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "logferry test CA")])
    node_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])

    def builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))

    usage = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                           "encipher_only", "decipher_only"), False)
    ca = (builder(ca_name, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    node = (builder(node_name, node_key)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "node.crt").write_bytes(node.public_bytes(serialization.Encoding.PEM))
    (directory / "node.key").write_bytes(node_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (directory / "node.key").chmod(0o600)


class Cluster:
    """A few HTTP calls against a test cluster (urllib: independent of the code under test)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        status, answer = request(method, self.url + path, body)
        assert status in ok, f"{method} {path}: HTTP {status} {answer}"
        return answer

    def count(self, pattern: str) -> int:
        """Documents in the indices matching ``pattern``, after a refresh (0 while a new index starts)."""
        self.call("POST", f"/{pattern}/_refresh", ok=(200, 503))
        answer = self.call("GET", f"/{pattern}/_count", ok=(200, 503))
        return int(answer["count"]) if "count" in answer else 0

    def ids(self, pattern: str) -> list[str]:
        """Every document id in ``pattern`` (up to 10,000)."""
        self.call("POST", f"/{pattern}/_refresh")
        hits = self.call("POST", f"/{pattern}/_search", {"size": 10_000, "_source": False})["hits"]["hits"]
        return [hit["_id"] for hit in hits]

    def assert_exactly(self, pattern: str, expected: list[str]) -> None:
        """The indices matching ``pattern`` hold exactly the expected ids, each once."""
        assert self.count(pattern) == len(expected)
        found = self.ids(pattern)
        assert len(found) == len(set(found)) == len(expected)
        assert set(found) == set(expected), f"missing {sorted(set(expected) - set(found))[:5]}"

    def source(self, index: str, doc_id: str) -> dict[str, Any]:
        """One document's source."""
        found: dict[str, Any] = self.call("GET", f"/{index}/_doc/{doc_id}")["_source"]
        return found

    def drop(self, prefix: str) -> None:
        """Delete the indices (``prefix`` itself and ``prefix-*``) and the template a test made."""
        self.call("DELETE", f"/{prefix}-*", ok=(200, 404))
        self.call("DELETE", f"/{prefix}", ok=(200, 404))
        self.call("DELETE", f"/_index_template/{prefix}", ok=(200, 404))


@contextlib.contextmanager
def dropping_indices(url: str) -> Iterator[Callable[[str], Cluster]]:
    """A test's access to the cluster at ``url``: ``use(prefix)`` drops the indices and template
    named by ``prefix`` now and again when the test ends (the body of a test's fixture)."""
    prefixes: list[str] = []
    client = Cluster(url)

    def use(prefix: str) -> Cluster:
        prefixes.append(prefix)
        client.drop(prefix)
        return client

    try:
        yield use
    finally:
        for prefix in prefixes:
            client.drop(prefix)


def count_documents(url: str, pattern: str) -> int:
    """Documents in the indices matching ``pattern`` after a refresh (0 before the first one exists)."""
    request("POST", f"{url}/{pattern}/_refresh")
    status, body = request("GET", f"{url}/{pattern}/_count")
    return int(body["count"]) if status == 200 else 0


def all_documents(url: str, pattern: str) -> list[dict[str, Any]]:
    """Every document's source in ``pattern`` (scrolled: no 10,000 limit)."""
    request("POST", f"{url}/{pattern}/_refresh")
    status, body = request("POST", f"{url}/{pattern}/_search?scroll=1m", {"size": 5000, "sort": ["_doc"]})
    assert status == 200, body
    found: list[dict[str, Any]] = []
    while body["hits"]["hits"]:
        found += [hit["_source"] for hit in body["hits"]["hits"]]
        status, body = request("POST", f"{url}/_search/scroll", {"scroll": "1m", "scroll_id": body["_scroll_id"]})
        assert status == 200, body
    request("DELETE", f"{url}/_search/scroll", {"scroll_id": body["_scroll_id"]})
    return found
