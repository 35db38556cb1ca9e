"""The roles on a node whose connecting user is not root (zuul on a Zuul node).

The tests run ansible-playbook itself as nobody (uid 65534). The venv's
interpreter lives under /root, which nobody cannot enter, so ansible runs on
the system python of the same version with the venv's site-packages on
PYTHONPATH. Every path ansible touches is in a directory under /tmp owned by
nobody; pytest's own tmp_path is root's (mode 0700) and cannot be used.

On a node, the connecting user's HOME is its passwd home, and ansible's local
connection expands ~ in a destination as ~<user> from passwd. nobody's passwd
home is /nonexistent, so each play runs in a private mount namespace whose
/etc/passwd (a bind-mounted copy) gives nobody the test's HOME; the real
/etc/passwd is never changed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import conftest
import support

NOBODY = 65534


def _system_python() -> str:
    name = f'python{sys.version_info.major}.{sys.version_info.minor}'
    path = shutil.which(name, path='/usr/bin:/bin')
    if path is None:
        pytest.fail(f'no /usr/bin/{name}: ansible cannot run as nobody with the venv under /root')
    return path


def _chown_tree(path: Path) -> None:
    os.chown(path, NOBODY, NOBODY)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)


def as_nobody(argv) -> list[str]:
    return ['setpriv', f'--reuid={NOBODY}', f'--regid={NOBODY}', '--clear-groups', '--inh-caps=-all', '--', *argv]


class NobodyAnsible(support.Ansible):
    """support.Ansible, but ansible-playbook runs as nobody with its own HOME."""

    def __init__(self, workdir: Path, path_prefix: Path | None = None):
        super().__init__(workdir)
        self.home = workdir / 'home'
        self.home.mkdir()
        self.path_prefix = path_prefix
        self.python = _system_python()
        self.cwd = workdir
        _chown_tree(workdir)

    def _passwd(self) -> Path:
        """A copy of /etc/passwd in which nobody's home is self.home."""
        lines = []
        for line in Path('/etc/passwd').read_text().splitlines():
            fields = line.split(':')
            if len(fields) == 7 and fields[2] == str(NOBODY):
                fields[5] = str(self.home)
            lines.append(':'.join(fields))
        path = self.workdir / 'passwd'
        path.write_text('\n'.join(lines) + '\n')
        return path

    def env(self) -> dict:
        env = super().env()
        env.pop('XDG_RUNTIME_DIR', None)
        version = f'python{sys.version_info.major}.{sys.version_info.minor}'
        site = support.VENV_BIN.parent / 'lib' / version / 'site-packages'
        env.update({'HOME': str(self.home), 'USER': 'nobody', 'LOGNAME': 'nobody', 'PYTHONPATH': str(site)})
        if self.path_prefix is not None:
            env['PATH'] = f'{self.path_prefix}:{env["PATH"]}'
        return env

    def command(self, argv, inputs):
        """ansible-playbook (on the system python) as nobody, in a mount
        namespace whose /etc/passwd gives nobody this runner's HOME."""
        for path in inputs:
            os.chown(path, NOBODY, NOBODY)
        return [
            'unshare', '--mount', '--propagation', 'private', '--',
            'sh', '-c', 'mount --bind "$0" /etc/passwd && exec "$@"', str(self._passwd()),
        ] + as_nobody([self.python, *argv])


@pytest.fixture
def nobody_dir():
    """A work directory under /tmp that nobody owns (mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix='spc-nobody-', dir='/tmp'))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


SUDO = '''#!/bin/sh
# Stand-in for sudo with NOPASSWD for the connecting user: runs the command
# as root through a setuid-root copy of setpriv next to this script.
user=root
while [ $# -gt 0 ]; do
  case "$1" in
    -H|-S|-n) shift ;;
    -u) user=$2; shift 2 ;;
    -p) shift 2 ;;
    --) shift; break ;;
    -*) echo "sudo stand-in: unsupported option $1" >&2; exit 1 ;;
    *) break ;;
  esac
done
[ "$user" = root ] || { echo "sudo stand-in: only -u root" >&2; exit 1; }
HOME=/root exec "$(dirname "$0")/rootpriv" --reuid=0 --regid=0 --clear-groups -- "$@"
'''

SYSTEMD_RUN = '''#!/bin/sh
# Stand-in for systemd-run: only what run-buildset-registry uses. The unit's
# main pid goes to STATE/<unit>.pid; the caller's uid and the --uid/--gid
# given go to STATE/<unit>.ids.
state=@STATE@
unit= uid= gid=
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) unit=$2; shift 2 ;;
    --uid) uid=$2; shift 2 ;;
    --gid) gid=$2; shift 2 ;;
    --property) shift 2 ;;
    --collect) shift ;;
    --) shift; break ;;
    *) echo "systemd-run stand-in: unsupported argument $1" >&2; exit 1 ;;
  esac
done
[ -n "$unit" ] && [ $# -gt 0 ] || { echo "systemd-run stand-in: need --unit and a command" >&2; exit 1; }
if pid=$(cat "$state/$unit.pid" 2>/dev/null) && [ -d "/proc/$pid" ]; then
  echo "Failed to start transient service unit: Unit $unit.service already exists." >&2
  exit 1
fi
printf 'caller=%s uid=%s gid=%s\\n' "$(id -u)" "$uid" "$gid" > "$state/$unit.ids"
cd /
if [ -n "$uid" ]; then
  set -- setpriv --reuid="$uid" --regid="${gid:-$uid}" --clear-groups -- "$@"
fi
# Not a process group leader here, so setsid runs the command in this pid.
setsid "$@" </dev/null >>"$state/$unit.log" 2>&1 &
echo $! > "$state/$unit.pid"
'''

SYSTEMCTL = '''#!/bin/sh
# Stand-in for systemctl: is-active [--quiet] UNIT and stop UNIT.
state=@STATE@
verb=$1; shift
[ "$1" = --quiet ] && shift
unit=$1
pid=$(cat "$state/$unit.pid" 2>/dev/null)
alive() { [ -n "$pid" ] && grep -q '^State:[[:space:]]*[^Z]' "/proc/$pid/status" 2>/dev/null; }
case "$verb" in
  is-active) alive || exit 3 ;;
  stop)
    if ! alive; then
      echo "Failed to stop $unit.service: Unit $unit.service not loaded." >&2
      exit 5
    fi
    kill "$pid"
    n=0
    while alive && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
    alive && kill -9 "$pid"
    rm -f "$state/$unit.pid" ;;
  *) echo "systemctl stand-in: unsupported verb $verb" >&2; exit 1 ;;
esac
'''


def _stand_ins(workdir: Path) -> tuple[Path, Path]:
    """Root-owned bin dir with sudo, systemd-run and systemctl; state dir for the units."""
    bindir = workdir / 'fakebin'
    state = workdir / 'systemd'
    for path in (bindir, state):
        path.mkdir(mode=0o755)
    for name, text in (('sudo', SUDO), ('systemd-run', SYSTEMD_RUN), ('systemctl', SYSTEMCTL)):
        (bindir / name).write_text(text.replace('@STATE@', str(state)))
        (bindir / name).chmod(0o755)
    rootpriv = bindir / 'rootpriv'
    shutil.copy(shutil.which('setpriv'), rootpriv)
    # Only nobody's group may run it, and only while the test runs.
    os.chown(rootpriv, 0, NOBODY)
    rootpriv.chmod(0o4750)
    return bindir, state


def test_systemd_registry_runs_as_the_connecting_user(nobody_dir):
    """systemd mode as a non-root connecting user.

    systemd cannot run in this sandbox, so systemd-run and systemctl are shell
    stand-ins on PATH implementing only what the role uses: --uid/--gid drop
    privileges with setpriv and the command starts detached under setsid, its
    pid kept per unit; is-active checks that pid, stop kills it. ansible-playbook
    runs as nobody, and become goes through a stand-in sudo (NOPASSWD, as for
    zuul on a node) that really switches to root: without --uid the registry
    would run as root and leave an info file (mode 0600) that nobody's next
    task could not read.
    """
    support.binary('speculum-registry')
    bindir, state = _stand_ins(nobody_dir)
    unit = 'speculum-buildset-registry-0'
    try:
        runner = NobodyAnsible(nobody_dir / 'work', path_prefix=bindir)
        root = runner.workdir / 'br'
        role_vars = {
            'run_buildset_registry_root': str(root),
            'run_buildset_registry_port': 0,
            'run_buildset_registry_listen_address': '127.0.0.1',
            'run_buildset_registry_host': 'localhost',
            'run_buildset_registry_service': 'systemd',
        }
        zuul = runner.zuul_vars()
        # It passes only if "Read the connection info", run as nobody, succeeded.
        runner.role('run-buildset-registry', role_vars, extra_vars={'zuul': zuul})
        registry = runner.results()['secret_data']['buildset_registry']
        runner.secrets.append(registry['password'])

        ids = dict(field.split('=') for field in (state / f'{unit}.ids').read_text().split())
        assert ids == {'caller': '0', 'uid': str(NOBODY), 'gid': str(NOBODY)}
        pid = int((state / f'{unit}.pid').read_text())
        uids = [line for line in Path(f'/proc/{pid}/status').read_text().splitlines() if line.startswith('Uid:')]
        assert uids[0].split()[1:] == [str(NOBODY)] * 4
        info = (root / 'info.json').stat()
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY, NOBODY, 0o600)
        for path in [root / 'storage', *(root / 'storage').rglob('*')]:
            assert path.stat().st_uid == NOBODY, path
        support.wait_for_port(registry['port'])

        runner.role('run-buildset-registry', role_vars, extra_vars={'zuul': zuul}, tasks_from='stop')
        assert not support.pid_alive(pid)
        assert not (root / 'info.json').exists()
    finally:
        support.stop_pidfile(state / f'{unit}.pid')
        (bindir / 'rootpriv').unlink(missing_ok=True)


def test_containers_auth_without_a_runtime_directory(nobody_dir, buildset_registry):
    """A non-root user without XDG_RUNTIME_DIR gets ~/.config/containers/auth.json."""
    conftest.require_tools('skopeo')
    registry = buildset_registry['registry']
    addr = f'localhost:{registry["port"]}'
    runner = NobodyAnsible(nobody_dir / 'work')
    root = runner.workdir / 'root'
    role_vars = conftest.scratch_root_vars(root)
    role_vars['use_buildset_registry_containers_auth_file'] = ''
    role_vars['buildset_registry'] = registry
    _chown_tree(root)
    runner.secrets.append(registry['password'])
    runner.role('use-buildset-registry', role_vars, extra_vars={'zuul': runner.zuul_vars()})

    auth_file = runner.home / '.config' / 'containers' / 'auth.json'
    expected = base64.b64encode(f'{registry["username"]}:{registry["password"]}'.encode()).decode()
    assert json.loads(auth_file.read_text())['auths'][addr]['auth'] == expected
    info = auth_file.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY, 0o600)
    assert not (root / 'run/containers/auth.json').exists()

    # skopeo, as that user with no runtime directory, finds the credentials
    # without being told where they are. Without XDG_RUNTIME_DIR it looks at
    # /run/containers/<uid>/auth.json first, and skopeo 1.9 fails on EACCES
    # there instead of going on. Root's own logins on this machine left
    # /run/containers (mode 0700, root's), so skopeo runs with an empty
    # /run/containers in a private mount namespace, as on a node where root
    # never logged in.
    env = {'PATH': os.environ['PATH'], 'HOME': str(runner.home), 'TMPDIR': str(runner.tmpdir)}

    def skopeo(*args):
        return support.run([
            'unshare', '--mount', '--propagation', 'private', '--', 'sh', '-c',
            'if [ -d /run/containers ]; then mount -t tmpfs -o mode=0755 none /run/containers || exit; fi; exec "$@"',
            'sh', *as_nobody(['skopeo', *args])], env=env)

    # (The buildset registry serves pulls anonymously, so only --get-login
    # shows where the credentials come from.)
    assert skopeo('login', '--get-login', addr).stdout.strip() == registry['username']
