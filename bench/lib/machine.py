"""The machine (from /proc) and the versions of every peer and tool."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from .registries import Env

TOOLS = {
    'skopeo': ['skopeo', '--version'],
    'wrk': ['wrk', '-v'],
    'curl': ['curl', '--version'],
    'umoci': ['umoci', '--version'],
    'openssl': ['openssl', 'version'],
    'distribution (docker-registry)': ['docker-registry', '--version'],
}


def describe() -> dict[str, str]:
    cpu = ''
    for line in Path('/proc/cpuinfo').read_text().splitlines():
        if line.startswith('model name'):
            cpu = line.split(':', 1)[1].strip()
            break
    mem_kb = 0
    for line in Path('/proc/meminfo').read_text().splitlines():
        if line.startswith('MemTotal:'):
            mem_kb = int(line.split()[1])
    return {
        'cpu': cpu,
        'cores': str(os.cpu_count()),
        'ram': f'{mem_kb / (1 << 20):.1f} GiB',
        'kernel': Path('/proc/sys/kernel/osrelease').read_text().strip(),
        'os': _os_release(),
        'python': platform.python_version(),
        'load average at start': load_average(),
    }


def load_average() -> str:
    return ' '.join(Path('/proc/loadavg').read_text().split()[:3])


def _os_release() -> str:
    try:
        for line in Path('/etc/os-release').read_text().splitlines():
            if line.startswith('PRETTY_NAME='):
                return line.split('=', 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 'not found'
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else 'unknown'


def _zuul_registry(env: Env) -> str:
    pip = env.zuul_venv / 'bin' / 'pip'
    try:
        out = subprocess.run([str(pip), 'show', 'zuul-registry'], capture_output=True, text=True,
                             timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 'not installed'
    version = [ln.split(':', 1)[1].strip() for ln in out.splitlines() if ln.startswith('Version:')]
    return f'zuul-registry {version[0]} (PyPI, {env.zuul_venv.name})' if version else 'not installed'


def versions(env: Env) -> dict[str, str]:
    found = {name: _first_line(cmd) for name, cmd in TOOLS.items()}
    found['zuul-registry'] = _zuul_registry(env)
    found['speculum'] = _first_line([str(env.bin_dir / 'speculum'), '--version'])
    found['speculum git commit'] = _first_line(['git', '-C', str(Path(__file__).resolve().parents[2]),
                                                'describe', '--always', '--dirty'])
    return found
