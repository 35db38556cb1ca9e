#!/usr/bin/python
# Copyright speculum contributors
# SPDX-License-Identifier: Apache-2.0

DOCUMENTATION = r'''
module: speculum_containerd_hosts
short_description: Put a registry first in a containerd certs.d hosts.toml
description:
  - Edits <certs.d>/<namespace>/hosts.toml so that the given host is tried
    first for pull and resolve; hosts already listed (site mirrors) follow in
    their order, and an existing server setting is kept.
options:
  path:
    description: The hosts.toml file; created when missing.
    type: path
    required: true
  server:
    description: Upstream URL of the namespace, used when the file sets none.
    type: str
    required: true
  host:
    description: URL of the mirror, for example https://zuul-jobs.buildset-registry:5000.
    type: str
    required: true
  ca_file:
    description: CA certificate file for the mirror.
    type: path
    required: true
'''

RETURN = r'''
path:
  description: The file written.
  type: str
  returned: always
'''

from ansible.module_utils.speculum_toml import run_module

ARGUMENT_SPEC = dict(
    server=dict(type='str', required=True),
    host=dict(type='str', required=True),
    ca_file=dict(type='path', required=True),
)


def edit(module, document):
    hosts = document.get('host', {})
    ordered = {module.params['host']: {
        'capabilities': ['pull', 'resolve'],
        'ca': module.params['ca_file'],
    }}
    for name, settings in hosts.items():
        if name != module.params['host']:
            ordered[name] = settings
    document.setdefault('server', module.params['server'])
    document['host'] = ordered


def main():
    run_module(ARGUMENT_SPEC, edit)


if __name__ == '__main__':
    main()
