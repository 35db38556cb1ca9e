"""Failure paths and cleanup under the real Zuul (scenario 6).

A consumer without the speculative image fails for that reason; a cancelled
buildset leaves no registry running; and, last of all the e2e tests, no
registry password appears in anything Zuul keeps or shows of any build so
far: job logs, inventories, returned data, the REST API's build records.
(A failed build pushing nothing is test_images.test_failed_build_pushes_nothing.)
"""

from __future__ import annotations

import json

from stack import TEST_PROJECT, wait_for
from test_images import assert_no_buildset_registry, nonce, project

UNBUILT = project('e2e-registry', {'e2e-consumer-unbuilt': {'dependencies': ['e2e-registry']}})
CANCELLED = project('e2e-registry', {'e2e-waiting-consumer': {'dependencies': ['e2e-registry']}})


def test_consumer_without_the_speculative_image_fails(zuul, timed):
    """No job built docker.io/speculum-e2e/never-built: the consumer fails because the image is unknown."""
    buildset = zuul.run({'zuul.d/project.yaml': UNBUILT, 'nonce.txt': nonce() + '\n'},
                        'a consumer of an image nothing built')
    assert buildset.build('e2e-registry')['result'] == 'SUCCESS', buildset.report()
    consumer = buildset.build('e2e-consumer-unbuilt')
    assert consumer['result'] == 'FAILURE', buildset.report()
    output = zuul.stack.job_output(consumer['uuid'], limit=10**7)
    # The first pull asked the buildset registry (the mirror), then the stand-in Docker Hub:
    # neither has the image, and the error says so for both.
    errors = [line for line in output.splitlines() if 'never-built' in line and 'manifest unknown' in line]
    assert errors, output[-4000:]
    assert 'buildset-registry' in errors[0] and 'docker.io/speculum-e2e/never-built' in errors[0], errors[0]
    assert_no_buildset_registry(zuul)


def test_cancelled_buildset_leaves_no_registry(zuul, timed):
    """An operator dequeues a buildset while its registry job is paused: the registry is stopped."""
    value = nonce()
    sha = zuul.push({'zuul.d/project.yaml': CANCELLED, 'nonce.txt': value + '\n'}, f'a buildset to cancel ({value})')

    def waiting():
        return zuul.stack.node_processes('speculum-registry buildset') and zuul.stack.node_processes('sleep 600')
    wait_for('the registry to run and the consumer to wait', waiting, 600, interval=3,
             diagnose=lambda: zuul.stack.component_logs(30))
    zuul.stack.dequeue('check', TEST_PROJECT, 'refs/heads/main')
    buildset = zuul.wait_buildset(sha, timeout=300)
    assert buildset.result != 'SUCCESS', buildset.report()
    registry = buildset.build('e2e-registry')
    assert registry['result'] not in ('SUCCESS', 'FAILURE'), buildset.report()
    # The cleanup playbook runs after a cancel too.
    wait_for('the cancelled buildset registry to stop', lambda: not zuul.stack.node_processes(
        'speculum-registry buildset'), 180, interval=3)
    output = zuul.stack.job_output(registry['uuid'], limit=10**7)
    assert 'Stop the buildset registry' in output, output[-3000:]


def test_no_registry_password_anywhere(zuul, timed):
    """No registry password in any job log, inventory, returned data or REST build record so far."""
    stack = zuul.stack
    passwords = {'intermediate registry': stack.intermediate['password'],
                 'final registry': stack.final['password']}
    for build, password in stack.buildset_registry_passwords().items():
        passwords[f'buildset registry of {build}'] = password
    assert len(passwords) > 2, 'no buildset registry ran before this test'

    places = {}
    for build_dir in stack.job_dir.iterdir():
        for path in stack.job_logs(build_dir.name) + sorted((build_dir / 'ansible').glob('*inventory*')):
            places[str(path)] = path.read_text(errors='replace')
        # What the build returned: everything but secret_data, which Zuul keeps secret.
        results = stack.build_results(build_dir.name)
        results.pop('secret_data', None)
        places[f'{build_dir.name} returned data'] = json.dumps(results)
    assert any('inventory' in place for place in places), 'no inventory found in the job dirs'
    for buildset in zuul.api.tget('/buildsets', project=TEST_PROJECT, limit=500):
        record = zuul.api.tget(f'/buildset/{buildset["uuid"]}')
        places[f'REST record of buildset {buildset["uuid"]}'] = json.dumps(record)

    leaks = [f'{name} in {place}' for place, text in places.items()
             for name, password in passwords.items() if password in text]
    assert not leaks, leaks
