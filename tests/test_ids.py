"""Random identifiers from the per-process pool: the formats of ``secrets``, every byte handed
out once, and a forked child that never repeats its parent's."""

from __future__ import annotations

import os
import re

from recsvc import ids


def test_the_formats_are_those_of_secrets() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", ids.token_hex(8))
    assert re.fullmatch(r"[A-Za-z0-9_-]{12}", ids.token_urlsafe(9))


def test_ids_do_not_repeat_across_pool_refills() -> None:
    drawn = [ids.token_hex(8) for _ in range(3 * ids.POOL_BYTES // 8)]
    assert len(set(drawn)) == len(drawn)


def test_a_forked_child_draws_other_bytes_than_its_parent() -> None:
    ids.token_hex(8)  # the pool holds bytes the child must not reuse
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writer, ids.token_hex(64).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    with os.fdopen(reader) as pipe:
        in_child = pipe.read()
    assert len(in_child) == 128
    assert in_child != ids.token_hex(64)
