"""Fixtures for the Ansible role tests.

Everything runs against localhost with real tools: ansible-playbook from the
venv, Zuul's zuul_return action plugin, the speculum binaries from
target/debug, skopeo, podman, buildah, dockerd and docker-registry. Servers
listen on loopback or unix sockets only, and every fixture stops what it
started, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402

DOCKER_IMAGE = 'speculative/app'
QUAY_IMAGE = 'quay.io/speculative/quay-app'


def require_tools(*names):
    missing = [name for name in names if shutil.which(name) is None and not Path(name).exists()]
    if missing:
        pytest.fail(f'missing tools {missing}: run scripts/install-test-deps.sh')


@pytest.fixture
def ansible(tmp_path):
    return support.Ansible(tmp_path)


@pytest.fixture(scope='session')
def busybox_layout(tmp_path_factory):
    return support.busybox_layout(tmp_path_factory.mktemp('layout'))


def start_buildset_registry(workdir: Path, host: str = 'localhost'):
    """Start a buildset registry with run-buildset-registry; returns (ansible, registry, root)."""
    support.binary('speculum-registry')
    runner = support.Ansible(workdir)
    root = workdir / 'br'
    try:
        runner.role('run-buildset-registry', {
            'run_buildset_registry_root': str(root),
            'run_buildset_registry_port': 0,
            'run_buildset_registry_listen_address': '127.0.0.1',
            'run_buildset_registry_host': host,
        }, extra_vars={'zuul': runner.zuul_vars()})
        registry = runner.results()['secret_data']['buildset_registry']
    except BaseException:
        # The role may have started the registry before it failed.
        support.stop_pidfile(root / 'registry.pid')
        raise
    runner.secrets.append(registry['password'])
    return runner, registry, root


def seed(registry: dict, layout: Path, workdir: Path, *repos: str) -> None:
    """Copy the busybox image into the registry under each repository."""
    certs = support.cert_dir_for(workdir, registry)
    for repo in repos:
        support.skopeo(
            'copy', '--dest-cert-dir', str(certs),
            '--dest-creds', f'{registry["username"]}:{registry["password"]}',
            f'oci:{layout}:latest', f'docker://localhost:{registry["port"]}/{repo}:latest')


@pytest.fixture(scope='session')
def buildset_registry(tmp_path_factory, busybox_layout):
    """A buildset registry started by the role and seeded with two images.

    docker.io's speculative/app is stored un-prefixed; quay.io's under its host.
    """
    require_tools('skopeo')
    workdir = tmp_path_factory.mktemp('buildset')
    runner, registry, root = start_buildset_registry(workdir)
    try:
        seed(registry, busybox_layout, workdir, DOCKER_IMAGE, QUAY_IMAGE)
        yield {'registry': registry, 'root': root, 'secrets': runner.secrets,
               'certs': support.cert_dir_for(workdir, registry)}
    finally:
        support.stop_pidfile(root / 'registry.pid')


@pytest.fixture
def reference_registry(tmp_path):
    """Debian's docker-registry on loopback (plain HTTP), standing in for Docker Hub."""
    require_tools('docker-registry')
    import bcrypt

    port = support.free_port()
    password = 'stand-in-password'
    htpasswd = tmp_path / 'htpasswd'
    htpasswd.write_text('zuul:' + bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode() + '\n')
    config = support.write_yaml(tmp_path / 'registry.yaml', {
        'version': 0.1,
        'log': {'level': 'warn'},
        'storage': {'filesystem': {'rootdirectory': str(tmp_path / 'data')}, 'delete': {'enabled': True}},
        'http': {'addr': f'127.0.0.1:{port}'},
        'auth': {'htpasswd': {'realm': 'speculum-tests', 'path': str(htpasswd)}},
    })
    with support.served(['docker-registry', 'serve', str(config)], tmp_path / 'registry.log', port):
        yield {'host': '127.0.0.1', 'port': port, 'addr': f'127.0.0.1:{port}',
               'username': 'zuul', 'password': password}


@pytest.fixture
def containers_storage(tmp_path):
    """Global options for podman/buildah with a private vfs store."""
    root = tmp_path / 'storage'
    # podman refuses a runroot path longer than 50 characters.
    runroot = Path(tempfile.mkdtemp(prefix='spc-run-', dir='/tmp'))
    opts = ['--storage-driver', 'vfs', '--root', str(root / 'root'), '--runroot', str(runroot)]
    yield opts
    # vfs layers can hold read-only files; let the tools remove them.
    subprocess.run(['buildah', *opts, 'rm', '--all'], capture_output=True)
    subprocess.run(['podman', *opts, 'system', 'reset', '--force'], capture_output=True)
    subprocess.run(['chmod', '-R', 'u+w', str(root)], capture_output=True)
    shutil.rmtree(runroot, ignore_errors=True)


def read_json(path: Path):
    return json.loads(path.read_text())


def scratch_root_vars(root: Path) -> dict:
    """use-buildset-registry variables that aim every path under root."""
    for sub in ('etc/containers/certs.d', 'etc/docker/certs.d', 'etc/buildkit', 'etc/containerd',
                'ca', 'home', 'run/containers'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    hosts = root / 'etc' / 'hosts'
    if not hosts.exists():
        hosts.write_text('127.0.0.1\tlocalhost\n')
    return {
        'use_buildset_registry_become': False,
        'use_buildset_registry_restart': False,
        'use_buildset_registry_hosts_file': str(hosts),
        'use_buildset_registry_ca_dir': str(root / 'ca'),
        'use_buildset_registry_ca_command': 'true',
        'use_buildset_registry_registries_conf': str(root / 'etc/containers/registries.conf'),
        'use_buildset_registry_containers_certs_dir': str(root / 'etc/containers/certs.d'),
        'use_buildset_registry_docker_daemon_json': str(root / 'etc/docker/daemon.json'),
        'use_buildset_registry_docker_certs_dir': str(root / 'etc/docker/certs.d'),
        'use_buildset_registry_buildkitd_toml': str(root / 'etc/buildkit/buildkitd.toml'),
        'use_buildset_registry_buildkit_ca_file': str(root / 'etc/buildkit/buildset-registry-ca.crt'),
        'use_buildset_registry_containerd_certs_dir': str(root / 'etc/containerd/certs.d'),
        'use_buildset_registry_docker_config': str(root / 'home/.docker/config.json'),
        'use_buildset_registry_containers_auth_file': str(root / 'run/containers/auth.json'),
    }


@pytest.fixture
def dockerd(tmp_path):
    """Start a private Docker daemon; yields a function that starts it with a daemon.json.

    Own data root, exec root, unix socket and pid file; vfs storage, no
    iptables, no bridge. Stopped and removed at teardown.
    """
    require_tools('/usr/sbin/dockerd', 'docker')
    short = Path(tempfile.mkdtemp(prefix='spc-dk-', dir='/tmp'))  # unix socket paths are short
    state = {}

    def start(config_file: Path) -> dict:
        sock = short / 'docker.sock'
        log = open(tmp_path / 'dockerd.log', 'w')
        proc = subprocess.Popen([
            '/usr/sbin/dockerd',
            '--data-root', str(tmp_path / 'docker-data'),
            '--exec-root', str(short / 'exec'),
            '-H', f'unix://{sock}',
            '--pidfile', str(short / 'docker.pid'),
            '--config-file', str(config_file),
            '--storage-driver=vfs', '--iptables=false', '--ip6tables=false', '--bridge=none',
        ], stdout=log, stderr=subprocess.STDOUT)
        state['proc'], state['log'] = proc, log
        env = dict(os.environ, DOCKER_HOST=f'unix://{sock}')
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError('dockerd exited:\n' + (tmp_path / 'dockerd.log').read_text())
            if subprocess.run(['docker', 'version'], env=env, capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError('dockerd did not start:\n' + (tmp_path / 'dockerd.log').read_text())
            time.sleep(0.5)
        return {'env': env, 'host': f'unix://{sock}'}

    yield start
    proc = state.get('proc')
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        state['log'].close()
    subprocess.run(['chmod', '-R', 'u+w', str(tmp_path / 'docker-data')], capture_output=True)
    shutil.rmtree(tmp_path / 'docker-data', ignore_errors=True)
    shutil.rmtree(short, ignore_errors=True)


def pytest_configure(config):
    # zuul imports PyYAML's old _yaml location; not ours to fix.
    config.addinivalue_line('filterwarnings', 'ignore:The _yaml extension module:DeprecationWarning')
