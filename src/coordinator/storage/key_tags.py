"""The Redis Cluster hash tag in front of every key name of ``keys``.

Redis Cluster runs a script only when every key it touches is in one hash slot of the node
that runs it; a key's slot is hashed from the text between its first ``{`` and ``}`` when
there is one. With ``COORDINATOR_REDIS_CLUSTER_TAG=aitbc`` every key of the node is spelled
``{aitbc}...`` (``{aitbc}agent:a1``, ``{aitbc}agents:active``, the Lua table ``K`` of the
scripts, and the pub/sub channels): all of one coordinator cluster is in the slot of
``aitbc``, and other coordinator clusters, with other tags, can live in other slots of the
same Redis Cluster (docs/scaling.md). Without a tag the names are the single-Redis layout.

The tag is per process, set once at start-up before any key is built (``Coordinator``
does): the names are the module globals of ``keys``, rewritten here, so code that reads
``keys.NAME`` at call time (all of it; tests/storage/test_key_tags.py keeps it so) gets them
tagged.
"""

from __future__ import annotations

import re

from redis.crc import key_slot

from coordinator.storage import keys

TAG_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""What a tag may be: no braces (they would end it), no spaces, short."""

_UNTAGGED = {
    name: value for name, value in vars(keys).items() if name.isupper() and isinstance(value, str)
}
"""Every key name and prefix of ``keys``, as spelled without a tag (read at import, before
any tag is set)."""

_UNTAGGED_SCRIPT_KEYS = dict(keys.TASK_SCRIPT_KEYS)

_tag = ""


def use_tag(tag: str) -> None:
    """Spell every key of ``keys`` with the hash tag ``{tag}`` in front; ``""``: no tag."""
    global _tag
    if tag and not TAG_PATTERN.fullmatch(tag):
        raise ValueError(f"a hash tag must match {TAG_PATTERN.pattern}, not {tag!r}")
    prefix = f"{{{tag}}}" if tag else ""
    for name, value in _UNTAGGED.items():
        setattr(keys, name, prefix + value)
    keys.TASK_SCRIPT_KEYS.clear()
    keys.TASK_SCRIPT_KEYS.update({n: prefix + v for n, v in _UNTAGGED_SCRIPT_KEYS.items()})
    _tag = tag


def current_tag() -> str:
    """The tag the key names carry now (``""``: none)."""
    return _tag


def slot_of(tag: str) -> int:
    """The Redis Cluster hash slot of every key tagged ``{tag}``."""
    return int(key_slot(f"{{{tag}}}".encode()))
