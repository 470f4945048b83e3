"""The forms hostile text takes, recognised the same way wherever untrusted text crosses a model:
on the way in (a title, query or profile field with one of these forms is withheld from the
prompt: it can only be an injection or personal data, never shopping signal) and on the way out
(a tag, persona or explanation carrying one is rejected: the model copied an injection).

- `markup`: a block tag, special token, another chat format's marker, JSON syntax or an escape;
- `disguised`: invisible format characters, letters NFKC changes, Latin words mixed with
  Cyrillic or Greek look-alikes: written to slip past a pattern, not to be read;
- `has_pii`: an e-mail address or a phone-like number, read `unhidden` (`before_pii`: the text
  before the first).
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# A run of digits with optional separators: a phone number, an id, or a harmless "2025-2026".
_DIGIT_RUN = re.compile(r"\+?\(?\d[\d\s().-]*\d")
_AREA_CODE = re.compile(r"\(\d{2,4}\)")
# A calendar date, with its time of day: the form every history line starts with, and what a
# model copies from it; its eight or more digits in three groups are no phone number.
_ISO_DATE = re.compile(
    r"(?<![\d.-])(?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:[ T](?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?)?(?![\d-])"
)
# A month ("2024-11"), the label of a history's older buckets: a reason citing "viewed 7 in
# 2024-11, 2024-12" holds digits in three or more groups, and they are no phone number either.
# Not followed by "-" and a digit: "2015-12-3456" stays a number.
_ISO_MONTH = re.compile(r"(?<![\d.-])(?:19|20)\d\d-(?:0[1-9]|1[0-2])(?!-?\d)")
# Markup and structure the model has no reason to write: a block tag (`</history>`) or special
# token (`<|im_end|>`), another chat format's marker (`[INST]`, a role label `system:`, a code
# fence, an armor line `-----`, a `###` heading), JSON syntax (`{"tag":`, `"}]`) and an escaped
# character (`\u003c`): the model copying an injected title or query, not writing prose.
_MARKUP = re.compile(
    r"<\s*/?\s*[A-Za-z_|][^<>]*>"
    r"|\[/?INST\]|\b(?:system|assistant|developer)\s*:|`{3}|-{5}|#{3}"
    r"|[{\[]\s*[\"']|[\"']\s*:\s*[\"'{\[\w]|[\"']\s*[}\]]"
    r"|\\u[0-9a-f]{4}",
    re.IGNORECASE,
)
# Cyrillic and Greek letters drawn like Latin ones: read as the Latin letter they imitate.
_LOOKALIKES = str.maketrans(
    dict(
        zip(
            "аеорсхуіјѕһАВЕКМНОРСТХІЈЅοαντικρχυΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
            "aeopcxyijshABEKMHOPCTXIJSoavtikpxuABEZHIKMNOPTYX",
            strict=True,
        )
    )
)


def unhidden(text: str) -> str:
    """`text` as the checks read it: NFKC (full-width and mathematical letters become plain
    ones), no invisible format characters (a zero-width space inside "ig<ZWSP>nore" or inside
    a phone number hides it from a pattern, not from a reader) and Cyrillic or Greek look-alikes
    as the Latin letters they imitate ("Іgnоrе" with Cyrillic І, о, е reads "Ignore")."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf").translate(_LOOKALIKES)


def disguised(text: str) -> bool:
    """Text written to slip past a pattern rather than to be read: an invisible format or line
    separator character, a letter NFKC changes (full-width, mathematical), or a word mixing
    Latin letters with Cyrillic or Greek ones. The model has no reason to write any of them; a
    copy of a hostile title or query does."""
    for ch in text:
        if unicodedata.category(ch) in ("Cf", "Zl", "Zp"):
            return True
        if ch.isalpha() and unicodedata.normalize("NFKC", ch) != ch:
            return True
    return any(_mixed_script(w) for w in re.findall(r"\w+", text))


def _mixed_script(word: str) -> bool:
    scripts = {unicodedata.name(ch, "").split(" ")[0] for ch in word if ch.isalpha()}
    return "LATIN" in scripts and bool(scripts & {"CYRILLIC", "GREEK"})


# Two groups are a range ("2025-2026", "1000-2000") while neither has more digits than this:
# "555 1234567" is a phone number.
_RANGE_END_DIGITS = 4


def has_pii(text: str, min_digits: int) -> bool:
    """An email address, or at least `min_digits` digits that look like a phone number or an id:
    one unbroken run, three or more groups, or a leading "+" or area code ("(555) 013-2447").
    Two groups of up to four digits ("2025-2026", also in brackets) are a range, not a number
    ("555 1234567" is one); a calendar date ("1997-12-26 12:00:00") or month ("2024-11") is a
    date. Read `unhidden`: "555<ZWSP>013<ZWSP>6644" is a phone number."""
    return _pii_start(unhidden(text), min_digits) is not None


def before_pii(text: str, min_digits: int) -> str:
    """`text` up to its first personal data (`has_pii`), read `unhidden`; all of `text` when it
    has none. "viewed 3 backpacks 1.2.3.4.5.6.7.8" gives "viewed 3 backpacks "."""
    plain = unhidden(text)
    start = _pii_start(plain, min_digits)
    return text if start is None else plain[:start]


def _blanked(match: re.Match[str]) -> str:
    """A date blanked in place: a later match's position is still the text's."""
    return " " * len(match.group())


def _pii_start(text: str, min_digits: int) -> int | None:
    """Where in `text` (already `unhidden`) the first email address or phone-like number starts."""
    starts = [m.start() for m in [_EMAIL.search(text)] if m]
    dated = _ISO_MONTH.sub(_blanked, _ISO_DATE.sub(_blanked, text))
    for match in _DIGIT_RUN.finditer(dated):
        run = match.group()
        groups = re.findall(r"\d+", run)
        if sum(len(g) for g in groups) >= min_digits and (
            len(groups) == 1
            or len(groups) >= 3
            or max(len(g) for g in groups) > _RANGE_END_DIGITS
            or run[0] == "+"
            or _AREA_CODE.match(run)
        ):
            starts.append(match.start())
            break
    return min(starts, default=None)


def pii_shape(text: str) -> str:
    """`text` with every email address and digit masked ("rated # # # # # # #"): what a rejection
    for personal data looked like, safe to log."""
    return re.sub(r"\d", "#", _EMAIL.sub("<email>", unhidden(text)))


def markup(text: str) -> str | None:
    """The first block tag, special token or other markup (`_MARKUP`) in `text`, or None."""
    match = _MARKUP.search(unhidden(text))
    return match.group() if match else None


class Form(StrEnum):
    """Why an untrusted text was withheld from a prompt (`hostile_form`)."""

    MARKUP = "markup"
    DISGUISED = "disguised"
    PERSONAL_DATA = "personal_data"


def hostile_form(text: str, min_digits: int) -> Form | None:
    """The first hostile form (`Form`) `text` has, or None for ordinary text."""
    if markup(text):
        return Form.MARKUP
    if disguised(text):
        return Form.DISGUISED
    if has_pii(text, min_digits):
        return Form.PERSONAL_DATA
    return None
