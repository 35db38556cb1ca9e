"""A real Zuul on this machine, for the e2e tests (tests/zuul).

`Stack` brings up, inside a network namespace of its own (so that every server,
including the executor's log streamer that binds '::', is reachable only from
here):

- ZooKeeper (Debian) over TLS, PostgreSQL (Debian, a private cluster);
- a static node: sshd on loopback in a private mount namespace, user `zuul`
  with passwordless sudo (config/node-setup.sh);
- git repositories (bare, reached by a `git` connection with file:// URLs);
- zuul-scheduler, zuul-web, zuul-executor and zuul-launcher from the venv that
  scripts/install-e2e-deps.sh builds under /opt/speculum-e2e (the executor in
  a mount namespace of its own, where /etc/hosts also names the stand-in);
- a stand-in for Docker Hub (Debian docker-registry on 127.0.0.1:443, with a
  certificate for registry-1.docker.io that only the node and the executor's
  jobs trust) and an intermediate registry (`speculum-registry serve`, TLS, a
  write user, Docker Hub-style webhooks to a receiver in this process);
- a final registry, where gate jobs upload and promote jobs move tags: another
  `speculum-registry serve`, as a site's own registry on 127.0.0.2:443 named
  registry.example.org (a registry on another port cannot be mirrored:
  `buildset:5000/host:port/...` is no valid reference), whose Docker Hub-style
  webhook tells a CD system's hook (the same receiver, which checks the token).

Everything it starts is recorded by PID and stopped by `Stack.stop`, also
after a failure; every wait is bounded. Each phase's duration is recorded in
`Stack.timings`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml



def _role_test_support():
    """tests/ansible/support.py (its busybox image), loaded without touching sys.path."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / 'ansible' / 'support.py'
    spec = importlib.util.spec_from_file_location('speculum_role_test_support', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CONFIG = HERE / 'config'
PROJECTS = HERE / 'projects'
E2E_ROOT = Path(os.environ.get('SPECULUM_E2E_ROOT', '/opt/speculum-e2e'))
ZUUL_BIN = E2E_ROOT / 'venv' / 'bin'
BIN_DIR = Path(os.environ.get('SPECULUM_TEST_BIN_DIR', REPO / 'target' / 'debug'))

TENANT = 'e2e'
SITE_PROJECT = 'site-config'
TEST_PROJECT = 'test-project'
NODE_USER = 'zuul'

# Fixed ports: the stack has the network namespace to itself.
ZK_PORT = 2281
PG_PORT = 5432
WEB_PORT = 9000
FINGER_PORT = 7900
NODE_PORTS = (2201, 2202, 2203, 2204)
DOCKERHUB_PORT = 443
INTERMEDIATE_PORT = 5443
# The final registry: a name and address of its own, so that it can have the default port.
FINAL_NAME = 'registry.example.org'
FINAL_ADDR = '127.0.0.2'
WEBHOOK_PORT = 8090
# Where the CD system of the final registry listens: a Docker Hub webhook URL
# carries its token in the query, as seed 000's CD tool wants it.
CD_HOOK_PATH = '/pipelines/api/docker-hub-webhooks'
DOCKERHUB_NAMES = ('registry-1.docker.io', 'index.docker.io', 'docker.io')
# The base image of the test project's Dockerfile, as stored on the stand-in for Docker Hub.
BASE_IMAGE = 'speculum-e2e/base:1'

CLEAN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


class StackError(Exception):
    """The stack, or one of its parts, did not come up or misbehaved."""


def log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors='replace').splitlines()
    except FileNotFoundError:
        return f'({path} does not exist)'
    return f'--- last {min(lines, len(text))} lines of {path}\n' + '\n'.join(text[-lines:])


def run(argv, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise StackError(f'{argv!r} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}')
    return proc


def wait_for(what: str, check, timeout: float, interval: float = 0.5, diagnose=None):
    """Call check() until it returns something truthy; raise after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            result = check()
            if result:
                return result
        except StackError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            detail = f' (last error: {last_error!r})' if last_error else ''
            extra = '\n' + diagnose() if diagnose else ''
            raise StackError(f'timed out after {timeout:.0f}s waiting for {what}{detail}{extra}')
        time.sleep(interval)


def port_open(port: int, host: str = '127.0.0.1') -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


class Timings:
    """Wall-clock duration of each phase, in order."""

    def __init__(self):
        self.phases: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, time.monotonic() - start))

    def report(self) -> str:
        return '\n'.join(f'  {seconds:7.1f}s  {name}' for name, seconds in self.phases)


# -- network namespace -------------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000


class NetNamespace:
    """Moves this process into a new network namespace with only loopback up.

    Everything started afterwards inherits it. `leave` returns to the original
    namespace; the new one goes away with the last process in it.
    """

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._original = None

    def enter(self) -> None:
        self._original = os.open('/proc/self/ns/net', os.O_RDONLY)
        if self._libc.unshare(_CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            os.close(self._original)
            self._original = None
            raise StackError(f'unshare(CLONE_NEWNET) failed: {os.strerror(err)} (the e2e tests run as root)')
        run(['ip', 'link', 'set', 'lo', 'up'])

    def leave(self) -> None:
        if self._original is None:
            return
        if self._libc.setns(self._original, _CLONE_NEWNET) != 0:
            raise StackError(f'setns back failed: {os.strerror(ctypes.get_errno())}')
        os.close(self._original)
        self._original = None


# -- processes ---------------------------------------------------------------------------------


class Processes:
    """Processes started by the stack, stopped by PID in reverse order."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv, **kwargs) -> subprocess.Popen:
        log = open(self.logs / f'{name}.log', 'ab')
        try:
            proc = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        finally:
            log.close()
        self.started.append((name, proc))
        return proc

    def get(self, name: str) -> subprocess.Popen:
        for started_name, proc in self.started:
            if started_name == name:
                return proc
        raise KeyError(name)

    def check_running(self, name: str) -> None:
        proc = self.get(name)
        if proc.poll() is not None:
            raise StackError(f'{name} exited with {proc.returncode}\n' + log_tail(self.logs / f'{name}.log'))

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        proc = self.get(name)
        stop_pid(proc, sig, timeout)

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            stop_pid(proc, signal.SIGTERM, 30)


def stop_pid(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


def pids_in_mount_namespace(ns: str) -> list[int]:
    """PIDs of the processes whose mount namespace is ns (a /proc/*/ns/mnt link text)."""
    pids = []
    for entry in Path('/proc').iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / 'ns' / 'mnt') == ns:
                pids.append(int(entry.name))
    return pids


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f'/proc/{pid}/cmdline').read_bytes()
    except OSError:
        return []
    return [part.decode(errors='replace') for part in raw.split(b'\0') if part]


# -- certificates and keys ---------------------------------------------------------------------


def make_ca(certs: Path) -> None:
    run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30',
         '-subj', '/CN=speculum e2e CA', '-keyout', certs / 'ca.key', '-out', certs / 'ca.pem'])


def make_cert(certs: Path, name: str, dns: tuple[str, ...] = ('localhost',), ips: tuple[str, ...] = ('127.0.0.1',)):
    """A leaf certificate signed by the CA in certs, for servers and clients alike."""
    sans = ','.join([f'DNS:{d}' for d in dns] + [f'IP:{i}' for i in ips])
    ext = certs / f'{name}.ext'
    ext.write_text(
        'basicConstraints=CA:FALSE\n'
        'keyUsage=digitalSignature,keyEncipherment\n'
        'extendedKeyUsage=serverAuth,clientAuth\n'
        f'subjectAltName={sans}\n')
    run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={dns[0] if dns else name}',
         '-keyout', certs / f'{name}.key', '-out', certs / f'{name}.csr'])
    run(['openssl', 'x509', '-req', '-days', '30', '-in', certs / f'{name}.csr', '-CA', certs / 'ca.pem',
         '-CAkey', certs / 'ca.key', '-CAcreateserial', '-extfile', ext, '-out', certs / f'{name}.pem'])
    return certs / f'{name}.pem', certs / f'{name}.key'


def render(template: Path, dest: Path, **values) -> Path:
    dest.write_text(string.Template(template.read_text()).substitute(values))
    return dest


def logging_config(path: Path, logfile: Path) -> None:
    """A dictConfig for one Zuul component: everything at DEBUG into one file."""
    path.write_text(yaml.safe_dump({
        'version': 1,
        'formatters': {'plain': {'format': '%(asctime)s %(levelname)s %(name)s: %(message)s'}},
        'handlers': {'file': {'class': 'logging.FileHandler', 'filename': str(logfile),
                              'formatter': 'plain', 'level': 'DEBUG'}},
        'loggers': {
            'zuul': {'level': 'DEBUG', 'handlers': ['file'], 'propagate': False},
            'kazoo': {'level': 'INFO', 'handlers': ['file'], 'propagate': False},
            'sqlalchemy': {'level': 'WARNING', 'handlers': ['file'], 'propagate': False},
            'alembic': {'level': 'INFO', 'handlers': ['file'], 'propagate': False},
        },
        'root': {'level': 'INFO', 'handlers': ['file']},
    }))


def encrypt_secret(public_key_pem: bytes, plaintext: str) -> list[str]:
    """Encrypt like `zuul-client encrypt`: RSA PKCS#1 OAEP with SHA-1, in key-sized chunks."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    key = serialization.load_pem_public_key(public_key_pem)
    chunk = key.key_size // 8 - 2 * hashes.SHA1.digest_size - 2
    data = plaintext.encode()
    pad = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    return [base64.b64encode(key.encrypt(data[i:i + chunk], pad)).decode() for i in range(0, len(data), chunk)]


class Encrypted:
    """A value written to YAML as Zuul's `!encrypted/pkcs1-oaep` tag."""

    def __init__(self, chunks: list[str]):
        self.chunks = chunks


def _represent_encrypted(dumper, value):
    return dumper.represent_sequence('!encrypted/pkcs1-oaep', value.chunks)


yaml.SafeDumper.add_representer(Encrypted, _represent_encrypted)


def dump_yaml(data) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


# -- git ---------------------------------------------------------------------------------------


class GitRepos:
    """Bare repositories behind the git connection, each with a work clone to commit from."""

    def __init__(self, root: Path, work: Path):
        self.root = root
        self.work = work
        self.env = dict(os.environ, GIT_AUTHOR_NAME='speculum e2e', GIT_AUTHOR_EMAIL='e2e@speculum.invalid',
                        GIT_COMMITTER_NAME='speculum e2e', GIT_COMMITTER_EMAIL='e2e@speculum.invalid',
                        GIT_CONFIG_NOSYSTEM='1', HOME=str(work))

    def git(self, *args, cwd: Path | None = None, timeout: float = 120) -> str:
        return run(['git', *args], cwd=cwd, env=self.env, timeout=timeout).stdout

    def create(self, name: str) -> Path:
        bare = self.root / name
        bare.parent.mkdir(parents=True, exist_ok=True)
        self.git('init', '--quiet', '--bare', '--initial-branch=main', str(bare))
        clone = self.work / name
        self.git('init', '--quiet', '--initial-branch=main', str(clone))
        self.git('remote', 'add', 'origin', str(bare), cwd=clone)
        return clone

    def commit(self, name: str, files: dict[str, str | bytes | Path | None] | None = None,
               tree: Path | None = None, message: str = 'update', ref: str = 'main') -> str:
        """Write files (None deletes one; a Path is copied), commit and push to ref; returns the sha.

        With tree, the work clone's content is replaced by that directory's first.
        """
        clone = self.work / name
        if tree is not None:
            for entry in clone.iterdir():
                if entry.name != '.git':
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            shutil.copytree(tree, clone, dirs_exist_ok=True, symlinks=True)
        for rel, content in (files or {}).items():
            path = clone / rel
            if content is None:
                if path.exists():
                    self.git('rm', '-q', '-r', rel, cwd=clone)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copy2(content, path)
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        self.git('add', '-A', cwd=clone)
        self.git('commit', '--quiet', '--allow-empty', '-m', message, cwd=clone)
        sha = self.git('rev-parse', 'HEAD', cwd=clone).strip()
        self.git('push', '--quiet', '--force', 'origin', f'HEAD:{ref}', cwd=clone)
        return sha

    def tag(self, name: str, tag: str, message: str = '') -> str:
        clone = self.work / name
        self.git('tag', '-a', '-m', message or tag, tag, cwd=clone)
        self.git('push', '--quiet', 'origin', f'refs/tags/{tag}', cwd=clone)
        return self.git('rev-parse', 'HEAD', cwd=clone).strip()


# -- the Zuul REST API -------------------------------------------------------------------------


class Api:
    """Small client of zuul-web's REST API."""

    def __init__(self, base: str, tenant: str):
        self.base = base
        self.tenant = tenant

    def get(self, path: str, raw: bool = False, **params):
        query = {k: v for k, v in params.items() if v is not None}
        url = f'{self.base}{path}' + (f'?{urllib.parse.urlencode(query)}' if query else '')
        with urllib.request.urlopen(url, timeout=15) as resp:
            body = resp.read()
        return body if raw else json.loads(body)

    def tget(self, path: str, **params):
        return self.get(f'/api/tenant/{self.tenant}{path}', **params)

    def post(self, path: str, body: dict, token: str) -> int:
        """POST JSON to the tenant's API with a bearer token; returns the status."""
        request = urllib.request.Request(f'{self.base}/api/tenant/{self.tenant}{path}', method='POST',
                                         data=json.dumps(body).encode(),
                                         headers={'Content-Type': 'application/json',
                                                  'Authorization': f'Bearer {token}'})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    def config_errors(self) -> list:
        return self.tget('/config-errors')


# -- a webhook receiver ------------------------------------------------------------------------


class HookReceiver:
    """Records the webhooks POSTed to it, like a CD system's hook URL (in a thread of this process).

    `tokens` maps a path to the query parameter and value a request to it
    must carry: one without them is answered 403 and recorded as refused,
    as a CD system drops a hook whose secure token does not match.
    """

    def __init__(self, port: int, tokens: dict[str, tuple[str, str]] | None = None):
        import http.server
        import threading

        received = self.received = []
        tokens = tokens or {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = body.decode(errors='replace')
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                wanted = tokens.get(url.path)
                accepted = wanted is None or query.get(wanted[0]) == [wanted[1]]
                received.append({'path': self.path, 'headers': dict(self.headers), 'payload': payload,
                                 'accepted': accepted})
                self.send_response(200 if accepted else 403)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name='webhooks', daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def deployments(self, path: str) -> list[dict]:
        """What a CD system reads from each accepted Docker Hub push payload sent to `path`."""
        found = []
        for hook in self.received:
            payload = hook['payload']
            if not hook['accepted'] or urllib.parse.urlsplit(hook['path']).path != path \
                    or not isinstance(payload, dict):
                continue
            repository, push = payload.get('repository') or {}, payload.get('push_data') or {}
            found.append({'owner': repository.get('owner'), 'image': repository.get('name'),
                          'repository': repository.get('repo_name'), 'namespace': repository.get('namespace'),
                          'tag': push.get('tag'), 'pusher': push.get('pusher')})
        return found


# -- the stack ---------------------------------------------------------------------------------


class Stack:
    """The whole e2e installation; `start()` then `stop()` (always)."""

    def __init__(self, scratch: Path, timings: Timings):
        self.scratch = scratch
        self.timings = timings
        self.logs = scratch / 'logs'
        self.conf = scratch / 'conf'
        self.certs = scratch / 'certs'
        self.keys = scratch / 'keys'
        self.state = scratch / 'state'
        self.runtime = scratch / 'run'
        self.bin = scratch / 'bin'
        self.node_dir = scratch / 'node'
        # ssh's ControlPath socket lives under the job dir: keep its path short.
        self.job_dir = scratch / 'j'
        for path in (self.logs, self.conf, self.certs, self.keys, self.state, self.runtime, self.bin,
                     self.node_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.netns = NetNamespace()
        self.procs = Processes(self.logs)
        self.git = GitRepos(scratch / 'git', scratch / 'work')
        self.api = Api(f'http://127.0.0.1:{WEB_PORT}', TENANT)
        self.zuul_conf = self.conf / 'zuul.conf'
        self.node_uid = free_uid()
        self.node_mnt_ns: str | None = None
        self.intermediate = {}
        self.final = {}
        self.hooks: HookReceiver | None = None

    # -- bring up ------------------------------------------------------------------------------

    def start(self, projects) -> None:
        """Start everything.

        projects() returns a dict of repository name to its initial commit
        (GitRepos.commit kwargs); it is called once the registries run.
        """
        check_installed()
        # PostgreSQL runs as its own user and must reach its data dir.
        self.scratch.chmod(0o755)
        with self.timings.phase('network namespace'):
            self.netns.enter()
        with self.timings.phase('certificates, keys and binaries'):
            self._certs_and_keys()
        with self.timings.phase('ZooKeeper (TLS)'):
            self._zookeeper()
        with self.timings.phase('PostgreSQL'):
            self._postgresql()
        with self.timings.phase('node sshd'):
            self._node()
        with self.timings.phase('stand-in Docker Hub, intermediate and final registries'):
            self._registries()
        with self.timings.phase('git repositories'):
            for name, commit in projects().items():
                self.git.create(name)
                self.git.commit(name, **commit)
        with self.timings.phase('Zuul components until the tenant and nodes are ready'):
            self._zuul()

    def _certs_and_keys(self) -> None:
        make_ca(self.certs)
        make_cert(self.certs, 'zookeeper')
        keystore = self.certs / 'zookeeper-keystore.pem'
        keystore.write_text((self.certs / 'zookeeper.pem').read_text() + (self.certs / 'zookeeper.key').read_text())
        make_cert(self.certs, 'zuul')
        make_cert(self.certs, 'dockerhub', dns=DOCKERHUB_NAMES)
        make_cert(self.certs, 'intermediate')
        make_cert(self.certs, 'final', dns=(FINAL_NAME,), ips=(FINAL_ADDR,))
        run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'zuul-executor', '-f', self.keys / 'executor'])
        for kind in ('rsa', 'ecdsa', 'ed25519'):
            size = ['-b', '2048'] if kind == 'rsa' else []
            run(['ssh-keygen', '-q', '-t', kind, *size, '-N', '', '-f', self.node_dir / f'ssh_host_{kind}_key'])
        # A snapshot of the binaries: others may rebuild target/ while the tests run.
        for name in ('speculum', 'speculum-registry'):
            src = BIN_DIR / name
            if not src.exists():
                raise StackError(f'{src} is missing: build it first (make e2e runs cargo build --bins)')
            shutil.copy2(src, self.bin / name)
            (self.bin / name).chmod(0o755)

    def _zookeeper(self) -> None:
        data = self.state / 'zookeeper'
        data.mkdir()
        cfg = render(CONFIG / 'zoo.cfg.in', self.conf / 'zoo.cfg', data=data, certs=self.certs, zk_port=ZK_PORT)
        # Debian's zookeeper.jar lacks netty-codec in its manifest Class-Path: the TLS path
        # then fails with NoClassDefFoundError and the server drops every handshake.
        classpath = ':'.join(f'/usr/share/java/{jar}' for jar in (
            'slf4j-simple.jar', 'zookeeper.jar', 'netty-codec.jar'))
        self.procs.start('zookeeper', [
            'java', '-Xmx512m', '-Dzookeeper.admin.enableServer=false', '-cp', classpath,
            'org.apache.zookeeper.server.quorum.QuorumPeerMain', cfg,
        ], cwd=self.state)
        wait_for('ZooKeeper to answer a TLS handshake', self._zk_handshake, 90,
                 diagnose=lambda: log_tail(self.logs / 'zookeeper.log'))

    def _zk_handshake(self) -> bool:
        self.procs.check_running('zookeeper')
        ctx = ssl.create_default_context(cafile=str(self.certs / 'ca.pem'))
        ctx.load_cert_chain(str(self.certs / 'zuul.pem'), str(self.certs / 'zuul.key'))
        with socket.create_connection(('127.0.0.1', ZK_PORT), timeout=3) as sock, \
                ctx.wrap_socket(sock, server_hostname='localhost'):
            return True

    def _postgresql(self) -> None:
        bindir = postgres_bindir()
        pg = self.state / 'postgresql'
        sock = pg / 'socket'
        sock.mkdir(parents=True)
        shutil.chown(pg, 'postgres', 'postgres')
        shutil.chown(sock, 'postgres', 'postgres')
        as_postgres = {'user': 'postgres', 'group': 'postgres', 'extra_groups': []}
        with open(self.logs / 'postgresql-initdb.log', 'w') as log:
            subprocess.run([str(bindir / 'initdb'), '-D', str(pg / 'data'), '-A', 'trust', '-U', 'postgres',
                            '-E', 'UTF8', '--no-sync'], stdout=log, stderr=subprocess.STDOUT, check=True,
                           timeout=120, cwd=pg, **as_postgres)
        self.procs.start('postgresql', [
            bindir / 'postgres', '-D', pg / 'data', '-c', 'listen_addresses=127.0.0.1', '-c', f'port={PG_PORT}',
            '-c', f'unix_socket_directories={sock}', '-c', 'fsync=off', '-c', 'synchronous_commit=off',
            '-c', 'full_page_writes=off',
        ], cwd=pg, **as_postgres)

        def ready():
            self.procs.check_running('postgresql')
            return subprocess.run([str(bindir / 'pg_isready'), '-h', str(sock), '-p', str(PG_PORT)],
                                  capture_output=True).returncode == 0

        wait_for('PostgreSQL', ready, 60, diagnose=lambda: log_tail(self.logs / 'postgresql.log'))
        psql = [bindir / 'psql', '-v', 'ON_ERROR_STOP=1', '-h', sock, '-p', PG_PORT, '-U', 'postgres',
                '-d', 'postgres']
        run([*psql, '-c', "CREATE ROLE zuul LOGIN PASSWORD 'zuul'"], cwd=pg)
        run([*psql, '-c', 'CREATE DATABASE zuul OWNER zuul'], cwd=pg)

    def _node(self) -> None:
        listen = '\n'.join(f'ListenAddress 127.0.0.1:{port}' for port in NODE_PORTS)
        render(CONFIG / 'sshd_config.in', self.node_dir / 'sshd_config', listen=listen, node=self.node_dir,
               user=NODE_USER, uid=self.node_uid)
        hosts = '\n'.join([f'127.0.0.1 {name}' for name in DOCKERHUB_NAMES] + [f'{FINAL_ADDR} {FINAL_NAME}'])
        env = {
            'PATH': CLEAN_PATH, 'LANG': 'C.UTF-8',
            'NODE_DIR': str(self.node_dir), 'NODE_USER': NODE_USER, 'NODE_UID': str(self.node_uid),
            'NODE_PUBKEY': str(self.keys / 'executor.pub'), 'NODE_HOSTS': hosts,
            'NODE_CA': str(self.certs / 'ca.pem'),
        }
        proc = self.procs.start('node', ['unshare', '--mount', '--propagation', 'private',
                                         CONFIG / 'node-setup.sh'], env=env)

        def ready():
            self.procs.check_running('node')
            if not all(port_open(port) for port in NODE_PORTS):
                return False
            ns = os.readlink(f'/proc/{proc.pid}/ns/mnt')
            return ns != os.readlink('/proc/self/ns/mnt') and ns

        self.node_mnt_ns = wait_for('the node sshd', ready, 60, diagnose=lambda: log_tail(self.logs / 'node.log'))

    def node_processes(self, match: str = '') -> list[tuple[int, list[str]]]:
        """(pid, argv) of the processes in the node's mount namespace whose argv contains match."""
        if not self.node_mnt_ns:
            return []
        found = []
        for pid in pids_in_mount_namespace(self.node_mnt_ns):
            argv = cmdline(pid)
            if match in ' '.join(argv):
                found.append((pid, argv))
        return found

    def node_exec(self, *argv, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command as root in the node's mount namespace (to look at what jobs left)."""
        sshd = self.procs.get('node').pid
        return run(['nsenter', f'--mount=/proc/{sshd}/ns/mnt', '--', *argv], timeout=timeout, check=False)

    def _registries(self) -> None:
        # Docker Hub's stand-in: the node resolves its names to 127.0.0.1 and trusts our CA.
        hub = self.state / 'dockerhub'
        cfg = self.conf / 'dockerhub.yaml'
        cfg.write_text(dump_yaml({
            'version': 0.1,
            'log': {'level': 'info'},
            'storage': {'filesystem': {'rootdirectory': str(hub)}, 'delete': {'enabled': True}},
            'http': {'addr': f'127.0.0.1:{DOCKERHUB_PORT}',
                     'tls': {'certificate': str(self.certs / 'dockerhub.pem'),
                             'key': str(self.certs / 'dockerhub.key')}},
        }))
        self.procs.start('dockerhub', ['docker-registry', 'serve', cfg])
        # The hooks of the registries' webhooks, each with its own token.
        self.webhook_token = secrets.token_urlsafe(12)
        self.cd_token = secrets.token_urlsafe(12)
        self.hooks = HookReceiver(WEBHOOK_PORT, tokens={'/hooks/docker': ('token', self.webhook_token),
                                                        CD_HOOK_PATH: ('secureToken', self.cd_token)})
        # The site's intermediate registry: a CD system's hook hears of every push the Docker Hub way.
        self.intermediate = self._speculum_registry(
            'intermediate', ('127.0.0.1', INTERMEDIATE_PORT), 'localhost', 'zuul',
            f'http://127.0.0.1:{WEBHOOK_PORT}/hooks/docker?token={self.webhook_token}')
        # The final registry: what the gate uploads to and promote tags in; its hook deploys.
        # Its token realm is its address, which this process reaches without the name.
        self.final = self._speculum_registry(
            'final', (FINAL_ADDR, 443), FINAL_NAME, 'publisher',
            f'http://127.0.0.1:{WEBHOOK_PORT}{CD_HOOK_PATH}?secureToken={self.cd_token}')
        for name, (addr, port) in (('dockerhub', ('127.0.0.1', DOCKERHUB_PORT)),
                                   ('intermediate', ('127.0.0.1', INTERMEDIATE_PORT)), ('final', (FINAL_ADDR, 443))):
            def up(name=name, addr=addr, port=port):
                self.procs.check_running(name)
                return port_open(port, addr)
            wait_for(name, up, 30, diagnose=lambda name=name: log_tail(self.logs / f'{name}.log'))
        # The base image the test project builds FROM: busybox, only on the stand-in.
        self.ca_dir = self.certs / 'ca-dir'
        self.ca_dir.mkdir()
        shutil.copy(self.certs / 'ca.pem', self.ca_dir / 'ca.crt')
        layout = _role_test_support().busybox_layout(self.state / 'base-layout', message='speculum e2e base')
        run(['skopeo', 'copy', '--quiet', '--dest-cert-dir', self.ca_dir, f'oci:{layout}:latest',
             f'docker://127.0.0.1:{DOCKERHUB_PORT}/{BASE_IMAGE}'], timeout=120)

    def _speculum_registry(self, name: str, listen: tuple[str, int], host: str, user: str, webhook: str) -> dict:
        """Start `speculum-registry serve` with TLS, one write user and a Docker Hub-format webhook.

        Jobs reach it as `name` (host, and the port unless it is 443); this process as `local`
        (its address, which the certificate also names), and so does its token realm,
        except on localhost.
        """
        password = secrets.token_urlsafe(18)
        root = self.state / name
        root.mkdir()
        addr, port = listen
        cfg = self.conf / f'{name}.yaml'
        cfg.write_text(dump_yaml({'registry': {
            'address': addr,
            'port': port,
            'public-url': f'https://{addr if host != "localhost" else host}:{port}',
            'tls-cert': str(self.certs / f'{name}.pem'),
            'tls-key': str(self.certs / f'{name}.key'),
            'secret': secrets.token_urlsafe(24),
            'users': [{'name': user, 'pass': password, 'access': 'write'}],
            'anonymous-read': False,
            'storage': {'driver': 'filesystem', 'root': str(root)},
            'webhooks': {'endpoints': [{
                'name': 'cd', 'url': webhook, 'format': 'dockerhub', 'events': ['push'],
                'max-retries': 5, 'backoff': '1s',
            }]},
        }}))
        self.procs.start(name, [self.bin / 'speculum-registry', 'serve', '--config', cfg])
        return {'host': host, 'port': port, 'username': user, 'password': password,
                'cert': (self.certs / 'ca.pem').read_text(),
                'name': host if port == 443 else f'{host}:{port}', 'local': f'{addr}:{port}'}

    def _speculum_where(self, registry: str, repository: str) -> list[str]:
        """skopeo's arguments for a repository of the intermediate or the final registry."""
        reg = {'intermediate': self.intermediate, 'final': self.final}[registry]
        return [f'docker://{reg["local"]}/{repository}', '--creds', f'{reg["username"]}:{reg["password"]}']

    def inspect(self, reference: str, registry: str = 'intermediate', raw: bool = False) -> dict:
        """skopeo inspect (or, raw, the manifest) of repository:tag in the intermediate or final
        registry, or the stand-in Docker Hub."""
        if registry in ('intermediate', 'final'):
            where = self._speculum_where(registry, reference)
        else:
            where = [f'docker://127.0.0.1:{DOCKERHUB_PORT}/{reference}']
        proc = run(['skopeo', 'inspect', '--no-tags', *(['--raw'] if raw else []), '--cert-dir', self.ca_dir,
                    *where], timeout=60)
        return json.loads(proc.stdout)

    def digest(self, reference: str, registry: str = 'intermediate') -> str:
        """The manifest digest of repository:tag (see inspect)."""
        return self.inspect(reference, registry)['Digest']

    def intermediate_tags(self, repository: str) -> list[str]:
        """The tags of a repository in the intermediate registry ([] when it has none)."""
        return self.tags(repository, 'intermediate')

    def tags(self, repository: str, registry: str) -> list[str]:
        """The tags of a repository in the intermediate or the final registry ([] when it has none)."""
        proc = run(['skopeo', 'list-tags', '--cert-dir', self.ca_dir, *self._speculum_where(registry, repository)],
                   timeout=60, check=False)
        if proc.returncode != 0:
            if 'name unknown' in proc.stderr.lower() or 'not found' in proc.stderr.lower():
                return []
            raise StackError(f'skopeo list-tags failed: {proc.stderr}')
        return json.loads(proc.stdout).get('Tags') or []

    def push_old_image(self, registry: str, reference: str, message: str) -> None:
        """Push a busybox image created long ago (2026-01-01) as repository:tag to a speculum registry."""
        layout = _role_test_support().busybox_layout(self.state / f'old-{secrets.token_hex(4)}', message=message)
        reg = {'intermediate': self.intermediate, 'final': self.final}[registry]
        run(['skopeo', 'copy', '--quiet', '--dest-cert-dir', self.ca_dir, '--dest-creds',
             f'{reg["username"]}:{reg["password"]}', f'oci:{layout}:latest',
             f'docker://{reg["local"]}/{reference}'], timeout=120)

    def metrics(self, registry: str) -> dict:
        """A speculum registry's /metrics: `requests` by (route, method), and `bytes_in`, `bytes_out`."""
        reg = {'intermediate': self.intermediate, 'final': self.final}[registry]
        request = urllib.request.Request(f'https://{reg["local"]}/metrics')
        auth = base64.b64encode(f'{reg["username"]}:{reg["password"]}'.encode()).decode()
        request.add_header('Authorization', f'Basic {auth}')
        context = ssl.create_default_context(cafile=str(self.certs / 'ca.pem'))
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            text = response.read().decode()
        found = {'requests': {}, 'bytes_in': 0, 'bytes_out': 0}
        for line in text.splitlines():
            if line.startswith('speculum_http_request_bytes_total '):
                found['bytes_in'] = int(float(line.split()[-1]))
            elif line.startswith('speculum_http_response_bytes_total '):
                found['bytes_out'] = int(float(line.split()[-1]))
            elif line.startswith('speculum_http_requests_total{'):
                labels, value = line[len('speculum_http_requests_total{'):].rsplit('} ', 1)
                fields = dict(part.split('=', 1) for part in labels.split(','))
                key = (fields['route'].strip('"'), fields['method'].strip('"'))
                found['requests'][key] = found['requests'].get(key, 0) + int(float(value))
        return found

    def _zuul(self) -> None:
        # What jobs on the executor see besides /usr and the job dir: Zuul's venv and Ansible,
        # the speculum binaries, and a CA bundle that also trusts the stand-ins.
        trust = self.scratch / 'trust'
        trust.mkdir(exist_ok=True)
        bundle = trust / 'ca-bundle.pem'
        bundle.write_text(Path('/etc/ssl/certs/ca-certificates.crt').read_text() + (self.certs / 'ca.pem').read_text())
        hosts = self.conf / 'executor-hosts'
        hosts.write_text(Path('/etc/hosts').read_text().rstrip('\n') + '\n'
                         + ''.join(f'127.0.0.1 {name}\n' for name in DOCKERHUB_NAMES)
                         + f'{FINAL_ADDR} {FINAL_NAME}\n')
        ro_paths = ':'.join([str(E2E_ROOT), str(self.bin), str(trust)])
        render(CONFIG / 'main.yaml.in', self.conf / 'main.yaml', tenant=TENANT, site_project=SITE_PROJECT,
               test_project=TEST_PROJECT)
        render(CONFIG / 'zuul.conf.in', self.zuul_conf, zk_port=ZK_PORT, certs=self.certs,
               keystore_password=secrets.token_hex(16), pg_port=PG_PORT, conf=self.conf, state=self.state,
               run=self.runtime, web_port=WEB_PORT, e2e_root=E2E_ROOT, keys=self.keys,
               finger_port=FINGER_PORT, ro_paths=ro_paths, git=self.git.root, job_dir=self.job_dir,
               auth_secret=secrets.token_hex(24))
        home = self.scratch / 'home'
        home.mkdir(exist_ok=True)
        self.job_dir.mkdir(exist_ok=True)
        for sub in ('executor', 'executor-git', 'merger-git', 'scheduler', 'launcher'):
            (self.state / sub).mkdir(exist_ok=True)
        env = {'PATH': f'{self.bin}:{ZUUL_BIN}:{CLEAN_PATH}', 'HOME': str(home), 'LANG': 'C.UTF-8',
               'LC_ALL': 'C.UTF-8', 'SSL_CERT_FILE': str(bundle), 'REQUESTS_CA_BUNDLE': str(bundle)}
        self.zuul_env = env
        components = {
            'zuul-scheduler': [],
            'zuul-web': [],
            'zuul-executor': ['--keep-jobdir'],
            'zuul-launcher': [],
        }
        for name, extra in components.items():
            short = name.split('-', 1)[1]
            logging_config(self.conf / f'logging-{short}.yaml', self.logs / f'{name}-debug.log')
            argv = [ZUUL_BIN / name, '-f', '-c', self.zuul_conf, *extra]
            if name == 'zuul-executor':
                argv = ['unshare', '--mount', '--propagation', 'private', CONFIG / 'executor-ns.sh', hosts, *argv]
            self.procs.start(name, argv, env=env, cwd=home)

        def diagnose():
            return '\n'.join(log_tail(self.logs / f'{name}-debug.log', 25) for name in components)

        def tenant_loaded():
            for name in components:
                self.procs.check_running(name)
            tenants = self.api.get('/api/tenants')
            return any(t.get('name') == TENANT for t in tenants)

        wait_for(f'zuul-web to list tenant {TENANT}', tenant_loaded, 420, interval=2, diagnose=diagnose)

        def components_running():
            for name in components:
                self.procs.check_running(name)
            comps = self.api.get('/api/components')
            states = {kind: [c.get('state') for c in comps.get(kind, [])] for kind in ('executor', 'launcher')}
            return all(s and all(x == 'running' for x in s) for s in states.values())

        wait_for('executor and launcher to be running', components_running, 300, interval=2, diagnose=diagnose)

        def nodes_ready():
            for name in components:
                self.procs.check_running(name)
            nodes = self.api.tget('/nodes')
            ready = [n for n in nodes if n.get('state') == 'ready']
            return len(ready) >= len(NODE_PORTS)

        def diagnose_nodes():
            parts = []
            for path in ('/nodes', '/providers', '/config-errors'):
                try:
                    parts.append(f'{path}: {json.dumps(self.api.tget(path))[:3000]}')
                except Exception as exc:  # noqa: BLE001 - diagnostics only
                    parts.append(f'{path}: {exc!r}')
            return '\n'.join(parts) + '\n' + diagnose()

        wait_for('the static nodes to be ready', nodes_ready, 180, interval=2, diagnose=diagnose_nodes)

    # -- tear down -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything that was started, by PID, whatever state it is in."""
        errors = []
        with self.timings.phase('stopping everything'):
            names = [name for name, _ in self.procs.started]
            if 'zuul-executor' in names:
                try:
                    run([ZUUL_BIN / 'zuul-executor', '-c', self.zuul_conf, 'stop'], timeout=30,
                        env=self.zuul_env, check=False)
                    self.procs.get('zuul-executor').wait(90)
                except Exception as exc:  # noqa: BLE001 - fall back to signals below
                    errors.append(f'zuul-executor stop: {exc!r}')
            for name in ('zuul-launcher', 'zuul-web', 'zuul-scheduler', 'zuul-executor'):
                if name in names:
                    self.procs.stop(name, signal.SIGTERM, 45)
            # Whatever jobs left on the node (registries, dockerd, ...), then sshd itself.
            if self.node_mnt_ns:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    for pid in pids_in_mount_namespace(self.node_mnt_ns):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                    with contextlib.suppress(StackError):
                        wait_for('node processes to exit',
                                 lambda: not pids_in_mount_namespace(self.node_mnt_ns), 20)
            if 'postgresql' in names:
                self.procs.stop('postgresql', signal.SIGINT, 60)  # fast shutdown
            self.procs.stop_all()
            if self.hooks is not None:
                self.hooks.stop()
            try:
                self.netns.leave()
            except StackError as exc:
                errors.append(str(exc))
        if errors:
            raise StackError('; '.join(errors))

    # -- helpers for the tests -----------------------------------------------------------------

    def admin_token(self) -> str:
        """An operator's token for the tenant's admin API (zuul-admin create-auth-token)."""
        proc = run([ZUUL_BIN / 'zuul-admin', '-c', self.zuul_conf, 'create-auth-token', '--auth-config',
                    'zuul_operator', '--tenant', TENANT, '--user', 'e2e-operator', '--expires-in', '600'],
                   timeout=60, env=self.zuul_env)
        # It prints "Bearer <token>".
        return proc.stdout.split()[-1]

    def dequeue(self, pipeline: str, project: str, ref: str) -> None:
        """Cancel a queued or running item as an operator would (the REST API's dequeue)."""
        status = self.api.post(f'/project/{project}/dequeue', {'pipeline': pipeline, 'ref': ref},
                               self.admin_token())
        if status != 200:
            raise StackError(f'dequeue answered {status}')

    def job_output(self, build_uuid: str, limit: int = 20000) -> str:
        """The end of a build's job-output.txt from the executor's kept job dir."""
        path = self.job_dir / build_uuid / 'work' / 'logs' / 'job-output.txt'
        try:
            text = path.read_text(errors='replace')
        except FileNotFoundError:
            return f'(no {path})'
        return text[-limit:]

    def job_logs(self, build_uuid: str) -> list[Path]:
        logs = self.job_dir / build_uuid / 'work' / 'logs'
        return [p for p in logs.rglob('*') if p.is_file()] if logs.exists() else []

    def build_results(self, build_uuid: str) -> dict:
        """What the build returned with zuul_return (data and secret_data), from its kept job dir."""
        path = self.job_dir / build_uuid / 'work' / 'results.json'
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return {}
        return json.loads(text) if text else {}

    def buildset_registry_passwords(self) -> dict[str, str]:
        """Build uuid to the password of the buildset registry it returned, for every build so far."""
        found = {}
        for results in self.job_dir.glob('*/work/results.json'):
            registry = (self.build_results(results.parent.parent.name).get('secret_data') or {}).get(
                'buildset_registry') or {}
            if registry.get('password'):
                found[results.parent.parent.name] = registry['password']
        return found

    def all_job_logs(self) -> list[Path]:
        return [p for p in self.job_dir.glob('*/work/logs/**/*') if p.is_file()]

    def component_logs(self, lines: int = 40) -> str:
        return '\n'.join(log_tail(self.logs / f'{name}-debug.log', lines)
                         for name in ('zuul-scheduler', 'zuul-executor', 'zuul-launcher'))


def free_uid(start: int = 2000) -> int:
    used = set()
    for line in Path('/etc/passwd').read_text().splitlines():
        parts = line.split(':')
        if len(parts) > 2 and parts[2].isdigit():
            used.add(int(parts[2]))
    for line in Path('/etc/group').read_text().splitlines():
        parts = line.split(':')
        if len(parts) > 2 and parts[2].isdigit():
            used.add(int(parts[2]))
    uid = start
    while uid in used:
        uid += 1
    return uid


def postgres_bindir() -> Path:
    candidates = sorted(Path('/usr/lib/postgresql').glob('*/bin/initdb'),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not candidates:
        raise StackError('PostgreSQL is not installed: run scripts/install-e2e-deps.sh')
    return candidates[-1].parent


def check_installed() -> None:
    if os.geteuid() != 0:
        raise StackError('the e2e stack needs root (network and mount namespaces, the node user)')
    missing = [str(p) for p in (ZUUL_BIN / 'zuul-scheduler', E2E_ROOT / 'ansible', Path('/usr/bin/bwrap'),
                                Path('/usr/sbin/sshd'), Path('/usr/share/java/zookeeper.jar'),
                                Path('/usr/bin/docker-registry'), Path('/usr/bin/sudo'))
               if not p.exists()]
    if missing:
        raise StackError(f'missing {missing}: run scripts/install-e2e-deps.sh')
    if sys.version_info < (3, 10):
        raise StackError('the harness needs Python >= 3.10')
