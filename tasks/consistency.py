"""Knowledge-consistency checks on final labels: flagged and stored, never silently fixed.

The rules come from models/knowledge.py (EMFACS prototypes, Russell's circumplex).
"""

from __future__ import annotations

from models.knowledge import EXPRESSION_AUS, EXPRESSION_VA
from models.labels import FaceLabels

#: A valence this far from the expression's circumplex position, in the other direction, is flagged.
VALENCE_CONFLICT = 0.3


def consistency_flags(labels: FaceLabels) -> list[dict[str, str]]:
    """Each flag: {"rule": short id, "detail": what conflicts with what}."""
    flags: list[dict[str, str]] = []
    expression, valence = labels.expression, labels.valence
    if labels.aus.get("AU12") and valence is not None and valence < -VALENCE_CONFLICT:
        flags.append({"rule": "au12-negative-valence", "detail": f"AU12 (lip corner puller) present with valence {valence:.2f}"})
    if expression == "happiness" and labels.aus and not (labels.aus.get("AU6") or labels.aus.get("AU12")):
        flags.append({"rule": "happiness-without-au6-au12", "detail": "happiness with neither AU6 nor AU12 present"})
    if expression is not None and valence is not None:
        typical = EXPRESSION_VA[expression][0]
        # Only expressions with a clear valence sign (not neutral/surprise), and only a clear opposite value.
        if typical * valence < 0 and min(abs(typical), abs(valence)) > VALENCE_CONFLICT:
            flags.append({"rule": "valence-against-expression", "detail": f"{expression} with valence {valence:.2f}"})
    if expression and expression != "neutral" and labels.aus:
        prototype = EXPRESSION_AUS[expression]
        if prototype and not any(labels.aus.get(au) for au in prototype):
            flags.append(
                {"rule": "no-prototype-au", "detail": f"{expression} with none of {', '.join(prototype)} present"}
            )
    return flags
