"""Section 5: peak memory. Every registry the other sections start has its
VmHWM (peak resident set, from /proc/<pid>/status) read just before it is
stopped; this section measures nothing itself: the report shows the largest
per registry and per section the instance ran in."""

from __future__ import annotations

from ..context import Bench

TITLE = 'Peak memory (VmHWM) across sections 1-4 and 6-9'
SECTION = '5'


def run(bench: Bench) -> None:
    bench.results.note(SECTION, 'Read from /proc/<pid>/status (VmHWM) of each server process '
                                'just before it was stopped; the largest instance per registry.')
