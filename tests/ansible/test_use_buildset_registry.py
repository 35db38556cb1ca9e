"""use-buildset-registry aimed at a scratch root, then real clients pulling through it."""

from __future__ import annotations

import base64
import json
import os
import tomllib

import conftest
import support

SITE_MIRROR_NOTE = 'site mirror kept after the buildset registry'


def _site_configs(root, closed):
    """Configuration a site already had: upstreams and mirrors on closed loopback ports."""
    (root / 'etc/containers').mkdir(parents=True, exist_ok=True)
    (root / 'etc/containers/registries.conf').write_text(f'''
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"

[[registry]]
prefix = "docker.io"
location = "127.0.0.1:{closed}"

[[registry.mirror]]
location = "127.0.0.1:{closed}/site-mirror"

[[registry]]
prefix = "quay.io"
location = "127.0.0.1:{closed}/quay.io"
''')
    (root / 'etc/docker').mkdir(parents=True, exist_ok=True)
    (root / 'etc/docker/daemon.json').write_text(json.dumps({
        'registry-mirrors': [f'https://127.0.0.1:{closed}/'],
        'log-level': 'warn',
    }))
    (root / 'etc/containerd/certs.d/docker.io').mkdir(parents=True, exist_ok=True)
    (root / 'etc/containerd/certs.d/docker.io/hosts.toml').write_text(
        f'server = "https://registry-1.docker.io"\n\n[host."https://127.0.0.1:{closed}"]\n'
        'capabilities = ["pull", "resolve"]\n')


def configure(ansible, root, registry, closed):
    _site_configs(root, closed)
    role_vars = conftest.scratch_root_vars(root)
    role_vars['buildset_registry'] = registry
    ansible.secrets.append(registry['password'])
    ansible.role('use-buildset-registry', role_vars, extra_vars={'zuul': ansible.zuul_vars()})
    return role_vars


def test_writes_every_runtime_config(ansible, tmp_path, buildset_registry):
    registry = buildset_registry['registry']
    root = tmp_path / 'root'
    closed = support.closed_port()
    configure(ansible, root, registry, closed)
    addr = f'localhost:{registry["port"]}'

    conf = tomllib.loads((root / 'etc/containers/registries.conf').read_text())
    by_prefix = {entry['prefix']: entry for entry in conf['registry']}
    assert [m['location'] for m in by_prefix['docker.io']['mirror']] == [
        addr, f'127.0.0.1:{closed}/site-mirror'], SITE_MIRROR_NOTE
    assert by_prefix['docker.io']['location'] == f'127.0.0.1:{closed}'
    assert by_prefix['quay.io']['mirror'][0]['location'] == f'{addr}/quay.io'
    assert by_prefix['gcr.io']['mirror'][0]['location'] == f'{addr}/gcr.io'
    assert by_prefix['registry.k8s.io']['location'] == 'registry.k8s.io'
    assert conf['short-name-mode'] == 'permissive'
    assert conf['unqualified-search-registries'] == ['docker.io']

    daemon = json.loads((root / 'etc/docker/daemon.json').read_text())
    assert daemon['registry-mirrors'] == [f'https://{addr}/', f'https://127.0.0.1:{closed}/']
    assert daemon['log-level'] == 'warn'

    buildkit = tomllib.loads((root / 'etc/buildkit/buildkitd.toml').read_text())
    assert buildkit['registry']['docker.io']['mirrors'] == [addr]
    assert buildkit['registry']['quay.io']['mirrors'] == [f'{addr}/quay.io']
    assert buildkit['registry'][addr]['ca'] == [str(root / 'etc/buildkit/buildset-registry-ca.crt')]

    hosts = tomllib.loads((root / 'etc/containerd/certs.d/docker.io/hosts.toml').read_text())
    assert hosts['server'] == 'https://registry-1.docker.io'
    assert list(hosts['host']) == [f'https://{addr}', f'https://127.0.0.1:{closed}']
    quay = tomllib.loads((root / 'etc/containerd/certs.d/quay.io/hosts.toml').read_text())
    assert quay['server'] == 'https://quay.io'
    assert quay['host'][f'https://{addr}']['capabilities'] == ['pull', 'resolve']

    for certs in ('etc/containers/certs.d', 'etc/docker/certs.d', 'etc/containerd/certs.d'):
        assert (root / certs / addr / 'ca.crt').read_text() == registry['cert']
    assert (root / 'ca/zuul-jobs.buildset-registry.crt').read_text() == registry['cert']
    # The host is a name, so /etc/hosts is left alone.
    assert 'zuul-jobs.buildset-registry' not in (root / 'etc/hosts').read_text()

    expected = base64.b64encode(f'zuul:{registry["password"]}'.encode()).decode()
    for auth in ('home/.docker/config.json', 'run/containers/auth.json'):
        path = root / auth
        assert oct(path.stat().st_mode & 0o777) == '0o600'
        assert json.loads(path.read_text())['auths'][addr]['auth'] == expected

    # A second run changes nothing.
    proc = ansible.role('use-buildset-registry', {**conftest.scratch_root_vars(root), 'buildset_registry': registry},
                        extra_vars={'zuul': ansible.zuul_vars()})
    recap = [line for line in proc.stdout.splitlines() if line.startswith('localhost')][-1]
    assert 'changed=0' in recap, proc.stdout


def test_skopeo_and_podman_pull_through_the_buildset_registry(ansible, tmp_path, buildset_registry,
                                                              containers_storage):
    conftest.require_tools('skopeo', 'podman')
    registry = buildset_registry['registry']
    root = tmp_path / 'root'
    configure(ansible, root, registry, support.closed_port())
    addr = f'localhost:{registry["port"]}'
    conf = str(root / 'etc/containers/registries.conf')
    certs = str(root / 'etc/containers/certs.d' / addr)
    auth = str(root / 'run/containers/auth.json')

    for image in (f'docker.io/{conftest.DOCKER_IMAGE}', conftest.QUAY_IMAGE):
        out = tmp_path / ('skopeo-' + image.replace('/', '_'))
        support.run(['skopeo', '--insecure-policy', '--registries-conf', conf, 'copy',
                     '--src-cert-dir', certs, '--src-authfile', auth,
                     f'docker://{image}:latest', f'oci:{out}:latest'], timeout=120)
        assert (out / 'index.json').exists()

    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=conf)
    for image in (f'docker.io/{conftest.DOCKER_IMAGE}', conftest.QUAY_IMAGE):
        support.run(['podman', *containers_storage, 'pull', '--cert-dir', certs, '--authfile', auth,
                     f'{image}:latest'], env=env, timeout=120)
        listed = support.run(['podman', *containers_storage, 'image', 'exists', f'{image}:latest'], env=env)
        assert listed.returncode == 0
    # Unqualified names resolve to docker.io and come from the buildset registry too.
    support.run(['podman', *containers_storage, 'pull', '--cert-dir', certs, '--authfile', auth,
                 f'{conftest.DOCKER_IMAGE}:latest'], env=env, timeout=120)


def test_ip_host_gets_the_alias_and_registry_comes_from_results_file(ansible, tmp_path):
    """With an IP host the alias goes to the hosts file; the role reads buildset_registry from results.json."""
    registry = {'host': '2001:db8::5', 'port': 5000, 'username': 'zuul',
                'password': 'not-a-real-password-0123', 'cert': '-----BEGIN CERTIFICATE-----\nX\n'}
    ansible.results_file.write_text(json.dumps({'data': {}, 'secret_data': {'buildset_registry': registry}}))
    root = tmp_path / 'root'
    ansible.secrets.append(registry['password'])
    ansible.role('use-buildset-registry', conftest.scratch_root_vars(root), extra_vars={'zuul': ansible.zuul_vars()})
    assert '2001:db8::5\tzuul-jobs.buildset-registry' in (root / 'etc/hosts').read_text()
    conf = tomllib.loads((root / 'etc/containers/registries.conf').read_text())
    locations = {e['prefix']: e['mirror'][0]['location'] for e in conf['registry']}
    assert locations['docker.io'] == 'zuul-jobs.buildset-registry:5000'
    assert locations['quay.io'] == 'zuul-jobs.buildset-registry:5000/quay.io'


def test_missing_registry_fails_clearly(ansible, tmp_path):
    proc = ansible.role('use-buildset-registry', conftest.scratch_root_vars(tmp_path / 'root'),
                        extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert 'run-buildset-registry first' in proc.stdout
