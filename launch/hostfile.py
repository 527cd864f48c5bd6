"""Hostfiles: the MPI-style list of nodes DeepSpeed's launcher reads (``HOST slots=N``).

We parse it ourselves, with the same rules as ``deepspeed.launcher.runner`` (one
``host slots=N`` per line, ``#`` comments, no duplicate hosts), so that a bad file is one
clear message before anything starts instead of a traceback from the launcher.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cgpt.model.errors import CgptError

# DeepSpeed's own pattern (runner._parse_hostfile), anchored at both ends so that
# trailing junk such as "slots=8 gpus=2" is reported instead of silently ignored.
_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")
# host names reach pdsh/ssh command lines and remote shells: names and addresses only
# (letters, digits, _ . - : and @ for user@host), never a leading '-' (an ssh option)
_HOST_CHAR = re.compile(r"[A-Za-z0-9_.:@-]")
HOST_CHARS = "letters, digits and _ . - : @"


def check_host(label: str, name: str) -> str:
    """`name` if it is a plain host name or address; else CgptError naming the character."""
    if not name:
        raise CgptError(f"{label} is empty")
    bad = next((c for c in name if not _HOST_CHAR.fullmatch(c)), None)
    if bad is not None:
        raise CgptError(f"{label} {name!r} contains {bad!r}; a host name may only use {HOST_CHARS}")
    if name.startswith("-"):
        raise CgptError(f"{label} {name!r} starts with '-' (it would read as an option)")
    return name


def host_key(name: str) -> str:
    """One spelling per host: without ``user@``, case-folded (DNS names are
    case-insensitive, RFC 4343), without the root's trailing dot (``node1.`` is ``node1``),
    addresses in their compressed form (``0:0::1`` is ``::1``). No DNS lookup: a hostfile is
    checked offline, before anything starts; a name and its IP address are not matched."""
    host = name.rsplit("@", 1)[-1].rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


@dataclass(frozen=True)
class Host:
    name: str
    slots: int  # processes (GPUs) on this node


def parse_hostfile(text: str, source: str = "hostfile") -> list[Host]:
    """Hosts in file order; raise CgptError naming the first bad line."""
    hosts: list[Host] = []
    seen: dict[str, str] = {}  # host_key -> the spelling first seen
    for num, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise CgptError(f"{source}, line {num}: expected 'HOST slots=N', got {line!r}")
        name, slots = m.group(1), int(m.group(2))
        check_host(f"{source}, line {num}: host", name)
        if slots <= 0:
            raise CgptError(f"{source}, line {num}: {name} has slots={slots}; need at least 1")
        key = host_key(name)
        if key in seen:
            same = "" if seen[key] == name else f" (as {seen[key]!r} before: the same host)"
            raise CgptError(f"{source}, line {num}: host {name!r} is listed twice{same}")
        seen[key] = name
        hosts.append(Host(name, slots))
    if not hosts:
        raise CgptError(f"{source}: no hosts (expected lines like 'node-0 slots=8')")
    return hosts


def read_hostfile(path: str | Path) -> list[Host]:
    p = Path(path)
    if not p.is_file():
        raise CgptError(f"hostfile {str(p)!r} not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CgptError(f"hostfile {str(p)!r} cannot be read: {e}") from None
    return parse_hostfile(text, str(p))


def format_hostfile(hosts: list[Host]) -> str:
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)
