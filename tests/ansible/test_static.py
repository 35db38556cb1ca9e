"""Static checks: role layout and documentation, linters, Zuul job schema, the TOML writer."""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import support

REPO = support.REPO
ROLES = sorted(p for p in (REPO / 'roles').iterdir() if p.is_dir())
SHARED = {'buildset_registry', 'intermediate_registry', 'container_images', 'docker_images',
          'container_registry_credentials', 'docker_credentials', 'zuul_work_dir', 'container_command',
          'docker_registry', 'docker_dockerfile', 'zuul_success', 'promote_container_image_method'}

sys.path.insert(0, str(REPO / 'roles/use-buildset-registry/module_utils'))
import speculum_toml  # noqa: E402


def _rst_with_includes(path: Path) -> str:
    text = path.read_text()
    def expand(match):
        return _rst_with_includes((path.parent / match.group(1)).resolve())
    return re.sub(r'^\.\. include:: (\S+)$', expand, text, flags=re.M)


def _documented(role: Path) -> dict[str, str]:
    """Top-level rolevar name -> its block of text, from README.rst and its includes."""
    text = _rst_with_includes(role / 'README.rst')
    blocks = re.split(r'^(?=\.\. zuul:rolevar:: )', text, flags=re.M)
    out = {}
    for block in blocks:
        match = re.match(r'\.\. zuul:rolevar:: (\S+)', block)
        if match:
            out[match.group(1)] = block
    return out


def _specs(role: Path) -> dict:
    return yaml.safe_load((role / 'meta/argument_specs.yaml').read_text())['argument_specs']


def _defaults(role: Path) -> dict:
    return yaml.safe_load((role / 'defaults/main.yaml').read_text()) or {}


@pytest.mark.parametrize('role', ROLES, ids=lambda p: p.name)
def test_role_layout(role):
    for name in ('README.rst', 'defaults/main.yaml', 'meta/main.yaml', 'meta/argument_specs.yaml', 'tasks/main.yaml'):
        assert (role / name).is_file(), f'{role.name} lacks {name}'
    first = (role / 'README.rst').read_text().splitlines()[0]
    assert first.endswith('.') and len(first) < 110, 'README.rst starts with a one-line summary'


@pytest.mark.parametrize('role', ROLES, ids=lambda p: p.name)
def test_every_variable_is_documented_and_specified(role):
    documented = _documented(role)
    specs = _specs(role)
    spec_options = {name for entry in specs.values() for name in (entry.get('options') or {})}
    defaults = _defaults(role)
    prefix = role.name.replace('-', '_') + '_'
    for name in spec_options | set(defaults):
        assert name in documented, f'{role.name}: {name} is not documented in README.rst'
        assert name.startswith(prefix) or name in SHARED, f'{role.name}: {name} lacks the role prefix'
        assert ':type:' in documented[name], f'{role.name}: {name} has no :type:'
    for name in defaults:
        assert name in specs['main']['options'], f'{role.name}: {name} has no argument spec'
        assert ':default:' in documented[name], f'{role.name}: {name} has no :default:'


def test_only_yaml_extension():
    for top in ('roles', 'playbooks', 'zuul.d', 'doc'):
        assert list((REPO / top).rglob('*.yml')) == [], 'use .yaml'


def test_loop_variables_use_the_prefix():
    for path in (REPO / 'roles').rglob('*.yaml'):
        for match in re.finditer(r'loop_var: (\S+)', path.read_text()):
            assert match.group(1).startswith('zj_'), f'{path}: loop_var {match.group(1)}'


def test_yamllint():
    proc = subprocess.run([str(support.VENV_BIN / 'yamllint'), '-s', 'roles', 'playbooks', 'zuul.d', 'doc',
                           '.ansible-lint', '.yamllint'], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ansible_lint():
    proc = subprocess.run([str(support.VENV_BIN / 'ansible-lint'), '--nocolor', 'roles', 'playbooks'],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('directory', ['playbooks', 'doc/examples/site-config/playbooks'])
def test_playbooks_syntax(tmp_path, directory):
    env = support.Ansible(tmp_path).env()
    for playbook in sorted((REPO / directory).rglob('*.yaml')):
        proc = subprocess.run([str(support.VENV_BIN / 'ansible-playbook'), '--syntax-check', '-i', 'localhost,',
                               str(playbook)], cwd=REPO, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f'{playbook}: {proc.stdout}{proc.stderr}'


def test_detach_wrapper_syntax():
    subprocess.run(['sh', '-n', str(REPO / 'roles/run-buildset-registry/files/speculum-detach')], check=True)


# --- Zuul configuration -----------------------------------------------------

def _jobs(documents):
    return {item['job']['name']: item['job'] for item in documents if 'job' in item}


def _validate_jobs(jobs):
    """Zuul's own job schema (zuul.configloader.JobParser.schema), offline."""
    from zuul import configloader

    for job in jobs.values():
        configloader.JobParser.schema(job)


def _documents(directory):
    documents = []
    for path in sorted(directory.glob('*.yaml')):
        documents += encrypted_load(path.read_text())
    return documents


def encrypted_load(text):
    from zuul.lib.yamlutil import encrypted_load as load

    return load(text)


def _as_list(value):
    return [value] if isinstance(value, str) else list(value or [])


# The job names zuul-jobs defines; a tenant that loads both projects fails
# with "not permitted to shadow" if we define any of them again.
ZUUL_JOBS_NAMES = {'build-container-image', 'upload-container-image', 'promote-container-image',
                   'build-docker-image', 'upload-docker-image', 'promote-docker-image',
                   'mirror-container-images', 'buildset-registry'}


def test_zuul_jobs_pass_zuul_schema_and_structure():
    documents = _documents(REPO / 'zuul.d')
    for item in documents:
        assert set(item) <= {'job', 'project-template', 'secret', 'nodeset', 'project'}, item
    jobs = _jobs(documents)
    _validate_jobs(jobs)
    expected = {'speculum-buildset-registry', 'speculum-buildset-registry-consumer',
                'speculum-build-container-image', 'speculum-upload-container-image',
                'speculum-promote-container-image', 'speculum-build-docker-image',
                'speculum-upload-docker-image', 'speculum-promote-docker-image'}
    assert expected <= set(jobs)
    assert all(name.startswith('speculum-') for name in jobs), sorted(jobs)
    assert not set(jobs) & ZUUL_JOBS_NAMES
    projects = [item['project'] for item in documents if 'project' in item]
    assert projects == [{'default-branch': 'main'}]

    provided = {p for job in jobs.values() for p in _as_list(job.get('provides'))}
    for job in jobs.values():
        assert job.get('description'), f'{job["name"]} has no description'
        assert 'secrets' not in job, f'{job["name"]}: secrets belong to the site\'s jobs'
        if job.get('parent'):
            assert job['parent'] in jobs, f'{job["name"]}: unknown parent {job["parent"]}'
        assert 'cleanup-run' not in job, f'{job["name"]}: cleanup-run is deprecated; use post-run with cleanup'
        for key in ('pre-run', 'run', 'post-run'):
            for playbook in _as_list(job.get(key)):
                name = playbook['name'] if isinstance(playbook, dict) else playbook
                assert (REPO / name).is_file(), f'{job["name"]}: {name} is missing'
        for need in _as_list(job.get('requires')):
            assert need in provided, f'{job["name"]} requires {need}, which no job provides'
    registry = jobs['speculum-buildset-registry']
    assert 'container-image' in registry['requires']
    assert {'name': 'playbooks/buildset-registry/cleanup.yaml', 'cleanup': True} in _as_list(registry['post-run'])
    assert jobs['speculum-build-container-image']['provides'] == 'container-image'


SITE = REPO / 'doc/examples/site-config'


def test_site_config_example():
    ours = _jobs(_documents(REPO / 'zuul.d'))
    documents = _documents(SITE / 'zuul.d')
    site = _jobs(documents)
    _validate_jobs(site)
    assert set(site) == {f'yoursite-{kind}-{flavour}-image' for kind in ('build', 'upload', 'promote')
                         for flavour in ('container', 'docker')} | {'yoursite-buildset-registry'}
    secrets = [item['secret'] for item in documents if 'secret' in item]
    assert [s['name'] for s in secrets] == ['yoursite-intermediate-registry']
    assert set(secrets[0]['data']) == {'host', 'port', 'username', 'password'}
    for job in site.values():
        assert job['parent'] in ours or job['parent'] in site
        for key in ('pre-run', 'run', 'post-run', 'cleanup-run'):
            for playbook in _as_list(job.get(key)):
                assert (SITE / playbook).is_file(), f'{job["name"]}: {playbook} is missing'
        # Pre-review: a secret reaches only this trusted project's playbooks.
        for secret in job.get('secrets', []):
            assert secret == {'secret': 'yoursite-intermediate-registry', 'name': 'intermediate_registry'}
            assert any(job.get(key) for key in ('pre-run', 'run', 'post-run')), job['name']
    assert site['yoursite-buildset-registry']['roles'] == [{'zuul': 'speculum'}]
    for flavour in ('container', 'docker'):
        assert site[f'yoursite-build-{flavour}-image']['provides'] == f'{flavour}-image'
        # The intermediate-registry push comes before the pause, in the same run playbook.
        plays = yaml.safe_load((SITE / site[f'yoursite-build-{flavour}-image']['run']).read_text())
        roles = [role for play in plays for role in play.get('roles', [])]
        assert roles == [f'build-{flavour}-image', 'push-to-intermediate-registry', 'pause-buildset-registry']


# --- the TOML writer of use-buildset-registry -------------------------------

SAMPLES = [
    '''
unqualified-search-registries = ["docker.io", "quay.io"]
short-name-mode = "enforcing"
credential-helpers = []

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "docker.io"
location = "docker.io"
blocked = false
mirror-by-digest-only = false

[[registry.mirror]]
location = "mirror.example.org:5000"
insecure = true

[[registry]]
location = "weird \\"quoted\\" \\\\ name\\t"
''',
    '''
debug = true
[worker.oci]
max-parallelism = 4
gc = 1.5
[registry."docker.io"]
mirrors = ["zuul-jobs.buildset-registry:5000"]
[registry."zuul-jobs.buildset-registry:5000"]
ca = ["/etc/buildkit/ca.crt"]
[[worker.oci.gcpolicy]]
keepBytes = 512000000
filters = ["type==source.local"]
''',
    '''
server = "https://registry-1.docker.io"
[host."https://mirror:5000"]
capabilities = ["pull", "resolve"]
skip_verify = false
[host."https://mirror:5000".header]
x-custom = ["a", "b"]
''',
    'when = 1979-05-27T07:32:00Z\nday = 1979-05-27\nnested = [[1, 2], ["a"]]\ninline = [{ a = 1 }, { b = 2 }]\n',
]


@pytest.mark.parametrize('text', SAMPLES)
def test_toml_writer_round_trips(text):
    data = tomllib.loads(text)
    assert tomllib.loads(speculum_toml.dumps(data)) == data


def test_toml_writer_values():
    assert speculum_toml.dumps({}) == ''
    data = {'a': 'x\u0001y', 'b': -3, 'c': float('inf'), 'd': datetime.date(2026, 1, 2), 'e': {}}
    assert tomllib.loads(speculum_toml.dumps(data)) == data
    with pytest.raises(speculum_toml.TomlError):
        speculum_toml.dumps({'a': object()})
