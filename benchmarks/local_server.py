"""Local servers for the benchmark, load-test and fault scripts (and the tests): a gunicorn
started with gunicorn.conf.py on a free port, ready when /readyz answers, nginx in front of
it with deploy/nginx.conf, and a private redis-server that can be stopped and restarted."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

import redis

from recsvc.identity import DEVELOPMENT_SECRET, SECRET_VARIABLE

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count: int) -> list[int]:
    """``count`` different ports free on 127.0.0.1 now, below the kernel's ephemeral range: a
    port from that range (what binding port 0 gives) can be taken by any outgoing connection,
    such as the load's, before the server meant for it binds it."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(10_000, ephemeral_low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def free_port() -> int:
    return free_ports(1)[0]


def start_redis_server(arguments: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start redis-server with ``arguments`` (logging to ``log``) and wait until it answers on
    ``port``. If it exits or stays silent, RuntimeError with its log's end; nothing is left
    running."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    process = subprocess.Popen(
        [binary, *arguments, "--port", str(port), "--bind", "127.0.0.1", "--logfile", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    said = log.read_text(errors="replace")[-1000:] if log.exists() else "(no log)"
    raise RuntimeError(f"redis-server did not start on port {port}; its log ends:\n{said}")


def _wait_for(url: str, server: subprocess.Popen[bytes], seconds: float, failure: str) -> None:
    """Until ``url`` answers; RuntimeError(``failure``) if ``server`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as error:
            if isinstance(error, urllib.error.HTTPError):
                error.close()  # not ready yet (503): ask again
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(failure) from None
            time.sleep(0.1)


@contextmanager
def _serving(
    command: list[str],
    env: dict[str, str] | None,
    log_path: Path | None,
    port: int,
    ready_path: str,
    seconds: float,
    failure: str,
) -> Iterator[None]:
    """Run ``command`` (its output to ``log_path`` when given) until the block ends, once
    ``ready_path`` on ``port`` answers."""
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        _wait_for(f"http://127.0.0.1:{port}{ready_path}", server, seconds, failure)
        yield
    finally:
        server.terminate()
        server.wait(timeout=20)
        if log_path is not None:
            log.close()  # type: ignore[union-attr]


@contextmanager
def gunicorn(
    environment: dict[str, str], log_path: Path | None = None, app: str = "recsvc.wsgi:app"
) -> Iterator[str]:
    """Run gunicorn with ``environment`` (RECSVC_* settings) and yield its base URL; its log
    lines go to ``log_path`` when given. Without RECSVC_ID_SECRET in either, the development
    secret, which bundles trained without one use. ``app``: the WSGI app, importable from the
    repository's root."""
    port = free_port()
    env = {
        SECRET_VARIABLE: DEVELOPMENT_SECRET,
        "RECSVC_ALLOW_DEVELOPMENT_SECRET": "on",  # a local test
        **os.environ,
        **environment,
        "RECSVC_BIND": f"127.0.0.1:{port}",
    }
    command = [
        *(sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")),
        *("--pythonpath", str(ROOT), app),
    ]
    with _serving(command, env, log_path, port, "/readyz", 60, "gunicorn did not become ready"):
        yield f"http://127.0.0.1:{port}"


NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def nginx_binary() -> str:
    """The nginx executable (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "nginx is not installed: run `make services` (or `apt-get install nginx`)"
        )
    return found


def render_nginx_conf(listen: str, upstream: str, max_body_bytes: int) -> str:
    """deploy/nginx.conf with its ${RECSVC_...} placeholders filled in, as envsubst would."""
    text = Template(NGINX_CONF.read_text(encoding="utf-8")).safe_substitute(
        RECSVC_FRONT_LISTEN=listen,
        RECSVC_UPSTREAM=upstream,
        RECSVC_MAX_BODY_BYTES=str(max_body_bytes),
    )
    if "${" in text:
        raise RuntimeError(f"{NGINX_CONF} has a placeholder this launcher does not fill")
    return text


@contextmanager
def nginx(
    upstream: str,
    max_body_bytes: int,
    log_path: Path | None = None,
    port: int | None = None,
    more_upstreams: Sequence[str] = (),
) -> Iterator[str]:
    """Run nginx with deploy/nginx.conf in front of ``upstream`` (host:port or unix:path),
    and of ``more_upstreams`` (other hosts: each a file in its upstreams.d/), on ``port`` of
    127.0.0.1 (a free one by default), and yield its base URL once it answers /healthz; its
    log lines go to ``log_path`` when given."""
    binary = nginx_binary()
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="recsvc-nginx-") as directory:
        # Run as root, nginx's workers drop to nobody and must reach their temporary folders.
        os.chmod(directory, 0o755)
        conf = Path(directory) / "nginx.conf"
        conf.write_text(render_nginx_conf(f"127.0.0.1:{port}", upstream, max_body_bytes))
        hosts = Path(directory) / "upstreams.d"
        hosts.mkdir()
        for number, address in enumerate(more_upstreams):
            (hosts / f"host-{number}.conf").write_text(f"server {address} max_fails=0;\n")
        command = [binary, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr"]
        command += ["-g", "daemon off;"]
        failure = "nginx did not start or cannot reach gunicorn"
        with _serving(command, None, log_path, port, "/healthz", 20, failure):
            yield f"http://127.0.0.1:{port}"


class RedisProcess:
    """A private redis-server, on a fixed port so it can be stopped and restarted."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = start_redis_server(
            ["--save", "", "--appendonly", "no", "--dir", str(self.directory)],
            self.port,
            self.directory / "redis.log",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class RedisClusterProcess:
    """A private Redis Cluster: ``masters`` masters, each with ``replicas`` replicas, from
    redis-server processes on free local ports (each node in its own folder of
    ``directory``), joined by ``redis-cli --cluster create``. A node can be stopped (a master
    stopped is replaced by its replica within about two node timeouts) and started again."""

    NODE_TIMEOUT_MS = 1000  # how long a silent master stands before its replica takes over

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-server)")
        self.cli = cli
        self.directory = directory
        self.masters, self.replicas = masters, replicas
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._choose_ports()

    def _choose_ports(self) -> None:
        # A node's cluster bus port is chosen too: port + 10000 may be taken or past 65535.
        nodes = self.masters * (1 + self.replicas)
        ports = free_ports(2 * nodes)
        self.ports = ports[:nodes]
        self.bus_ports = dict(zip(self.ports, ports[nodes:], strict=True))

    @property
    def url(self) -> str:
        """The service's setting for this cluster (RECSVC_REDIS_URL)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        folder = self.directory / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        self.processes[port] = start_redis_server(
            [
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[port])),
                *("--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)),
                *("--cluster-config-file", "nodes.conf", "--dir", str(folder)),
                *("--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"),
            ],
            port,
            folder / "redis.log",
        )

    def stop_node(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    CREATE_TRIES = 3
    CREATE_SECONDS = 60

    def start(self) -> None:
        """Start the nodes and join them. On a loaded machine a join has timed out (once in
        a clean-clone run): each try that fails stops its nodes and the next starts afresh,
        on new ports."""
        for attempt in range(1, self.CREATE_TRIES + 1):
            try:
                self._start_once()
                return
            except RuntimeError:
                self.stop()
                if attempt == self.CREATE_TRIES:
                    raise
            for port in self.ports:
                shutil.rmtree(self.directory / str(port), ignore_errors=True)
            self._choose_ports()

    def _start_once(self) -> None:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        try:
            created = subprocess.run(
                [self.cli, "--cluster", "create", *nodes]
                + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=self.CREATE_SECONDS,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"redis-cli --cluster create did not finish in {self.CREATE_SECONDS} s"
            ) from error
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        self.wait_until_ok(replicated=True)

    def wait_until_ok(self, seconds: float = 30.0, replicated: bool = False) -> None:
        """Until every running node reports ``cluster_state:ok`` (every slot served), and with
        ``replicated`` every master has its replicas connected and in sync."""
        deadline = time.monotonic() + seconds
        while True:
            states = []
            for port in self.processes:
                try:
                    client = redis.Redis(port=port, socket_timeout=1)
                    states.append(client.cluster("info").get("cluster_state") == "ok")
                    if replicated:
                        info = client.info("replication")
                        online = [
                            value
                            for name, value in info.items()
                            if isinstance(value, dict) and value.get("state") == "online"
                        ]
                        states.append(info["role"] != "master" or len(online) >= self.replicas)
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def wait_for_failover(self, seconds: float = 30.0) -> None:
        """Until the running nodes count ``masters`` masters again (a stopped master's replica
        took over) and report ``cluster_state:ok``. Start a stopped master only after this:
        restarted empty (no persistence here) before its replica took over, it would come
        back as the empty master of its slots."""
        deadline = time.monotonic() + seconds
        while len(self.master_ports()) < self.masters:
            if time.monotonic() > deadline:
                raise RuntimeError("no replica took over the stopped master")
            time.sleep(0.1)
        self.wait_until_ok(seconds)

    def master_ports(self) -> list[int]:
        """The ports of the running nodes that are masters now."""
        found = []
        for port in self.processes:
            try:
                role = redis.Redis(port=port, socket_timeout=1).execute_command("ROLE")[0]
            except redis.RedisError:
                continue  # starting or stopping
            if role in (b"master", "master"):
                found.append(port)
        return found

    def replica_of(self, master: int) -> int:
        """The port of a running replica of the master on port ``master``."""
        for port in self.processes:
            role = redis.Redis(port=port, socket_timeout=1).execute_command("ROLE")
            if role[0] in (b"slave", "slave") and int(role[2]) == master:
                return port
        raise RuntimeError(f"the master on port {master} has no running replica")

    def start_stopped(self) -> None:
        """Start again every node stopped (an old master comes back as its replica's)."""
        for port in self.ports:
            if port not in self.processes:
                self.start_node(port)

    def event_ids(self, prefix: str = "recsvc") -> set[str]:
        """The event ids in every customer's events (recsvc.store.CUSTOMER_EVENTS_KEY) on
        the cluster's masters."""
        found: set[str] = set()
        client = redis.RedisCluster(host="127.0.0.1", port=self.master_ports()[0])
        try:
            for key in client.scan_iter(match=f"{prefix}:{{c:*}}:events", count=1000):
                for member in client.zrange(key, 0, -1):
                    found.add(json.loads(member)["event_id"])
        finally:
            client.close()
        return found

    def stop(self) -> None:
        for port in list(self.processes):
            self.stop_node(port)


def sample_bundle(models_dir: Path | None, work: Path) -> Path:
    """``models_dir``, or (None) a models directory in ``work`` with the bundled sample
    trained into it."""
    if models_dir is not None:
        return models_dir
    from importlib import resources

    from training.config import load_config
    from training.pipeline import train

    trained = work / "sample"
    sample = Path(str(resources.files("training") / "sample"))
    train(load_config(sample / "sample.toml"), trained)
    return trained


@dataclass(frozen=True)
class SparkStandalone:
    """A running standalone cluster: its master's URL, and the ``[engine] conf`` a trainer on
    this host uses with it (the driver on the loopback interface, as the cluster is; ALS's
    checkpoints and the executors' part files in the cluster's folder, which the driver
    reads too)."""

    master: str
    conf: dict[str, str]


@contextmanager
def spark_standalone(
    directory: Path, cores: int = 1, memory: str = "2g", seconds: float = 90.0
) -> Iterator[SparkStandalone]:
    """A Spark standalone cluster on 127.0.0.1, from the ``bin/spark-class`` the pip package
    ``pyspark`` ships: a master and one worker of ``cores`` and ``memory``, on free ports, their
    logs, the executors' work folders and the checkpoints in ``directory``. Ready once the
    worker has registered with the master, within ``seconds``; both are stopped when the block
    ends."""
    import pyspark

    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        raise RuntimeError("Java is not installed: Spark needs Java 17 or later (`make services`)")
    home = Path(pyspark.__file__).parent
    port, master_ui, worker_ui = free_port(), free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        # The master's REST submission server takes a fixed port (6066) otherwise.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    commands = {
        "master": [
            *("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1"),
            *("--port", str(port), "--webui-port", str(master_ui)),
        ],
        "worker": [
            *("org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1"),
            *("--cores", str(cores), "--memory", memory, "--webui-port", str(worker_ui)),
            *("--work-dir", str(directory / "work")),
        ],
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, arguments in commands.items():
            with (directory / f"{name}.log").open("ab") as log:
                processes[name] = subprocess.Popen(
                    [str(home / "bin" / "spark-class"), *arguments],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
        deadline = time.monotonic() + seconds
        while _alive_workers(master_ui) < 1:
            exited = [name for name, process in processes.items() if process.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "\n".join(
                    f"{name}.log: ...{(directory / f'{name}.log').read_text()[-1500:]}"
                    for name in commands
                )
                why = f"{exited} exited" if exited else f"no worker registered in {seconds:.0f} s"
                raise RuntimeError(f"the Spark standalone cluster did not start ({why}):\n{logs}")
            time.sleep(0.5)
        yield SparkStandalone(
            master=url,
            conf={
                "spark.driver.host": "127.0.0.1",  # and so its bindAddress
                "spark.checkpoint.dir": str(directory / "checkpoints"),
            },
        )
    finally:
        for process in reversed(processes.values()):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _alive_workers(master_ui: int) -> int:
    """The workers the master at web UI port ``master_ui`` counts alive (0 until it answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{master_ui}/json/", timeout=1) as answer:
            return int(json.load(answer).get("aliveworkers", 0))
    except OSError:
        return 0
