"""Helpers for the role tests: paths, running ansible-playbook, images, daemons."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# SPECULUM_TEST_BIN_DIR points the tests at binaries built elsewhere.
BIN_DIR = Path(os.environ.get('SPECULUM_TEST_BIN_DIR', REPO / 'target' / 'debug'))
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable


def zuul_action_plugins() -> Path:
    import zuul  # the zuul package from requirements-test.txt

    return Path(zuul.__file__).parent / 'ansible' / 'base' / 'action'


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        raise RuntimeError(f'{path} is missing: build it first with `cargo build --bins` (make test-ansible does)')
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on: upstream fallbacks fail at once."""
    return free_port()


def wait_for_port(port: int, timeout: float = 30.0, host: str = '127.0.0.1') -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f'nothing listens on {host}:{port} after {timeout}s')


def run(argv, check=True, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{argv!r} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}')
    return proc


class Ansible:
    """Runs real ansible-playbook against localhost with Zuul's zuul_return."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.jobdir = workdir / 'jobdir'
        (self.jobdir / 'work').mkdir(parents=True, exist_ok=True)
        self.results_file = self.jobdir / 'work' / 'results.json'
        # Zuul creates the results file empty before the job; zuul_return
        # expects it to exist.
        if not self.results_file.exists():
            self.results_file.write_text('')
        self.tmpdir = workdir / 'tmp'
        self.tmpdir.mkdir(exist_ok=True)
        self.secrets: list[str] = []
        self.outputs: list[str] = []
        self.count = 0

    def zuul_vars(self, **extra) -> dict:
        zuul = {
            'build': 'a' * 32,
            'change': '123',
            'patchset': '1',
            'pipeline': 'check',
            'change_url': 'https://review.example.org/123',
            'project': {'src_dir': str(self.workdir / 'src')},
            'executor': {
                'result_data_file': str(self.results_file),
                'work_root': str(self.jobdir / 'work'),
            },
            'artifacts': [],
        }
        zuul.update(extra)
        return zuul

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            'ANSIBLE_ROLES_PATH': str(REPO / 'roles'),
            'ANSIBLE_ACTION_PLUGINS': str(zuul_action_plugins()),
            'ANSIBLE_LOCAL_TEMP': str(self.workdir / 'ansible-local'),
            'ANSIBLE_REMOTE_TEMP': str(self.workdir / 'ansible-remote'),
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_HOST_KEY_CHECKING': 'False',
            'ANSIBLE_RETRY_FILES_ENABLED': 'False',
            'ANSIBLE_STDOUT_CALLBACK': 'default',
            'ZUUL_JOBDIR': str(self.jobdir),
            # Private temporary files of the roles land here, where tests can
            # check that they were removed.
            'TMPDIR': str(self.tmpdir),
            'PATH': f'{BIN_DIR}:{VENV_BIN}:{env.get("PATH", "/usr/bin:/bin")}',
        })
        return env

    # The interpreter for modules, and where ansible-playbook starts (None:
    # here); a runner for another user changes both.
    python = PYTHON
    cwd = None

    def command(self, argv: list[str], inputs: list[Path]) -> list[str]:
        """The command line that runs ansible-playbook argv; inputs are the
        files it reads, for a runner that must hand them to another user."""
        return argv

    def play(self, plays, extra_vars=None, expect_failure=False, timeout=600,
             inventory='localhost,') -> subprocess.CompletedProcess:
        """Run plays (a list of play dicts) and check that no known secret leaks.

        inventory is an ansible-playbook -i argument; the default targets
        localhost only.
        """
        self.count += 1
        playbook = self.workdir / f'playbook-{self.count}.yaml'
        varsfile = self.workdir / f'vars-{self.count}.json'
        playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
        varsfile.write_text(json.dumps(extra_vars or {}))
        argv = self.command([
            str(VENV_BIN / 'ansible-playbook'), '-vv',
            '-i', inventory, '-c', 'local',
            '-e', f'ansible_python_interpreter={self.python}',
            '-e', f'@{varsfile}',
            str(playbook),
        ], [playbook, varsfile])
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=timeout,
                              cwd=self.cwd)
        output = proc.stdout + proc.stderr
        self.outputs.append(output)
        (self.workdir / f'output-{self.count}.txt').write_text(output)
        if expect_failure:
            assert proc.returncode != 0, f'playbook unexpectedly passed:\n{output}'
        else:
            assert proc.returncode == 0, f'playbook failed ({proc.returncode}):\n{output}'
        self.assert_no_secrets()
        return proc

    def role(self, name, role_vars=None, extra_vars=None, tasks_from=None, **kw):
        include = {'name': name}
        if tasks_from:
            include['tasks_from'] = tasks_from
        task = {'name': f'Run {name}', 'ansible.builtin.include_role': include}
        if role_vars:
            task['vars'] = role_vars
        play = {'hosts': 'localhost', 'gather_facts': False, 'tasks': [task]}
        return self.play([play], extra_vars=extra_vars, **kw)

    def results(self) -> dict:
        text = self.results_file.read_text() if self.results_file.exists() else ''
        return json.loads(text) if text.strip() else {}

    def assert_no_secrets(self):
        for output in self.outputs:
            for secret in self.secrets:
                assert secret not in output, 'a secret appeared in ansible output'


def stop_pidfile(pidfile: Path, timeout: float = 10.0) -> None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    stop_pid(pid, timeout)


@contextlib.contextmanager
def served(argv, log_path: Path, port: int, timeout: float = 30.0):
    """Run a server in the background until the block ends; it must listen on
    127.0.0.1:port first. Its output goes to log_path."""
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, timeout)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its reaper is not running)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return False
    return stat.rsplit(')', 1)[1].split()[0] != 'Z'


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- test images -----------------------------------------------------------

def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / 'blobs' / 'sha256' / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f'sha256:{digest}', len(data)


def busybox_layout(layout: Path, tag: str = 'latest', message: str = 'speculative') -> Path:
    """Write an OCI image layout whose one layer is Debian's static busybox.

    /bin/busybox plus /bin/sh -> busybox; Cmd prints `message`.
    """
    busybox = Path('/bin/busybox')
    if not busybox.exists():
        raise RuntimeError('/bin/busybox is missing: install Debian busybox-static')
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode='w', format=tarfile.PAX_FORMAT) as tar:
        for name in ('bin', 'tmp', 'etc'):
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755 if name != 'tmp' else 0o1777
            info.mtime = 0
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo('bin/busybox')
        info.size = len(data)
        info.mode = 0o755
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
        for link in ('sh', 'echo', 'cat', 'touch', 'ls'):
            info = tarfile.TarInfo(f'bin/{link}')
            info.type = tarfile.SYMTYPE
            info.linkname = 'busybox'
            info.mtime = 0
            tar.addfile(info)
    uncompressed = raw.getvalue()
    compressed = gzip.compress(uncompressed, mtime=0)
    diff_id = 'sha256:' + hashlib.sha256(uncompressed).hexdigest()
    layer_digest, layer_size = _blob(layout, compressed)
    config = {
        'created': '2026-01-01T00:00:00Z',
        'architecture': 'amd64',
        'os': 'linux',
        'config': {
            'Env': ['PATH=/bin'],
            'Cmd': ['/bin/sh', '-c', f'echo {message}'],
        },
        'rootfs': {'type': 'layers', 'diff_ids': [diff_id]},
        'history': [{'created': '2026-01-01T00:00:00Z', 'created_by': 'speculum tests'}],
    }
    config_digest, config_size = _blob(layout, json.dumps(config).encode())
    manifest = {
        'schemaVersion': 2,
        'mediaType': 'application/vnd.oci.image.manifest.v1+json',
        'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                   'digest': config_digest, 'size': config_size},
        'layers': [{'mediaType': 'application/vnd.oci.image.layer.v1.tar+gzip',
                    'digest': layer_digest, 'size': layer_size}],
    }
    manifest_digest, manifest_size = _blob(layout, json.dumps(manifest).encode())
    (layout / 'oci-layout').write_text(json.dumps({'imageLayoutVersion': '1.0.0'}))
    index = {
        'schemaVersion': 2,
        'manifests': [{
            'mediaType': 'application/vnd.oci.image.manifest.v1+json',
            'digest': manifest_digest, 'size': manifest_size,
            'annotations': {'org.opencontainers.image.ref.name': tag},
        }],
    }
    (layout / 'index.json').write_text(json.dumps(index))
    return layout


def cert_dir_for(base: Path, registry: dict) -> Path:
    """A skopeo/podman --cert-dir holding the buildset registry CA."""
    path = base / f'certs-{registry["port"]}'
    path.mkdir(parents=True, exist_ok=True)
    (path / 'ca.crt').write_text(registry['cert'])
    return path


def skopeo(*args, check=True, timeout=120) -> subprocess.CompletedProcess:
    return run(['skopeo', '--insecure-policy', *args], check=check, timeout=timeout)


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
