"""The harness itself: a job graph like a buildset registry's runs under the real Zuul."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

DEMO_PROJECT = yaml.safe_dump([{'project': {
    'check': {'jobs': [
        'e2e-demo-pause',
        {'e2e-demo-on-executor': {'dependencies': ['e2e-demo-pause']}},
        {'e2e-demo-on-node': {'dependencies': ['e2e-demo-pause']}},
    ]},
}}], sort_keys=False)


def test_tenant_loads_without_errors(zuul, timed):
    """speculum, the stand-in zuul-jobs and the site config load side by side, without warnings."""
    zuul.assert_no_config_errors(warnings=True)
    projects = {p['name'] for p in zuul.api.tget('/projects')}
    assert {'site-config', 'speculum', 'zuul-jobs', 'test-project'} <= projects, projects


def test_paused_parent_and_children(zuul, timed):
    """A parent pauses with zuul_return data; children on the executor and on the node read it."""
    buildset = zuul.run({'zuul.d/project.yaml': DEMO_PROJECT}, 'demo: a paused parent and two children')
    buildset.assert_success('e2e-demo-pause', 'e2e-demo-on-executor', 'e2e-demo-on-node')

    parent = buildset.build('e2e-demo-pause')
    for child in ('e2e-demo-on-executor', 'e2e-demo-on-node'):
        build = buildset.build(child)
        # The parent resumed only after its children finished.
        assert parent['end_time'] >= build['end_time'], (parent, build)

    # What the node wrote to /etc stayed in the node's overlay.
    assert not Path('/etc/speculum-e2e-demo').exists(), 'a job wrote to the host /etc'
    seen = zuul.stack.node_exec('cat', '/etc/speculum-e2e-demo')
    assert seen.stdout.strip() == buildset.record['uuid'], seen


def test_timer_pipeline(zuul, timed):
    """The same graph, started by the periodic pipeline's timer."""
    project = yaml.safe_load(DEMO_PROJECT)
    project[0]['project']['periodic'] = project[0]['project'].pop('check')
    since = time.time()
    zuul.push_config('test-project', {'zuul.d/project.yaml': yaml.safe_dump(project, sort_keys=False)},
                     'demo: the same jobs in the periodic pipeline')
    try:
        zuul.assert_no_config_errors()
        buildset = zuul.wait_timer_buildset(since)
        buildset.assert_success('e2e-demo-pause', 'e2e-demo-on-executor', 'e2e-demo-on-node')
    finally:
        # Stop the timer from starting more buildsets for the rest of the session.
        zuul.push_config('test-project', {'zuul.d/project.yaml': None}, 'demo: no more periodic jobs')
