"""Our image jobs under the real Zuul: producers, consumers, the registries around them.

Each test pushes one commit to the test project: its project stanza (which
jobs run) and a fresh nonce that the built image carries. The site jobs come
from doc/examples/site-config, with the intermediate registry's secret
encrypted for the site project.
"""

from __future__ import annotations

import secrets

import yaml
from stack import wait_for

APP = 'speculum-e2e/app'
DOCKER_APP = 'speculum-e2e/docker-app'
BROKEN = 'speculum-e2e/broken'


def project(*jobs) -> str:
    return yaml.safe_dump([{'project': {'check': {'jobs': list(jobs)}}}], sort_keys=False)


PRODUCER_CONSUMER = project(
    'e2e-registry',
    {'e2e-build-image': {'dependencies': ['e2e-registry']}},
    {'e2e-consumer': {'dependencies': ['e2e-registry', 'e2e-build-image']}},
)
DOCKER_PRODUCER_CONSUMER = project(
    'e2e-registry',
    {'e2e-build-docker-image': {'dependencies': ['e2e-registry']}},
    {'e2e-consumer-docker-app': {'dependencies': ['e2e-registry', 'e2e-build-docker-image']}},
)
PRODUCER_ONLY = project('e2e-build-image')
BROKEN_PRODUCER = project('e2e-build-broken-image')


def nonce() -> str:
    return secrets.token_hex(8)


def image_artifacts(build: dict) -> list[dict]:
    return [a for a in build.get('artifacts') or []
            if (a.get('metadata') or {}).get('type') == 'container_image']


def assert_no_buildset_registry(zuul) -> None:
    left = zuul.stack.node_processes('speculum-registry buildset')
    assert not left, f'buildset registries still running after the buildset: {left}'


def test_producer_and_consumer(zuul, timed):
    """Registry pauses; a build FROM the stand-in Docker Hub pushes; a consumer pulls by the final name."""
    value = nonce()
    buildset = zuul.run({'zuul.d/project.yaml': PRODUCER_CONSUMER, 'nonce.txt': value + '\n'},
                        f'producer and consumer ({value})')
    buildset.assert_success('e2e-registry', 'e2e-build-image', 'e2e-consumer')

    registry = buildset.build('e2e-registry')
    for child in ('e2e-build-image', 'e2e-consumer'):
        assert registry['end_time'] >= buildset.build(child)['end_time'], 'the registry job did not wait'

    # The build job pushed its image to the intermediate registry and said so to Zuul.
    build = zuul.api.tget(f'/build/{buildset.build("e2e-build-image")["uuid"]}')
    artifacts = image_artifacts(build)
    assert artifacts, f'no container_image artifact in the build record: {build.get("artifacts")}'
    tags = zuul.stack.intermediate_tags(APP)
    for artifact in artifacts:
        meta = artifact['metadata']
        # zuul-jobs' shape: the final name, and where the image waits (<build>_<tag>).
        assert meta['repository'] == f'docker.io/{APP}' and meta['tag'] == 'latest', artifact
        assert artifact['url'].endswith(f'/{APP}:{build["uuid"]}_latest'), artifact
        assert f'{build["uuid"]}_latest' in tags, (artifact, tags)

    assert_no_buildset_registry(zuul)


def test_docker_producer_and_consumer(zuul, timed):
    """The docker flavour: docker_images built by a docker daemon on the node, consumed by name."""
    value = nonce()
    buildset = zuul.run({'zuul.d/project.yaml': DOCKER_PRODUCER_CONSUMER, 'nonce.txt': value + '\n'},
                        f'docker producer and consumer ({value})')
    buildset.assert_success('e2e-registry', 'e2e-build-docker-image', 'e2e-consumer-docker-app')
    build = zuul.api.tget(f'/build/{buildset.build("e2e-build-docker-image")["uuid"]}')
    artifacts = image_artifacts(build)
    assert artifacts and all(a['metadata']['repository'].endswith(DOCKER_APP) for a in artifacts), artifacts
    assert f'{build["uuid"]}_latest' in zuul.stack.intermediate_tags(DOCKER_APP)
    assert_no_buildset_registry(zuul)


def test_producer_only(zuul, timed):
    """A build job with no registry job starts its own registry, does not pause, and stops it."""
    value = nonce()
    buildset = zuul.run({'zuul.d/project.yaml': PRODUCER_ONLY, 'nonce.txt': value + '\n'},
                        f'producer only ({value})')
    buildset.assert_success('e2e-build-image')
    build = buildset.build('e2e-build-image')
    executor_log = (zuul.stack.logs / 'zuul-executor-debug.log').read_text(errors='replace')
    paused = [line for line in executor_log.splitlines() if build['uuid'] in line and 'Pausing job' in line]
    assert not paused, 'the build job paused although it has no children:\n' + '\n'.join(paused)
    assert image_artifacts(zuul.api.tget(f'/build/{build["uuid"]}')), 'no artifact returned'
    assert f'{build["uuid"]}_latest' in zuul.stack.intermediate_tags(APP)
    assert_no_buildset_registry(zuul)


def test_failed_build_pushes_nothing(zuul, timed):
    """A build that fails pushes nothing to the intermediate registry and leaves no registry behind."""
    before = zuul.stack.intermediate_tags(BROKEN)
    buildset = zuul.run({'zuul.d/project.yaml': BROKEN_PRODUCER, 'nonce.txt': nonce() + '\n'},
                        'a producer whose build fails')
    build = buildset.build('e2e-build-broken-image')
    assert build['result'] == 'FAILURE', buildset.report()
    assert 'no-such-file' in zuul.stack.job_output(build['uuid']), 'the build failed for another reason'
    assert zuul.stack.intermediate_tags(BROKEN) == before
    assert not image_artifacts(zuul.api.tget(f'/build/{build["uuid"]}'))
    assert_no_buildset_registry(zuul)


def task_results(output: str, task: str) -> list[str]:
    """The result lines of the first run of one task (or loop) in a job-output.txt."""
    lines, inside = [], False
    for line in output.splitlines():
        text = line.split(' | ', 1)[-1]
        if text.startswith(('TASK [', 'LOOP [', 'PLAY [')):
            if inside:
                break
            inside = task in text
            continue
        if inside and text.strip():
            lines.append(text)
    return lines


def test_each_buildset_gets_a_fresh_registry(zuul, timed):
    """The next buildset's registry job finds nothing left and starts a registry of its own."""
    earlier = zuul.stack.buildset_registry_passwords()
    if not earlier:
        zuul.run({'zuul.d/project.yaml': PRODUCER_CONSUMER, 'nonce.txt': nonce() + '\n'}, 'a first registry')
        earlier = zuul.stack.buildset_registry_passwords()
    assert earlier, 'no build returned a buildset registry so far'
    buildset = zuul.run({'zuul.d/project.yaml': PRODUCER_CONSUMER, 'nonce.txt': nonce() + '\n'},
                        'a registry after others')
    buildset.assert_success('e2e-registry', 'e2e-build-image', 'e2e-consumer')
    registry_build = buildset.build('e2e-registry')['uuid']
    password = zuul.stack.buildset_registry_passwords().get(registry_build)
    assert password, 'the registry job returned no buildset registry'
    assert password not in earlier.values(), 'the registry job handed out an earlier registry'
    # Nothing of an earlier registry was left for it to remove.
    output = zuul.stack.job_output(registry_build, limit=10**7)
    removed = task_results(output, "Remove the registry's storage, connection info and owner")
    assert removed and not any('changed' in line for line in removed), removed
    assert_no_buildset_registry(zuul)


def test_publish_and_promote(zuul, timed):
    """The IR's webhook tells of the check build's push; a tag promotes that image to its final name."""
    value = nonce()
    # The site config attaches e2e-promote-container-image to the promote pipeline.
    sha = zuul.push({'zuul.d/project.yaml': PRODUCER_ONLY, 'nonce.txt': value + '\n'},
                    f'publish and promote ({value})')
    checked = zuul.wait_buildset(sha)
    checked.assert_success('e2e-build-image')
    zuul.assert_no_config_errors()
    build = checked.build('e2e-build-image')['uuid']
    tested = zuul.stack.digest(f'{APP}:{build}_latest')

    # The CD system's hook heard of the push, the Docker Hub way.
    def heard():
        return [h for h in zuul.stack.hooks.received
                if (h['payload'] or {}).get('push_data', {}).get('tag') == f'{build}_latest']
    hooks = wait_for('the webhook of the push to the intermediate registry', heard, 60)
    hook = hooks[0]
    assert f'token={zuul.stack.webhook_token}' in hook['path'], hook
    assert hook['payload']['repository']['repo_name'].endswith(APP), hook['payload']

    tag = f'e2e-{value}'
    zuul.git.git('tag', tag, sha, cwd=zuul.git.work / 'test-project')
    zuul.git.git('push', '--quiet', 'origin', f'refs/tags/{tag}', cwd=zuul.git.work / 'test-project')
    promoted = zuul.wait_buildset(sha, pipeline='promote')
    promoted.assert_success('e2e-promote-container-image')
    assert zuul.stack.digest(f'{APP}:latest', registry='dockerhub') == tested, 'the final tag is not the tested image'
