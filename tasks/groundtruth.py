"""Ground truth carried inside synthetic images.

PNG files keep it in a tEXt chunk, JPEG files in a COM marker, both under
GROUND_TRUTH_PNG_KEY as FaceLabels JSON. The simulator reads it to answer
like a model that sees the face; nothing else may use it as a label source.
"""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from models.labels import GROUND_TRUTH_PNG_KEY, FaceLabels

_JPEG_PREFIX = GROUND_TRUTH_PNG_KEY + "="


def save_with_ground_truth(image: Image.Image, labels: FaceLabels, fmt: str) -> bytes:
    """Encode `image` as PNG or JPEG with `labels` embedded."""
    payload = labels.model_dump_json()
    buffer = io.BytesIO()
    if fmt.upper() == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(GROUND_TRUTH_PNG_KEY, payload)
        image.save(buffer, format="PNG", pnginfo=info)
    elif fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buffer, format="JPEG", quality=92, comment=(_JPEG_PREFIX + payload).encode())
    else:
        raise ValueError(f"ground truth can be embedded in PNG or JPEG, not {fmt!r}")
    return buffer.getvalue()


def read_ground_truth(data: bytes) -> FaceLabels | None:
    """The embedded labels, or None for an image that carries none (any real photo)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = image.info.get(GROUND_TRUTH_PNG_KEY)
            comment = image.info.get("comment")
    except Exception:  # not an image: nothing embedded
        return None
    if text is None and isinstance(comment, bytes):
        decoded = comment.decode("utf-8", errors="replace")
        if decoded.startswith(_JPEG_PREFIX):
            text = decoded[len(_JPEG_PREFIX) :]
    if text is None:
        return None
    try:
        return FaceLabels.model_validate(json.loads(text))
    except ValueError:
        return None
