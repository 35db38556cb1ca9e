"""Fixtures for the e2e tests: our Zuul jobs under a real Zuul on this machine.

The session fixture `zuul` brings the stack up once (stack.py: ZooKeeper,
PostgreSQL, the node, the registries, Zuul's four components, all in a network
namespace of their own), loads the tenant and yields an `E2E` helper that
pushes commits and waits for their buildsets through the REST API. Every wait
is bounded; everything started is stopped at the end, also after a failure.

scripts/install-e2e-deps.sh installs what this needs; `make e2e` runs it.
Set SPECULUM_E2E_KEEP=1 to keep the scratch dir (logs, job dirs) after a
passing run; after a failing run it is always kept, and its path printed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import stack as stack_mod  # noqa: E402
from stack import PROJECTS, REPO, SITE_PROJECT, TEST_PROJECT, wait_for  # noqa: E402

TIMINGS = stack_mod.Timings()
_SESSION = {'failed': False, 'scratch': None}

# How long one buildset may take, end to end (the research saw 133-250 s for three jobs).
BUILDSET_TIMEOUT = float(os.environ.get('SPECULUM_E2E_BUILDSET_TIMEOUT', 900))


class Buildset:
    """A finished buildset as the REST API reports it, with its builds by job name."""

    def __init__(self, record: dict, e2e: E2E):
        self.record = record
        self.e2e = e2e
        self.builds = {b['job_name']: b for b in record.get('builds', [])}

    @property
    def result(self) -> str:
        return self.record.get('result')

    def build(self, job: str) -> dict:
        assert job in self.builds, f'no build of {job} in buildset: {sorted(self.builds)}\n{self.report()}'
        return self.builds[job]

    def report(self) -> str:
        """Each build's result, and the job output of every build that did not succeed."""
        lines = [f'buildset {self.record.get("uuid")} {self.result} ({self.record.get("message") or ""})']
        for name, build in sorted(self.builds.items()):
            lines.append(f'  {name}: {build.get("result")} ({build.get("uuid")})')
        for name, build in sorted(self.builds.items()):
            if build.get('result') not in ('SUCCESS', 'SKIPPED'):
                lines.append(f'\n===== job-output of {name} ({build.get("uuid")}) =====')
                lines.append(self.e2e.stack.job_output(build['uuid']))
        return '\n'.join(lines)

    def assert_success(self, *jobs: str) -> None:
        missing = [job for job in jobs if job not in self.builds]
        failed = [name for name, build in self.builds.items() if build.get('result') != 'SUCCESS']
        assert not missing and not failed and self.result == 'SUCCESS', self.report()


class E2E:
    """What the tests do with the stack: push, wait, read."""

    def __init__(self, stack: stack_mod.Stack):
        self.stack = stack
        self.api = stack.api
        self.git = stack.git

    # -- config --------------------------------------------------------------------------------

    def last_reconfigured(self) -> int:
        return int(self.api.tget('/status').get('last_reconfigured') or 0)

    def assert_no_config_errors(self, warnings: bool = False) -> None:
        """No configuration errors in the tenant (and, with warnings, no warnings either)."""
        errors = [e for e in self.api.config_errors() if warnings or e.get('severity', 'error') == 'error']
        assert not errors, 'configuration errors in the tenant:\n' + '\n\n'.join(
            f'[{e.get("severity")}] {e.get("source_context")}: {e.get("error")}' for e in errors)

    def install_site_secret(self) -> None:
        """Encrypt the registries' passwords with the site project's key, and push them."""
        key = wait_for('the site project key', lambda: self.api.tget(f'/key/{SITE_PROJECT}.pub', raw=True), 60)

        def encrypted(registry):
            return stack_mod.Encrypted(stack_mod.encrypt_secret(key, registry['password']))
        secret = site_secrets(self.stack, encrypted(self.stack.intermediate), encrypted(self.stack.final))
        self.push_config(SITE_PROJECT, {SECRET_FILE: secret}, 'the registry secrets, encrypted')

    def push_config(self, project: str, files: dict, message: str, timeout: float = 120) -> str:
        """Push a config change and wait until the tenant was reconfigured with it."""
        before = self.last_reconfigured()
        sha = self.git.commit(project, files, message=message)
        wait_for(f'a reconfiguration after {message!r}', lambda: self.last_reconfigured() > before, timeout,
                 interval=1, diagnose=lambda: stack_mod.log_tail(self.stack.logs / 'zuul-scheduler-debug.log'))
        return sha

    # -- buildsets -----------------------------------------------------------------------------

    def push(self, files: dict, message: str, project: str = TEST_PROJECT, ref: str = 'main') -> str:
        return self.git.commit(project, files, message=message, ref=ref)

    def wait_buildset(self, newrev: str, project: str = TEST_PROJECT, pipeline: str | None = 'check',
                      timeout: float = BUILDSET_TIMEOUT) -> Buildset:
        """Wait until the buildset of a pushed commit finished; returns it with its builds."""

        def find():
            sets = self.api.tget('/buildsets', project=project, newrev=newrev, pipeline=pipeline)
            return sets[0] if sets else None

        record = wait_for(f'a {pipeline or ""} buildset for {project} {newrev[:10]}', find, 120, interval=2,
                          diagnose=self._diagnose)
        return self._finish(record['uuid'], timeout)

    def wait_timer_buildset(self, after: float, pipeline: str = 'periodic', project: str = TEST_PROJECT,
                            timeout: float = BUILDSET_TIMEOUT) -> Buildset:
        """Wait for the first buildset a timer started after the epoch time `after`."""

        def find():
            for record in self.api.tget('/buildsets', project=project, pipeline=pipeline):
                started = record.get('event_timestamp') or record.get('first_build_start_time')
                if started and _epoch(started) >= after:
                    return record
            return None

        record = wait_for(f'a {pipeline} buildset of {project}', find, 180, interval=2, diagnose=self._diagnose)
        return self._finish(record['uuid'], timeout)

    def _finish(self, uuid: str, timeout: float) -> Buildset:
        def done():
            record = self.api.tget(f'/buildset/{uuid}')
            return record if record.get('result') else None

        record = wait_for(f'buildset {uuid} to finish', done, timeout, interval=3, diagnose=self._diagnose)
        return Buildset(record, self)

    def run(self, files: dict, message: str, timeout: float = BUILDSET_TIMEOUT) -> Buildset:
        """Push files to the test project, wait for the buildset, and check the tenant's config."""
        sha = self.push(files, message)
        buildset = self.wait_buildset(sha, timeout=timeout)
        self.assert_no_config_errors()
        return buildset

    def _diagnose(self) -> str:
        parts = []
        try:
            errors = self.api.config_errors()
            parts.append(f'config errors: {errors}')
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            parts.append(f'config errors unavailable: {exc!r}')
        parts.append(self.stack.component_logs(30))
        return '\n'.join(parts)


def _epoch(value: str) -> float:
    from datetime import datetime, timezone

    stamp = datetime.fromisoformat(value.replace('Z', '+00:00'))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def source_tree(dest: Path) -> Path:
    """This repository's files as the tenant gets them: HEAD, or the working tree.

    SPECULUM_E2E_SOURCE=worktree takes tracked and untracked (not ignored)
    files as they are on disk, to try changes before they are committed.
    """
    dest.mkdir(parents=True)
    if os.environ.get('SPECULUM_E2E_SOURCE', 'head') == 'worktree':
        listed = subprocess.run(['git', '-C', str(REPO), 'ls-files', '-z', '--cached', '--others',
                                 '--exclude-standard'], capture_output=True, check=True, timeout=60).stdout
        for rel in filter(None, listed.decode().split('\0')):
            src = REPO / rel
            if src.is_file() or src.is_symlink():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel, follow_symlinks=False)
        return dest
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', '--format=tar', 'HEAD'], capture_output=True,
                             check=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter='tar')
    return dest


SITE_EXAMPLE = Path('doc/examples/site-config')
SECRET_FILE = 'zuul.d/secrets.yaml'
SECRET_NAME = 'yoursite-intermediate-registry'
# The final registry's credentials, in container_registry_credentials' shape
# (tests/zuul/projects/site-config/zuul.d/e2e-final.yaml gives them to the jobs).
FINAL_SECRET_NAME = 'e2e-final-registry'


def site_secrets(stack: stack_mod.Stack, intermediate_password, final_password) -> str:
    """The site's secrets; each password is a string or an encrypted value."""
    intermediate, final = stack.intermediate, stack.final
    return stack_mod.dump_yaml([
        {'secret': {'name': SECRET_NAME, 'data': {
            'host': intermediate['host'], 'port': intermediate['port'], 'username': intermediate['username'],
            'password': intermediate_password, 'cert': intermediate['cert'],
        }}},
        {'secret': {'name': FINAL_SECRET_NAME, 'data': {
            final['name']: {'username': final['username'], 'password': final_password},
        }}},
    ])


def site_config_tree(source: Path, dest: Path, stack: stack_mod.Stack) -> Path:
    """The site's config project: speculum's example site config plus the e2e tenant's parts.

    Until Zuul has made the project's key the secret holds no password; the
    session fixture then pushes it encrypted (E2E.install_site_secret).
    """
    shutil.copytree(PROJECTS / 'site-config', dest)
    example = source / SITE_EXAMPLE
    if example.is_dir():
        shutil.copytree(example, dest, dirs_exist_ok=True)
    (dest / SECRET_FILE).write_text(site_secrets(stack, 'not-yet-encrypted', 'not-yet-encrypted'))
    return dest


def initial_projects(stack: stack_mod.Stack) -> dict:
    """The first commit of each repository of the tenant."""
    scratch = stack.scratch
    head = subprocess.run(['git', '-C', str(REPO), 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True).stdout.strip()
    source = source_tree(scratch / 'speculum-src')
    mode = os.environ.get('SPECULUM_E2E_SOURCE', 'head')
    return {
        SITE_PROJECT: {'tree': site_config_tree(source, scratch / 'site-config-src', stack),
                       'message': 'e2e site configuration'},
        'zuul-jobs': {'tree': PROJECTS / 'zuul-jobs', 'message': 'stand-in zuul-jobs'},
        'speculum': {'tree': source, 'message': f'speculum at {head} ({mode})'},
        TEST_PROJECT: {'tree': PROJECTS / 'test-project', 'message': 'test project'},
    }


@pytest.fixture(scope='session')
def zuul():
    """The running stack, as an E2E helper."""
    scratch = Path(tempfile.mkdtemp(prefix='speculum-e2e-'))
    _SESSION['scratch'] = scratch
    stack = stack_mod.Stack(scratch, TIMINGS)
    try:
        try:
            stack.start(lambda: initial_projects(stack))
            e2e = E2E(stack)
            e2e.install_site_secret()
        except BaseException:
            _SESSION['failed'] = True
            raise
        yield e2e
    finally:
        stack.stop()
        keep = _SESSION['failed'] or os.environ.get('SPECULUM_E2E_KEEP')
        if not keep:
            subprocess.run(['chmod', '-R', 'u+w', str(scratch)], capture_output=True)
            subprocess.run(['rm', '-rf', '--one-file-system', str(scratch)], capture_output=True, timeout=300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _SESSION['failed'] = True


@pytest.fixture
def timed(request):
    """Record the test's duration as a phase of the timings report."""
    start = time.monotonic()
    yield
    TIMINGS.phases.append((f'test {request.node.name}', time.monotonic() - start))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS.phases:
        terminalreporter.write_sep('-', 'e2e timings')
        terminalreporter.write_line(TIMINGS.report())
    scratch = _SESSION['scratch']
    if scratch is not None and Path(scratch).exists():
        terminalreporter.write_line(f'e2e scratch dir (logs, job dirs): {scratch}')


def pytest_collection_modifyitems(items):
    # The harness's own tests first: when they fail, nothing else can pass. The password
    # check last: it reads what every build before it left.
    def order(item):
        if item.fspath.basename == 'test_stack.py':
            return 0
        return 2 if item.name == 'test_no_registry_password_anywhere' else 1
    items.sort(key=order)


def pytest_configure(config):
    # zuul imports PyYAML's old _yaml location; not ours to fix.
    config.addinivalue_line('filterwarnings', 'ignore:The _yaml extension module:DeprecationWarning')
