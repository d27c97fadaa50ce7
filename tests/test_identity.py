"""Identity: normalisation of keys and linking of customers, with known answers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from recsvc.identity import (
    AliasIndex,
    IdentityKey,
    IdentityRules,
    alias_table,
    mask,
    normalise_email,
    normalise_phone,
    request_aliases,
)
from training.identity import Identity, LinkRules, _Forest, canonical_id, link

PLAIN = IdentityRules()
KEY = IdentityKey("a-test-secret-of-at-least-32-characters")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.com", "ann@example.com"),
        ("  ann@EXAMPLE.com \t", "ann@example.com"),
        ("ann+news@example.com", "ann+news@example.com"),
        ("a.nn@gmail.com", "a.nn@gmail.com"),
        ("not an address", None),
        ("@example.com", None),
        ("ann@", None),
        ("a@b@c", None),
    ],
)
def test_email_normalisation_has_no_provider_tricks_by_default(raw: str, expected: str) -> None:
    assert normalise_email(raw, PLAIN) == expected


def test_email_tricks_only_when_configured() -> None:
    rules = IdentityRules(strip_plus_tags=True, dotless_domains=frozenset({"gmail.com"}))
    assert normalise_email("Ann+News@Example.com", rules) == "ann@example.com"
    assert normalise_email("a.n.n@gmail.com", rules) == "ann@gmail.com"
    assert normalise_email("a.n.n@example.com", rules) == "a.n.n@example.com"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+44 20 7946 0958", None, "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("(020) 7946-0958", "GB", "+442079460958"),
        ("020 7946 0958", None, None),
        ("12", "GB", None),
        ("call me", "GB", None),
    ],
)
def test_phone_numbers_become_e164(raw: str, region: str | None, expected: str | None) -> None:
    assert normalise_phone(raw, IdentityRules(default_region=region)) == expected


def test_request_keys_map_to_aliases() -> None:
    rules = IdentityRules(default_region="GB")
    namespaces = {"shop", "customer"}
    assert request_aliases("12346", rules, namespaces) == ["id:12346"]
    assert request_aliases("shop:12346", rules, namespaces) == ["id:shop:12346", "shop:12346"]
    assert request_aliases("email: Ann@Example.com", rules, namespaces)[1] == (
        "email:ann@example.com"
    )
    assert request_aliases("phone:020 7946 0958", rules, namespaces)[1] == "phone:+442079460958"
    assert request_aliases("nosuch:1", rules, namespaces) == ["id:nosuch:1"]


def test_links_are_transitive() -> None:
    identity = link(
        [
            ("customer:1", "email:a@x.com", ""),
            ("", "email:a@x.com", "phone:+441"),
            ("partner:9", "", "phone:+441"),
            ("customer:2", "", ""),
        ],
        [],
        LinkRules(),
        KEY,
    )
    ann = {
        identity.customer_of[a] for a in ("customer:1", "email:a@x.com", "phone:+441", "partner:9")
    }
    assert ann == {"1"}
    assert identity.customer_of["customer:2"] == "2"
    assert identity.report()["customers_with_several_aliases"] == 1


def test_shared_email_does_not_fuse_two_accounts() -> None:
    identity = link(
        [("customer:300", "email:family@x.com", ""), ("customer:301", "email:family@x.com", "")],
        [],
        LinkRules(),
        KEY,
    )
    assert identity.customer_of["customer:300"] == "300"
    assert identity.customer_of["customer:301"] == "301"
    assert identity.customer_of["email:family@x.com"] == "300"  # first link, in sorted order
    conflicts = identity.report()["conflicts"]
    assert conflicts["distinct_ids"]["count"] == 1
    assert conflicts["distinct_ids"]["examples"] == ["customer:301 ~ email:f***@x.com"]


def test_shared_email_fuses_accounts_when_allowed_and_crosswalk_always_does() -> None:
    records = [
        ("customer:300", "email:family@x.com", ""),
        ("customer:301", "email:family@x.com", ""),
    ]
    allowed = link(records, [], LinkRules(link_distinct_ids=True), KEY)
    assert allowed.customer_of["customer:301"] == "300"
    explicit = link(
        [("customer:5", "", ""), ("customer:6", "", "")],
        [("customer:5", "customer:6")],
        LinkRules(),
        KEY,
    )
    assert explicit.customer_of["customer:6"] == "5"


def test_cluster_cap_refuses_placeholder_identifiers() -> None:
    records = [(f"customer:{i}", "", "phone:+440000000000") for i in range(5)]
    identity = link(records, [], LinkRules(link_distinct_ids=True, max_cluster_ids=3), KEY)
    assert len({identity.customer_of[f"customer:{i}"] for i in range(5)}) == 3
    assert identity.report()["conflicts"]["cluster_cap"]["count"] == 2


def union_find_everywhere(
    records: list[tuple[str, ...]], crosswalk: list[tuple[str, str]], rules: LinkRules
) -> Identity:
    """The reference: the union-find over every alias and link (what ``link`` did before
    it resolved conflict-free components by connected components)."""
    forest = _Forest(rules)
    for row, (left, right) in enumerate(crosswalk):
        forest.union(left, right, (0, row, "", ""), explicit=True)
    edges: set[tuple[str, str]] = set()
    for record in records:
        present = sorted({alias for alias in record if alias})
        for alias in present:
            forest.add(alias)
        edges.update(zip(present, present[1:], strict=False))
    for left, right in sorted(edges):
        forest.union(left, right, (1, 0, left, right), explicit=False)
    return Identity(forest.canonical_ids(KEY), forest.refused, forest.examples)


@pytest.mark.parametrize(
    "rules",
    [
        LinkRules(),
        LinkRules(max_cluster_ids=2),
        LinkRules(link_distinct_ids=True, max_cluster_ids=3),
    ],
)
def test_linking_by_components_equals_the_union_find_everywhere(rules: LinkRules) -> None:
    """Random records from small pools of ids, addresses and numbers (many shared, so many
    links refused) and crosswalk pairs: every alias's customer and every refusal, in order,
    as the union-find over everything gives them."""
    rng = np.random.default_rng(7)

    def drawn(kind: str, pool: int) -> str:
        return f"{kind}{rng.integers(pool)}" if rng.random() < 0.6 else ""

    records = [
        (
            drawn(str(rng.choice(["customer:", "partner:"])), 400),
            drawn("email:e", 300).replace("e", "e@x.com/", 1) if rng.random() < 0.7 else "",
            drawn("phone:+44", 200),
        )
        for _ in range(600)
    ]
    crosswalk = [
        (f"customer:{rng.integers(400)}", f"partner:{rng.integers(400)}") for _ in range(40)
    ]
    found = link(records, crosswalk, rules, KEY)
    expected = union_find_everywhere(records, crosswalk, rules)
    assert found.customer_of == expected.customer_of
    assert found.refused == expected.refused and found.examples == expected.examples
    sizes = Counter(found.customer_of.values())
    assert found.refused and max(sizes.values()) > 2 and min(sizes.values()) == 1


def test_canonical_ids_never_show_an_address() -> None:
    assert canonical_id(["email:a@x.com", "customer:9", "customer:10"], KEY) == "10"
    assert canonical_id(["partner:7", "email:a@x.com"], KEY) == "partner:7"
    token = canonical_id(["email:a@x.com", "phone:+441"], KEY)
    assert token.startswith("c-") and "@" not in token
    # Keyed: whoever lacks the secret cannot recompute it from a guessed address.
    other = IdentityKey("another-secret-of-at-least-32-characters")
    assert canonical_id(["email:a@x.com", "phone:+441"], other) != token
    assert mask("phone:+442079460958") == "phone:+44***58"


def test_alias_index_finds_every_alias_and_nothing_else() -> None:
    customer_of = {"id:c1": "c1", "shop:77": "c1", "email:ann@example.com": "c1", "id:c2": "c2"}
    high, low, rows = alias_table(KEY, customer_of, ["c1", "c2"])
    index = AliasIndex(high, low, rows, PLAIN, ["shop"], KEY)
    assert [index.row(key) for key in ("c1", "shop:77", "email:Ann@Example.com", "c2")] == [
        0,
        0,
        0,
        1,
    ]
    assert index.row("c3") is None
    assert index.row("shop:78") is None


def test_alias_index_tells_digests_apart_by_their_low_half() -> None:
    # Digests sharing a high half (never seen in practice) lie side by side, sorted by the
    # low half, which picks the row.
    high, low = KEY.halves("id:a")
    entries = sorted([(low ^ 1, 7), (low, 8), (low ^ 2, 9)])
    index = AliasIndex(
        np.array([high] * 3, dtype=np.uint64),
        np.array([entry[0] for entry in entries], dtype=np.uint64),
        np.array([entry[1] for entry in entries], dtype=np.int32),
        PLAIN,
        [],
        KEY,
    )
    assert index.row("a") == 8
    assert index.row("b") is None
