"""Untrusted text made safe to put inside a prompt's data blocks, and made comparable for the
validation of what the model wrote back.

Titles, queries, weather feeds and the model's own earlier answers all reach later prompts. Each
piece becomes one line that cannot close a `<block>` (no angle brackets survive), start a new
line of the prompt's structure, or claim an embedding slot; the history keeps its line structure
and exactly the embedding marks it was given. A title or query with a hostile form (markup,
disguised characters, personal data: `recgpt.untrusted`) is withheld from the prompt altogether:
such text is an injection or someone's contact details, never a shopping signal, and a model
that never reads it cannot copy it.
"""

from __future__ import annotations

import re
import unicodedata

from recgpt.context import clean_text
from recgpt.llm.request import EMBED_MARK, strip_marks
from recgpt.untrusted import hostile_form

_SPACES = re.compile(r"\s+")


def _visible(text: str) -> str:
    """NFKC first (a full-width "＜" becomes "<" and is then removed like any other), no embedding
    marks, every control, format or line/paragraph separator character as a space, and no angle
    brackets, so no block tag or special token can be spelled."""
    text = strip_marks(unicodedata.normalize("NFKC", text))
    text = "".join(" " if _invisible(ch) else ch for ch in text)
    return text.replace("<", " ").replace(">", " ")


def _invisible(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def inline_text(text: str, max_chars: int | None = None) -> str:
    """One untrusted field as a single safe line (also without the `|` and `;` that separate
    entries in the prompt's lines), cut to `max_chars` characters."""
    text = clean_text(_visible(text))
    return text[:max_chars].rstrip() if max_chars is not None else text


def field_text(text: str, max_chars: int | None, min_digits: int) -> str:
    """One untrusted field for a prompt: `inline_text`, or "" when it has a hostile form."""
    return "" if hostile_form(text, min_digits) else inline_text(text, max_chars)


def _screened(entry: str, min_digits: int) -> str:
    """A history entry without its text when that has a hostile form; embedding marks stay."""
    parts = entry.split(EMBED_MARK)
    return EMBED_MARK.join("" if hostile_form(p, min_digits) else p for p in parts).strip()


def history_text(text: str, min_digits: int) -> str:
    """A `user_context` history (V1 or hybrid), line by line, with every embedding mark kept in
    place and everything between the marks made safe; blank lines are dropped. Within a bucket
    line (`time (behaviours) | entry; entry`), an entry with a hostile form is left out: the
    context's own cleaning keeps `|` and `;` out of titles and queries, so the separators are
    the line's own."""
    lines = []
    for line in text.split("\n"):
        head, bar, entries = line.partition(" | ")
        if bar:
            kept = [_screened(e, min_digits) for e in entries.split("; ")]
            line = f"{head}{bar}{'; '.join(e for e in kept if e)}"
        else:
            line = _screened(line, min_digits)
        parts = [_SPACES.sub(" ", _visible(part)) for part in line.split(EMBED_MARK)]
        safe = EMBED_MARK.join(parts).strip()
        if safe:
            lines.append(safe)
    return "\n".join(lines)


def normalise_phrase(text: str) -> str:
    """The comparable form of a tag or name: NFKC, lower-case, one space between words, no
    quotes or other punctuation at either end ('"Hiking Boots."' -> 'hiking boots')."""
    text = _SPACES.sub(" ", _visible(text).lower()).strip()
    start, end = 0, len(text)
    while start < end and (unicodedata.category(text[start])[0] == "P" or text[start].isspace()):
        start += 1
    while end > start and (unicodedata.category(text[end - 1])[0] == "P" or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits) for phrase matching: "Gore-Tex" and
    "gore tex" compare equal, punctuation never decides a match."""
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


def ngrams(tokens: list[str], n: int) -> set[str]:
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
