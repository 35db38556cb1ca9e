#!/usr/bin/python
# Copyright speculum contributors
# SPDX-License-Identifier: Apache-2.0

DOCUMENTATION = r'''
module: speculum_buildkitd_toml
short_description: Put a registry first in the mirror lists of buildkitd.toml
description:
  - Makes the given location the first of registry."<namespace>".mirrors for
    each namespace, keeping other mirrors and settings, and lists a CA file
    for the mirror host. Writes the file only when it changed.
options:
  path:
    description: The buildkitd.toml file; created when missing.
    type: path
    required: true
  mirrors:
    description: One item per namespace.
    type: list
    elements: dict
    required: true
    suboptions:
      namespace:
        description: Registry namespace, for example docker.io.
        type: str
        required: true
      location:
        description: Mirror location, host:port with an optional path.
        type: str
        required: true
  registry_host:
    description: host:port of the mirror registry, the key its CA is listed under.
    type: str
    required: true
  ca_file:
    description: CA certificate file for registry_host.
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
    mirrors=dict(type='list', elements='dict', required=True, options=dict(
        namespace=dict(type='str', required=True),
        location=dict(type='str', required=True),
    )),
    registry_host=dict(type='str', required=True),
    ca_file=dict(type='path', required=True),
)


def edit(module, document):
    registries = document.setdefault('registry', {})
    for wanted in module.params['mirrors']:
        entry = registries.setdefault(wanted['namespace'], {})
        others = [m for m in entry.get('mirrors', []) if m != wanted['location']]
        entry['mirrors'] = [wanted['location']] + others
    host = registries.setdefault(module.params['registry_host'], {})
    cas = [c for c in host.get('ca', []) if c != module.params['ca_file']]
    host['ca'] = [module.params['ca_file']] + cas


def main():
    run_module(ARGUMENT_SPEC, edit)


if __name__ == '__main__':
    main()
