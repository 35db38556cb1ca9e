"""The exact commands and config files the bench used, for the report: the
first command line of each kind (tool and subcommand or method) and the first
config of each registry, with the work paths, passwords and tokens replaced
by names."""

from __future__ import annotations

import re

COMMANDS: dict[str, str] = {}
CONFIGS: dict[str, str] = {}
ROOTS: dict[str, str] = {}
SECRETS: dict[str, str] = {}


def scrub(text: str) -> str:
    for path, name in sorted(ROOTS.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    for secret, name in SECRETS.items():
        text = text.replace(secret, name)
    text = re.sub(r"Authorization: Bearer [^\s']+", 'Authorization: Bearer $TOKEN', text)
    text = re.sub(r"Authorization: Basic [^\s']+", 'Authorization: Basic $BASIC', text)
    text = re.sub(r"/blobs/uploads/[^\s'?]+", '/blobs/uploads/$UPLOAD', text)
    text = re.sub(r'sha256%3A[0-9a-f]{64}', 'sha256%3A$DIGEST', text)
    text = re.sub(r'(--(?:src-|dest-)?creds) (\S+):\S+', r'\1 \2:$PASSWORD', text)
    text = re.sub(r'sha256:[0-9a-f]{64}', 'sha256:$DIGEST', text)
    text = re.sub(r'^(\s*port:) \d+$', r'\1 $PORT', text, flags=re.M)
    text = re.sub(r'("port": )\d+', r'\1"$PORT"', text)
    return re.sub(r'127\.0\.0\.1:\d{2,5}', '127.0.0.1:$PORT', text)


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r'[\w@%+=:,./$-]+', arg) else "'" + arg.replace("'", "'\\''") + "'"


def _side(ref: str) -> str:
    return 'layout' if ref.startswith('oci:') else 'registry'


def kind(cmd: list[str]) -> str:
    """'skopeo copy layout→registry', 'curl PUT', 'speculum zuul', 'wrk', ..."""
    tool = cmd[0].rsplit('/', 1)[-1]
    if tool == 'curl' and '-X' in cmd:
        return f'curl {cmd[cmd.index("-X") + 1]}'
    if tool == 'skopeo':
        return f'skopeo copy {_side(cmd[-2])}→{_side(cmd[-1])}'
    if tool == 'speculum' and cmd[1] == 'copy':
        return f'speculum copy {_side(cmd[2])}→{_side(cmd[3])}'
    words = [c for c in cmd[1:] if not c.startswith('-') and '/' not in c and ':' not in c]
    return f'{tool} {words[0]}' if words and tool not in ('wrk', 'ab', 'du') else tool


def command(cmd: list[str]) -> None:
    args = [str(c) for c in cmd]
    key = kind(args)
    if key not in COMMANDS and '--help' not in args:
        COMMANDS[key] = scrub(' '.join(_quote(a) for a in args))


def config(name: str, text: str) -> None:
    CONFIGS.setdefault(name, scrub(text))
