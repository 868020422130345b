"""Demo data: synthetic faces written in the native layout of every importer that has a demo writer.

A demo writer is optional: an importer without one (ExpW) is simply not in the demo.

`write_demo_data(out)` makes `out/<name>/` for each such importer
(tasks.importers.IMPORTERS), written by the importer's own `write_demo`, with
the label availability of the real source (see each importer module):

- ckplus: expression (+ FACS AUs for about half the sequences); each sequence
  has neutral onset frames before the labelled peak (the last frame);
- rafdb: expression (7 classes, no contempt), aligned JPEGs;
- affectnet: expression + valence/arousal, JPEGs;
- disfa: its 12 AUs as intensities 0-5 (present = intensity >= 2);
- bp4d: its 12 AUs as occurrence, plus a non-schema column and a few 9s
  ("not coded");
- affwild2: expression + VA + its 12 AUs, one video split into _left/_right,
  and a trailing unlabelled row per video (a frame with no detected face);
- folder: expression, from train/test folders named with synonyms;
- manifest: a CSV and a JSONL, rows carrying different subsets of labels.

Every written label equals the ground truth embedded in its image, so an
import can be checked against it. Each layout's share depends only on its
own weight: it gets round(n * demo_weight / 19) faces (at least one), so the
built-in eight write about n faces and a new layout adds its own without
taking any from the others. Counts are images the importers will yield; CK+
onset frames come on top. Subjects: about 10 per source at n = 200 (2 CK+
sequences, 3 video frames or 2 images per subject), so a 1/10 subject split
puts at least one of each source in FEAB.
"""

from __future__ import annotations

import random
from pathlib import Path

from tasks.importers import IMPORTERS

#: Weight units in `n`: the built-in eight layouts' weights sum to this.
WEIGHT_UNITS = 19
#: The layouts the demo writes (importers with a demo writer), in listing order.
DEMO_SOURCES: tuple[str, ...] = tuple(name for name, importer in IMPORTERS.items() if importer.demo is not None)


def demo_counts(n: int) -> dict[str, int]:
    """Faces per layout for `n`: each from its own weight alone."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return {name: max(1, int(n * IMPORTERS[name].demo_weight / WEIGHT_UNITS + 0.5)) for name in DEMO_SOURCES}


def write_demo_data(out: Path, n: int = 200, seed: int = 0) -> dict[str, int]:
    """Write about `n` synthetic faces spread over the layouts; returns images per layout.

    Deterministic from `seed`. Files are overwritten, never deleted: write into
    an empty folder, or leftovers of a larger earlier run will be imported too.
    """
    counts = demo_counts(n)
    for name, count in counts.items():
        importer = IMPORTERS[name]
        write = importer.demo
        if write is not None:  # always: demo_counts keeps only importers with a writer
            write(out / name, _groups(count, importer.per_subject), random.Random(f"{seed}:{name}"))
    return counts


def _groups(count: int, per_subject: int) -> list[int]:
    """Images per subject: `per_subject` each, the remainder on the last subject."""
    sizes = [per_subject] * max(1, count // per_subject)
    sizes[-1] += count - sum(sizes)
    return sizes
