"""Names that become folder names, object-store keys and Prefect keys: runs, exports, fine-tunes, benchmarks.

One rule, checked once before any paid work (the CLI and every flow's parameters):
1 to 100 characters, letters, digits, `.`, `_` and `-`, starting with a letter or
a digit. Such a name is a single path component (no `/`, never `.` or `..`), so
`<state_dir>/exports/<name>` and `exports/<name>/…` stay where they are meant to
be. Prefect artifact keys allow only lowercase letters, digits and dashes: they use
`slug(name)`.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = f"1-{MAX_NAME_LENGTH} characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


def check_name(value: str, what: str = "name") -> str:
    """`value` if it is a valid name, else ValueError saying what is allowed."""
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH or not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not allowed: use {NAME_RULE}")
    return value


#: A run / export / training / benchmark name (pydantic and Prefect validate flow parameters with it).
Name = Annotated[str, AfterValidator(check_name)]


def slug(name: str) -> str:
    """A Prefect artifact key part: lowercase letters, digits and single dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed"


def derived_name(text: str) -> str:
    """A valid name made from free text (a model name or path): other characters become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:MAX_NAME_LENGTH].rstrip("-._")
    return name or "unnamed"
