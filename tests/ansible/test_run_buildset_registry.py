"""run-buildset-registry: a real registry, its secret_data, and skopeo using it."""

from __future__ import annotations

import conftest
import support


def test_returns_secret_data_that_works_with_skopeo(tmp_path, busybox_layout):
    runner, registry, root = conftest.start_buildset_registry(tmp_path)
    try:
        results = runner.results()
        # Only secret_data carries the registry: nothing in plain data.
        assert 'buildset_registry' not in results.get('data', {})
        assert set(registry) >= {'host', 'port', 'username', 'password', 'cert'}
        assert registry['host'] == 'localhost'
        assert registry['username'] == 'zuul'
        assert registry['port'] > 0
        assert registry['cert'].startswith('-----BEGIN CERTIFICATE-----')
        assert len(registry['password']) >= 16
        info = root / 'info.json'
        assert oct(info.stat().st_mode & 0o777) == '0o600'

        certs = support.cert_dir_for(tmp_path, registry)
        ref = f'docker://localhost:{registry["port"]}/smoke/test:latest'
        support.skopeo('copy', '--dest-cert-dir', str(certs),
                       '--dest-creds', f'{registry["username"]}:{registry["password"]}',
                       f'oci:{busybox_layout}:latest', ref)
        inspected = support.skopeo('inspect', '--cert-dir', str(certs), ref)
        assert '"Architecture": "amd64"' in inspected.stdout
        runner.assert_no_secrets()
    finally:
        support.stop_pidfile(root / 'registry.pid')


def test_second_run_keeps_the_running_registry(tmp_path):
    runner, registry, root = conftest.start_buildset_registry(tmp_path)
    try:
        pid = (root / 'registry.pid').read_text().strip()
        runner.role('run-buildset-registry', {
            'run_buildset_registry_root': str(root),
            'run_buildset_registry_port': 0,
            'run_buildset_registry_listen_address': '127.0.0.1',
            'run_buildset_registry_host': 'localhost',
        }, extra_vars={'zuul': runner.zuul_vars()})
        assert (root / 'registry.pid').read_text().strip() == pid
        assert runner.results()['secret_data']['buildset_registry'] == registry
    finally:
        support.stop_pidfile(root / 'registry.pid')


def test_a_registry_left_by_another_build_is_never_adopted(tmp_path, busybox_layout):
    """A registry still running from an earlier build (cancelled, or on a reused
    node) is stopped with its storage, and this build gets a fresh one."""
    runner, old, root = conftest.start_buildset_registry(tmp_path)
    old_pid = int((root / 'registry.pid').read_text())
    conftest.seed(old, busybox_layout, tmp_path, 'left/over')
    try:
        runner.role('run-buildset-registry', {
            'run_buildset_registry_root': str(root),
            'run_buildset_registry_port': 0,
            'run_buildset_registry_listen_address': '127.0.0.1',
            'run_buildset_registry_host': 'localhost',
        }, extra_vars={'zuul': runner.zuul_vars(build='b' * 32)})
        new = runner.results()['secret_data']['buildset_registry']
        runner.secrets.append(new['password'])
        assert not support.pid_alive(old_pid)
        assert int((root / 'registry.pid').read_text()) != old_pid
        assert new['password'] != old['password'] and new['cert'] != old['cert']
        assert (root / 'owner').read_text().strip() == 'b' * 32
        proc = support.skopeo('inspect', '--cert-dir', str(support.cert_dir_for(tmp_path / 'new', new)),
                              f'docker://localhost:{new["port"]}/left/over:latest', check=False)
        assert proc.returncode != 0 and 'manifest unknown' in proc.stderr.lower(), proc.stderr
    finally:
        support.stop_pid(old_pid)
        support.stop_pidfile(root / 'registry.pid')


def test_stop_entry_point_stops_only_this_builds_registry(tmp_path):
    runner, registry, root = conftest.start_buildset_registry(tmp_path)
    pid = int((root / 'registry.pid').read_text())
    stop_vars = {'run_buildset_registry_root': str(root), 'run_buildset_registry_port': 0}
    try:
        # A child job that was handed this registry (another build) leaves it running.
        runner.role('run-buildset-registry', stop_vars, tasks_from='stop',
                    extra_vars={'zuul': runner.zuul_vars(build='f' * 32)})
        assert support.pid_alive(pid)
        runner.role('run-buildset-registry', stop_vars, tasks_from='stop',
                    extra_vars={'zuul': runner.zuul_vars()})
        assert not support.pid_alive(pid)
        assert not (root / 'registry.pid').exists()
        assert not (root / 'storage').exists() and not (root / 'owner').exists()
        # Nothing left to stop, and a root that was never made, are fine.
        runner.role('run-buildset-registry', stop_vars, tasks_from='stop',
                    extra_vars={'zuul': runner.zuul_vars()})
        runner.role('run-buildset-registry', {**stop_vars, 'run_buildset_registry_root': str(tmp_path / 'none')},
                    tasks_from='stop', extra_vars={'zuul': runner.zuul_vars()})
    finally:
        support.stop_pid(pid)
