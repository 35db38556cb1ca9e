"""skopeo copy between OCI layouts and registries (skopeo 1.9: `--insecure-policy`,
a cert dir holding ca.crt for TLS, `--*-tls-verify=false` for plain HTTP)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .proc import BenchError, run
from .registries import Registry

TIMEOUT = 600


def access(reg: Registry, side: str) -> list[str]:
    """The flags that reach `reg` as the `side` ('src' or 'dest') of a copy."""
    flags = [f'--{side}-creds', f'{reg.user}:{reg.password}']
    if reg.tls:
        flags += [f'--{side}-cert-dir', str(reg.cert_dir)]
    else:
        flags.append(f'--{side}-tls-verify=false')
    return flags


def command(src: str, dst: str, src_reg: Registry | None = None,
            dst_reg: Registry | None = None) -> list[str]:
    cmd = ['skopeo', '--insecure-policy', 'copy', '-q']
    if src_reg:
        cmd += access(src_reg, 'src')
    if dst_reg:
        cmd += access(dst_reg, 'dest')
    return cmd + [src, dst]


def copy(src: str, dst: str, src_reg: Registry | None = None,
         dst_reg: Registry | None = None, timeout: float = TIMEOUT) -> float:
    """One copy, which must succeed: its wall time in seconds."""
    t0 = time.perf_counter()
    run(command(src, dst, src_reg, dst_reg), timeout)
    return time.perf_counter() - t0


def parallel(commands: list[list[str]]) -> tuple[float, int]:
    """Run the commands side by side: (wall seconds, how many failed)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    failed = 0
    deadline = t0 + TIMEOUT
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate(timeout=30)
            err = 'timed out'
        if p.returncode != 0:
            failed += 1
            print(f'bench: parallel skopeo failed: {err.strip()[-300:]}', flush=True)
    return time.perf_counter() - t0, failed


def layout_digest(layout: Path) -> str:
    """The manifest digest a pull wrote into an OCI layout."""
    index = json.loads((layout / 'index.json').read_text())
    if len(index['manifests']) != 1:
        raise BenchError(f'{layout}: {len(index["manifests"])} manifests, wanted 1')
    return index['manifests'][0]['digest']


def ref(reg: Registry, name: str) -> str:
    return f'docker://{reg.host}/{name}'
