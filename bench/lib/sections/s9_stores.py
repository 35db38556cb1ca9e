"""Section 9: object stores. `skopeo copy` push and pull of the 3-layer image
over TLS, with the registry's storage in a bucket of a real S3 store on
loopback: OpenStack Swift (s3api, three replicas on the host disk) and Ceph
radosgw (one OSD on memstore), each started once for the section by
scripts/stores/. speculum is `speculum-registry serve` with `driver: s3`;
distribution is Debian's docker-registry with its own `s3` driver. Both
proxy blob GETs (speculum `redirect: false`, distribution `redirect:
disable: true`), write multipart parts of 8 MiB (`part-size-mib`,
`chunksize`) under the prefix `registry`, and have one write user. Within
each run the registries take turns on the same store, each on a fresh
bucket, and the pulled manifest digest is checked as in section 2. A push
or pull that fails is reported below the table, not retried.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from .. import images, record, registries, stores
from ..context import Bench
from . import s2_skopeo
from ..images import Image
from ..proc import BenchError
from ..registries import DISTRIBUTION, SPECULUM
from ..stores import Store

TITLE = 'skopeo push and pull on object stores'
SECTION = '9'
KINDS = (SPECULUM, DISTRIBUTION)
# Seconds for one copy: well above what a 105 MB image takes, short enough that a registry
# hanging on a store does not hold the section up for long.
COPY_TIMEOUT = 300
PART_MIB = 8
PREFIX = 'registry'


def credential_files(bench: Bench, store: Store) -> tuple[Path, Path]:
    """speculum reads its S3 keys from files (never from the config)."""
    d = bench.env.work / f's3-keys-{store.name.lower()}'
    d.mkdir(mode=0o700, exist_ok=True)
    key, secret = d / 'access-key-id', d / 'secret-access-key'
    key.write_text(store.access_key + '\n')
    secret.write_text(store.secret_key + '\n')
    return key, secret


def speculum_storage(store: Store, bucket: str, keys: tuple[Path, Path]) -> dict:
    return {'driver': 's3', 'bucket': bucket, 'endpoint': store.endpoint, 'region': store.region,
            'prefix': PREFIX, 'path-style': True, 'access-key-id-file': str(keys[0]),
            'secret-access-key-file': str(keys[1]), 'redirect': False, 'part-size-mib': PART_MIB}


def distribution_storage(store: Store, bucket: str) -> dict:
    """distribution 2.8's s3 driver: path-style whenever `regionendpoint` is
    set; `chunksize` (its part size) must be at least 5 MiB."""
    return {'s3': {'accesskey': store.access_key, 'secretkey': store.secret_key,
                   'region': store.region, 'regionendpoint': store.endpoint, 'bucket': bucket,
                   'rootdirectory': f'/{PREFIX}', 'secure': False, 'v4auth': True,
                   'chunksize': PART_MIB << 20},
            'redirect': {'disable': True}, 'delete': {'enabled': True}}


@contextlib.contextmanager
def registry(bench: Bench, kind: str, store: Store, bucket: str, keys: tuple[Path, Path]):
    """`kind` on `bucket` of `store`; stopped (its peak RSS recorded) at the end."""
    if kind == SPECULUM:
        reg = registries.start_speculum_serve(bench.env, speculum_storage(store, bucket, keys),
                                              kind=SPECULUM, label='speculum-registry serve, S3')
    else:
        reg = registries.start_distribution(bench.env, storage=distribution_storage(store, bucket),
                                            label='distribution, S3')
    try:
        yield reg
    finally:
        bench.stop(reg)


def check_bucket(store: Store, bucket: str) -> None:
    """The push really went to the store: the bucket lists an object."""
    if '<Key>' not in store.request('GET', f'/{bucket}?max-keys=1'):
        raise BenchError(f'{store.name}: bucket {bucket} is empty after the push')


def reason(err: BenchError) -> str:
    """The tool's own last words from a failed step, without the command line."""
    text = str(err)
    found = re.search(r' exited -?\d+: (.*)', text, re.DOTALL)
    text = ' '.join((found.group(1) if found else text).split())
    return record.scrub(text)[-400:]


def one(bench: Bench, store: Store, kind: str, keys: tuple[Path, Path], image: Image, label: str,
        run: int, failures: dict[tuple[str, str], list[str]]) -> None:
    """One registry's push and pull in one run; a failure is kept for the
    report (and the registry's log tail printed), and the section goes on."""
    try:
        bucket = store.make_bucket(f'bench-{kind}-{run}')
        with registry(bench, kind, store, bucket, keys) as reg:
            try:
                s2_skopeo.measure(bench, reg, image, f'{label}, {store.name}', run, SECTION,
                                  COPY_TIMEOUT, lambda: check_bucket(store, bucket))
            except BenchError:
                print(f'bench: {kind} on {store.name} failed; its log ends:\n{reg.server.log_tail()}',
                      flush=True)
                raise
    except BenchError as err:
        print(f'bench: {kind} on {store.name}, run {run + 1}: {err}', flush=True)
        failures.setdefault((store.name, kind), []).append(reason(err))


def report_failures(bench: Bench, failures: dict[tuple[str, str], list[str]]) -> None:
    for (name, kind), reasons in failures.items():
        distinct = list(dict.fromkeys(reasons))
        bench.results.note(SECTION, f'**{kind} on {name} failed in {len(reasons)} of {bench.runs} '
                                    f'run(s)**: ' + '; '.join(f'`{r}`' for r in distinct))


def run(bench: Bench) -> None:
    image = images.three_layer(bench.data)
    label = f'3-layer {image.bytes / 1e6:.0f} MB'
    failures: dict[tuple[str, str], list[str]] = {}
    bench.results.note(SECTION, f'{bench.runs} run(s) per store.')
    for name in (stores.SWIFT, stores.CEPH):
        try:
            store = stores.start(name, bench.repo, bench.env.work)
        except BenchError as err:
            bench.results.note(SECTION, f'**{name} did not start**: `{reason(err)}`')
            continue
        bench.results.note(SECTION, f'{name} started in {store.start_s:.1f} s (`scripts/stores/'
                                    f'{stores.SCRIPTS[name]} up`, from nothing to a whole S3 '
                                    'round trip).')
        try:
            keys = credential_files(bench, store)
            for r in range(bench.runs):
                for kind in KINDS:
                    one(bench, store, kind, keys, image, label, r, failures)
        finally:
            store.stop()
    report_failures(bench, failures)
