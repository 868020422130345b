"""A plan before paying: calls, tokens, dollars and wall time of an annotate run, each as a range.

Two bases:

- **UAMC's law** (no call made). Per image with descriptions to generate: at
  least the samples expected when every answer agrees (Eq. 4 with Ũ = 0 gives
  p_acc = ½ per step: 2 + ½ + ¼ + ⅛ = 2.875 for S = 2, N = 5), at most N;
  then one summary call and, unless the rewrite is off, one rewrite call. Input
  tokens of the sample prompts are counted from the prompts themselves and the
  images' sizes; everything the model writes is bounded by a small answer and
  by the stage's max_tokens, so the token and dollar ranges are wide. Cached
  input tokens: UAMC's later samples of an image repeat its sample prompt
  exactly, so a provider's prefix cache serves each of them the prompt's last
  cacheable boundary (none under 1024 tokens, tasks/prices.py); nothing else is
  counted as cached (the stages' answer schemas differ, and images differ).
- **A pilot** of K images annotated for real on the configured endpoint (a run
  of its own, `<run>-pilot`, paid like any other): calls per image and tokens
  per call of each stage as measured there, extrapolated to the run's images
  with the pilot's uncertainty (mean ± 2 standard errors).

Wall time assumes images run `concurrency` at a time with their calls in
sequence, and is at least what the per-process rate limits allow.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.answers import sample_answer_model, summary_answer_model
from models.labels import FaceLabels, Split, Task
from models.orm import HumanLabel, Image, Run, RunImage, VLLMCall
from models.vocab import ImageStatus
from core.db import in_ids
from tasks.annotate import AnnotateConfig
from tasks.prompts import prior_prompt, rewrite_prompt
from tasks.uamc import initial_samples
from tasks.prices import cacheable_tokens
from tasks.vllm import VLLMConfig, estimate_text_tokens, image_tokens, uncapped

STAGES = ("sample", "summary", "rewrite")
#: Law basis only: seconds per call when nothing was measured (a hosted vision model answering
#: a few hundred tokens). A pilot replaces it with the endpoint's own latency.
ASSUMED_LATENCY_S = (1.0, 8.0)


@dataclass(frozen=True)
class Range:
    low: float
    high: float

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2

    def __add__(self, other: Range) -> Range:
        return Range(self.low + other.low, self.high + other.high)

    def times(self, factor: float) -> Range:
        return Range(self.low * factor, self.high * factor)

    def contains(self, value: float, slack: float = 0.0) -> bool:
        return self.low * (1 - slack) <= value <= self.high * (1 + slack)


@dataclass(frozen=True)
class PlannedImage:
    """What the plan needs of one image: the descriptions to generate and its sample prompt's size."""

    image_id: int
    missing: tuple[Task, ...]
    sample_tokens_in: int  # the whole sample prompt: system text (cached layout), text and image
    image_tokens: int


@dataclass(frozen=True)
class PilotImage:
    """What one pilot image cost: all its calls, every stage."""

    image_id: int
    calls: int
    tokens_in: int
    tokens_out: int
    tokens_cached: int = 0


@dataclass(frozen=True)
class Profile:
    """A pilot's measurements: per image, and the mean latency of a call."""

    images: list[PilotImage]
    latency_s: float


@dataclass
class Plan:
    images: int
    images_to_sample: int
    basis: str
    calls: Range
    tokens_in: Range
    tokens_out: Range
    cost_usd: Range
    wall_s: Range
    tokens_cached: Range = Range(0, 0)  # of tokens_in
    cost_usd_uncached: Range = Range(0, 0)  # the cost had no token been cached (what the Batch API bills before GPT-5)
    notes: list[str] = field(default_factory=list)


def run_images(session: Session, run_name: str, limit: int | None) -> list[int]:
    """The images `seke annotate --run run_name --limit limit` would annotate now, in order."""
    run = session.scalars(select(Run).where(Run.name == run_name)).one_or_none()
    if run is not None:
        return list(
            session.scalars(
                select(RunImage.image_id)
                .where(RunImage.run_id == run.id, RunImage.status != ImageStatus.DONE)
                .order_by(RunImage.image_id)
            )
        )
    query = select(Image.id).where(Image.split == Split.FEID.value).order_by(Image.id)
    return list(session.scalars(query.limit(limit) if limit is not None else query))


def pilot_images(images: Sequence[PlannedImage], k: int) -> list[int]:
    """K of the run's images, spread evenly over its strata (the descriptions each lacks, which set
    how much a model writes about it) in proportion to their sizes."""
    ordered = sorted(images, key=lambda image: ([t.value for t in image.missing], image.image_id))
    if k >= len(ordered):
        return [image.image_id for image in ordered]
    step = len(ordered) / k
    return [ordered[int(i * step + step / 2)].image_id for i in range(k)]


def _sent_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size `encode_image` sends: downscaled to fit `max_side`, aspect kept."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def known_labels(session: Session, image_ids: list[int], config: AnnotateConfig) -> dict[int, dict[str, object]]:
    """Per image, the human label values a prompt of `config` embeds: the preferred label of each field
    (a review's, else the first-importing source's), masked fields left out."""
    labels: dict[int, dict[str, object]] = defaultdict(dict)
    masked = config.masked_fields
    # The preferred label last, as the annotate engine reads them, so it is the one kept.
    for label in session.scalars(
        select(HumanLabel).where(in_ids(HumanLabel.image_id, image_ids)).order_by(*HumanLabel.preferred_last())
    ):
        if label.field not in masked:
            labels[label.image_id][label.field] = label.value
    return dict(labels)


def planned_images(session: Session, image_ids: Sequence[int], config: AnnotateConfig, vllm: VLLMConfig) -> list[PlannedImage]:
    images = {row.id: row for row in session.scalars(select(Image).where(Image.id.in_(image_ids)))}
    labels = known_labels(session, list(image_ids), config)
    planned = []
    for image_id in image_ids:
        image = images[image_id]
        known = FaceLabels.from_field_values(labels.get(image_id, {}))
        missing = tuple(known.missing_tasks())
        pixels = image_tokens(*_sent_size(image.width, image.height, vllm.image_max_side))
        text = 0
        if missing:
            prompt = prior_prompt(known, missing, use_prior=config.use_prior, layout=config.prompt_layout)
            text = estimate_text_tokens(prompt.text) + (estimate_text_tokens(prompt.system.text) if prompt.system else 0)
        planned.append(PlannedImage(image_id, missing, text + pixels if missing else 0, pixels))
    return planned


def expected_samples(config: AnnotateConfig) -> Range:
    """Samples per image with something to generate: all answers agreeing (Ũ = 0) to the cap N."""
    uamc = config.uamc
    start = initial_samples(uamc)
    if not uamc.enabled or start >= uamc.max_samples:
        return Range(start, start)
    agreeing = start + sum(0.5**k for k in range(1, uamc.max_samples - start + 1))
    return Range(agreeing, uamc.max_samples)


def _minimal_answer_tokens(model) -> int:
    """A lower bound of an answer: each field a short value in JSON."""
    return 8 * len(model.model_fields)


def law_plan(images: Sequence[PlannedImage], config: AnnotateConfig, vllm: VLLMConfig, concurrency: int) -> Plan:
    samples = expected_samples(config)
    rewrite = 1 if config.rewrite_with_llm else 0
    calls = tokens_in = tokens_out = tokens_cached = Range(0, 0)
    # Samples asked by the image's first sample request: the later ones repeat its prompt exactly.
    first_request = initial_samples(config.uamc) if config.shared_prefill else 1
    rewrite_text = estimate_text_tokens(rewrite_prompt("?", FaceLabels(), "").text)
    for image in images:
        n = samples if image.missing else Range(0, 0)
        calls = calls + n + Range(1 + rewrite, 1 + rewrite)
        sample_out = (
            Range(_minimal_answer_tokens(sample_answer_model(image.missing)), vllm.sample_max_tokens)
            if image.missing
            else Range(0, 0)
        )
        summary_out = Range(_minimal_answer_tokens(summary_answer_model(image.missing or tuple(Task))), vllm.summary_max_tokens)
        rewrite_out = Range(8, vllm.rewrite_max_tokens).times(rewrite)
        # The summary prompt carries the image, the prior prompt's context and every sample drawn.
        summary_in = Range(image.sample_tokens_in or image.image_tokens, image.sample_tokens_in or image.image_tokens) + Range(
            n.low * sample_out.low, n.high * sample_out.high
        )
        rewrite_in = Range(image.image_tokens + rewrite_text, image.image_tokens + rewrite_text + vllm.summary_max_tokens).times(rewrite)
        # Shared prefill: the first samples are one request, their prompt billed once.
        shared = initial_samples(config.uamc) - 1 if config.shared_prefill and image.missing else 0
        tokens_in = tokens_in + (n + Range(-shared, -shared)).times(image.sample_tokens_in) + summary_in + rewrite_in
        tokens_out = tokens_out + Range(n.low * sample_out.low, n.high * sample_out.high) + summary_out + rewrite_out
        repeats = Range(max(0.0, n.low - first_request), max(0.0, n.high - first_request))
        # The prompt's size is an estimate (~4 characters a token): ±10 % around the 1024-token threshold.
        cacheable = Range(cacheable_tokens(int(0.9 * image.sample_tokens_in)), cacheable_tokens(int(1.1 * image.sample_tokens_in)))
        tokens_cached = tokens_cached + Range(repeats.low * cacheable.low, repeats.high * cacheable.high)
    plan = _priced(images, "UAMC's law", calls, tokens_in, tokens_out, vllm, concurrency, ASSUMED_LATENCY_S, tokens_cached)
    plan.notes.append(
        f"samples per image {samples.low:g}–{samples.high:g} (answers agreeing … UAMC's cap N); output tokens "
        "between a minimal answer and each stage's max_tokens; latency assumed "
        f"{ASSUMED_LATENCY_S[0]:g}–{ASSUMED_LATENCY_S[1]:g} s per call. A pilot (--pilot K) narrows all of these."
    )
    if config.shared_prefill:
        plan.notes.append(
            f"shared prefill: each image's first {initial_samples(config.uamc)} samples are one request for n choices "
            "(its prompt billed once); calls count each choice"
        )
    return plan


def measured_profile(session: Session, run_id: int) -> Profile:
    """Calls and tokens per image of a (pilot) run, and its calls' mean latency."""
    rows = session.execute(
        select(VLLMCall.image_id, VLLMCall.tokens_in, VLLMCall.tokens_out, VLLMCall.tokens_cached, VLLMCall.latency_s)
        .where(VLLMCall.run_id == run_id)
    ).all()
    if not rows:
        raise ValueError("the pilot made no calls: nothing to measure")
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in rows:
        total = totals[row.image_id]
        total[0] += 1
        total[1] += row.tokens_in
        total[2] += row.tokens_out
        total[3] += row.tokens_cached
    return Profile(
        images=[PilotImage(image_id, *total) for image_id, total in sorted(totals.items())],
        latency_s=statistics.fmean(row.latency_s for row in rows),
    )


def _extrapolate(images: Sequence[PlannedImage], measured: dict[int, float]) -> Range:
    """Σ over the run's images of its stratum's pilot mean (the pilot's overall mean for a stratum it
    missed), ± 2 standard errors of the pilot images around their strata's means."""
    stratum = {image.image_id: image.missing for image in images}
    groups: dict[tuple[Task, ...] | None, list[float]] = defaultdict(list)
    for image_id, value in measured.items():
        groups[stratum.get(image_id)].append(value)
    overall = statistics.fmean(measured.values())
    means = {key: statistics.fmean(values) for key, values in groups.items()}
    total = sum(means.get(image.missing, overall) for image in images)
    residuals = [value - means[key] for key, values in groups.items() for value in values]
    spread = statistics.pstdev(residuals) if len(residuals) > 1 else overall * 0.25
    error = 2 * spread / math.sqrt(len(measured)) * len(images)
    return Range(max(total - error, 0.0), total + error)


def pilot_plan(images: Sequence[PlannedImage], profile: Profile, vllm: VLLMConfig, concurrency: int) -> Plan:
    calls = _extrapolate(images, {p.image_id: p.calls for p in profile.images})
    tokens_in = _extrapolate(images, {p.image_id: p.tokens_in for p in profile.images})
    tokens_cached = _extrapolate(images, {p.image_id: p.tokens_cached for p in profile.images})
    tokens_out = _extrapolate(images, {p.image_id: p.tokens_out for p in profile.images})
    plan = _priced(
        images, f"a pilot of {len(profile.images)} images", calls, tokens_in, tokens_out, vllm, concurrency,
        (profile.latency_s, profile.latency_s), tokens_cached,
    )  # fmt: skip
    k = len(profile.images)
    plan.notes.append(
        f"measured per image: {sum(p.calls for p in profile.images) / k:.2f} calls, "
        f"{sum(p.tokens_in for p in profile.images) / k:,.0f} tokens in, {sum(p.tokens_out for p in profile.images) / k:,.0f} out; "
        f"{profile.latency_s:.2f} s per call (ranges: ± 2 standard errors, by the descriptions each image lacks)"
    )
    return plan


def _priced(
    images: Sequence[PlannedImage],
    basis: str,
    calls: Range,
    tokens_in: Range,
    tokens_out: Range,
    vllm: VLLMConfig,
    concurrency: int,
    latency_s: tuple[float, float],
    tokens_cached: Range = Range(0, 0),
) -> Plan:
    def dollars(t_in: float, t_out: float, t_cached: float = 0.0) -> float:
        return vllm.prices.cost_usd(t_in, t_cached, t_out)  # type: ignore[arg-type]

    # An unset cap (a self-hosted endpoint's default) does not bound the wall time.
    rpm, tpm = uncapped(vllm.requests_per_minute), uncapped(vllm.tokens_per_minute)

    def wall(n_calls: float, tokens: float, latency: float) -> float:
        by_rate = max(n_calls / rpm, tokens / tpm) * 60
        # Calls of an image run one after another; `concurrency` images at a time.
        by_latency = n_calls * latency / max(1, min(concurrency, len(images)))
        return max(by_rate, by_latency)

    def per_minute(cap: float | None) -> str:
        return f"{cap:,.0f}" if cap else "unlimited"

    limits = (
        f"at ${vllm.price_in_per_mtok:g} / ${vllm.price_out_per_mtok:g} per million tokens in / out, "
        f"{per_minute(vllm.requests_per_minute)} requests and {per_minute(vllm.tokens_per_minute)} tokens per minute, "
        f"{concurrency} images at once"
    )
    return Plan(
        notes=[limits],
        images=len(images),
        images_to_sample=sum(1 for image in images if image.missing),
        basis=basis,
        calls=calls,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        tokens_cached=tokens_cached,
        cost_usd=Range(
            dollars(tokens_in.low, tokens_out.low, tokens_cached.low), dollars(tokens_in.high, tokens_out.high, tokens_cached.high)
        ),
        cost_usd_uncached=Range(dollars(tokens_in.low, tokens_out.low), dollars(tokens_in.high, tokens_out.high)),
        wall_s=Range(
            wall(calls.low, tokens_in.low + tokens_out.low, latency_s[0]),
            wall(calls.high, tokens_in.high + tokens_out.high, latency_s[1]),
        ),
    )
