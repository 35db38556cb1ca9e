"""run-buildset-registry: a real registry, its secret_data, and skopeo using it."""

from __future__ import annotations

import os

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


def test_stop_entry_point(tmp_path):
    runner, registry, root = conftest.start_buildset_registry(tmp_path)
    pid = int((root / 'registry.pid').read_text())
    try:
        runner.role('run-buildset-registry', {'run_buildset_registry_root': str(root),
                                              'run_buildset_registry_port': 0},
                    tasks_from='stop')
        assert not (root / 'registry.pid').exists()
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive
    finally:
        support.stop_pid(pid)
