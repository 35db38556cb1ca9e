"""The job playbooks end to end on localhost: the buildset registry job and a site build job around it,
with the site config example's thin trusted playbooks for the intermediate registry."""

from __future__ import annotations

import json

import yaml

import conftest
import support

BUILD = 'c' * 32
SITE = support.REPO / 'doc/examples/site-config'


def _run_playbook(ansible, path, extra_vars):
    """Run one of playbooks/ as Zuul would: the job's variables as extra vars,
    one node named "node" (reached locally) and the executor as implicit localhost."""
    plays = yaml.safe_load((support.REPO / path).read_text())  # path may be absolute
    inventory = ansible.workdir / 'inventory.ini'
    inventory.write_text('node ansible_connection=local\n')
    return ansible.play(plays, extra_vars=extra_vars, inventory=str(inventory))


def test_buildset_registry_job_with_a_build(tmp_path, busybox_layout, containers_storage):
    conftest.require_tools('buildah', 'skopeo')
    support.binary('speculum')
    ansible = support.Ansible(tmp_path / 'job')
    # The intermediate registry, holding an image of a change ahead.
    _, intermediate, ir_root = conftest.start_buildset_registry(tmp_path / 'ir')
    root = tmp_path / 'root'
    br_root = tmp_path / 'br'
    try:
        ansible.secrets.append(intermediate['password'])
        conftest.seed(intermediate, busybox_layout, tmp_path, f'quay.io/ahead/base:{"d" * 32}_latest'.split(':')[0])
        support.skopeo('copy', '--src-cert-dir', str(support.cert_dir_for(tmp_path, intermediate)),
                       '--dest-cert-dir', str(support.cert_dir_for(tmp_path, intermediate)),
                       '--dest-creds', f'zuul:{intermediate["password"]}',
                       f'docker://localhost:{intermediate["port"]}/quay.io/ahead/base:latest',
                       f'docker://localhost:{intermediate["port"]}/quay.io/ahead/base:{"d" * 32}_latest')
        artifacts = [{'name': 'quay.io/ahead/base:latest',
                      'url': f'docker://localhost:{intermediate["port"]}/quay.io/ahead/base:{"d" * 32}_latest',
                      'metadata': {'type': 'container_image', 'repository': 'quay.io/ahead/base', 'tag': 'latest'}}]
        closed = support.closed_port()
        (root / 'etc/containers').mkdir(parents=True)
        (root / 'etc/containers/registries.conf').write_text(
            f'[[registry]]\nprefix = "quay.io"\nlocation = "127.0.0.1:{closed}/quay.io"\n')
        src = tmp_path / 'src'
        (src / 'app').mkdir(parents=True)
        (src / 'app' / 'Containerfile').write_text('FROM quay.io/ahead/base:latest\nCOPY nonce.txt /nonce.txt\n')
        (src / 'app' / 'nonce.txt').write_text('nonce\n')
        auth = root / 'run/containers/auth.json'
        job_vars = {
            **conftest.scratch_root_vars(root),
            'zuul': ansible.zuul_vars(build=BUILD, artifacts=artifacts),
            'intermediate_registry': intermediate,
            'ensure_speculum_source_path': str(support.BIN_DIR),
            'ensure_speculum_bin_dir': str(tmp_path / 'bin'),
            'ensure_speculum_become': False,
            'run_buildset_registry_root': str(br_root),
            'run_buildset_registry_port': 0,
            'run_buildset_registry_listen_address': '127.0.0.1',
            'run_buildset_registry_host': 'localhost',
            'container_command': 'buildah',
            'container_images': [{'context': 'app', 'container_filename': 'Containerfile',
                                  'repository': 'quay.io/myorg/app', 'tags': ['latest']}],
            'zuul_work_dir': str(src),
            'build_container_image_isolation': 'chroot',
            'build_container_image_command_options': containers_storage,
            'build_container_image_environment': {
                'CONTAINERS_REGISTRIES_CONF': str(root / 'etc/containers/registries.conf'),
                'REGISTRY_AUTH_FILE': str(auth)},
        }
        _run_playbook(ansible, 'playbooks/buildset-registry/pre.yaml', job_vars)
        results = ansible.results()
        registry = results['secret_data']['buildset_registry']
        ansible.secrets.append(registry['password'])
        assert (tmp_path / 'bin/speculum').exists()
        # The site's trusted pre-run: the image of the change ahead goes into
        # the buildset registry under its final name.
        _run_playbook(ansible, SITE / 'playbooks/speculum/pull-from-intermediate-registry.yaml', job_vars)
        certs = support.cert_dir_for(tmp_path, registry)
        support.skopeo('inspect', '--cert-dir', str(certs), f'docker://localhost:{registry["port"]}/quay.io/ahead/base:latest')

        # The site build job's run playbook, a later playbook of the same job
        # (buildset_registry comes back from the results file): it builds,
        # pushes to the intermediate registry and returns the artifact, all
        # before it pauses, so changes behind get the image while it waits.
        addr = f'localhost:{registry["port"]}'
        client = ['--cert-dir', str(root / 'etc/containers/certs.d' / addr), '--authfile', str(auth)]
        _run_playbook(ansible, SITE / 'playbooks/speculum/build-container-image.yaml', {
            **job_vars, 'build_container_image_build_options': client, 'build_container_image_push_options': client})
        data = ansible.results()['data']['zuul']
        assert data['pause'] is True
        support.skopeo('inspect', '--cert-dir', str(certs), f'docker://{addr}/quay.io/myorg/app:latest')
        returned = data['artifacts']
        assert [a['name'] for a in returned] == ['quay.io/myorg/app:latest']
        assert returned[0]['url'] == f'docker://localhost:{intermediate["port"]}/quay.io/myorg/app:{BUILD}_latest'
        out = support.skopeo('inspect', '--cert-dir', str(support.cert_dir_for(tmp_path, intermediate)),
                             '--creds', f'zuul:{intermediate["password"]}',
                             f'docker://localhost:{intermediate["port"]}/quay.io/myorg/app:{BUILD}_latest')
        assert len(json.loads(out.stdout)['Layers']) == 2

        # The cleanup playbook of a child job (another build) leaves the registry
        # alone; the registry job's own stops it and drops its storage.
        pid = (br_root / 'registry.pid').read_text().strip()
        _run_playbook(ansible, 'playbooks/buildset-registry/cleanup.yaml',
                      {**job_vars, 'zuul': ansible.zuul_vars(build='e' * 32)})
        assert support.pid_alive(int(pid))
        _run_playbook(ansible, 'playbooks/buildset-registry/cleanup.yaml', job_vars)
        assert not support.pid_alive(int(pid))
        assert not (br_root / 'storage').exists() and not (br_root / 'info.json').exists()
    finally:
        support.stop_pidfile(br_root / 'registry.pid')
        support.stop_pidfile(ir_root / 'registry.pid')


def test_pause_only_in_the_job_that_runs_the_registry(ansible):
    registry = {'host': 'h', 'port': 1, 'username': 'zuul', 'password': 'x' * 20, 'cert': ''}
    ansible.secrets.append(registry['password'])
    # The job that started the registry returned it as secret_data; even with
    # buildset_registry loaded as a fact by now, it pauses.
    returned = json.dumps({'data': {}, 'secret_data': {'buildset_registry': registry}})
    ansible.results_file.write_text(returned)
    ansible.role('pause-buildset-registry', extra_vars={
        'zuul': ansible.zuul_vars(child_jobs=['consumer']), 'buildset_registry': registry})
    assert ansible.results()['data'] == {'zuul': {'pause': True}}

    # The same job with no children (a build job run alone) does not pause.
    ansible.results_file.write_text(returned)
    ansible.role('pause-buildset-registry', extra_vars={
        'zuul': ansible.zuul_vars(child_jobs=[]), 'buildset_registry': registry})
    assert ansible.results()['data'] == {}

    # A child that Zuul handed the registry returned none of its own.
    child = support.Ansible(ansible.workdir / 'child')
    child.role('pause-buildset-registry', extra_vars={'zuul': child.zuul_vars(), 'buildset_registry': registry})
    assert child.results() == {}


def test_ensure_speculum_from_a_path(ansible, tmp_path):
    support.binary('speculum')
    ansible.role('ensure-speculum', {
        'ensure_speculum_source_path': str(support.BIN_DIR),
        'ensure_speculum_bin_dir': str(tmp_path / 'bin'),
        'ensure_speculum_become': False,
        'ensure_speculum_version': 'speculum',
    }, extra_vars={'zuul': ansible.zuul_vars()})
    for name in ('speculum', 'speculum-registry'):
        assert (tmp_path / 'bin' / name).stat().st_mode & 0o111
    proc = ansible.role('ensure-speculum', {
        'ensure_speculum_source_path': str(support.BIN_DIR),
        'ensure_speculum_bin_dir': str(tmp_path / 'bin'),
        'ensure_speculum_become': False,
        'ensure_speculum_version': 'no-such-version',
    }, extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert 'not version no-such-version' in proc.stdout


def test_ensure_speculum_by_default_copies_the_executors_binaries(ansible, tmp_path):
    """No source set: the binaries on the executor's PATH (here target/debug,
    as a site installs them in /usr/local/bin) go to the node; no cargo."""
    support.binary('speculum')
    proc = ansible.role('ensure-speculum', {
        'ensure_speculum_bin_dir': str(tmp_path / 'bin'),
        'ensure_speculum_become': False,
    }, extra_vars={'zuul': ansible.zuul_vars(project={'src_dir': str(tmp_path / 'project-under-test')})})
    for name in ('speculum', 'speculum-registry'):
        installed = tmp_path / 'bin' / name
        assert installed.read_bytes() == (support.BIN_DIR / name).read_bytes()
    assert 'install-path.yaml' in proc.stdout and 'install-cargo.yaml' not in proc.stdout


def test_ensure_speculum_says_what_to_set_when_nothing_is_found(ansible, tmp_path):
    proc = ansible.role('ensure-speculum', {
        'ensure_speculum_bin_dir': str(tmp_path / 'bin'),
        'ensure_speculum_become': False,
        'ensure_speculum_binaries': ['speculum-not-installed'],
    }, extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert "not on the executor's PATH" in proc.stdout
    assert 'ensure_speculum_cargo_source' in proc.stdout


def test_wrong_variable_type_fails_at_once(ansible):
    proc = ansible.role('run-buildset-registry', {'run_buildset_registry_port': 'not-a-port'},
                       extra_vars={'zuul': ansible.zuul_vars()}, expect_failure=True)
    assert 'run_buildset_registry_port' in proc.stdout
