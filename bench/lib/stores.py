"""Real object stores for section 9: OpenStack Swift (s3api) and Ceph radosgw,
started by scripts/stores/NAME (the ones the S3 tests use), and buckets made
in them with a SigV4-signed curl, as scripts/stores/lib.sh does.

`up` runs with `--parent` (this process) and `--purge`, so the scripts' watcher
stops a store and removes its directory even if the bench dies without its
`finally`; `stop` runs `down`, which stops exactly the PIDs `up` listed in
DIR/pids.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from . import record
from .proc import BenchError, run

# Bounds of `up` (the scripts' own waits add up to less: Swift 120 s, Ceph 330 s) and `down`
# (10 s of grace per process, then KILL).
UP_TIMEOUT = 420
DOWN_TIMEOUT = 120
CURL_TIMEOUT = 30
# Ceph's OSD keeps objects in memory and radosgw frees deleted ones only hours later.
CEPH_MEMSTORE_MIB = 4096
# The display names, in the order of the section.
SWIFT, CEPH = 'Swift', 'Ceph'
SCRIPTS = {SWIFT: 'swift', CEPH: 'ceph'}


@dataclass
class Store:
    """One running store: its directory and what DIR/s3.env says."""
    name: str
    script: Path
    dir: Path
    start_s: float = 0.0
    s3: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.s3['S3_ENDPOINT']

    @property
    def region(self) -> str:
        return self.s3['S3_REGION']

    @property
    def access_key(self) -> str:
        return self.s3['S3_ACCESS_KEY_ID']

    @property
    def secret_key(self) -> str:
        return self.s3['S3_SECRET_ACCESS_KEY']

    def request(self, method: str, path: str) -> str:
        """A path-style S3 request signed with SigV4 by curl; the body of the
        answer. The credentials go in the URL, percent-encoded: curl splits
        --user at the first colon, and Swift's access key is ACCOUNT:USER."""
        scheme, host = self.endpoint.split('://', 1)
        user = f'{quote(self.access_key, safe="")}:{quote(self.secret_key, safe="")}'
        return run(['curl', '-sS', '--fail-with-body', '--max-time', CURL_TIMEOUT, '-X', method,
                    '--aws-sigv4', f'aws:amz:{self.region}:s3',
                    # Both stores want the header; curl 7.88 does not send it.
                    '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD',
                    f'{scheme}://{user}@{host}{path}'], CURL_TIMEOUT + 5).stdout

    def make_bucket(self, name: str) -> str:
        self.request('PUT', f'/{name}')
        return name

    def stop(self) -> None:
        """`down DIR --purge`: stops the PIDs of DIR/pids and the watcher."""
        if self.dir.exists():
            run([self.script, 'down', self.dir, '--purge'], DOWN_TIMEOUT, check=False)


def start(name: str, repo: Path, work: Path) -> Store:
    """Start store `name` (SWIFT or CEPH) in a fresh directory under `work`;
    `start_s` is the wall time of `up`, from nothing to a whole S3 round trip.
    If `up` fails, what it started is stopped before the error is raised."""
    store = Store(name, repo / 'scripts' / 'stores' / SCRIPTS[name], work / f'store-{SCRIPTS[name]}')
    env = {**os.environ, 'CEPH_MEMSTORE_MIB': str(CEPH_MEMSTORE_MIB)}
    t0 = time.perf_counter()
    try:
        run([store.script, 'up', store.dir, '--parent', os.getpid(), '--purge'], UP_TIMEOUT, env=env)
    except BenchError:
        store.stop()
        raise
    store.start_s = time.perf_counter() - t0
    store.s3 = read_env(store.dir / 's3.env')
    for secret, label in ((store.secret_key, '$S3_SECRET_KEY'), (store.access_key, '$S3_ACCESS_KEY')):
        record.SECRETS[quote(secret, safe='')] = label
        record.SECRETS[secret] = label
    return store


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as the scripts write them (no quoting)."""
    pairs = (line.split('=', 1) for line in path.read_text().splitlines() if '=' in line)
    return {k: v for k, v in pairs}
