#!/usr/bin/python3
"""Soak: a bounded mix of pushes, pulls, retags, deletes and garbage collection
against one `speculum-registry serve`, checking after every step that every
tagged image is complete.

    scripts/soak.py [--seconds 60] [--max-ops 100000] [--seed N]     (make soak)

The registry runs from target/debug (SPECULUM_TEST_BIN_DIR overrides) on a
free loopback port with filesystem storage in a temporary directory, a write
user, and its own collector every 2 s (grace 5 s); a `prune` process runs
beside it every 20 operations. Images are random (two or three layers of up
to 64 KiB, some shared between images, so that a collection has something to
get wrong). The model knows which tag points at which manifest; after each
operation every tag's manifest must come back byte for byte, and every blob
it names must exist with its size (a pull step also reads the blobs and
checks their digests). At the end it reports the operations by kind, the
errors (any error fails the run), the collections, and the server's peak
memory (VmHWM). Standard library only: Debian's python3 runs it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import email.message
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN_DIR = Path(os.environ.get('SPECULUM_TEST_BIN_DIR', REPO / 'target' / 'debug'))
USER, PASSWORD = 'soak', 'soak-password'
REPOSITORIES = ('soak/app', 'soak/lib', 'soak/tools')
MAX_TAGS = 24
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'


class Failure(Exception):
    """A step found the registry wrong: the soak fails."""


class Registry:
    """Just enough of the distribution API, over plain HTTP with Basic auth."""

    def __init__(self, port: int):
        self.base = f'http://127.0.0.1:{port}'
        self.auth = 'Basic ' + base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                ok=(200, 201, 202, 204)) -> tuple[int, "email.message.Message", bytes]:
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={'Authorization': self.auth, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, got_headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            status, got_headers, data = err.code, err.headers, err.read()
        if status not in ok:
            raise Failure(f'{method} {path}: {status} {data[:300]!r}')
        return status, got_headers, data

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = 'sha256:' + hashlib.sha256(data).hexdigest()
        status, _, _ = self.request('HEAD', f'/v2/{repo}/blobs/{digest}', ok=(200, 404))
        if status == 200:
            return digest
        _, headers, _ = self.request('POST', f'/v2/{repo}/blobs/uploads/')
        location = headers['Location']
        path = location if location.startswith('/') else '/' + location.split('/', 3)[3]
        sep = '&' if '?' in path else '?'
        self.request('PUT', f'{path}{sep}digest={digest}', body=data,
                     headers={'Content-Type': 'application/octet-stream'})
        return digest

    def push_manifest(self, repo: str, tag: str, manifest: bytes) -> None:
        self.request('PUT', f'/v2/{repo}/manifests/{tag}', body=manifest, headers={'Content-Type': OCI_MANIFEST})

    def manifest(self, repo: str, tag: str) -> bytes | None:
        status, _, data = self.request('GET', f'/v2/{repo}/manifests/{tag}', headers={'Accept': OCI_MANIFEST},
                                       ok=(200, 404))
        return data if status == 200 else None

    def blob_size(self, repo: str, digest: str) -> int | None:
        status, headers, _ = self.request('HEAD', f'/v2/{repo}/blobs/{digest}', ok=(200, 404))
        return int(headers.get('Content-Length', -1)) if status == 200 else None

    def blob(self, repo: str, digest: str) -> bytes:
        return self.request('GET', f'/v2/{repo}/blobs/{digest}')[2]

    def delete_tag(self, repo: str, tag: str) -> None:
        self.request('DELETE', f'/v2/{repo}/manifests/{tag}')

    def metric(self, name: str) -> float:
        text = self.request('GET', '/metrics')[2].decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + ' '))


class Soak:
    def __init__(self, registry: Registry, rng: random.Random, prune):
        self.registry = registry
        self.rng = rng
        self.prune = prune
        self.tags: dict[tuple[str, str], bytes] = {}  # (repo, tag) -> manifest bytes
        self.shared = [rng.randbytes(rng.randint(1, 64 * 1024)) for _ in range(4)]
        self.ops = collections.Counter()
        self.serial = 0

    def image(self) -> tuple[list[bytes], bytes]:
        """Layers (sometimes a shared one) and a config for a new image."""
        layers = [self.rng.randbytes(self.rng.randint(1, 64 * 1024)) for _ in range(self.rng.randint(1, 2))]
        if self.rng.random() < 0.5:
            layers.append(self.rng.choice(self.shared))
        config = json.dumps({'architecture': 'amd64', 'os': 'linux', 'serial': self.serial,
                             'rootfs': {'type': 'layers', 'diff_ids': []}}).encode()
        return layers, config

    def push(self) -> None:
        self.serial += 1
        repo = self.rng.choice(REPOSITORIES)
        layers, config = self.image()
        descriptors = [{'mediaType': 'application/vnd.oci.image.layer.v1.tar',
                        'digest': self.registry.push_blob(repo, layer), 'size': len(layer)} for layer in layers]
        manifest = json.dumps({
            'schemaVersion': 2, 'mediaType': OCI_MANIFEST,
            'config': {'mediaType': 'application/vnd.oci.image.config.v1+json',
                       'digest': self.registry.push_blob(repo, config), 'size': len(config)},
            'layers': descriptors,
        }).encode()
        tag = f't{self.serial}'
        self.registry.push_manifest(repo, tag, manifest)
        self.tags[(repo, tag)] = manifest

    def retag(self) -> None:
        (repo, _), manifest = self.rng.choice(list(self.tags.items()))
        self.serial += 1
        tag = f'r{self.serial}'
        self.registry.push_manifest(repo, tag, manifest)
        self.tags[(repo, tag)] = manifest

    def delete(self) -> None:
        repo, tag = self.rng.choice(sorted(self.tags))
        self.registry.delete_tag(repo, tag)
        del self.tags[(repo, tag)]

    def pull(self) -> None:
        (repo, tag), manifest = self.rng.choice(list(self.tags.items()))
        for descriptor in blobs_of(manifest):
            data = self.registry.blob(repo, descriptor['digest'])
            if 'sha256:' + hashlib.sha256(data).hexdigest() != descriptor['digest']:
                raise Failure(f'{repo}:{tag}: blob {descriptor["digest"]} has other content')

    def step(self) -> None:
        if len(self.tags) < 4:
            kind = 'push'
        elif len(self.tags) >= MAX_TAGS:
            kind = 'delete'
        else:
            kind = self.rng.choices(['push', 'pull', 'retag', 'delete'], weights=[4, 4, 1, 3])[0]
        if self.ops.total() % 20 == 19:
            kind = 'prune'
        if kind == 'prune':
            self.prune()
        else:
            getattr(self, kind)()
        self.ops[kind] += 1
        self.check()

    def check(self) -> None:
        """Every tag gives its manifest back, and every blob it names is there with its size."""
        for (repo, tag), manifest in self.tags.items():
            got = self.registry.manifest(repo, tag)
            if got != manifest:
                raise Failure(f'{repo}:{tag}: manifest {"missing" if got is None else "changed"}')
            for descriptor in blobs_of(manifest):
                size = self.registry.blob_size(repo, descriptor['digest'])
                if size != descriptor['size']:
                    raise Failure(f'{repo}:{tag}: blob {descriptor["digest"]} size {size}, '
                                  f'expected {descriptor["size"]}')


def blobs_of(manifest: bytes) -> list[dict]:
    parsed = json.loads(manifest)
    return [parsed['config'], *parsed['layers']]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=60)
    parser.add_argument('--max-ops', type=int, default=100_000)
    parser.add_argument('--seed', type=int, default=int(time.time()))
    args = parser.parse_args()
    binary = BIN_DIR / 'speculum-registry'
    if not binary.exists():
        print(f'{binary} is missing: run cargo build --bins', file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix='speculum-soak-'))
    port = free_port()
    config = scratch / 'registry.yaml'
    config.write_text(json.dumps({'registry': {
        'address': '127.0.0.1', 'port': port, 'secret': 'soak-secret-of-some-length',
        'users': [{'name': USER, 'pass': PASSWORD, 'access': 'write'}],
        'storage': {'driver': 'filesystem', 'root': str(scratch / 'storage')},
        'gc': {'interval': '2s', 'grace': '5s', 'uploads': '1h'},
    }}))
    log = (scratch / 'registry.log').open('w')
    server = subprocess.Popen([binary, 'serve', '--config', config], stdout=log, stderr=subprocess.STDOUT)
    prunes = collections.Counter()

    def prune():
        proc = subprocess.run([binary, 'prune', '--config', config], capture_output=True, text=True, timeout=120)
        # Exit 1 with "another garbage collection" is the lock doing its job.
        prunes['ran' if proc.returncode == 0 else 'skipped (collector busy)'] += 1
        if proc.returncode not in (0, 1):
            raise Failure(f'prune exited {proc.returncode}: {proc.stderr[-500:]}')

    registry = Registry(port)
    soak = Soak(registry, random.Random(args.seed), prune)
    errors = []
    start = time.monotonic()
    try:
        deadline = start + 30
        while True:
            try:
                registry.request('GET', '/v2/')
                break
            except (OSError, Failure):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise Failure('the registry did not start:\n' + (scratch / 'registry.log').read_text()[-2000:])
                time.sleep(0.05)
        while time.monotonic() - start < args.seconds and soak.ops.total() < args.max_ops:
            soak.step()
        collections_run = registry.metric('speculum_gc_runs_total')
        peak = peak_rss_kib(server.pid)
    except Failure as exc:
        errors.append(str(exc))
        collections_run, peak = 0, peak_rss_kib(server.pid) if server.poll() is None else 0
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    elapsed = time.monotonic() - start
    print(f'soak: seed {args.seed}, {elapsed:.0f} s, {soak.ops.total()} operations '
          f'({", ".join(f"{k} {v}" for k, v in sorted(soak.ops.items()))}), '
          f'{len(soak.tags)} tags at the end')
    print(f'soak: collections in the server {collections_run:.0f}, prune processes '
          f'{dict(prunes) or "none"}; server peak memory {peak / 1024:.1f} MiB; errors {len(errors)}')
    for error in errors:
        print(f'soak: ERROR {error}', file=sys.stderr)
    if errors:
        print(f'soak: kept {scratch} (registry.log, storage)', file=sys.stderr)
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
