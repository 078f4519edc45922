"""Who delivers which offsets of a partition: the owners' chain kept in the group's offset metadata.

The problem it solves: a member stores a batch (offsets ``a..b-1``) in its buffers and is killed
before the group hears of it. If it stays down longer than ``session_timeout``, another member
takes the partition and reads ``a..b-1`` again from the group's offset. When the killed member
comes back, its buffers still hold them: its file and S3 outputs would write them a second time.

Every assignment of a partition gets a random token. Each offset we commit to the group carries,
as its metadata, the partition's chain of owners: ``(token, start)`` for each assignment that
committed, in order, ``start`` being where that owner began to deliver the partition (the group's
offset when it got it). A saved position names the token of the assignment that stored it
(:class:`~pipeline.sources.tail.checkpoint.FilePosition` ``owner``, ``owner_start``). At the next
start, before any output delivers what the buffers hold, :func:`drop_from` reads the chain:
everything we stored from the start of the owner that came after us on is delivered by that owner
(it read it again), so our copy is dropped; everything before it was confirmed to the group by us
and is ours to deliver. When nobody came after us, the group's offset is that point: past it,
whoever gets the partition next (us too) reads again.

The chain is cut to its last :data:`MAX_OWNERS` entries (Kafka's ``offset.metadata.max.bytes``
is 4096 by default). A cut, or a chain begun where the group's earlier offsets carried none of ours
(another tool reset them, an older logferry), starts with the token ``""``: what came before is
unknown, and a token not found in such a chain decides nothing (the records are kept: at worst
twice, never lost).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import orjson

MAX_OWNERS = 32
UNKNOWN = ""  # the token of a chain's first entry when what came before it is not known


@dataclass(frozen=True, slots=True)
class GroupOffset:
    """A partition's offset in the group with what its metadata says (``owners`` None: none of ours)."""

    offset: int  # -1: the group holds none
    topic_id: str
    owners: list[tuple[str, int]] | None


def new_token() -> str:
    """A token for one assignment of one partition (8 hex digits: unique enough within one chain)."""
    return secrets.token_hex(4)


def encode_metadata(topic_id: str, owners: list[tuple[str, int]]) -> str:
    """The metadata of an offset we commit: the topic's id and the owners' chain.

    >>> encode_metadata("abc", [("", 5), ("1f2e3d4c", 7)])
    '{"t":"abc","o":[["",5],["1f2e3d4c",7]]}'
    """
    return orjson.dumps({"t": topic_id, "o": [[token, start] for token, start in owners]}).decode()


def decode_metadata(offset: int, metadata: str | None) -> GroupOffset:
    """What a committed offset's metadata says; a plain string is a topic's id (before the chain existed).

    >>> decode_metadata(7, '{"t":"abc","o":[["",5],["1f2e3d4c",7]]}')
    GroupOffset(offset=7, topic_id='abc', owners=[('', 5), ('1f2e3d4c', 7)])
    >>> decode_metadata(7, "abc"), decode_metadata(-1001, "")
    (GroupOffset(offset=7, topic_id='abc', owners=None), GroupOffset(offset=-1, topic_id='', owners=None))
    """
    offset = offset if offset >= 0 else -1
    text = metadata or ""
    if not text.startswith("{"):
        return GroupOffset(offset, text, None)
    try:
        doc = orjson.loads(text)
        owners = [(str(token), int(start)) for token, start in doc["o"]]
        return GroupOffset(offset, str(doc["t"]), owners)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return GroupOffset(offset, "", None)  # not ours: nothing is concluded from it


def chain_for(group: GroupOffset, token: str, start: int) -> list[tuple[str, int]]:
    """The chain our commits of a new assignment carry: the group's, then ours.

    >>> chain_for(GroupOffset(-1, "", None), "aa", 0)
    [('aa', 0)]
    >>> chain_for(GroupOffset(40, "t", None), "aa", 40)
    [('', 40), ('aa', 40)]
    >>> chain_for(GroupOffset(40, "t", [("x", 0), ("y", 20)]), "aa", 40)
    [('x', 0), ('y', 20), ('aa', 40)]
    """
    if group.owners is not None:
        before = list(group.owners)
    elif group.offset < 0:
        before = []  # nobody ever committed: the chain is whole from the partition's start
    else:
        before = [(UNKNOWN, group.offset)]
    chain = [*before, (token, start)]
    if len(chain) > MAX_OWNERS:
        chain = chain[-MAX_OWNERS:]
        chain[0] = (UNKNOWN, chain[0][1])
    return chain


def drop_from(group: GroupOffset, topic_id: str, token: str, start: int) -> int | None:
    """From which offset on the records an assignment (``token``, begun at ``start``) stored are
    delivered by another owner, or by whoever reads the partition next: our copies from there on are
    dropped. None when the group's offset cannot tell (keep them all).

    >>> chain = [("a", 0), ("b", 40), ("c", 90)]
    >>> [drop_from(GroupOffset(120, "t", chain), "t", tok, 0) for tok in ("a", "b", "c", "d")]
    [40, 90, 120, 0]
    >>> drop_from(GroupOffset(120, "t", [("", 40), ("c", 90)]), "t", "a", 0) is None  # before the chain's start
    True
    >>> drop_from(GroupOffset(120, "other", chain), "t", "a", 0) is None  # a topic of that name created anew
    True
    """
    if group.owners is None or group.offset < 0 or not token or (topic_id and group.topic_id != topic_id):
        return None
    tokens = [owner for owner, _ in group.owners]
    if token in tokens:
        at = tokens.index(token)
        return group.owners[at + 1][1] if at + 1 < len(tokens) else group.offset
    if tokens and tokens[0] == UNKNOWN:
        return None  # it may be in the part of the chain that is not known
    # Never committed a thing: whoever came next started where we did, and read what we stored.
    return start
