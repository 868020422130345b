"""Synthetic faces: cartoon faces drawn with Pillow from action units.

The default test and demo data (no real dataset ships with the project).
`sample_labels` draws a full label set from the emotion knowledge
(models/knowledge.py): an expression's EMFACS prototype AUs with a few
random extra / missing AUs, and valence / arousal near the expression's
circumplex point. `draw_face` renders the AUs geometrically (brows, lids,
cheeks, nose, lips, jaw), with each subject's identity (face shape, skin,
hair) fixed by the subject id so a subject's images look like one person.
`render` adds the ground truth, embedded for the simulator.

Faces are drawn at 2x and reduced to 128x128 (anti-aliasing); about a
millisecond each.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from models.knowledge import EXPRESSION_AUS, EXPRESSION_VA, OPTIONAL_EXPRESSION_AUS
from models.labels import ACTION_UNITS, EXPRESSIONS, Expression, FaceLabels
from tasks.groundtruth import save_with_ground_truth

SIZE = 128
_SCALE = 2  # draw at 256 px, reduce to 128 px
_CANVAS = SIZE * _SCALE

P_DROP_PROTOTYPE_AU = 0.1  # a prototype AU missing from one face
P_OPTIONAL_AU = 0.5  # disgust's AU10 / AU17
P_EXTRA_AU = 0.04  # any other AU active by chance
P_LIPS_PART_WITH_JAW_DROP = 0.8  # AU26 almost always parts the lips (AU25)
VA_NOISE_SD = 0.12

Point = tuple[float, float]
RGB = tuple[int, int, int]

_SKINS: tuple[RGB, ...] = ((255, 224, 196), (241, 194, 167), (224, 172, 128), (198, 134, 96), (161, 102, 70), (115, 72, 48))
_HAIRS: tuple[RGB, ...] = ((25, 20, 18), (70, 45, 30), (120, 80, 45), (215, 180, 110), (165, 70, 35), (170, 170, 170))
_EYES: tuple[RGB, ...] = ((70, 45, 25), (60, 100, 150), (80, 110, 70), (40, 30, 25))
_BACKGROUNDS: tuple[RGB, ...] = ((206, 220, 235), (225, 232, 214), (236, 226, 214), (222, 222, 226), (214, 230, 228))
_HAIR_STYLES = ("short", "long", "bald", "fringe", "curly")


@dataclass(frozen=True)
class Identity:
    """What makes a subject recognisable: fixed per subject id."""

    half_width: float
    half_height: float
    squareness: float  # superellipse exponent: 2 oval ... 3 square jaw
    skin: RGB
    hair: RGB
    hair_style: str
    eyes: RGB
    brow_width: int
    background: RGB


def identity_of(subject: str) -> Identity:
    rng = random.Random(hashlib.sha256(subject.encode()).digest())
    return Identity(
        half_width=rng.uniform(66, 80),
        half_height=rng.uniform(86, 98),
        squareness=rng.uniform(2.0, 3.0),
        skin=rng.choice(_SKINS),
        hair=rng.choice(_HAIRS),
        hair_style=rng.choice(_HAIR_STYLES),
        eyes=rng.choice(_EYES),
        brow_width=rng.randint(4, 7),
        background=rng.choice(_BACKGROUNDS),
    )


def _clip(value: float) -> float:
    return max(-1.0, min(1.0, value))


def sample_labels(rng: random.Random, expression: Expression | None = None) -> FaceLabels:
    """Full labels (expression, VA, all 17 AUs) for one face, from the emotion knowledge."""
    chosen: Expression = expression or rng.choice(EXPRESSIONS)  # type: ignore[assignment]
    prototype = EXPRESSION_AUS[chosen]
    # Draw over the tuples, never over a set: set order follows the hash seed, which would
    # make the same seed give different faces in different processes.
    active = {au for au in prototype if rng.random() >= P_DROP_PROTOTYPE_AU}
    active |= {au for au in OPTIONAL_EXPRESSION_AUS.get(chosen, ()) if rng.random() < P_OPTIONAL_AU}
    active |= {au for au in ACTION_UNITS if au not in prototype and rng.random() < P_EXTRA_AU}
    if "AU26" in active and rng.random() < P_LIPS_PART_WITH_JAW_DROP:
        active.add("AU25")
    valence, arousal = EXPRESSION_VA[chosen]
    # Rounded so the values survive any text label file unchanged.
    return FaceLabels(
        expression=chosen,
        valence=round(_clip(valence + rng.gauss(0, VA_NOISE_SD)), 3),
        arousal=round(_clip(arousal + rng.gauss(0, VA_NOISE_SD)), 3),
        aus={au: au in active for au in ACTION_UNITS},
    )


def render(labels: FaceLabels, subject: str, rng: random.Random, fmt: str = "PNG") -> bytes:
    """`draw_face` encoded as PNG or JPEG with `labels` embedded as ground truth."""
    return save_with_ground_truth(draw_face(labels, subject, rng), labels, fmt)


def draw_face(labels: FaceLabels, subject: str, rng: random.Random) -> Image.Image:
    """A 128x128 RGB face of `subject` showing the active AUs of `labels`."""
    ident = identity_of(subject)
    # Intensity of each active AU; higher arousal, stronger movements.
    gain = 0.85 + 0.15 * (labels.arousal or 0.0)
    # One draw per AU whether active or not, so the random stream (and the
    # head position below) does not depend on which AUs are active.
    k = {au: rng.uniform(0.75, 1.0) * gain * labels.aus.get(au, False) for au in ACTION_UNITS}
    image = Image.new("RGB", (_CANVAS, _CANVAS), ident.background)
    draw = ImageDraw.Draw(image, "RGBA")  # RGBA: translucent fills blend (blush, shading)
    face = _Face(ident, k, cx=128 + rng.uniform(-4, 4), cy=134 + rng.uniform(-4, 4))
    face.draw(draw)
    return image.reduce(_SCALE)


def _curve(p0: Point, through: Point, p1: Point, steps: int = 12) -> list[Point]:
    """Quadratic Bezier from p0 to p1 that passes through `through` at its middle."""
    cx, cy = 2 * through[0] - (p0[0] + p1[0]) / 2, 2 * through[1] - (p0[1] + p1[1]) / 2
    points = []
    for i in range(steps + 1):
        t = i / steps
        a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t**2
        points.append((a * p0[0] + b * cx + c * p1[0], a * p0[1] + b * cy + c * p1[1]))
    return points


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(max(0, min(255, int(c * factor))) for c in colour)  # type: ignore[return-value]


class _Face:
    """Geometry of one face; each method draws one region and the AUs acting on it."""

    def __init__(self, ident: Identity, k: dict[str, float], cx: float, cy: float) -> None:
        self.i, self.k, self.cx, self.cy = ident, k, cx, cy
        self.eye_y = cy - 0.12 * ident.half_height
        self.eye_dx = 0.42 * ident.half_width
        self.mouth_y = cy + 0.5 * ident.half_height + 4 * k["AU26"]
        self.outline = _shade(ident.skin, 0.6)
        # AU12 per side (-1 left, +1 right): contempt's smile, AU12 with the
        # dimpler and no cheek raiser, pulls one corner only.
        unilateral = k["AU14"] > 0 and k["AU6"] == 0
        self.smile = {-1: 0.0 if unilateral else k["AU12"], 1: k["AU12"]}

    def draw(self, d: ImageDraw.ImageDraw) -> None:
        self.hair_back(d)
        self.head(d)
        self.eyes(d)
        self.brows(d)
        self.nose(d)
        self.cheeks(d)
        self.mouth(d)
        self.hair_front(d)

    def head(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy = self.i, self.cx, self.cy
        for side in (-1, 1):  # ears
            x = cx + side * i.half_width
            d.ellipse((x - 9, self.eye_y - 8, x + 9, self.eye_y + 22), fill=i.skin, outline=self.outline, width=2)
        jaw = 10 * self.k["AU26"]  # jaw drop lengthens the lower face
        n = 2 / i.squareness
        outline = []
        for step in range(64):
            t = 2 * math.pi * step / 64
            c, s = math.cos(t), math.sin(t)
            height = i.half_height + (jaw if s > 0 else 0)
            outline.append((cx + i.half_width * math.copysign(abs(c) ** n, c), cy + height * math.copysign(abs(s) ** n, s)))
        d.polygon(outline, fill=i.skin, outline=self.outline, width=2)

    def hair_back(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy = self.i, self.cx, self.cy
        if i.hair_style == "long":
            box = (cx - i.half_width - 12, cy - i.half_height - 10, cx + i.half_width + 12, cy + 0.8 * i.half_height)
            d.rounded_rectangle(box, 40, fill=i.hair)

    def hair_front(self, d: ImageDraw.ImageDraw) -> None:
        i, cx, cy = self.i, self.cx, self.cy
        top, w = cy - i.half_height - 10, i.half_width + 4
        if i.hair_style == "bald":
            d.arc((cx - w, top + 6, cx + w, cy), 200, 340, fill=_shade(i.skin, 0.85), width=3)
            return
        hairline = cy - (0.42 if i.hair_style == "fringe" else 0.55) * i.half_height
        d.chord((cx - w, top, cx + w, 2 * hairline - top), 180, 360, fill=i.hair)
        if i.hair_style == "curly":
            for step in range(9):
                angle = math.pi * (1 + step / 8)
                x, y = cx + w * math.cos(angle), hairline + (hairline - top) * math.sin(angle)
                d.ellipse((x - 12, y - 12, x + 12, y + 12), fill=i.hair)
        elif i.hair_style == "fringe":
            for step in range(7):
                x = cx - w + 8 + step * (2 * w - 16) / 6
                d.polygon([(x - 12, hairline - 2), (x + 12, hairline - 2), (x, hairline + 10)], fill=i.hair)

    def eyes(self, d: ImageDraw.ImageDraw) -> None:
        k, ey = self.k, self.eye_y
        # AU5 widens the eye (white above the iris); AU7 tightens both lids;
        # AU6 pushes the lower lid up from below.
        upper = 7 + 7 * k["AU5"] - 4 * k["AU7"]
        lower = 5 - 2.5 * k["AU6"] - 2 * k["AU7"]
        for side in (-1, 1):
            ex = self.cx + side * self.eye_dx
            left, right = (ex - 14, ey), (ex + 14, ey)
            top_lid = _curve(left, (ex, ey - upper), right)
            bottom_lid = _curve(left, (ex, ey + lower), right)
            d.polygon(top_lid + bottom_lid[::-1], fill=(250, 250, 248))
            d.ellipse((ex - 6, ey - 6, ex + 6, ey + 6), fill=self.i.eyes)
            d.ellipse((ex - 2.5, ey - 2.5, ex + 2.5, ey + 2.5), fill=(10, 10, 10))
            # Skin over whatever of the iris lies outside the lids.
            d.polygon(top_lid + [(ex + 16, ey - 18), (ex - 16, ey - 18)], fill=self.i.skin)
            d.polygon(bottom_lid + [(ex + 16, ey + 12), (ex - 16, ey + 12)], fill=self.i.skin)
            d.line(top_lid, fill=(40, 30, 30), width=3)
            d.line(bottom_lid, fill=self.outline, width=1)
            if k["AU7"] > 0:  # tensed lower lid bulge
                bulge = _curve((ex - 11, ey + lower + 4), (ex, ey + lower + 6), (ex + 11, ey + lower + 4))
                d.line(bulge, fill=self.outline, width=2)
            if k["AU6"] > 0:  # crow's feet at the outer corner (the Duchenne marker)
                ox = ex + side * 17
                for dy in (-4, 0, 4):
                    d.line([(ox, ey + dy / 2), (ox + side * 7, ey + dy * 1.6)], fill=self.outline, width=2)

    def brows(self, d: ImageDraw.ImageDraw) -> None:
        k, cx = self.k, self.cx
        base = self.eye_y - 22
        # Brows must read against the skin whatever the hair colour.
        colour = (25, 18, 15) if sum(self.i.skin) < 500 or sum(self.i.hair) < 200 else (95, 65, 40)
        for side in (-1, 1):
            # AU1 lifts the inner end, AU2 the outer end, AU4 lowers and draws the inner end in.
            inner = (cx + side * (13 - 4 * k["AU4"]), base - 10 * k["AU1"] + 8 * k["AU4"])
            middle = (cx + side * 29, base - 5 - 3 * k["AU1"] - 6 * k["AU2"] + 4 * k["AU4"])
            outer = (cx + side * 46, base - 10 * k["AU2"] + 1 * k["AU4"])
            d.line(_curve(inner, middle, outer, 8), fill=colour, width=self.i.brow_width, joint="curve")
        if k["AU4"] > 0:  # vertical furrows between the brows
            for dx in (-4, 4):
                d.line([(cx + dx, base - 2), (cx + dx * 0.6, base + 10)], fill=self.outline, width=2)
        if k["AU1"] + k["AU2"] > 1:  # forehead wrinkles from raised brows
            for dy in (16, 24):
                d.arc((cx - 30, base - dy - 6, cx + 30, base - dy + 6), 200, 340, fill=self.outline, width=1)

    def nose(self, d: ImageDraw.ImageDraw) -> None:
        k, cx = self.k, self.cx
        tip = self.cy + 0.22 * self.i.half_height - 3 * k["AU9"] - 2 * k["AU10"]
        wing = 8 + 3 * k["AU9"]  # the wrinkler flares the nostrils
        d.line(_curve((cx - 4, self.eye_y + 2), (cx - 6, tip - 14), (cx - 7, tip - 2), 6), fill=self.outline, width=2)
        d.arc((cx - wing - 4, tip - 8, cx + wing + 4, tip + 6), 20, 160, fill=self.outline, width=2)
        for side in (-1, 1):
            x = cx + side * (wing - 2)
            d.ellipse((x - 3, tip - 2, x + 3, tip + 2), fill=_shade(self.i.skin, 0.45))
        if k["AU9"] > 0:  # wrinkles across the bridge
            for dy in (2, 7, 12):
                d.arc((cx - 10, self.eye_y + dy, cx + 10, self.eye_y + dy + 6), 200, 340, fill=self.outline, width=2)
        for side in (-1, 1):
            fold = max(k["AU6"], k["AU9"], k["AU10"], self.smile[side])  # nasolabial folds deepen
            if fold > 0:
                start = (cx + side * (wing + 6), tip - 4)
                end = (cx + side * (34 + 6 * self.smile[side]), self.mouth_y + 4)
                middle = (cx + side * (wing + 18), (tip + self.mouth_y) / 2)
                d.line(_curve(start, middle, end, 8), fill=self.outline + (int(90 + 130 * fold),), width=2)

    def cheeks(self, d: ImageDraw.ImageDraw) -> None:
        k6 = self.k["AU6"]
        if k6 <= 0:
            return
        y = self.eye_y + 24 - 4 * k6
        for side in (-1, 1):
            x = self.cx + side * 0.55 * self.i.half_width
            d.ellipse((x - 15, y - 9, x + 15, y + 9), fill=(230, 90, 90, int(70 * k6)))

    def mouth(self, d: ImageDraw.ImageDraw) -> None:
        k, cx, my = self.k, self.cx, self.mouth_y
        width = 23 + 10 * k["AU20"] - 5 * k["AU23"] - 3 * k["AU24"] - 4 * k["AU26"]
        # Corner height (+ is down): AU12 pulls up, AU15 down, AU20 stretches flat.
        drop = 10 * k["AU15"] + 2 * k["AU20"] - 2 * k["AU14"]
        left = (cx - width - 7 * self.smile[-1], my + drop - 16 * self.smile[-1])
        right = (cx + width + 7 * self.smile[1], my + drop - 16 * self.smile[1])
        opening = 0.0 if k["AU24"] else 5 * k["AU25"] + 24 * k["AU26"]
        thin = 1 - 0.5 * max(k["AU23"], k["AU24"])
        lift = 4 * k["AU10"]  # upper lip raiser
        chin = 3 * k["AU17"]  # chin raiser pushes the lower lip up
        upper_inner = _curve(left, (cx, my - opening / 2 - lift), right)
        lower_inner = _curve(left, (cx, my + opening / 2 - chin), right)
        upper_outer = _curve(left, (cx, my - opening / 2 - lift - 7 * thin), right)
        lower_outer = _curve(left, (cx, my + opening / 2 - chin + 9 * thin), right)
        lip = (190, 95, 95) if sum(self.i.skin) > 450 else (140, 70, 65)
        if opening + lift > 2:
            d.polygon(upper_inner + lower_inner[::-1], fill=(70, 20, 28))
            teeth = _curve(left, (cx, my - opening / 2 - lift + min(7, 0.5 * opening + lift)), right)
            d.polygon(upper_inner + teeth[::-1], fill=(245, 245, 240))
        d.polygon(upper_outer + upper_inner[::-1], fill=lip)
        d.polygon(lower_inner + lower_outer[::-1], fill=lip)
        d.line(upper_inner if opening + lift <= 2 else lower_inner, fill=_shade(lip, 0.55), width=2 + int(k["AU24"] * 2))
        if k["AU14"] > 0:  # dimples beside the corners
            for corner, side in ((left, -1), (right, 1)):
                x, y = corner[0] + side * 4, corner[1]
                start = -90 if side < 0 else 90
                d.arc((x - 4, y - 6, x + 4, y + 6), start, start + 180, fill=self.outline, width=2)
        if k["AU15"] > 0:
            for corner, side in ((left, -1), (right, 1)):
                d.line([corner, (corner[0] + side * 3, corner[1] + 8)], fill=self.outline, width=2)
        if k["AU17"] > 0:  # chin boss wrinkles
            y = my + opening / 2 + 22
            d.arc((cx - 12, y - 4, cx + 12, y + 6), 200, 340, fill=self.outline, width=2)
            for dx in (-5, 0, 5):
                d.point((cx + dx, y + 6), fill=self.outline)
