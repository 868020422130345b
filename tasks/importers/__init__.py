"""Importers: one module per source layout, each defining `IMPORTER = Importer(...)`.

The registry below is found, not written: every module of this package whose
name does not start with "_" is imported and its `IMPORTER` registered, so a
new layout is one module (reader, optional demo writer, its `Importer`) plus
its test and a row in the README's format table. The CLI, the demo data and
the docs test all read `IMPORTERS`.

Every reader yields `ImportCandidate`s (an image path and the labels its source
gives) and `ImportProblem`s (a record it refused or a value it dropped, with
file, line, field and reason); the import goes on after a problem. Readers only
look at label files and check that images exist: ingest decodes and validates
the bytes (tasks/images.py). Readers list and read only inside the import root
(or an explicit `frames_dir`): a symlink leading out of it is refused, not followed.

Paths in candidates and problems are relative to the import base: `root`
itself, or for a manifest given as a file, the manifest's folder (see
`import_base`). Frames under an `options.frames_dir` outside the root keep
their absolute path. Invalid codes never become labels: they are MISSING.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.importers._common import Importer, ImportOptions, Reader, bad_text, import_base, inside

__all__ = ["IMPORTERS", "READERS", "SOURCES", "ImportOptions", "Importer", "Reader", "bad_text", "import_base", "inside"]


def _discover() -> dict[str, Importer]:
    found: dict[str, Importer] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        importer = getattr(module, "IMPORTER", None)
        if not isinstance(importer, Importer):
            raise TypeError(f"{module.__name__} defines no IMPORTER = Importer(...)")
        if importer.name in found:
            raise ValueError(f"importer name {importer.name!r} is defined twice")
        found[importer.name] = importer
    return dict(sorted(found.items(), key=lambda item: (item[1].order, item[0])))


#: Every importer by name, in listing order.
IMPORTERS: dict[str, Importer] = _discover()
#: Source names as stored in the database and typed in `seke import <name>`.
SOURCES: tuple[str, ...] = tuple(IMPORTERS)
READERS: dict[str, Reader] = {name: importer.read for name, importer in IMPORTERS.items()}
