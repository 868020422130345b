"""The label schema: the one place that says what a facial-emotion label is.

Expression: 8 classes. Valence / arousal: floats in [-1, 1]. Action units: the
17 AUs of the union of BP4D, DISFA and Aff-Wild2, each present or absent.
Every importer, prompt, parser, simulator and metric uses these names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXPRESSIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
Expression = Literal[
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"
]

ACTION_UNIT_NUMBERS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)
ACTION_UNITS: tuple[str, ...] = tuple(f"AU{n}" for n in ACTION_UNIT_NUMBERS)

#: DISFA intensities (0-5) become occurrence at this intensity (paper §4.1: "higher than 2").
DEFAULT_AU_INTENSITY_THRESHOLD = 2

#: PNG text chunk in which synthetic faces carry their ground truth (a FaceLabels JSON).
GROUND_TRUTH_PNG_KEY = "seke-ground-truth"

Unit = Annotated[float, Field(ge=-1.0, le=1.0)]


class Task(StrEnum):
    """The three descriptions UAMC samples (docs/design.md, "UAMC, made precise": expression, VA, AU)."""

    EXPRESSION = "expression"
    VA = "va"
    AU = "au"


class Split(StrEnum):
    FEID = "FEID"  # instruction split, annotated and used for fine-tuning
    FEAB = "FEAB"  # subject-disjoint benchmark split


#: Every label field that can be stored, in display order.
LABEL_FIELDS: tuple[str, ...] = ("expression", "valence", "arousal", *ACTION_UNITS)


def fields_of(task: Task) -> tuple[str, ...]:
    if task is Task.EXPRESSION:
        return ("expression",)
    if task is Task.VA:
        return ("valence", "arousal")
    return ACTION_UNITS


def task_of(field: str) -> Task:
    if field == "expression":
        return Task.EXPRESSION
    if field in ("valence", "arousal"):
        return Task.VA
    if field in ACTION_UNITS:
        return Task.AU
    raise ValueError(f"unknown label field {field!r}; expected one of {', '.join(LABEL_FIELDS)}")


def normalise_au_name(name: str | int) -> str:
    """'AU12', 'au12', '12', 12, 'AU 12', 'AU012' -> 'AU12'; ValueError if not one of the 17."""
    text = str(name).strip().upper().replace(" ", "").replace("_", "")
    if text.startswith("AU"):
        text = text[2:]
    try:
        number = int(text)
    except ValueError as exc:
        raise ValueError(f"not an action unit: {name!r}") from exc
    if number not in ACTION_UNIT_NUMBERS:
        raise ValueError(
            f"AU{number} is not in the schema's 17 action units ({', '.join(ACTION_UNITS)})"
        )
    return f"AU{number}"


class FaceLabels(BaseModel):
    """Labels of one face; any part may be missing (None / absent AU key).

    `aus` maps an AU name to occurrence; an AU that is not a key is unknown,
    which is different from absent (False).
    """

    model_config = ConfigDict(extra="forbid")

    expression: Expression | None = None
    valence: Unit | None = None
    arousal: Unit | None = None
    aus: dict[str, bool] = Field(default_factory=dict)

    @field_validator("aus", mode="before")
    @classmethod
    def _known_aus(cls, value: object) -> object:
        if isinstance(value, dict):
            return {normalise_au_name(k): v for k, v in value.items()}
        return value

    def has(self, task: Task) -> bool:
        """True when the task's description is complete (VA: both values; AU: all 17)."""
        if task is Task.EXPRESSION:
            return self.expression is not None
        if task is Task.VA:
            return self.valence is not None and self.arousal is not None
        return all(au in self.aus for au in ACTION_UNITS)

    def known_tasks(self) -> list[Task]:
        return [t for t in Task if self.has(t)]

    def missing_tasks(self) -> list[Task]:
        return [t for t in Task if not self.has(t)]

    def field_values(self) -> dict[str, str | float | bool]:
        """Flat {field: value} of the fields that are present."""
        values: dict[str, str | float | bool] = {}
        if self.expression is not None:
            values["expression"] = self.expression
        if self.valence is not None:
            values["valence"] = self.valence
        if self.arousal is not None:
            values["arousal"] = self.arousal
        values.update({au: self.aus[au] for au in ACTION_UNITS if au in self.aus})
        return values

    @classmethod
    def from_field_values(cls, values: dict[str, object]) -> FaceLabels:
        aus = {k: bool(v) for k, v in values.items() if k in ACTION_UNITS}
        return cls(
            expression=values.get("expression"),  # type: ignore[arg-type]
            valence=values.get("valence"),  # type: ignore[arg-type]
            arousal=values.get("arousal"),  # type: ignore[arg-type]
            aus=aus,
        )
