"""How extract_json_object's time grows with hostile output: ratios of time at 2n vs n characters.

Linear work doubles with the length (ratios ≈ 2); the previous balanced-brace scan was quadratic (ratio ≈ 4; 8,000 `{`
took 1.75 s). Run: PYTHONPATH=. python bench/answer_extraction.py
"""

from __future__ import annotations

import time

from models.answers import extract_json_object
from tasks.benchmark.parse import parse_answer

CASES = {
    "open braces then an answer": lambda n: "{" * n + ' {"expression": "happiness"}',
    "unclosed keys": lambda n: '{"a": ' * (n // 6),
    "unclosed strings": lambda n: '{"a": "' * (n // 7),
    "prose with stray braces": lambda n: "see {x} " * (n // 8) + '{"ok": true}',
}


#: The benchmark's answer parser on hostile answers (its input is bounded at 64 KiB by store_answer).
PARSE_CASES = {
    "parse: unclosed objects": lambda n: '{"a": 1, ' * (n // 9),
    "parse: long truncated list": lambda n: '{"a": [' + "1," * (n // 2),
}


def seconds(text: str, repeat: int = 3, function=extract_json_object) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function(text)
        best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    for name, make in [*CASES.items(), *PARSE_CASES.items()]:
        n = 32_000 if name in CASES else 8_000
        function = extract_json_object if name in CASES else parse_answer
        times = [seconds(make(k * n), function=function) for k in (1, 2, 4)]
        print(
            f"{name:28s} n={n}: " + "  ".join(f"{k}n {t * 1e3:7.2f} ms" for k, t in zip((1, 2, 4), times, strict=True))
            + f"   ratios 2n/n {times[1] / times[0]:4.2f}, 4n/2n {times[2] / times[1]:4.2f}"
        )
