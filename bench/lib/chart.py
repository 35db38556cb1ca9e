"""doc/benchmarks.png: speculum's advantage over distribution (and
zuul-registry) per measurement, as horizontal bars on a log scale; above 1
means speculum did better (less time, CPU, latency or memory; more
throughput or requests/s)."""

from __future__ import annotations

from pathlib import Path

from .results import Results

HIGHER_IS_BETTER = {'GB/s', 'rps'}
CHARTED = {'seconds', 'cpu_s', 'GB/s', 'rps', 'p99_ms', 'ms'}
PEERS = ('distribution', 'zuul-registry')
SECTIONS = ('1', '2', '3', '4', '6', '9')


def advantage(speculum: float | None, peer: float | None, metric: str) -> float | None:
    if not speculum or not peer:
        return None
    return speculum / peer if metric in HIGHER_IS_BETTER else peer / speculum


def peak(r: Results, reg: str) -> float | None:
    vals = [v for c in r.cases('5') for v in r.values('5', c, reg, 'peak_rss_mb')]
    return max(vals) if vals else None


def bars(r: Results) -> list[tuple[str, dict[str, float | None]]]:
    """(label, {peer: advantage}) per charted measurement, plus peak memory."""
    out = []
    for key in SECTIONS:
        for case in r.cases(key):
            for metric in dict.fromkeys(m for c, _, m in r.keys(key) if c == case):
                if metric not in CHARTED:
                    continue
                spec = r.median(key, case, 'speculum', metric)
                values = {p: advantage(spec, r.median(key, case, p, metric), metric) for p in PEERS}
                if any(values.values()):
                    out.append((f'{key}: {case}, {metric.replace("_", " ")}', values))
    spec = peak(r, 'speculum')
    if spec:
        out.append(('5: largest peak RSS', {p: advantage(spec, peak(r, p), 'rss') for p in PEERS}))
    return out


def draw(r: Results, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (Debian's, only for the chart)
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    items = bars(r)
    height = 0.38
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * max(len(items), 1)))
    for i, peer in enumerate(PEERS):
        ys = [n + (i - 0.5) * height for n in range(len(items))]
        xs = [vals.get(peer) or 0 for _, vals in items]
        drawn = [(y, x) for y, x in zip(ys, xs) if x]
        # From 1 to the advantage: right is better, left is worse.
        ax.barh([y for y, _ in drawn], [x - 1 for _, x in drawn], left=1, height=height,
                label=f'against {peer}', color=('#1f77b4', '#ff7f0e')[i])
    ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale('log')
    ax.axvline(1, color='black', linewidth=0.8)
    ax.set_xlabel("speculum's advantage (log scale; above 1: speculum better)")
    ax.set_title('speculum against distribution and zuul-registry (medians)')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
