from models.labels import ACTION_UNITS, FaceLabels
from tasks.consistency import consistency_flags


def aus(*present: str) -> dict[str, bool]:
    return {au: au in present for au in ACTION_UNITS}


def rules(labels: FaceLabels) -> set[str]:
    return {flag["rule"] for flag in consistency_flags(labels)}


def test_consistent_happiness_has_no_flags() -> None:
    assert rules(FaceLabels(expression="happiness", valence=0.7, arousal=0.3, aus=aus("AU6", "AU12"))) == set()


def test_conflicts_are_flagged() -> None:
    assert "au12-negative-valence" in rules(FaceLabels(valence=-0.6, aus=aus("AU12")))
    assert "happiness-without-au6-au12" in rules(FaceLabels(expression="happiness", aus=aus("AU4")))
    assert "valence-against-expression" in rules(FaceLabels(expression="sadness", valence=0.6, arousal=0.0))
    assert "no-prototype-au" in rules(FaceLabels(expression="surprise", aus=aus("AU12")))


def test_unknown_parts_are_not_flagged() -> None:
    assert rules(FaceLabels(expression="happiness")) == set()
    assert rules(FaceLabels(expression="surprise", valence=-0.5, arousal=0.8)) == set()
