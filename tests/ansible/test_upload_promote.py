"""upload-container-image and promote-container-image against Debian's docker-registry standing in for Docker Hub."""

from __future__ import annotations

import json

import conftest
import support


def tags(registry, repo):
    proc = support.skopeo('list-tags', '--tls-verify=false',
                          '--creds', f'{registry["username"]}:{registry["password"]}',
                          f'docker://{registry["addr"]}/{repo}')
    return sorted(json.loads(proc.stdout)['Tags'])


def test_upload_then_promote(ansible, tmp_path, reference_registry, containers_storage, busybox_layout):
    conftest.require_tools('buildah', 'skopeo')
    support.binary('speculum')
    hub = reference_registry
    ansible.secrets.append(hub['password'])
    repo = f'{hub["addr"]}/org/app'
    src = tmp_path / 'src'
    (src / 'app').mkdir(parents=True)
    (src / 'app' / 'Containerfile').write_text('FROM scratch\nCOPY nonce.txt /nonce.txt\n')
    (src / 'app' / 'nonce.txt').write_text('nonce\n')
    images = [{'context': 'app', 'container_filename': 'Containerfile', 'repository': repo, 'tags': ['latest', '1.0']}]
    credentials = {hub['addr']: {'username': hub['username'], 'password': hub['password'] + '\n',
                                 'repository': r'^127\.0\.0\.1:\d+/org/.*$', 'insecure': True}}
    zuul = ansible.zuul_vars()

    ansible.role('build-container-image', {
        'container_command': 'buildah', 'container_images': images, 'zuul_work_dir': str(src),
        'build_container_image_isolation': 'chroot',
        'build_container_image_command_options': containers_storage,
    }, extra_vars={'zuul': zuul})

    ansible.role('upload-container-image', {
        'container_command': 'buildah', 'container_images': images,
        'container_registry_credentials': credentials,
        'upload_container_image_command_options': containers_storage,
        'upload_container_image_login_options': ['--tls-verify=false'],
        'upload_container_image_push_options': ['--tls-verify=false'],
    }, extra_vars={'zuul': zuul})
    assert tags(hub, 'org/app') == ['change_123_1.0', 'change_123_latest']

    # A stale temporary tag from an old change (its image was created long ago)
    # and an unrelated tag that the cleanup must leave alone.
    creds = f'{hub["username"]}:{hub["password"]}'
    # Distinct images, so that deleting one by digest touches no other tag.
    for tag in ('change_99_latest', 'keep-me'):
        layout = support.busybox_layout(tmp_path / f'layout-{tag}', message=tag)
        support.skopeo('copy', '--dest-tls-verify=false', '--dest-creds', creds,
                       f'oci:{layout}:latest', f'docker://{repo}:{tag}')
    uploaded = support.skopeo('inspect', '--tls-verify=false', '--creds', creds, f'docker://{repo}:change_123_latest')

    ansible.role('promote-container-image', {
        'container_images': images, 'container_registry_credentials': credentials,
    }, extra_vars={'zuul': zuul})
    # distribution deletes only by digest, and the temporary tags now share
    # their digest with the final tags: they stay (reported), the rest is exact.
    assert tags(hub, 'org/app') == ['1.0', 'change_123_1.0', 'change_123_latest', 'keep-me', 'latest']
    promoted = support.skopeo('inspect', '--tls-verify=false', '--creds', creds, f'docker://{repo}:latest')
    assert json.loads(promoted.stdout)['Digest'] == json.loads(uploaded.stdout)['Digest']


def test_upload_refuses_a_repository_outside_the_credentials(ansible, tmp_path, reference_registry):
    hub = reference_registry
    ansible.secrets.append(hub['password'])
    images = [{'context': 'app', 'repository': f'{hub["addr"]}/other/app'}]
    credentials = {hub['addr']: {'username': 'zuul', 'password': hub['password'], 'repository': '^nomatch/.*$'}}
    proc = ansible.role('upload-container-image', {
        'container_command': 'buildah', 'container_images': images,
        'container_registry_credentials': credentials,
    }, extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert 'does not match their repository pattern' in proc.stdout


def test_release_upload_pushes_final_tags(ansible, tmp_path, reference_registry, containers_storage):
    conftest.require_tools('buildah')
    hub = reference_registry
    ansible.secrets.append(hub['password'])
    repo = f'{hub["addr"]}/org/release'
    src = tmp_path / 'src'
    (src / 'app').mkdir(parents=True)
    (src / 'app' / 'Dockerfile').write_text('FROM scratch\nCOPY nonce.txt /nonce.txt\n')
    (src / 'app' / 'nonce.txt').write_text('nonce\n')
    images = [{'context': 'app', 'repository': repo, 'tags': ['3', '3.19']}]
    # A tag pipeline: no change, so temporary tags would be <pipeline>_<tag>.
    zuul = ansible.zuul_vars(pipeline='release')
    del zuul['change']
    del zuul['change_url']
    ansible.role('build-container-image', {
        'container_command': 'buildah', 'container_images': images, 'zuul_work_dir': str(src),
        'build_container_image_isolation': 'chroot', 'build_container_image_command_options': containers_storage,
    }, extra_vars={'zuul': zuul})
    listed = support.run(['buildah', *containers_storage, 'images', '--format', '{{.Tag}}'])
    assert 'release_3.19' in listed.stdout.split()
    ansible.role('upload-container-image', {
        'container_command': 'buildah', 'container_images': images,
        'container_registry_credentials': {hub['addr']: {'username': 'zuul', 'password': hub['password']}},
        'upload_container_image_promote': False,
        'upload_container_image_command_options': containers_storage,
        'upload_container_image_login_options': ['--tls-verify=false'],
        'upload_container_image_push_options': ['--tls-verify=false'],
    }, extra_vars={'zuul': zuul})
    assert tags(hub, 'org/release') == ['3', '3.19']


def test_intermediate_registry_method_uploads_nothing(ansible):
    # As in zuul-jobs: promote copies from the intermediate registry, so the
    # gate pushes nothing to the final registry. The registry is a closed
    # port and the image was never built: any login or push would fail.
    addr = f'127.0.0.1:{support.closed_port()}'
    images = [{'context': 'app', 'repository': f'{addr}/org/app', 'tags': ['latest']}]
    proc = ansible.role('upload-container-image', {
        'container_command': 'podman', 'container_images': images,
        'container_registry_credentials': {addr: {'username': 'zuul', 'password': 'unused'}},
        'promote_container_image_method': 'intermediate-registry',
    }, extra_vars={'zuul': ansible.zuul_vars()})
    output = proc.stdout + proc.stderr
    assert 'Nothing is uploaded: promote_container_image_method is intermediate-registry' in output
    assert 'changed=0' in output
    assert 'failed=0' in output


def test_promote_without_a_change_takes_the_upload_pipelines_tags(ansible, tmp_path, reference_registry):
    # A tag or branch push has no change: the upload in `gate` pushed gate_<tag>,
    # and the promote job, in another pipeline, promotes and cleans those.
    conftest.require_tools('skopeo')
    hub = reference_registry
    ansible.secrets.append(hub['password'])
    repo = f'{hub["addr"]}/org/nochange'
    creds = f'{hub["username"]}:{hub["password"]}'
    for tag, message in (('gate_latest', 'tested'), ('promote_latest', 'wrong pipeline')):
        layout = support.busybox_layout(tmp_path / f'layout-{tag}', message=message)
        support.skopeo('copy', '--dest-tls-verify=false', '--dest-creds', creds,
                       f'oci:{layout}:latest', f'docker://{repo}:{tag}')
    zuul = ansible.zuul_vars(pipeline='promote')
    del zuul['change'], zuul['patchset'], zuul['change_url']
    ansible.role('promote-container-image', {
        'container_images': [{'repository': repo, 'tags': ['latest']}],
        'container_registry_credentials': {hub['addr']: {'username': hub['username'], 'password': hub['password'],
                                                         'insecure': True}},
        'promote_container_image_pipeline': 'gate',
    }, extra_vars={'zuul': zuul})

    def digest(tag):
        proc = support.skopeo('inspect', '--tls-verify=false', '--creds', creds, f'docker://{repo}:{tag}')
        return json.loads(proc.stdout)['Digest']
    assert digest('latest') == digest('gate_latest') != digest('promote_latest')
