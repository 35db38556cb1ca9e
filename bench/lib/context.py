"""What every section gets: where things are, how many runs, the results, and
registries that record their peak memory (section 5) when they stop."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import registries
from .registries import Env, Registry
from .results import Results

MEMORY = '5'


@dataclass
class Bench:
    env: Env
    results: Results
    runs: int
    long_runs: int
    data: Path
    repo: Path
    section: str = ''

    @property
    def speculum(self) -> Path:
        return self.env.bin_dir / 'speculum'

    def stop(self, reg: Registry) -> None:
        """Stop `reg`, record its peak RSS against the current section, and
        remove its storage."""
        reg.stop()
        shutil.rmtree(reg.storage.parent, ignore_errors=True)
        if reg.server.peak_rss_kb:
            self.results.add(MEMORY, f'section {self.section}', reg.kind, 'peak_rss_mb',
                             reg.server.peak_rss_kb / 1024)

    @contextlib.contextmanager
    def registry(self, kind: str, tls: bool = True, port: int = 0):
        reg = registries.start(self.env, kind, tls, port)
        try:
            yield reg
        finally:
            self.stop(reg)

    @contextlib.contextmanager
    def serve(self):
        """A `speculum-registry serve` (the intermediate registry)."""
        reg = registries.start_speculum_serve(self.env)
        try:
            yield reg
        finally:
            self.stop(reg)
