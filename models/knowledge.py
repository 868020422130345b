"""Emotion knowledge, as data: the facts prompts, the simulator, the synthetic
face generator and the consistency checks all draw on.

Sources: FACS / EMFACS prototypes (Ekman & Friesen) for expression ↔ AU, and
Russell's circumplex model of affect for expression ↔ valence/arousal.
"""

from __future__ import annotations

from types import MappingProxyType

#: FACS names of the 17 schema AUs.
AU_DESCRIPTIONS = MappingProxyType(
    {
        "AU1": "inner brow raiser",
        "AU2": "outer brow raiser",
        "AU4": "brow lowerer",
        "AU5": "upper lid raiser",
        "AU6": "cheek raiser",
        "AU7": "lid tightener",
        "AU9": "nose wrinkler",
        "AU10": "upper lip raiser",
        "AU12": "lip corner puller",
        "AU14": "dimpler",
        "AU15": "lip corner depressor",
        "AU17": "chin raiser",
        "AU20": "lip stretcher",
        "AU23": "lip tightener",
        "AU24": "lip pressor",
        "AU25": "lips part",
        "AU26": "jaw drop",
    }
)

#: EMFACS prototype AUs per expression. Disgust's AU10/AU17 and contempt's
#: unilateral AU12 are weaker cues; they stay in OPTIONAL_EXPRESSION_AUS.
EXPRESSION_AUS = MappingProxyType(
    {
        "neutral": (),
        "happiness": ("AU6", "AU12"),
        "sadness": ("AU1", "AU4", "AU15"),
        "surprise": ("AU1", "AU2", "AU5", "AU26"),
        "fear": ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
        "anger": ("AU4", "AU5", "AU7", "AU23"),
        "disgust": ("AU9", "AU15"),
        "contempt": ("AU12", "AU14"),
    }
)
OPTIONAL_EXPRESSION_AUS = MappingProxyType(
    {"disgust": ("AU10", "AU17"), "contempt": ()}
)

#: Typical (valence, arousal) of each expression on Russell's circumplex.
EXPRESSION_VA = MappingProxyType(
    {
        "neutral": (0.0, 0.0),
        "happiness": (0.75, 0.35),
        "sadness": (-0.65, -0.4),
        "surprise": (0.15, 0.75),
        "fear": (-0.6, 0.7),
        "anger": (-0.65, 0.65),
        "disgust": (-0.6, 0.3),
        "contempt": (-0.4, 0.15),
    }
)

#: Plain-language statements rendered into prompts.
KNOWLEDGE_STATEMENTS: tuple[str, ...] = (
    "Happiness is marked by AU6 (cheek raiser) with AU12 (lip corner puller).",
    "Sadness is marked by AU1 (inner brow raiser), AU4 (brow lowerer) and AU15 (lip corner depressor).",
    "Surprise is marked by AU1, AU2 (brow raisers), AU5 (upper lid raiser) and AU26 (jaw drop).",
    "Fear is marked by AU1, AU2, AU4, AU5, AU7 (lid tightener), AU20 (lip stretcher) and AU26.",
    "Anger is marked by AU4, AU5, AU7 and AU23 (lip tightener).",
    "Disgust is marked by AU9 (nose wrinkler) and AU15, often with AU10 and AU17.",
    "Contempt is marked by a unilateral AU12 with AU14 (dimpler).",
    "Valence and arousal follow Russell's circumplex: happiness has high valence and moderate "
    "arousal; sadness low valence and low arousal; fear and anger low valence and high arousal; "
    "surprise high arousal; a neutral face lies near the origin.",
)
