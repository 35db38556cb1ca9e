"""build-container-image with buildah: FROM an image that only the buildset registry holds."""

from __future__ import annotations

import json

import conftest
import support


def use_registry(ansible, tmp_path, buildset_registry):
    """Run use-buildset-registry in a scratch root; returns (role vars, client options, env)."""
    registry = buildset_registry['registry']
    root = tmp_path / 'root'
    role_vars = conftest.scratch_root_vars(root)
    (root / 'etc/containers').mkdir(parents=True, exist_ok=True)
    closed = support.closed_port()
    # Upstreams point at a closed loopback port: nothing can come from the internet.
    (root / 'etc/containers/registries.conf').write_text(
        f'[[registry]]\nprefix = "docker.io"\nlocation = "127.0.0.1:{closed}"\n\n'
        f'[[registry]]\nprefix = "quay.io"\nlocation = "127.0.0.1:{closed}/quay.io"\n')
    ansible.secrets.append(registry['password'])
    ansible.role('use-buildset-registry', {**role_vars, 'buildset_registry': registry},
                 extra_vars={'zuul': ansible.zuul_vars()})
    addr = f'localhost:{registry["port"]}'
    client = ['--cert-dir', str(root / 'etc/containers/certs.d' / addr),
              '--authfile', str(root / 'run/containers/auth.json')]
    env = {'CONTAINERS_REGISTRIES_CONF': role_vars['use_buildset_registry_registries_conf'],
           'REGISTRY_AUTH_FILE': str(root / 'run/containers/auth.json')}
    return role_vars, client, env


def test_buildah_builds_from_a_speculative_quay_image(ansible, tmp_path, buildset_registry, containers_storage):
    conftest.require_tools('buildah', 'skopeo')
    registry = buildset_registry['registry']
    _, client, env = use_registry(ansible, tmp_path, buildset_registry)
    src = tmp_path / 'src'
    (src / 'app').mkdir(parents=True)
    (src / 'app' / 'Containerfile').write_text(
        f'FROM {conftest.QUAY_IMAGE}:latest\nARG GREETING\nCOPY nonce.txt /nonce.txt\n')
    (src / 'app' / 'nonce.txt').write_text('nonce\n')
    images = [{'context': 'app', 'container_filename': 'Containerfile',
               'repository': 'quay.io/speculative/built', 'tags': ['latest', '1.0'],
               'build_args': ['GREETING=hi'], 'labels': ['org.example.test=yes']}]
    ansible.role('build-container-image', {
        'container_command': 'buildah',
        'container_images': images,
        'zuul_work_dir': str(src),
        'buildset_registry': registry,
        'build_container_image_isolation': 'chroot',
        'build_container_image_command_options': containers_storage,
        'build_container_image_build_options': client,
        'build_container_image_push_options': client,
        'build_container_image_environment': env,
    }, extra_vars={'zuul': ansible.zuul_vars()})

    listed = support.run(['buildah', *containers_storage, 'images', '--format', '{{.Name}}:{{.Tag}}'])
    for tag in ('latest', 'change_123_latest', '1.0', 'change_123_1.0'):
        assert f'quay.io/speculative/built:{tag}' in listed.stdout
    for tag in ('latest', '1.0'):
        inspected = support.skopeo('inspect', '--cert-dir', str(buildset_registry['certs']),
                                   f'docker://localhost:{registry["port"]}/quay.io/speculative/built:{tag}')
        labels = json.loads(inspected.stdout)['Labels']
        assert labels['org.zuul-ci.change'] == '123'
        assert labels['org.example.test'] == 'yes'
        # Two layers: the speculative base and the COPY.
        assert len(json.loads(inspected.stdout)['Layers']) == 2


def test_containerfile_only_project_with_siblings_and_relative_src_dir(
        ansible, tmp_path, buildset_registry, containers_storage):
    """As Zuul runs it: zuul_work_dir is the relative src_dir, the project has
    only a Containerfile (no -f is passed), and a sibling project is copied in."""
    conftest.require_tools('buildah', 'skopeo')
    registry = buildset_registry['registry']
    _, client, env = use_registry(ansible, tmp_path, buildset_registry)
    # Modules of a local connection start in the playbook's directory, as a
    # node's start in the user's home, where Zuul's relative src_dir resolves.
    home = ansible.workdir
    project = home / 'src/example.org/org/app'
    project.mkdir(parents=True)
    (project / 'Containerfile').write_text(
        f'FROM {conftest.QUAY_IMAGE}:latest\nCOPY .zuul-siblings/example.org/org/lib/lib.txt /lib.txt\n')
    sibling = home / 'src/example.org/org/lib'
    sibling.mkdir(parents=True)
    (sibling / 'lib.txt').write_text('sibling\n')
    images = [{'context': '.', 'repository': 'quay.io/speculative/sibling', 'tags': ['latest'],
               'siblings': ['example.org/org/lib']}]
    role_vars = {
        'container_command': 'buildah',
        'container_images': images,
        'zuul_work_dir': 'src/example.org/org/app',
        'build_container_image_siblings_root': str(home / 'src'),
        'buildset_registry': registry,
        'build_container_image_isolation': 'chroot',
        'build_container_image_command_options': containers_storage,
        'build_container_image_build_options': client,
        'build_container_image_push_options': client,
        'build_container_image_environment': env,
    }
    proc = ansible.role('build-container-image', role_vars, extra_vars={'zuul': ansible.zuul_vars()})
    assert ' -f ' not in proc.stdout and "'-f'" not in proc.stdout
    assert not (project / '.zuul-siblings').exists()
    inspected = support.skopeo('inspect', '--cert-dir', str(buildset_registry['certs']),
                               f'docker://localhost:{registry["port"]}/quay.io/speculative/sibling:latest')
    assert len(json.loads(inspected.stdout)['Layers']) == 2


def test_a_registry_with_a_port_fails_before_building(ansible, tmp_path):
    """<buildset registry>/host:5000/app is no valid reference: say so, instead of a builder's parse error."""
    registry = {'host': '127.0.0.1', 'port': support.closed_port(), 'username': 'zuul', 'password': 'unused',
                'cert': ''}
    proc = ansible.role('build-container-image', {
        'container_command': 'buildah',
        'container_images': [{'context': '.', 'repository': 'registry.example.org:5000/org/app'}],
        'zuul_work_dir': str(tmp_path),
        'buildset_registry': registry,
    }, extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert 'a registry with a port cannot be mirrored by the buildset registry' in proc.stdout
