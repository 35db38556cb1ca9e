# Copyright speculum contributors
# SPDX-License-Identifier: Apache-2.0
"""Read and write the small TOML files container runtimes use.

Reading uses Python's own tomllib (3.11+). Writing uses the short emitter
below, which covers what tomllib returns: tables, arrays of tables, strings,
integers, floats, booleans, dates and arrays. Comments and formatting of the
original file are not kept; the data is.
"""

from __future__ import annotations

import datetime
import math
import re

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    tomllib = None

_BARE_KEY = re.compile(r'^[A-Za-z0-9_-]+$')


class TomlError(Exception):
    """The data cannot be read or written as TOML."""


def loads(text):
    if tomllib is None:
        raise TomlError('reading TOML needs Python 3.11 or newer (tomllib)')
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlError(str(exc))


def load_file(path):
    """Parse the file at path; a missing or empty file is an empty table."""
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    return loads(text) if text.strip() else {}


def _key(key):
    if _BARE_KEY.match(key):
        return key
    return _string(key)


def _string(value):
    out = ['"']
    for char in value:
        if char == '"':
            out.append('\\"')
        elif char == '\\':
            out.append('\\\\')
        elif char == '\n':
            out.append('\\n')
        elif char == '\t':
            out.append('\\t')
        elif char == '\r':
            out.append('\\r')
        elif ord(char) < 0x20 or ord(char) == 0x7f:
            out.append('\\u%04x' % ord(char))
        else:
            out.append(char)
    out.append('"')
    return ''.join(out)


def _is_table_array(value):
    return isinstance(value, list) and len(value) > 0 and all(isinstance(item, dict) for item in value)


def _value(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return 'nan'
        if math.isinf(value):
            return 'inf' if value > 0 else '-inf'
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_value(item) for item in value) + ']'
    if isinstance(value, dict):
        if not value:
            return '{}'
        return '{ ' + ', '.join('%s = %s' % (_key(k), _value(v)) for k, v in value.items()) + ' }'
    raise TomlError('cannot write %r as TOML' % (value,))


def _table(lines, path, table, header):
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    if header is not None and (scalars or not table):
        if lines:
            lines.append('')
        lines.append(header)
    for key, value in scalars:
        lines.append('%s = %s' % (_key(key), _value(value)))
    for key, value in tables:
        sub = path + [key]
        _table(lines, sub, value, '[%s]' % '.'.join(_key(k) for k in sub))
    for key, value in arrays:
        sub = path + [key]
        for item in value:
            if lines:
                lines.append('')
            lines.append('[[%s]]' % '.'.join(_key(k) for k in sub))
            _table(lines, sub, item, None)


def dumps(document):
    """Return document (a dict) as TOML text."""
    if not isinstance(document, dict):
        raise TomlError('a TOML document is a table')
    lines = []
    _table(lines, [], document, None)
    return '\n'.join(lines) + '\n' if lines else ''


def run_module(argument_spec, edit, mode='0644'):
    """Run a module that edits the TOML file named by its path option.

    argument_spec holds the module's options besides path, which is added
    first (a required path). The module supports check mode; edit(module,
    document) changes the parsed document in place, then update_file writes
    it back and exits.
    """
    from ansible.module_utils.basic import AnsibleModule

    spec = dict(path=dict(type='path', required=True))
    spec.update(argument_spec)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    update_file(module, module.params['path'], lambda document: edit(module, document), mode)


def update_file(module, path, edit, mode='0644'):
    """Apply edit(document) to the TOML file at path and write it back if it changed.

    Calls module.exit_json with changed, path and the before/after text
    (as a diff when Ansible runs with --diff).
    """
    import os

    try:
        with open(path, 'r', encoding='utf-8') as handle:
            before = handle.read()
    except FileNotFoundError:
        before = None
    try:
        document = loads(before) if before and before.strip() else {}
        edit(document)
        after = dumps(document)
    except TomlError as exc:
        module.fail_json(msg='%s: %s' % (path, exc))
    changed = after != before
    if changed and not module.check_mode:
        directory = os.path.dirname(path) or '.'
        os.makedirs(directory, exist_ok=True)
        tmp = path + '.speculum-tmp'
        with open(tmp, 'w', encoding='utf-8') as handle:
            handle.write(after)
        os.chmod(tmp, int(mode, 8))
        os.replace(tmp, path)
    result = dict(changed=changed, path=path)
    if module._diff:
        result['diff'] = dict(before=before or '', after=after, before_header=path, after_header=path)
    module.exit_json(**result)
