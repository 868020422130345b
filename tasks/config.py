"""What decides an annotation run's output: a small module of its own, so run bookkeeping
(tasks/runs.py) can name a run's configuration without importing the annotator."""

from __future__ import annotations

from pydantic import BaseModel, Field

from models.labels import Task, fields_of
from tasks.prompts import PromptLayout
from tasks.uamc import UAMCConfig


class AnnotateConfig(BaseModel):
    """What decides a run's output; stored with the run and fixed for its lifetime (resume replays it)."""

    seed: int = Field(default=0, description="Seeds UAMC draws, sample seeds and question choice.")
    use_prior: bool = Field(default=True, description="Embed known human labels + emotion knowledge (ablation: off).")
    uamc: UAMCConfig = Field(default_factory=UAMCConfig)
    rewrite_with_llm: bool = Field(default=True, description="Off: the answer is assembled without a rewrite call.")
    tasks_to_mask: list[Task] = Field(
        default_factory=list,
        description="Audit runs: treat these human descriptions as missing and regenerate them.",
    )
    # Off by default so that runs stored before it existed replay as they ran; the CLI turns it on.
    shared_prefill: bool = Field(
        default=False,
        description="Ask UAMC's first samples as one request for n choices (the prompt billed once), where the "
        "endpoint takes n > 1.",
    )
    # "paper" is the default so that runs stored before the layout existed replay as they ran.
    prompt_layout: PromptLayout = Field(
        default="paper",
        description="paper: the paper's one message per call; cached: constant system text, then image, then the "
        "call's text, for providers' prefix caches (tasks/prompts.py).",
    )

    @property
    def masked_fields(self) -> set[str]:
        """The label fields of `tasks_to_mask`: known labels the prompt must not embed."""
        return {f for task in self.tasks_to_mask for f in fields_of(task)}
