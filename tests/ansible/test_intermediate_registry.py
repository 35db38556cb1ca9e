"""push-to-intermediate-registry and pull-from-intermediate-registry with the speculum helper."""

from __future__ import annotations

import json

import conftest
import support

BUILD = 'b' * 32


def test_push_then_pull_through_the_intermediate_registry(ansible, tmp_path, buildset_registry):
    support.binary('speculum')
    registry = buildset_registry['registry']
    ansible.secrets.append(registry['password'])
    # The intermediate registry: another speculum registry, with TLS and a password.
    _, intermediate, ir_root = conftest.start_buildset_registry(tmp_path / 'ir')
    _, fresh, fresh_root = conftest.start_buildset_registry(tmp_path / 'fresh')
    try:
        ansible.secrets += [intermediate['password'], fresh['password']]
        images = [{'context': '.', 'repository': f'docker.io/{conftest.DOCKER_IMAGE}', 'tags': ['latest']},
                  {'context': '.', 'repository': conftest.QUAY_IMAGE}]
        ansible.role('push-to-intermediate-registry', {
            'container_images': images, 'buildset_registry': registry, 'intermediate_registry': intermediate,
        }, extra_vars={'zuul': ansible.zuul_vars(build=BUILD)})
        artifacts = ansible.results()['data']['zuul']['artifacts']
        by_repo = {a['metadata']['repository']: a for a in artifacts}
        assert set(by_repo) == {f'docker.io/{conftest.DOCKER_IMAGE}', conftest.QUAY_IMAGE}
        for artifact in artifacts:
            assert artifact['metadata']['type'] == 'container_image'
            assert artifact['metadata']['tag'] == 'latest'
            assert artifact['url'].endswith(f':{BUILD}_latest')
        ir_certs = support.cert_dir_for(tmp_path, intermediate)
        support.skopeo('inspect', '--cert-dir', str(ir_certs),
                       '--creds', f'zuul:{intermediate["password"]}',
                       f'docker://localhost:{intermediate["port"]}/{conftest.QUAY_IMAGE}:{BUILD}_latest')
        assert list(ansible.tmpdir.glob('speculum-*')) == [], 'the variables file was left behind'

        # A later buildset: its fresh registry gets the images under their final names.
        later = support.Ansible(tmp_path / 'later')
        later.secrets = ansible.secrets
        later.role('pull-from-intermediate-registry', {
            'buildset_registry': fresh, 'intermediate_registry': intermediate,
        }, extra_vars={'zuul': later.zuul_vars(artifacts=artifacts + [
            {'name': 'docs', 'url': 'https://example.org/docs', 'metadata': {'type': 'docs'}}])})
        fresh_certs = support.cert_dir_for(tmp_path / 'later', fresh)
        for ref in (conftest.DOCKER_IMAGE, conftest.QUAY_IMAGE):
            out = support.skopeo('inspect', '--cert-dir', str(fresh_certs),
                                 f'docker://localhost:{fresh["port"]}/{ref}:latest')
            assert json.loads(out.stdout)['Architecture'] == 'amd64'
        assert list(later.tmpdir.glob('speculum-*')) == []
    finally:
        support.stop_pidfile(ir_root / 'registry.pid')
        support.stop_pidfile(fresh_root / 'registry.pid')


def test_push_skips_a_failed_job(ansible, buildset_registry):
    registry = buildset_registry['registry']
    ansible.secrets.append(registry['password'])
    proc = ansible.role('push-to-intermediate-registry', {
        'container_images': [{'context': '.', 'repository': 'docker.io/x/y'}],
        'buildset_registry': registry,
        'intermediate_registry': {'host': '127.0.0.1', 'port': support.closed_port(),
                                  'username': 'zuul', 'password': 'unused-password'},
    }, extra_vars={'zuul': ansible.zuul_vars(), 'zuul_success': False})
    assert 'The job failed: nothing to push' in proc.stdout
    assert ansible.results() == {}


def test_pull_without_artifacts_does_nothing(ansible):
    proc = ansible.role('pull-from-intermediate-registry', {
        'intermediate_registry': {'host': '127.0.0.1', 'port': support.closed_port()},
    }, extra_vars={'zuul': ansible.zuul_vars()})
    assert 'No container image artifacts' in proc.stdout


def stored_blobs(root) -> list:
    """The blobs a buildset registry started by run-buildset-registry holds."""
    return [p for p in (root / 'storage' / 'blobs').rglob('*') if p.is_file()]


def test_lazy_pull_registers_and_blobs_follow_the_pulls(ansible, tmp_path, busybox_layout):
    support.binary('speculum')
    # The intermediate registry: a speculum registry with TLS, a password and a token service.
    _, intermediate, ir_root = conftest.start_buildset_registry(tmp_path / 'ir')
    _, fresh, fresh_root = conftest.start_buildset_registry(tmp_path / 'fresh')
    try:
        ansible.secrets += [intermediate['password'], fresh['password']]
        ir_ref = f'localhost:{intermediate["port"]}/{conftest.QUAY_IMAGE}:{BUILD}_latest'
        support.skopeo('copy', '--dest-cert-dir', str(support.cert_dir_for(tmp_path, intermediate)),
                       '--dest-creds', f'zuul:{intermediate["password"]}',
                       f'oci:{busybox_layout}:latest', f'docker://{ir_ref}')
        artifacts = [{'name': f'{conftest.QUAY_IMAGE}:latest', 'url': f'docker://{ir_ref}',
                      'metadata': {'type': 'container_image', 'repository': conftest.QUAY_IMAGE, 'tag': 'latest'}}]
        proc = ansible.role('pull-from-intermediate-registry', {
            'buildset_registry': fresh, 'intermediate_registry': intermediate,
            'pull_from_intermediate_registry_method': 'lazy',
        }, extra_vars={'zuul': ansible.zuul_vars(artifacts=artifacts)})
        assert 'method: lazy' in proc.stdout
        assert f'registered {conftest.QUAY_IMAGE}:latest = sha256:' in proc.stdout
        assert stored_blobs(fresh_root) == [], 'the lazy pull copied blobs'
        assert list(ansible.tmpdir.glob('speculum-*')) == [], 'the variables file was left behind'

        # A pull through the buildset registry fetches what it needs, and only that.
        fresh_certs = support.cert_dir_for(tmp_path / 'later', fresh)
        out = support.skopeo('inspect', '--cert-dir', str(fresh_certs),
                             f'docker://localhost:{fresh["port"]}/{conftest.QUAY_IMAGE}:latest')
        assert json.loads(out.stdout)['Architecture'] == 'amd64'
        assert len(stored_blobs(fresh_root)) == 1, 'inspect reads the config blob alone'
    finally:
        support.stop_pidfile(ir_root / 'registry.pid')
        support.stop_pidfile(fresh_root / 'registry.pid')


def test_lazy_pull_copies_when_the_registry_has_no_token_service(
        ansible, tmp_path, busybox_layout, reference_registry):
    support.binary('speculum')
    # docker-registry with htpasswd speaks HTTP Basic only.
    ir = reference_registry
    ir_ref = f'{ir["addr"]}/{conftest.QUAY_IMAGE}:{BUILD}_latest'
    support.skopeo('copy', '--dest-tls-verify=false', '--dest-creds', f'zuul:{ir["password"]}',
                   f'oci:{busybox_layout}:latest', f'docker://{ir_ref}')
    _, fresh, fresh_root = conftest.start_buildset_registry(tmp_path / 'fresh')
    try:
        ansible.secrets += [ir['password'], fresh['password']]
        artifacts = [{'name': f'{conftest.QUAY_IMAGE}:latest', 'url': f'docker://{ir_ref}',
                      'metadata': {'type': 'container_image', 'repository': conftest.QUAY_IMAGE, 'tag': 'latest'}}]
        intermediate = {'host': ir['host'], 'port': ir['port'], 'username': 'zuul',
                        'password': ir['password'], 'insecure': True}
        proc = ansible.role('pull-from-intermediate-registry', {
            'buildset_registry': fresh, 'intermediate_registry': intermediate,
            'pull_from_intermediate_registry_method': 'lazy',
        }, extra_vars={'zuul': ansible.zuul_vars(artifacts=artifacts)})
        assert 'Lazy pull refused, copying instead' in proc.stdout
        assert 'only HTTP Basic' in proc.stdout
        assert 'method: copy' in proc.stdout
        assert stored_blobs(fresh_root) != [], 'nothing was copied'
        fresh_certs = support.cert_dir_for(tmp_path / 'later', fresh)
        support.skopeo('inspect', '--cert-dir', str(fresh_certs),
                       f'docker://localhost:{fresh["port"]}/{conftest.QUAY_IMAGE}:latest')
    finally:
        support.stop_pidfile(fresh_root / 'registry.pid')
