"""A private Docker daemon using the daemon.json that use-buildset-registry wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import conftest
import support

DOCKER_CERTS = Path('/etc/docker/certs.d')


@pytest.fixture
def docker_with_mirror(ansible, tmp_path, buildset_registry, dockerd):
    """use-buildset-registry in a scratch root, then dockerd started with its daemon.json."""
    registry = buildset_registry['registry']
    ansible.secrets.append(registry['password'])
    addr = f'localhost:{registry["port"]}'
    root = tmp_path / 'root'
    role_vars = conftest.scratch_root_vars(root)
    # dockerd reads certificates only from /etc/docker/certs.d: this one
    # directory (named after this registry's port) is real, and removed below.
    role_vars['use_buildset_registry_docker_certs_dir'] = str(DOCKER_CERTS)
    (root / 'etc/docker').mkdir(parents=True, exist_ok=True)
    closed = support.closed_port()
    # The site's own mirror (a closed loopback port) stays listed after ours.
    (root / 'etc/docker/daemon.json').write_text(json.dumps({'registry-mirrors': [f'https://127.0.0.1:{closed}/']}))
    try:
        ansible.role('use-buildset-registry', {**role_vars, 'buildset_registry': registry},
                     extra_vars={'zuul': ansible.zuul_vars()})
        assert (DOCKER_CERTS / addr / 'ca.crt').read_text() == registry['cert']
        daemon = dockerd(root / 'etc/docker/daemon.json')
        env = dict(daemon['env'], DOCKER_CONFIG=str(root / 'home/.docker'))
        src = tmp_path / 'src'
        (src / 'app').mkdir(parents=True)
        (src / 'app' / 'Dockerfile').write_text(
            f'FROM {conftest.DOCKER_IMAGE}:latest\nARG GREETING\nRUN echo "$GREETING from the build" > /built\n')
        yield {'env': env, 'addr': addr, 'src': src, 'registry': registry,
               'build_env': {'DOCKER_HOST': daemon['host'], 'DOCKER_CONFIG': str(root / 'home/.docker')}}
    finally:
        shutil.rmtree(DOCKER_CERTS / addr, ignore_errors=True)


def test_docker_pulls_runs_and_builds_from_the_buildset_registry(ansible, docker_with_mirror):
    setup = docker_with_mirror
    env = setup['env']
    # docker.io/<org>/<img> comes from the buildset registry mirror, and runs.
    support.run(['docker', 'pull', f'docker.io/{conftest.DOCKER_IMAGE}:latest'], env=env, timeout=180)
    out = support.run(['docker', 'run', '--rm', '--network', 'none', f'{conftest.DOCKER_IMAGE}:latest'], env=env)
    assert out.stdout.strip() == 'speculative'
    support.run(['docker', 'rmi', f'{conftest.DOCKER_IMAGE}:latest'], env=env)

    # build-docker-image (classic builder: Debian has no buildx) FROM the
    # speculative image, which the build pulls through the mirror itself.
    ansible.role('build-docker-image', {
        'docker_images': [{'context': 'app', 'repository': 'speculative/built',
                           'build_args': ['GREETING=hello'], 'tags': ['latest']}],
        'zuul_work_dir': str(setup['src']),
        'build_container_image_environment': setup['build_env'],
    }, extra_vars={'zuul': ansible.zuul_vars()})
    for tag in ('latest', 'change_123_latest'):
        out = support.run(['docker', 'run', '--rm', '--network', 'none', f'speculative/built:{tag}',
                           'cat', '/built'], env=env)
        assert out.stdout.strip() == 'hello from the build'
    labels = json.loads(support.run(['docker', 'image', 'inspect', 'speculative/built:latest'], env=env).stdout)
    assert labels[0]['Config']['Labels']['org.zuul-ci.change'] == '123'


def test_docker_build_pushes_to_the_buildset_registry(ansible, docker_with_mirror, buildset_registry):
    setup = docker_with_mirror
    ansible.role('build-docker-image', {
        'docker_images': [{'context': 'app', 'repository': 'speculative/pushed',
                           'build_args': ['GREETING=hello'], 'tags': ['latest']}],
        'zuul_work_dir': str(setup['src']),
        'buildset_registry': setup['registry'],
        'build_container_image_environment': setup['build_env'],
    }, extra_vars={'zuul': ansible.zuul_vars()})
    inspected = support.skopeo('inspect', '--cert-dir', str(buildset_registry['certs']),
                               f'docker://{setup["addr"]}/speculative/pushed:latest')
    assert json.loads(inspected.stdout)['Labels']['org.zuul-ci.change'] == '123'


def test_docker_wrappers_build_upload_and_promote(ansible, tmp_path, reference_registry, dockerd):
    """build-, upload- and promote-docker-image with docker_images and docker_credentials."""
    hub = reference_registry
    ansible.secrets.append(hub['password'])
    config = tmp_path / 'daemon.json'
    config.write_text('{}')
    daemon = dockerd(config)
    build_env = {'DOCKER_HOST': daemon['host'], 'DOCKER_CONFIG': str(tmp_path / 'docker-config')}
    src = tmp_path / 'src'
    (src / 'app').mkdir(parents=True)
    (src / 'app' / 'Dockerfile.app').write_text('FROM scratch\nCOPY nonce.txt /nonce.txt\n')
    (src / 'app' / 'nonce.txt').write_text('nonce\n')
    common = {
        'docker_images': [{'context': 'app', 'dockerfile': 'Dockerfile.app', 'repository': 'org/wrapped',
                           'tags': ['latest', '2']}],
        'docker_registry': hub['addr'],
        'zuul_work_dir': str(src),
    }
    credentials = {'username': hub['username'], 'password': hub['password'],
                   'repository': r'^127\.0\.0\.1:\d+/org/', 'insecure': True}
    zuul = {'zuul': ansible.zuul_vars()}
    ansible.role('build-docker-image', {**common, 'build_container_image_environment': build_env}, extra_vars=zuul)
    ansible.role('upload-docker-image', {**common, 'docker_credentials': credentials,
                                         'upload_container_image_environment': build_env}, extra_vars=zuul)
    creds = f'{hub["username"]}:{hub["password"]}'
    listed = support.skopeo('list-tags', '--tls-verify=false', '--creds', creds, f'docker://{hub["addr"]}/org/wrapped')
    assert sorted(json.loads(listed.stdout)['Tags']) == ['change_123_2', 'change_123_latest']
    ansible.role('promote-docker-image', {**common, 'docker_credentials': credentials}, extra_vars=zuul)
    listed = support.skopeo('list-tags', '--tls-verify=false', '--creds', creds, f'docker://{hub["addr"]}/org/wrapped')
    assert {'2', 'latest'} <= set(json.loads(listed.stdout)['Tags'])
