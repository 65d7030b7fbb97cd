"""Self-distilled targets: the base model rewrites each SFT response in its own words (SDFT).

SDFT (Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in Language Model Fine-Tuning",
ACL 2024; github.com/sail-sg/sdft) fine-tunes on responses the base model itself wrote, given the
instruction and the original (reference) response, so the targets stay close to the base's own
distribution and fine-tuning moves it less. The rewrite prompt follows the paper's template
(``alpaca_distill_using`` in its code): a system line asking for the model's own response with the
reference as a guide, and a user turn with ``### Instruction:`` and ``### Reference Answer:`` sections.
It is rendered with the model's chat template (or sftlab's built-in format), as every prompt here is.

A rewrite is kept only when it agrees with the reference, by this rule (checked per item, recorded):

1. it is not empty, and it ended on its own (a rewrite cut off at the token limit is unfinished);
2. it does not talk about the task instead of doing it: none of the paper's rejection phrases
   ("reference answer", "your response", ...; its ``gen_distilled_data.py``) occurs in it;
3. a short reference (at most ``short_answer_words`` words) must be matched exactly after
   normalisation (lower case, punctuation and articles removed, whitespace collapsed; SQuAD's rule);
   a longer one needs ROUGE-L F-measure (``rouge_score``, Porter stemming) against the reference of at
   least ``rouge_threshold``. The paper checks answers only for math and code sets (the final answer,
   or a test); ROUGE-L is sftlab's stand-in for free text, and the threshold is a setting.

Otherwise the original response is kept. Only single-exchange records (one user turn and its answer,
optionally after a system turn) are rewritten; plain text and multi-turn conversations pass through.

This is the offline SDFT: the targets are rewritten once, before training. The on-policy method of the same
name (Shenfeld et al. 2026), where the model answers the prompts itself at every step and is trained toward
its demonstration-conditioned self, is ``on_policy_distill`` (``sftlab.train.onpolicy_distill``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rouge_score import rouge_scorer

from sftlab.data.records import Message, Record

SDFT_SYSTEM = (
    "Below is an instruction that describes a task, along with a reference answer. "
    "Using the reference answer as a guide, write your own response."
)
# Phrases that mark a rewrite which talks about the exercise instead of answering (the paper's list).
REJECT_PHRASES = ("reference answer", "your response", "my response", "your own response", "now it's your turn")
REJECT_PREFIXES = ("your turn",)

KEPT = "kept"
REASONS = ("empty", "cut off at the token limit", "talks about the task", "short answer differs",
           "rouge-l below threshold")


@dataclass
class Verdict:
    """Whether one rewrite is kept, why not when it is not, and its ROUGE-L (long references only)."""

    kept: bool
    reason: str
    rouge_l: float | None = None


@dataclass
class DistillStats:
    """What a distillation did: counts by outcome, and the cost of generating."""

    records: int = 0
    rewritable: int = 0
    kept: int = 0
    fell_back: int = 0
    fallback_reasons: Counter[str] = field(default_factory=Counter)
    passed_through: int = 0  # text records and multi-turn conversations, never rewritten
    mean_rouge_l_kept: float | None = None
    answer_tokens: int = 0
    seconds: float = 0.0
    rule: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``.stats.json`` file)."""
        return {
            "records": self.records,
            "rewritable": self.rewritable,
            "kept": self.kept,
            "fell_back": self.fell_back,
            "fallback_reasons": dict(sorted(self.fallback_reasons.items())),
            "passed_through": self.passed_through,
            "mean_rouge_l_kept": self.mean_rouge_l_kept,
            "answer_tokens": self.answer_tokens,
            "seconds": self.seconds,
            "tokens_per_second": self.answer_tokens / self.seconds if self.seconds > 0 else None,
            "rule": self.rule,
        }


def exchange(record: Record) -> tuple[Message | None, Message, Message] | None:
    """(system or None, user, assistant) of a single-exchange record; None for anything else."""
    if record.kind == "text":
        return None
    messages = record.as_messages()
    system = messages[0] if messages and messages[0].role == "system" else None
    turns = messages[1:] if system is not None else messages
    if len(turns) != 2 or turns[0].role != "user" or turns[1].role != "assistant":
        return None
    return system, turns[0], turns[1]


def rewrite_prompt(record: Record) -> list[Message] | None:
    """The SDFT prompt for one record (the paper's template), or None when the record is not rewritten.

    A system turn of the record's own is kept at the top of the instruction, so the rewrite sees it.
    """
    parts = exchange(record)
    if parts is None:
        return None
    system, user, assistant = parts
    instruction = f"{system.content}\n\n{user.content}" if system is not None else user.content
    return [
        Message("system", SDFT_SYSTEM),
        Message("user", f"### Instruction:\n{instruction}\n\n### Reference Answer:\n{assistant.content}"),
    ]


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def check_rewrite(rewrite: str, reference: str, rouge_threshold: float, short_answer_words: int) -> Verdict:
    """The agreement rule of the module docstring, for one rewrite against its reference."""
    text = rewrite.strip()
    if not text:
        return Verdict(False, "empty")
    lowered = text.lower()
    if any(p in lowered for p in REJECT_PHRASES) or lowered.startswith(REJECT_PREFIXES):
        return Verdict(False, "talks about the task")
    if len(reference.split()) <= short_answer_words:
        same = normalize_answer(text) == normalize_answer(reference)
        return Verdict(same, KEPT if same else "short answer differs")
    score = _SCORER.score(reference, text)["rougeL"].fmeasure
    return Verdict(score >= rouge_threshold, KEPT if score >= rouge_threshold else "rouge-l below threshold", score)


def distilled_row(record: Record, answer: str | None = None) -> dict[str, Any]:
    """The record as a JSON object in its own source format, with its last response set to ``answer``
    (None: the record as it is)."""
    if record.kind == "text":
        return {"text": record.text}
    if answer is None:
        answer = record.as_messages()[-1].content
    if record.format == "alpaca":
        return {"instruction": record.meta["instruction"], "input": record.meta["input"], "output": answer}
    if record.kind == "prompt_completion":
        return {"prompt": record.prompt, "completion": answer}
    messages = record.as_messages()
    return {"messages": [{"role": m.role, "content": m.content} for m in messages[:-1]]
            + [{"role": "assistant", "content": answer}]}


def distill_records(
    records: Sequence[Record],
    rewrites: Sequence[str | None],
    rouge_threshold: float,
    short_answer_words: int,
    cut_off: Sequence[bool] | None = None,
) -> tuple[list[dict[str, Any]], list[Verdict | None], DistillStats]:
    """Apply the agreement rule: each record's row (the rewrite when kept, else the original), each
    record's verdict (None: not rewritable), and the counts. ``rewrites[i]`` is None when record i has
    no rewrite prompt (see :func:`rewrite_prompt`); ``cut_off[i]`` is True when generation stopped at
    the token limit before the model ended the rewrite."""
    if len(records) != len(rewrites) or (cut_off is not None and len(cut_off) != len(records)):
        raise ValueError(f"{len(rewrites)} rewrites for {len(records)} records")
    cut_off = cut_off if cut_off is not None else [False] * len(records)
    stats = DistillStats(records=len(records),
                         rule={"rouge_threshold": rouge_threshold, "short_answer_words": short_answer_words,
                               "reject_phrases": list(REJECT_PHRASES), "reject_prefixes": list(REJECT_PREFIXES)})
    rows, verdicts, kept_scores = [], [], []
    for record, rewrite, cut in zip(records, rewrites, cut_off):
        parts = exchange(record)
        if parts is None or rewrite is None:
            stats.passed_through += 1
            rows.append(distilled_row(record))
            verdicts.append(None)
            continue
        reference = parts[2].content
        verdict = check_rewrite(rewrite, reference, rouge_threshold, short_answer_words)
        if cut and rewrite.strip():
            verdict = Verdict(False, "cut off at the token limit", verdict.rouge_l)
        stats.rewritable += 1
        if verdict.kept:
            stats.kept += 1
            if verdict.rouge_l is not None:
                kept_scores.append(verdict.rouge_l)
        else:
            stats.fell_back += 1
            stats.fallback_reasons[verdict.reason] += 1
        rows.append(distilled_row(record, rewrite.strip() if verdict.kept else reference))
        verdicts.append(verdict)
    stats.mean_rouge_l_kept = sum(kept_scores) / len(kept_scores) if kept_scores else None
    return rows, verdicts, stats
