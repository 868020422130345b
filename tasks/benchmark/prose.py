"""Deterministic reading of expression, valence/arousal and AUs from free text.

Used when an answer has no usable JSON (and for the JSON's string values).
It reads only what the text states: emotion words (not cues such as
"smiling"), numbers next to "valence"/"arousal", AU codes and FACS names.
Every guess it has to make is written to `problems`.
"""

from __future__ import annotations

import re

from models.knowledge import AU_DESCRIPTIONS
from models.labels import ACTION_UNITS, normalise_au_name

#: Emotion words (not facial cues) per class; FABA-Instruct §4 reads text
#: labels the same way, from hand-picked synonyms of each class.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "neutrality", "calm", "expressionless", "impassive"),
    "happiness": ("happy", "happiness", "joy", "joyful", "joyous", "cheerful", "delighted", "glad", "elated"),
    "sadness": ("sad", "sadness", "sorrow", "sorrowful", "unhappy", "unhappiness", "grief", "melancholy", "dejected"),
    "surprise": ("surprise", "surprised", "astonished", "astonishment", "amazed", "amazement", "startled", "shocked"),
    "fear": ("fear", "fearful", "afraid", "scared", "frightened", "terrified", "terror", "fright"),
    "disgust": ("disgust", "disgusted", "revulsion", "repulsed", "revolted"),
    "anger": ("anger", "angry", "furious", "fury", "rage", "enraged", "irate", "irritated", "annoyed", "annoyance"),
    "contempt": ("contempt", "contemptuous", "disdain", "disdainful", "scorn", "scornful"),
}
_WORD_CLASS = {word: cls for cls, words in _SYNONYMS.items() for word in words}
_EMOTION_WORD = re.compile(r"\b(" + "|".join(sorted(_WORD_CLASS, key=len, reverse=True)) + r")\b", re.I)
#: Words that also describe a VA point ("calm arousal"); ignored in clauses about valence/arousal.
_DIMENSION_WORDS = frozenset({"neutral", "neutrality", "calm"})
_NEGATION = re.compile(
    r"\b(?:not|no|never|neither|nor|without|hardly|lacks?|lacking|absence|absent|none|rather than|instead of)\b|n't\b",
    re.I,
)
#: A mention after one of these in its clause is the answer, not a passing word.
_CUE = re.compile(
    r"\b(?:expression|emotion|emotional state|feeling|mood|looks?|appears?|seems?|displays?|shows?|conveys?"
    r"|express(?:es)?|exhibits?)\b",
    re.I,
)
_CLAUSE_BREAK = re.compile(r"\.(?!\d)|[!?;,\n]|\b(?:but|however|while|whereas|although)\b", re.I)
_SENTENCE_BREAK = re.compile(r"\.(?!\d)|[!?;\n]")

_NUM = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)(?!\.?\d|%)"
_NUMBER = re.compile(r"(?<![\w.])" + _NUM)
_ONE = r"\+?1(?:\.0+)?"
_MINUS_ONE = r"-1(?:\.0+)?"
#: Scale statements ("on a scale from -1 to 1") carry no prediction; blanked before reading numbers.
_RANGE = re.compile(
    rf"\[\s*{_MINUS_ONE}\s*,\s*{_ONE}\s*\]|\bfrom\s+{_MINUS_ONE}\s+to\s+{_ONE}\b"
    rf"|\bbetween\s+{_MINUS_ONE}\s+and\s+{_ONE}\b|{_MINUS_ONE}\s*(?:to|–|—)\s*{_ONE}\b",
    re.I,
)
_JOINT_VA = re.compile(
    r"\b(?:(valence)\s*(?:and|&|/|,|-)\s*arousal|(arousal)\s*(?:and|&|/|,|-)\s*valence|V\s*/\s*A|V-A|VA)\b", re.I
)
_PAIR = re.compile(rf"[^\d+\-.]{{0,25}}?\(?\s*({_NUM})\s*(?:,|/|;|\band\b)\s*({_NUM})")
_DIMENSION = {
    "valence": re.compile(r"\bvalence\b|\bV\s*(?==|:)", re.I),
    "arousal": re.compile(r"\barousal\b|\bA\s*(?==|:)", re.I),
}

_AU_ANCHOR = re.compile(
    r"\b(?:AUs?|action\s+units?)(?:\s+(?:present|active|detected|observed|absent|inactive))?"
    r"\s*[:#\-]?\s*(\d{1,2})(?!\.?\d)",
    re.I,
)
_AU_MORE = re.compile(r"\s*(?:,|&|\+|/|\band\b|\bor\b)\s*(?:and\s+)?(?:AU\s*)?(\d{1,2})(?!\.?\d)", re.I)
#: FACS names, last word inflected ("jaw dropped", "brow lowerers").
_AU_NAMES = [
    (au, re.compile(r"\b" + r"[\s-]+".join(map(re.escape, name.split())) + r"(?:s|es|ed|ing|ped|ping)?\b", re.I))
    for au, name in AU_DESCRIPTIONS.items()
]
_AU_GAP = re.compile(r"^[\s,()&+/:\-]*(?:(?:and|or|plus|with|as well as)\b[\s,()&+/]*)?$", re.I)
_AU_ABSENT_AFTER = re.compile(
    r"^\W*(?:\w+n't\b|(?:(?:is|are|was|were|seems?|appears?)\s+)?"
    r"(?:not|absent|inactive|missing|undetected|false|no|none)\b|0(?!\.?\d))",
    re.I,
)
_NO_AUS = re.compile(r"\b(?:no|none\s+of\s+the)\s+(?:\w+\s+)?(?:action\s+units?|AUs?)\b(?!\s*[:#\-]?\s*\d)", re.I)


def normalise_text(text: str) -> str:
    """Unicode minus signs and dashes before digits become '-', so numbers read the same."""
    return re.sub(r"[\u2212\u2012\u2013\u2014](?=\s?[.\d])", "-", text)


def _clause_start(text: str, pos: int, breaks: re.Pattern[str]) -> int:
    starts = [m.end() for m in breaks.finditer(text, 0, pos)]
    return starts[-1] if starts else 0


def read_expression(text: str, problems: list[str]) -> str | None:
    """The stated class: the first cued mention ("expression: X", "looks X"), else the most mentioned.

    Negated mentions ("not happy") are dropped, as FABA-Instruct §4 drops
    negative sentences before counting synonyms.
    """
    cued: list[str] = []
    counts: dict[str, int] = {}
    for match in _EMOTION_WORD.finditer(text):
        word, cls = match.group(1).lower(), _WORD_CLASS[match.group(1).lower()]
        clause = text[_clause_start(text, match.start(), _CLAUSE_BREAK) : match.start()]
        end = _SENTENCE_BREAK.search(text, match.end())
        sentence = text[_clause_start(text, match.start(), _SENTENCE_BREAK) : end.start() if end else None]
        if _NEGATION.search(" ".join(clause.split()[-3:])):
            continue
        if word in _DIMENSION_WORDS and re.search(r"valence|arousal", sentence, re.I):
            continue
        if _CUE.search(clause) and not re.search(r"\bAU\s*\d", clause, re.I):
            cued.append(cls)
        counts[cls] = counts.get(cls, 0) + 1
    if cued:
        if len(set(cued)) > 1:
            problems.append(f"expression stated as {' and '.join(dict.fromkeys(cued))}; took the first")
        return cued[0]
    if not counts:
        return None
    best = max(counts.values())
    top = [cls for cls, n in counts.items() if n == best]  # dict order = first mention
    if len(counts) > 1:
        problems.append(f"expression words for {', '.join(counts)}; took {top[0]} (most mentions, then first)")
    return top[0]


def _in_range(name: str, raw: str, problems: list[str]) -> float | None:
    value = float(raw)
    if -1.0 <= value <= 1.0:
        return value
    problems.append(f"{name} {raw} is outside [-1, 1]; ignored")
    return None


def read_valence_arousal(text: str, problems: list[str]) -> tuple[float | None, float | None]:
    """Numbers after "valence"/"arousal"/"V="/"A=", or a pair after a joint mention ("VA: (0.6, 0.3)")."""
    text = _RANGE.sub(lambda m: " " * len(m.group(0)), text)
    found: dict[str, float | None] = {"valence": None, "arousal": None}
    joint_spans = []
    for joint in _JOINT_VA.finditer(text):
        joint_spans.append((joint.start(), joint.end()))
        pair = _PAIR.match(text, joint.end())
        if pair and found["valence"] is None and found["arousal"] is None:
            first, second = ("arousal", "valence") if joint.group(2) else ("valence", "arousal")
            found[first] = _in_range(first, pair.group(1), problems)
            found[second] = _in_range(second, pair.group(2), problems)
    for name, pattern in _DIMENSION.items():
        other = _DIMENSION["arousal" if name == "valence" else "valence"]
        mentioned = numbered = False
        for mention in pattern.finditer(text):
            if found[name] is not None:
                break
            if any(start <= mention.start() < end for start, end in joint_spans):
                continue
            mentioned = True
            window = text[mention.end() : mention.end() + 50]
            ends = (_SENTENCE_BREAK.search(window), other.search(window))  # this statement only
            stop = min((m.start() for m in ends if m), default=len(window))
            if number := _NUMBER.search(window, 0, stop):
                numbered = True
                found[name] = _in_range(name, number.group(0), problems)
        if mentioned and not numbered and found[name] is None:
            problems.append(f"{name} mentioned without a number; left missing")
    return found["valence"], found["arousal"]


def _au_mentions(text: str, problems: list[str]) -> list[tuple[int, int, list[str]]]:
    """(start, end, AUs) of each AU code list ("AUs 1, 2 and 5") and FACS name, in text order."""
    mentions: list[tuple[int, int, list[str]]] = []
    for anchor in _AU_ANCHOR.finditer(text):
        numbers, end = [anchor.group(1)], anchor.end()
        while more := _AU_MORE.match(text, end):
            numbers.append(more.group(1))
            end = more.end()
        if mentions and anchor.start() < mentions[-1][1]:
            continue  # already read as part of the previous list
        mentions.append((anchor.start(), end, _known_aus(numbers, problems)))
    for au, pattern in _AU_NAMES:
        mentions.extend((m.start(), m.end(), [au]) for m in pattern.finditer(text))
    return sorted(mentions)


def _known_aus(numbers: list[str], problems: list[str]) -> list[str]:
    aus = []
    for number in numbers:
        try:
            aus.append(normalise_au_name(number))
        except ValueError:
            problems.append(f"AU{number} is not one of the 17 schema AUs; ignored")
    return aus


def read_action_units(text: str, problems: list[str]) -> dict[str, bool]:
    """AU occurrence as stated. Groups of adjacent mentions share a polarity:
    absent after a negation just before ("no AU4", "absent: AU1, AU2") or an
    absence word just after ("AU4 is not present", "AU4: 0"), else present.
    When anything is said present (or "no action units"), the AUs not named
    as present are absent: the prompt asks for the present ones only.
    """
    groups: list[tuple[int, int, list[str]]] = []
    for start, end, aus in _au_mentions(text, problems):
        if groups and _AU_GAP.match(text[groups[-1][1] : start]):
            groups[-1] = (groups[-1][0], max(end, groups[-1][1]), groups[-1][2] + aus)
        else:
            groups.append((start, end, aus))
    stated: dict[str, bool] = {}
    for i, (start, end, aus) in enumerate(groups):
        previous_end = groups[i - 1][1] if i else 0
        before = text[max(previous_end, _clause_start(text, start, _CLAUSE_BREAK)) : start]
        next_start = groups[i + 1][0] if i + 1 < len(groups) else len(text)
        after = text[end : min(next_start, end + 30)]
        said = " ".join(before.split()[-4:]) + " " + text[start:end]
        present = not (_NEGATION.search(said) or _AU_ABSENT_AFTER.match(after))
        for au in aus:
            if stated.get(au, present) != present:
                problems.append(f"{au} stated both present and absent; took the later statement")
            stated[au] = present
    if any(stated.values()) or _NO_AUS.search(text):
        return {au: stated.get(au, False) for au in ACTION_UNITS}
    return stated
