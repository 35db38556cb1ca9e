"""Test data, made once and kept in OUT/images (a `.complete` marker says a
build finished): OCI layouts of random data built with umoci, and the raw
blobs section 1 uploads with curl."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .proc import run

MIB = 1 << 20
UMOCI_TIMEOUT = 600


@dataclass
class Image:
    """An OCI layout `dir` holding `tags`; `bytes` is the size of its blobs."""
    dir: Path
    tags: list[str]
    bytes: int
    layers: int

    def ref(self, tag: str | None = None) -> str:
        return f'oci:{self.dir}:{tag or self.tags[0]}'

    def manifest_digest(self, tag: str | None = None) -> str:
        index = json.loads((self.dir / 'index.json').read_text())
        for m in index['manifests']:
            if m.get('annotations', {}).get('org.opencontainers.image.ref.name') == (tag or self.tags[0]):
                return m['digest']
        raise KeyError(tag)


def _random_file(path: Path, size: int) -> None:
    with open(path, 'wb') as f:
        for _ in range(size // (8 * MIB)):
            f.write(os.urandom(8 * MIB))
        f.write(os.urandom(size % (8 * MIB)))


def _build(dest: Path, tags: dict[str, list[int]]) -> None:
    """An OCI layout at `dest`, one image per tag with gzip layers of random
    data of the given sizes (umoci init, new, insert)."""
    tmp = dest.with_name(dest.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    run(['umoci', 'init', '--layout', tmp], timeout=60)
    scratch = tmp.with_name(dest.name + '.data')
    for tag, sizes in tags.items():
        run(['umoci', 'new', '--image', f'{tmp}:{tag}'], timeout=60)
        for i, size in enumerate(sizes):
            _random_file(scratch, size)
            run(['umoci', 'insert', '--image', f'{tmp}:{tag}', scratch, f'/data/layer-{i}.bin'],
                timeout=UMOCI_TIMEOUT)
    scratch.unlink(missing_ok=True)
    tmp.rename(dest)
    (dest / '.complete').touch()


def _blobs_size(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / 'blobs').rglob('*') if p.is_file())


def image(root: Path, name: str, tags: dict[str, list[int]]) -> Image:
    """The layout `root/name`, built unless a complete one is there."""
    dest = root / name
    if not (dest / '.complete').exists():
        print(f'bench: building image {name} in {dest}', flush=True)
        root.mkdir(parents=True, exist_ok=True)
        _build(dest, tags)
    layers = max(len(s) for s in tags.values())
    return Image(dest, list(tags), _blobs_size(dest), layers)


def three_layer(root: Path) -> Image:
    """~105 MB: 40 + 35 + 25 MiB of random data (as bench/registry.sh had)."""
    return image(root, 'three-layer', {'v1': [40 * MIB, 35 * MIB, 25 * MIB]})


def one_gb(root: Path) -> Image:
    """One layer of 1 GiB of random data."""
    return image(root, 'one-gb', {'v1': [1024 * MIB]})


def changes(root: Path, count: int = 20) -> Image:
    """`count` images of ~10 MB (two 5 MiB layers each, none shared)."""
    return image(root, f'changes-{count}', {f'c{i}': [5 * MIB, 5 * MIB] for i in range(count)})


@dataclass
class Blob:
    """A raw blob for section 1: the whole file and its chunks."""
    path: Path
    digest: str
    size: int
    chunks: list[Path]


def raw_blob(root: Path, name: str, size: int, chunks: int) -> Blob:
    """`size` random bytes in `chunks` files (and whole), kept in root/name."""
    d = root / name
    meta = d / 'meta.json'
    if not meta.exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        _random_file(d / 'blob', size)
        data_hash = hashlib.sha256()
        step = size // chunks
        with open(d / 'blob', 'rb') as f:
            for i in range(chunks):
                part = f.read(step if i < chunks - 1 else size - step * (chunks - 1))
                data_hash.update(part)
                (d / f'chunk-{i}').write_bytes(part)
        meta.write_text(json.dumps({'digest': 'sha256:' + data_hash.hexdigest(), 'size': size}))
    doc = json.loads(meta.read_text())
    return Blob(d / 'blob', doc['digest'], doc['size'], [d / f'chunk-{i}' for i in range(chunks)])
