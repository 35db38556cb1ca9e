"""promote-container-image with promote_container_image_method: intermediate-registry.

Real registries: the intermediate registry is `speculum-registry serve` (TLS,
a password, no anonymous read) and the final registry is Debian's
docker-registry. Zuul's
REST API is stood in for by static JSON files, in the shapes Zuul 14 returns
(zuul/web/__init__.py: BuildsetConverter, BuildConverter, RefConverter),
served by `python3 -m http.server` on 127.0.0.1; the end-to-end suite
(`make e2e`) runs the role against a real Zuul's API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import conftest
import support

TENANT_API = 'api/tenant/{tenant}'
BUILDSET = '1' * 32
OLDER_BUILDSET = '2' * 32
UPLOAD_BUILD = 'a1' * 16
RETRY_BUILD = 'a2' * 16
OTHER_BUILD = 'a3' * 16
OLD_BUILD = 'a4' * 16
JOB = 'yoursite-upload-container-image'


# --- Zuul REST API documents ------------------------------------------------

def ref(change=123, patchset='1'):
    return {
        'project': 'org/app', 'branch': 'main', 'change': change, 'patchset': patchset,
        'ref': f'refs/changes/23/{change}/{patchset}' if change else 'refs/tags/1.0',
        'oldrev': None, 'newrev': None if change else 'c0ffee' * 6 + 'c0fe',
        'ref_url': f'https://review.example.org/{change}' if change else None,
    }


def buildset_summary(uuid, index, pipeline='gate', change=123):
    """An element of GET {api}/buildsets."""
    return {
        '_id': index, 'uuid': uuid, 'result': 'SUCCESS', 'message': 'Build succeeded.',
        'pipeline': pipeline, 'event_id': f'event-{index}', 'event_timestamp': '2026-12-01T10:00:00',
        'queue_item_uuid': f'{index:032x}', 'first_build_start_time': '2026-12-01T10:00:05',
        'last_build_end_time': '2026-12-01T10:20:00', 'user_id': None, 'parameters': None,
        'refs': [ref(change)],
    }


def build(uuid, job, result, artifacts, index, change=123):
    """A build as GET {api}/buildset/{uuid} lists it (no pipeline, no buildset)."""
    return {
        '_id': index, 'uuid': uuid, 'job_name': job, 'result': result, 'held': False,
        'execute_time': '2026-12-01T10:00:01', 'start_time': '2026-12-01T10:00:05',
        'end_time': '2026-12-01T10:10:00', 'duration': 595.0, 'voting': True,
        'log_url': f'https://logs.example.org/{uuid}/', 'nodeset': 'debian-bookworm',
        'error_detail': None, 'final': result != 'RETRY', 'artifacts': artifacts,
        'provides': [{'name': 'container-image'}], 'ref': ref(change),
    }


def build_detail(summary, buildset, change=123):
    """GET {api}/build/{uuid}: the build plus its buildset and pipeline."""
    return dict(summary, pipeline=buildset['pipeline'], event_id=buildset['event_id'],
                event_timestamp=buildset['event_timestamp'], queue_item_uuid=buildset['queue_item_uuid'],
                buildset={'uuid': buildset['uuid'], 'refs': [ref(change)]})


def artifact(repository, tag, url):
    """What push-to-intermediate-registry returns and Zuul stores."""
    return {'name': f'{repository}:{tag}', 'url': url,
            'metadata': {'type': 'container_image', 'repository': repository, 'tag': tag}}


def publish(root: Path, tenant: str, buildsets, builds_by_buildset, change=123):
    """Write the API documents of a tenant: buildsets, buildset/<uuid>, build/<uuid>."""
    base = root / TENANT_API.format(tenant=tenant)
    (base / 'buildset').mkdir(parents=True)
    (base / 'build').mkdir()
    (base / 'buildsets').write_text(json.dumps(buildsets))
    for summary in buildsets:
        builds = builds_by_buildset.get(summary['uuid'], [])
        (base / 'buildset' / summary['uuid']).write_text(json.dumps(dict(summary, builds=builds)))
        for b in builds:
            (base / 'build' / b['uuid']).write_text(json.dumps(build_detail(b, summary, change)))


@pytest.fixture
def zuul_api(tmp_path):
    """A static stand-in of Zuul's REST API; yields (root, base URL, request log)."""
    root = tmp_path / 'api-root'
    root.mkdir()
    port = support.free_port()
    log_path = tmp_path / 'http.log'
    argv = [support.PYTHON, '-m', 'http.server', '--bind', '127.0.0.1', '--directory', str(root), str(port)]
    with support.served(argv, log_path, port):
        yield {'root': root, 'url': f'http://127.0.0.1:{port}', 'log': log_path}


@pytest.fixture
def intermediate(tmp_path):
    """`speculum-registry serve` as the site's intermediate registry: TLS with
    a self-signed certificate, one write user, no anonymous read."""
    conftest.require_tools('skopeo', 'openssl')
    base = tmp_path / 'ir'
    base.mkdir()
    support.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
                 '-keyout', str(base / 'key.pem'), '-out', str(base / 'cert.pem'), '-days', '2',
                 '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
                 # A server certificate, not a CA: rustls refuses a CA as end entity.
                 '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'extendedKeyUsage=serverAuth'])
    port = support.free_port()
    password = 'intermediate-registry-password'
    config = support.write_yaml(base / 'registry.yaml', {'registry': {
        'address': '127.0.0.1', 'port': port,
        'tls-cert': str(base / 'cert.pem'), 'tls-key': str(base / 'key.pem'),
        'secret': 'intermediate-registry-token-secret',
        'users': [{'name': 'zuul', 'pass': password, 'access': 'write'}],
        'anonymous-read': False,
        'storage': {'driver': 'filesystem', 'root': str(base / 'data')},
        'log-format': 'text',
    }})
    argv = [str(support.binary('speculum-registry')), 'serve', '--config', str(config)]
    with support.served(argv, base / 'registry.log', port):
        cert = (base / 'cert.pem').read_text()
        yield {'host': 'localhost', 'port': port, 'username': 'zuul', 'password': password, 'cert': cert,
               'certs': support.cert_dir_for(tmp_path, {'port': port, 'cert': cert})}


def seed_ir(ir, layout: Path, name: str) -> tuple[str, str]:
    """Copy a layout into the intermediate registry; returns (artifact url, digest)."""
    ref_ = f'localhost:{ir["port"]}/{name}'
    support.skopeo('copy', '--dest-cert-dir', str(ir['certs']), '--dest-creds', f'zuul:{ir["password"]}',
                   f'oci:{layout}:latest', f'docker://{ref_}')
    out = support.skopeo('inspect', '--cert-dir', str(ir['certs']), '--creds', f'zuul:{ir["password"]}',
                         f'docker://{ref_}')
    return f'docker://{ref_}', json.loads(out.stdout)['Digest']


def final_digest(hub, image):
    out = support.skopeo('inspect', '--tls-verify=false', '--creds', f'{hub["username"]}:{hub["password"]}',
                         f'docker://{hub["addr"]}/{image}', check=False)
    return json.loads(out.stdout)['Digest'] if out.returncode == 0 else None


def role_vars(api_url, tenant, ir, hub, images, **extra):
    ir_vars = {key: ir[key] for key in ('host', 'port', 'username', 'password', 'cert')}
    return dict({
        'promote_container_image_method': 'intermediate-registry',
        'promote_container_image_api': f'{api_url}/{TENANT_API.format(tenant=tenant)}/',
        'promote_container_image_pipeline': 'gate',
        'promote_container_image_job': JOB,
        'intermediate_registry': ir_vars,
        'container_images': images,
        'container_registry_credentials': {hub['addr']: {
            'username': hub['username'], 'password': hub['password'] + '\n', 'insecure': True}},
    }, **extra)


def test_promote_from_the_intermediate_registry(ansible, tmp_path, zuul_api, intermediate, reference_registry):
    support.binary('speculum')
    hub, ir = reference_registry, intermediate
    ansible.secrets += [hub['password'], ir['password']]
    layouts = {name: support.busybox_layout(tmp_path / f'layout-{name}', message=name)
               for name in ('app', 'tool', 'retry', 'old', 'other')}
    # push-to-intermediate-registry names the image in the intermediate
    # registry after its final repository, which cannot hold the port of this
    # stand-in final registry; the role goes by the artifact's metadata and
    # url, so these artifacts name the intermediate images directly.
    app_url, app_digest = seed_ir(ir, layouts['app'], f'org/app:{UPLOAD_BUILD}_latest')
    tool_url, tool_digest = seed_ir(ir, layouts['tool'], f'org/tool:{UPLOAD_BUILD}_latest')
    retry_url, _ = seed_ir(ir, layouts['retry'], f'org/app:{RETRY_BUILD}_latest')
    old_url, _ = seed_ir(ir, layouts['old'], f'org/app:{OLD_BUILD}_latest')
    other_url, _ = seed_ir(ir, layouts['other'], f'org/app:{OTHER_BUILD}_latest')
    app, tool = f'{hub["addr"]}/org/app', f'{hub["addr"]}/org/tool'
    anonymous = support.skopeo('inspect', '--cert-dir', str(ir['certs']), app_url, check=False)
    assert anonymous.returncode != 0, 'the intermediate registry must not allow anonymous reads'

    # The newest buildset comes first, as Zuul lists them. Only the
    # successful build of JOB in it names the images to promote.
    publish(zuul_api['root'], 'ok', [buildset_summary(BUILDSET, 42), buildset_summary(OLDER_BUILDSET, 17)], {
        BUILDSET: [
            build(RETRY_BUILD, JOB, 'RETRY', [artifact(app, 'latest', retry_url)], 100),
            build(UPLOAD_BUILD, JOB, 'SUCCESS', [
                artifact(app, 'latest', app_url), artifact(app, '1.0', app_url), artifact(tool, 'latest', tool_url),
                {'name': 'logs', 'url': 'https://logs.example.org/x/', 'metadata': {'type': 'zuul_manifest'}},
            ], 101),
            build(OTHER_BUILD, 'other-job', 'SUCCESS', [artifact(app, 'latest', other_url)], 102),
        ],
        OLDER_BUILDSET: [build(OLD_BUILD, JOB, 'SUCCESS', [artifact(app, 'latest', old_url)], 50)],
    })
    images = [{'context': '.', 'repository': app, 'tags': ['latest', '1.0']},
              {'context': '.', 'repository': tool}]
    ansible.role('promote-container-image', role_vars(zuul_api['url'], 'ok', ir, hub, images),
                 extra_vars={'zuul': ansible.zuul_vars(pipeline='promote')})

    assert final_digest(hub, 'org/app:latest') == app_digest
    assert final_digest(hub, 'org/app:1.0') == app_digest
    assert final_digest(hub, 'org/tool:latest') == tool_digest
    requests = zuul_api['log'].read_text()
    assert (f'GET /api/tenant/ok/buildsets?change=123&patchset=1&pipeline=gate&result=SUCCESS '
            in requests), requests
    assert f'GET /api/tenant/ok/buildset/{BUILDSET} ' in requests
    assert f'GET /api/tenant/ok/build/{UPLOAD_BUILD} ' in requests
    assert f'/build/{RETRY_BUILD}' not in requests and OLDER_BUILDSET not in requests
    assert list(ansible.tmpdir.glob('speculum-*')) == [], 'the certificate file was left behind'


def failing_run(ansible, zuul_api, ir, hub, tenant, images, zuul=None, **extra):
    proc = ansible.role('promote-container-image', role_vars(zuul_api['url'], tenant, ir, hub, images, **extra),
                       extra_vars={'zuul': zuul or ansible.zuul_vars(pipeline='promote')}, expect_failure=True)
    return proc.stdout + proc.stderr


def unused_registries():
    """Registries the failing runs must never reach: nothing listens there."""
    ir = {'host': 'localhost', 'port': support.closed_port(), 'username': 'zuul',
          'password': 'unused-ir-password', 'cert': ''}
    hub = {'addr': f'127.0.0.1:{support.closed_port()}', 'username': 'zuul', 'password': 'unused-hub-password'}
    return ir, hub


def test_no_buildset_found(ansible, zuul_api):
    ir, hub = unused_registries()
    ansible.secrets += [hub['password'], ir['password']]
    publish(zuul_api['root'], 'empty', [], {})
    # A tag (ref-updated) item has no change: the query selects the buildset.
    zuul = ansible.zuul_vars(pipeline='release')
    del zuul['change'], zuul['patchset']
    query = 'project=org/app&ref=refs/tags/1.0&newrev=' + 'c0ffee' * 6 + 'c0fe'
    output = failing_run(ansible, zuul_api, ir, hub, 'empty', [{'repository': f'{hub["addr"]}/org/app'}], zuul=zuul,
                         promote_container_image_query=query, promote_container_image_pipeline='tag')
    assert 'No successful buildset in pipeline tag found at' in output, output
    assert f'GET /api/tenant/empty/buildsets?{query}&pipeline=tag&result=SUCCESS ' in zuul_api['log'].read_text()


def test_no_successful_build_of_the_job(ansible, zuul_api):
    ir, hub = unused_registries()
    ansible.secrets += [hub['password'], ir['password']]
    app = f'{hub["addr"]}/org/app'
    url = f'docker://localhost:{ir["port"]}/org/app:{UPLOAD_BUILD}_latest'
    publish(zuul_api['root'], 'nojob', [buildset_summary(BUILDSET, 42)], {BUILDSET: [
        build(UPLOAD_BUILD, JOB, 'FAILURE', [artifact(app, 'latest', url)], 100),
        build(OTHER_BUILD, 'other-job', 'SUCCESS', [artifact(app, 'latest', url)], 101),
    ]})
    output = failing_run(ansible, zuul_api, ir, hub, 'nojob', [{'repository': app}])
    assert f'No successful build of job {JOB} in buildset {BUILDSET}' in output, output


def test_no_artifact_for_a_tag(ansible, tmp_path, zuul_api, intermediate, reference_registry):
    hub, ir = reference_registry, intermediate
    ansible.secrets += [hub['password'], ir['password']]
    app = f'{hub["addr"]}/org/app'
    url, _ = seed_ir(ir, support.busybox_layout(tmp_path / 'layout'), f'org/app:{UPLOAD_BUILD}_latest')
    publish(zuul_api['root'], 'noart', [buildset_summary(BUILDSET, 42)], {BUILDSET: [
        build(UPLOAD_BUILD, JOB, 'SUCCESS', [artifact(app, 'latest', url)], 100),
    ]})
    output = failing_run(ansible, zuul_api, ir, hub, 'noart', [{'repository': app, 'tags': ['latest', '1.0']}])
    assert f'No artifact for {app}:1.0 in the build(s) {UPLOAD_BUILD} of job {JOB}' in output, output
    # Nothing is copied unless every image and tag has its artifact.
    assert final_digest(hub, 'org/app:latest') is None


def test_refuses_an_artifact_outside_the_intermediate_registry(ansible, zuul_api):
    ir, hub = unused_registries()
    ansible.secrets += [hub['password'], ir['password']]
    app = f'{hub["addr"]}/org/app'
    publish(zuul_api['root'], 'elsewhere', [buildset_summary(BUILDSET, 42)], {BUILDSET: [
        build(UPLOAD_BUILD, JOB, 'SUCCESS', [artifact(app, 'latest', 'docker://elsewhere.example.org:5000/org/app:x')],
              100),
    ]})
    output = failing_run(ansible, zuul_api, ir, hub, 'elsewhere', [{'repository': app}])
    assert f'The artifacts of {app}:latest are not in the intermediate registry' in output, output


def test_missing_settings(ansible):
    proc = ansible.role('promote-container-image', {
        'promote_container_image_method': 'intermediate-registry',
        'container_images': [{'repository': 'quay.io/org/app'}],
    }, extra_vars={'zuul': ansible.zuul_vars(pipeline='promote')}, expect_failure=True)
    assert ('promote_container_image_method intermediate-registry needs promote_container_image_api, '
            'promote_container_image_job, intermediate_registry') in proc.stdout, proc.stdout
