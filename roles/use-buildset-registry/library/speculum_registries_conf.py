#!/usr/bin/python
# Copyright speculum contributors
# SPDX-License-Identifier: Apache-2.0

DOCUMENTATION = r'''
module: speculum_registries_conf
short_description: Put a registry first in the mirror lists of containers-registries.conf (v2)
description:
  - Reads a containers-registries.conf(5) file in the v2 format, makes the
    given mirror the first mirror of each listed prefix, keeps every other
    entry and mirror, and writes the file back when it changed.
  - A prefix without a [[registry]] entry gets one whose location is the prefix.
options:
  path:
    description: The registries.conf file; created when missing.
    type: path
    required: true
  mirrors:
    description: One item per prefix, with the mirror location to put first.
    type: list
    elements: dict
    required: true
    suboptions:
      prefix:
        description: Registry prefix, for example docker.io.
        type: str
        required: true
      location:
        description: Mirror location, host:port with an optional path.
        type: str
        required: true
  unqualified_search_registries:
    description: Registries that must be in unqualified-search-registries (added at the end when missing).
    type: list
    elements: str
    default: []
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
        prefix=dict(type='str', required=True),
        location=dict(type='str', required=True),
    )),
    unqualified_search_registries=dict(type='list', elements='str', default=[]),
)


def edit(module, document):
    if 'registries' in document:
        module.fail_json(msg='%s uses the v1 format ([registries.*]); only v2 can be edited'
                         % module.params['path'])
    registries = document.setdefault('registry', [])
    for wanted in module.params['mirrors']:
        entry = None
        for candidate in registries:
            if candidate.get('prefix', candidate.get('location')) == wanted['prefix']:
                entry = candidate
                break
        if entry is None:
            entry = {'prefix': wanted['prefix'], 'location': wanted['prefix']}
            registries.append(entry)
        others = [m for m in entry.get('mirror', []) if m.get('location') != wanted['location']]
        entry['mirror'] = [{'location': wanted['location']}] + others
    search = document.get('unqualified-search-registries', [])
    for name in module.params['unqualified_search_registries']:
        if name not in search:
            search.append(name)
    if search:
        document['unqualified-search-registries'] = search


def main():
    run_module(ARGUMENT_SPEC, edit)


if __name__ == '__main__':
    main()
