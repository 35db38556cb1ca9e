"""More scenarios under the real Zuul: changes ahead, and tags from git metadata.

The git driver has no changes, so there is no Depends-On: the changes-ahead
test injects the artifacts the way zuul-jobs' own tests do, with the job
variable `zuul_artifacts` (pull-from-intermediate-registry honours it in
place of `zuul.artifacts`). The tag test adds a `tag` pipeline to the site
config from the test itself, so the other tests' tenant is unchanged until
it runs (and only tags matching ^refs/tags/v.*$ trigger it afterwards).
"""

from __future__ import annotations

import yaml
from stack import SITE_PROJECT, TEST_PROJECT
from test_images import APP, PRODUCER_ONLY, image_artifacts, nonce, project, task_results

# -- changes ahead (scenario 3) ------------------------------------------------------------------

CHILD = 'speculum-e2e/app-child'

# Builds FROM the image of the changes ahead, by its final name.
DOCKERFILE_AHEAD = f"""\
# Built by e2e-ahead-build-from: FROM the image of the nearest change ahead.
FROM docker.io/{APP}:latest
COPY nonce.txt /child-nonce.txt
"""


def ahead_jobs(artifacts: list[dict]) -> str:
    """A registry job that sees `artifacts` as the changes ahead, a consumer and a build FROM it."""
    return yaml.safe_dump([
        {'job': {
            'name': 'e2e-ahead-registry',
            'parent': 'e2e-registry',
            'description': 'A buildset registry with injected changes ahead (zuul_artifacts).',
            'vars': {'zuul_artifacts': artifacts},
        }},
        {'job': {
            'name': 'e2e-ahead-consumer',
            'parent': 'e2e-consumer',
            'description': "Pulls docker.io/speculum-e2e/app:latest; this commit's nonce is the nearest change's.",
        }},
        {'job': {
            'name': 'e2e-ahead-build-from',
            'parent': 'e2e-build-image',
            'description': 'Builds FROM docker.io/speculum-e2e/app:latest, the image of the nearest change ahead.',
            'vars': {'container_images': [{
                'context': '.', 'container_filename': 'Dockerfile.ahead',
                'repository': f'docker.io/{CHILD}', 'tags': ['latest'],
            }]},
        }},
    ], sort_keys=False)


AHEAD = project(
    'e2e-ahead-registry',
    {'e2e-ahead-consumer': {'dependencies': ['e2e-ahead-registry']}},
    {'e2e-ahead-build-from': {'dependencies': ['e2e-ahead-registry']}},
)


def test_changes_ahead_nearest_wins(zuul, timed):
    """Two producers' images as changes ahead [older, newer]: the consumer gets the newer one."""
    older, newer = nonce(), nonce()
    # One producer after the other: the static nodes are one host and one user here, so
    # two buildset registries at once would share a root and a port, which real nodes never do
    # (and a registry job stops a registry another build left in its root).
    produced = []
    for value, label in ((older, 'older'), (newer, 'newer')):
        buildset = zuul.run({'zuul.d/project.yaml': PRODUCER_ONLY, 'nonce.txt': value + '\n'},
                            f'changes ahead: {label} producer ({value})')
        buildset.assert_success('e2e-build-image')
        record = zuul.api.tget(f'/build/{buildset.build("e2e-build-image")["uuid"]}')
        artifacts = image_artifacts(record)
        assert len(artifacts) == 1, f'expected one container_image artifact: {record.get("artifacts")}'
        assert artifacts[0]['metadata']['repository'] == f'docker.io/{APP}', artifacts
        produced.append({'name': artifacts[0]['name'], 'url': artifacts[0]['url'],
                         'metadata': artifacts[0]['metadata']})
    assert produced[0]['url'] != produced[1]['url'], produced

    # Zuul's order: the farthest change ahead first, the nearest last. This commit's nonce is
    # the newer one, which the consumer (playbooks/images/consumer.yaml) checks the image for.
    buildset = zuul.run({'zuul.d/project.yaml': AHEAD, 'zuul.d/ahead-jobs.yaml': ahead_jobs(produced),
                         'Dockerfile.ahead': DOCKERFILE_AHEAD, 'nonce.txt': newer + '\n'},
                        f'changes ahead: consumer of [{older}, {newer}]')
    buildset.assert_success('e2e-ahead-registry', 'e2e-ahead-consumer', 'e2e-ahead-build-from')

    consumer = buildset.build('e2e-ahead-consumer')['uuid']
    output = zuul.stack.job_output(consumer, limit=10**7)
    checked = [line for line in output.splitlines() if 'Check the nonce' in line]
    assert checked, 'the consumer did not check the nonce'
    assert older not in output, 'the consumer saw the older change'

    # The registry job copied the injected images from the intermediate registry.
    registry_output = zuul.stack.job_output(buildset.build('e2e-ahead-registry')['uuid'], limit=10**7)
    assert task_results(registry_output, 'Copy the images from the intermediate registry'), \
        'the registry job copied nothing from the intermediate registry'

    # The build FROM the nearest change's image pushed its own image to the intermediate registry.
    child = buildset.build('e2e-ahead-build-from')['uuid']
    assert f'{child}_latest' in zuul.stack.intermediate_tags(CHILD)


# -- tags from git metadata (scenario 5) ---------------------------------------------------------

TAGGED = 'speculum-e2e/tagged-app'

# What a zuul-jobs user writes over zuul.tag: v1.2.3 gives 1.2.3, 1.2 and latest. Zuul's git
# driver makes a plain Ref of a pushed tag, so zuul.tag is never defined here: the release tag
# falls back to zuul.ref without refs/tags/ (with Gerrit, GitHub or GitLab zuul.tag is set).
RELEASE_TAG = "{{ zuul.tag | default(zuul.ref | regex_replace('^refs/tags/', '')) }}"
TAGS_FROM_GIT = ("{{ [e2e_release_tag[1:], e2e_release_tag[1:].split('.')[:2] | join('.'), 'latest'] "
                 "if e2e_release_tag is match('v[0-9]') else ['latest'] }}")

TAG_SITE_CONFIG = yaml.safe_dump([
    {'pipeline': {
        'name': 'tag',
        'description': 'Release stand-in: runs when a v* tag is pushed, for the commit the tag names.',
        'manager': 'independent',
        'post-review': True,
        'trigger': {'git': [{'event': 'ref-updated', 'ref': '^refs/tags/v.*$'}]},
        'success': {},
        'failure': {},
    }},
    {'job': {
        'name': 'e2e-tag-upload-container-image',
        'parent': 'yoursite-upload-container-image',
        'description': 'Builds and uploads docker.io/speculum-e2e/tagged-app with tags from the git tag.',
        'vars': {
            'container_command': 'buildah',
            'build_container_image_isolation': 'chroot',
            'upload_container_image_promote': False,
            'e2e_release_tag': RELEASE_TAG,
            # The stand-in for Docker Hub has no authentication; the login must still succeed.
            'container_registry_credentials': {'docker.io': {'username': 'e2e', 'password': 'e2e-stand-in'}},
            'container_images': [{'context': '.', 'repository': f'docker.io/{TAGGED}', 'tags': TAGS_FROM_GIT}],
        },
    }},
    # In the config project, as for promote: a tag item names no branch.
    {'project': {'name': TEST_PROJECT, 'tag': {'jobs': ['e2e-tag-upload-container-image']}}},
], sort_keys=False, width=200)


def test_git_tag_tags_from_metadata(zuul, timed):
    """A pushed tag v1.2.3 uploads the image as 1.2.3, 1.2 and latest, all one manifest."""
    zuul.push_config(SITE_PROJECT, {'zuul.d/e2e-tag.yaml': TAG_SITE_CONFIG}, 'a tag pipeline')
    zuul.assert_no_config_errors()
    value = nonce()
    sha = zuul.push({'zuul.d/project.yaml': project('noop'), 'nonce.txt': value + '\n'},
                    f'a release ({value})')
    # A lightweight tag (the promote pipeline has no job for tags named v*).
    tag = 'v1.2.3'
    zuul.git.git('tag', tag, sha, cwd=zuul.git.work / TEST_PROJECT)
    zuul.git.git('push', '--quiet', 'origin', f'refs/tags/{tag}', cwd=zuul.git.work / TEST_PROJECT)
    tagged = zuul.wait_buildset(sha, pipeline='tag')
    tagged.assert_success('e2e-tag-upload-container-image')

    digests = {t: zuul.stack.digest(f'{TAGGED}:{t}', registry='dockerhub') for t in ('1.2.3', '1.2', 'latest')}
    assert all(digests.values()) and len(set(digests.values())) == 1, digests
