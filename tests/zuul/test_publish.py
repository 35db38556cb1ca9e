"""Publishing the tag way under the real Zuul (scenario 4).

The gate uploads the image to the final registry under a temporary tag; after
"merge" (a tag pushed for the commit) the promote job points the final tag at
that manifest, without moving a layer, and removes the temporary tag and
stale ones. The final registry is a speculum registry whose Docker Hub-format
webhook carries a token in its URL; the CD system's hook (stack.HookReceiver)
refuses hooks without it and reads what seed 000's CD tool reads.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import yaml
from stack import CD_HOOK_PATH, WEBHOOK_PORT, wait_for
from test_images import nonce

FINAL_APP = 'speculum-e2e/app'
GATE = yaml.safe_dump([{'project': {'gate': {'jobs': ['e2e-gate-upload-container-image']}}}], sort_keys=False)


def uploads(metrics: dict) -> dict:
    """The requests of upload sessions: any blob pushed goes through them."""
    return {k: v for k, v in metrics['requests'].items() if k[0] in ('uploads', 'upload')}


def test_gate_upload_then_promote_by_tag(zuul, timed):
    """gate_latest is uploaded; promote moves latest to it by manifest only and cleans temporary tags."""
    stack = zuul.stack
    # Left by earlier runs: a stale temporary tag of a change, one of this pipeline, and
    # a tag no cleanup may touch (all made long ago, each its own image).
    for tag in ('change_7_latest', 'gate_stale', 'keep-me'):
        stack.push_old_image('final', f'{FINAL_APP}:{tag}', message=tag)

    value = nonce()
    sha = zuul.push({'zuul.d/project.yaml': GATE, 'nonce.txt': value + '\n'}, f'gate and promote ({value})')
    gated = zuul.wait_buildset(sha, pipeline='gate')
    gated.assert_success('e2e-gate-upload-container-image')
    zuul.assert_no_config_errors()
    assert 'gate_latest' in stack.tags(FINAL_APP, 'final')
    uploaded = stack.digest(f'{FINAL_APP}:gate_latest', registry='final')

    before = stack.metrics('final')
    # The image's biggest layer (busybox): any copy of the image would move it.
    layers = stack.inspect(f'{FINAL_APP}:gate_latest', registry='final', raw=True)['layers']
    biggest = max(layer['size'] for layer in layers)
    tag = f'final-{value}'
    zuul.git.git('tag', tag, sha, cwd=zuul.git.work / 'test-project')
    zuul.git.git('push', '--quiet', 'origin', f'refs/tags/{tag}', cwd=zuul.git.work / 'test-project')
    promoted = zuul.wait_buildset(sha, pipeline='promote')
    promoted.assert_success('e2e-final-promote-container-image')
    after = stack.metrics('final')

    # The final tag is the tested manifest; temporary and stale temporary tags are gone.
    assert stack.digest(f'{FINAL_APP}:latest', registry='final') == uploaded
    assert sorted(stack.tags(FINAL_APP, 'final')) == ['keep-me', 'latest']
    # Only manifests moved: no upload session was opened, and fewer bytes went either way than
    # the image's biggest layer (manifests, the configs the cleanup reads for their age, tag lists).
    assert uploads(after) == uploads(before), (before, after)
    assert after['bytes_out'] - before['bytes_out'] < biggest, (before, after, biggest)
    assert after['bytes_in'] - before['bytes_in'] < biggest, (before, after, biggest)
    assert after['requests'].get(('manifest', 'PUT'), 0) > before['requests'].get(('manifest', 'PUT'), 0)

    # The CD system heard of the push of latest, with its token, and read the payload.
    def deployed():
        return [d for d in stack.hooks.deployments(CD_HOOK_PATH) if d['tag'] == 'latest']
    deployment = wait_for('the final registry webhook of latest', deployed, 60)[0]
    assert deployment == {'owner': 'speculum-e2e', 'image': 'app', 'repository': FINAL_APP,
                          'namespace': 'speculum-e2e', 'tag': 'latest', 'pusher': 'publisher'}, deployment
    assert any(d['tag'] == 'gate_latest' for d in stack.hooks.deployments(CD_HOOK_PATH))


def test_cd_hook_refuses_a_wrong_token(zuul, timed):
    """The CD system's hook is not open to anyone: a payload without its token is refused."""
    body = json.dumps({'push_data': {'tag': 'latest'}, 'repository': {'repo_name': 'evil/app'}}).encode()
    for query in ('', '?secureToken=wrong'):
        request = urllib.request.Request(f'http://127.0.0.1:{WEBHOOK_PORT}{CD_HOOK_PATH}{query}', data=body,
                                         method='POST', headers={'Content-Type': 'application/json'})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError(f'the hook accepted a payload with {query or "no token"}')
        except urllib.error.HTTPError as err:
            assert err.code == 403
    assert not [d for d in zuul.stack.hooks.deployments(CD_HOOK_PATH) if d['repository'] == 'evil/app']
