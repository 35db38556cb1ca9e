"""Starting each registry on loopback, on fresh empty storage, with equivalent
settings: TLS (or plain HTTP), one write user, nothing else.

- speculum: `speculum-registry buildset --listen 127.0.0.1:0 --info-file F
  --root DIR` (its own certificate and `zuul` password, read from F), or
  `speculum-registry serve --config F` where a section needs the
  intermediate registry (section 8) or S3 storage (section 9);
- distribution: Debian's `docker-registry serve config.yml`, htpasswd auth
  (bcrypt) and the peers' self-signed certificate; its file system driver,
  or a `storage:` mapping of the section's (S3 in section 9);
- zuul-registry 1.3.0 (PyPI venv): the config bench/registry.sh used, with a
  write user; TLS only here.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from . import api, record
from .proc import BenchError, Server, poll, run

START_TIMEOUT = 60
_SEQ = itertools.count()

# The display names, in the order of the interleaving and of the tables.
SPECULUM, DISTRIBUTION, ZUUL = 'speculum', 'distribution', 'zuul-registry'
ALL = (SPECULUM, DISTRIBUTION, ZUUL)
HTTP_CAPABLE = (SPECULUM, DISTRIBUTION)


@dataclass
class Env:
    """Where things are: binaries, the peers' certificate, the work dir."""
    work: Path
    bin_dir: Path
    zuul_venv: Path
    peer_cert: Path = Path()
    peer_key: Path = Path()
    peer_cert_dir: Path = Path()
    htpasswd: Path = Path()
    user: str = 'bench'
    password: str = 'bench-password'


@dataclass
class Registry:
    """One running registry."""
    kind: str
    server: Server
    port: int
    tls: bool
    ca: Path | None
    cert_dir: Path | None
    user: str
    password: str
    storage: Path
    ready_s: float = 0.0

    @property
    def host(self) -> str:
        return f'127.0.0.1:{self.port}'

    @property
    def base(self) -> str:
        return f'{"https" if self.tls else "http"}://{self.host}'

    def auth(self, scope: str) -> str:
        """The Authorization header value for `scope`."""
        return api.auth_header(self.base, self.ca, self.user, self.password, scope)

    def stop(self) -> None:
        self.server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def fresh_dir(env: Env, label: str) -> Path:
    path = env.work / f'{label}-{next(_SEQ)}'
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def yaml_lines(mapping: dict, depth: int) -> list[str]:
    """`mapping` as block YAML lines indented by `depth` levels; strings are
    JSON-quoted, so a key like Swift's `test:tester` or an all-digit secret
    stays a string."""
    out = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            out += [f'{"  " * depth}{key}:', *yaml_lines(value, depth + 1)]
        else:
            out.append(f'{"  " * depth}{key}: {json.dumps(value)}')
    return out


def prepare(env: Env) -> None:
    """The peers' self-signed certificate (IP SAN 127.0.0.1, not a CA) and
    htpasswd file."""
    env.peer_cert_dir = env.work / 'peer-certs'
    env.peer_cert_dir.mkdir(parents=True, exist_ok=True)
    env.peer_cert = env.peer_cert_dir / 'ca.crt'
    env.peer_key = env.work / 'peer.key'
    run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
         '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName = IP:127.0.0.1,DNS:localhost',
         # rustls (the speculum helper) refuses a CA certificate as a server's.
         '-addext', 'basicConstraints = critical,CA:FALSE',
         '-addext', 'extendedKeyUsage = serverAuth',
         '-keyout', env.peer_key, '-out', env.peer_cert], timeout=60)
    env.htpasswd = env.work / 'htpasswd'
    line = run(['htpasswd', '-Bbn', env.user, env.password], timeout=30).stdout.strip()
    env.htpasswd.write_text(line + '\n')


def wait_ready(server: Server, port: int, tls: bool) -> float:
    """Probe `GET /v2/` every 2 ms until it answers: seconds since the start."""
    def ready():
        if not server.alive():
            raise BenchError(f'{server.name} exited: {server.log_tail()}')
        return api.probe(port, tls)
    poll(f'{server.name} on port {port}', ready, START_TIMEOUT, interval=0.002)
    return time.perf_counter() - server.started


def start(env: Env, kind: str, tls: bool = True, port: int = 0) -> Registry:
    """Start `kind` (SPECULUM, DISTRIBUTION or ZUUL) on empty storage; with
    `port`, its `ready_s` is the time until `GET /v2/` answers."""
    starter = {SPECULUM: start_speculum, DISTRIBUTION: start_distribution, ZUUL: start_zuul}[kind]
    return starter(env, tls, port=port)


def start_speculum(env: Env, tls: bool = True, port: int = 0) -> Registry:
    """Port 0 lets it pick one and waits for its info file; with a port it
    waits for `GET /v2/` to answer first."""
    d = fresh_dir(env, 'speculum')
    info_file = d / 'info.json'
    cmd = [env.bin_dir / 'speculum-registry', 'buildset', '--listen', f'127.0.0.1:{port}',
           '--info-file', info_file, '--root', d / 'storage']
    if not tls:
        cmd.append('--insecure-http')
    server = Server('speculum buildset', cmd, d / 'log')
    ready = wait_ready(server, port, tls) if port else 0.0

    def info():
        if not server.alive():
            raise BenchError(f'speculum buildset exited: {server.log_tail()}')
        try:
            return json.loads(info_file.read_text())
        except (OSError, ValueError):
            return None
    doc = poll('speculum buildset info file', info, START_TIMEOUT, interval=0.002)
    ca = cert_dir = None
    if tls:
        cert_dir = d / 'certs'
        cert_dir.mkdir()
        ca = cert_dir / 'ca.crt'
        ca.write_text(doc['cert'])
    ready = ready or time.perf_counter() - server.started
    return Registry(SPECULUM, server, int(doc['port']), tls, ca, cert_dir,
                    doc['username'], doc['password'], d / 'storage', ready)


def start_distribution(env: Env, tls: bool = True, auth: bool = True, port: int = 0,
                       storage: dict | None = None, label: str = '') -> Registry:
    """`storage`: the config's `storage:` mapping, else the file system;
    `label` names the config in the report."""
    d = fresh_dir(env, 'distribution')
    port = port or free_port()
    storage = storage or {'filesystem': {'rootdirectory': str(d / 'storage')},
                          'delete': {'enabled': True}}
    lines = [
        'version: 0.1',
        'log: {level: error, accesslog: {disabled: true}}',
        'storage:',
        *yaml_lines(storage, 1),
        f'auth: {{htpasswd: {{realm: bench, path: {env.htpasswd}}}}}' if auth else '',
        'http:',
        f'  addr: 127.0.0.1:{port}',
        '  secret: bench',
    ]
    if tls:
        lines.append(f'  tls: {{certificate: {env.peer_cert}, key: {env.peer_key}}}')
    (d / 'config.yml').write_text('\n'.join(line for line in lines if line) + '\n')
    record.config(label or f'distribution{"" if auth else " (no auth)"}, {"TLS" if tls else "HTTP"}',
                  (d / 'config.yml').read_text())
    # aws-sdk-go reads $AWS_CA_BUNDLE (set on some machines) and then panics at the start of
    # the s3 driver: distribution's HTTP transport is not the type it can add a CA to.
    env_vars = {k: v for k, v in os.environ.items() if k != 'AWS_CA_BUNDLE'}
    server = Server('distribution', ['docker-registry', 'serve', d / 'config.yml'], d / 'log',
                    env=env_vars)
    ready = wait_ready(server, port, tls)
    return Registry(DISTRIBUTION, server, port, tls, env.peer_cert if tls else None,
                    env.peer_cert_dir if tls else None, env.user, env.password, d / 'storage',
                    ready)


def zuul_config(env: Env, d: Path, port: int) -> Path:
    config = d / 'registry.yaml'
    config.write_text(f"""registry:
  address: '127.0.0.1'
  port: {port}
  public-url: https://127.0.0.1:{port}
  tls-cert: {env.peer_cert}
  tls-key: {env.peer_key}
  secret: bench-secret
  users:
    - name: {env.user}
      pass: {env.password}
      access: write
  storage:
    driver: filesystem
    root: {d / 'storage'}
""")
    return config


def start_zuul(env: Env, tls: bool = True, port: int = 0) -> Registry:
    if not tls:
        raise BenchError('zuul-registry runs with TLS only in this bench')
    d = fresh_dir(env, 'zuul')
    (d / 'storage').mkdir()
    port = port or free_port()
    config = zuul_config(env, d, port)
    record.config('zuul-registry', config.read_text())
    server = Server('zuul-registry', [env.zuul_venv / 'bin' / 'zuul-registry', '-c', config, 'serve'],
                    d / 'log', env={**os.environ, 'PYTHONDONTWRITEBYTECODE': '1'})
    ready = wait_ready(server, port, True)
    return Registry(ZUUL, server, port, True, env.peer_cert, env.peer_cert_dir,
                    env.user, env.password, d / 'storage', ready)


def start_speculum_serve(env: Env, storage: dict | None = None, kind: str = 'speculum serve',
                         label: str = 'speculum-registry serve') -> Registry:
    """`speculum-registry serve`: TLS with the peers' certificate, a write
    user; `storage`: the config's `storage:` mapping, else the file system;
    `kind` names it in the results, `label` its config in the report."""
    d = fresh_dir(env, 'speculum-serve')
    port = free_port()
    storage = storage or {'driver': 'filesystem', 'root': str(d / 'storage')}
    config = d / 'registry.yaml'
    config.write_text('\n'.join([
        'registry:',
        '  address: 127.0.0.1',
        f'  port: {port}',
        f'  tls-cert: {env.peer_cert}',
        f'  tls-key: {env.peer_key}',
        '  users:',
        f'    - {{name: {env.user}, pass: {env.password}, access: write}}',
        '  storage:',
        *yaml_lines(storage, 2)]) + '\n')
    record.config(label, config.read_text())
    server = Server('speculum serve', [env.bin_dir / 'speculum-registry', 'serve', '--config', config],
                    d / 'log')
    wait_ready(server, port, True)
    return Registry(kind, server, port, True, env.peer_cert, env.peer_cert_dir,
                    env.user, env.password, d / 'storage')
