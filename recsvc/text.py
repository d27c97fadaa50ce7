"""Characters no identifier may hold: invisible or layout-changing code points that make one
id look like another, break a log or CSV line, or reorder text on screen.

One rule for every id a caller sends (customer keys, event ids, send ids); pure, no web
framework, so the HTTP layer and the event parser share it.
"""

from __future__ import annotations

import re
import unicodedata

# C0 controls and DEL, C1 controls, line and paragraph separators, bidi embeddings and
# overrides (U+202A-202E) and isolates (U+2066-2069), zero-width space/joiners, word joiner
# and the byte-order mark.
UNSAFE_CHARACTERS = (  # as a regular-expression character class's contents
    "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200b-\u200d\u2060\ufeff"
)
_UNSAFE = re.compile(f"[{UNSAFE_CHARACTERS}]")
MAX_KEY_LENGTH = 256  # a customer key, as in an event's ``customer``
MAX_SEND_ID_LENGTH = 200  # an email send's id
MAX_COUNTRY_LENGTH = 100  # a country name, as in a source's country column
# A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def unsafe_character(text: str) -> str | None:
    """None when ``text`` is safe, else a reason naming the first unsafe character, e.g.
    ``"contains U+202E (RIGHT-TO-LEFT OVERRIDE), a control or invisible character"``. The
    reason never repeats the text itself (it may be an email address)."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    char = found.group()
    name = unicodedata.name(char, "control character")
    return f"contains U+{ord(char):04X} ({name}), a control or invisible character"


def text_problem(text: str, limit: int) -> str | None:
    """None when ``text`` is an acceptable id (not blank, at most ``limit`` characters, no
    unsafe character), else what is wrong with it."""
    if not text.strip() or len(text) > limit:
        return f"required, 1 to {limit} characters"
    return unsafe_character(text)


def spreadsheet_safe(cell: object) -> object:
    """``cell`` as a spreadsheet shows it but never runs it: a leading ' when it could
    start a formula (every CSV recsvc writes: export-picks, the dashboard's trigger feed)."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell
