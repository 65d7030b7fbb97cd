"""On-policy self-distillation: sample, score, update (Shenfeld et al. 2026, arXiv 2601.19897).

The paper calls it SDFT, "Self-Distillation Fine-Tuning". It is not the offline ``sftlab data distill``
(Yang et al. 2024, also called SDFT), where the base model rewrites each target once before training.
Here the targets are never trained on directly. At each step:

1. **sample**: the student (the model being trained, in eval mode, no gradient) answers each SFT prompt
   of the micro-batch with the shared sampler (:func:`sftlab.models.generate.generate`);
2. **score**: a teacher reads the same answer after the prompt with the record's demonstration added as
   privileged context (``demo_template`` rewrites the last user turn), and gives its next-token
   distribution at every answer position. The teacher is the same network: ``base`` is the weights
   training started from (a frozen copy, or for a PEFT model the model with its adapter disabled);
   ``live`` is the current weights. Either runs without gradient and without dropout;
3. **update**: the student, conditioned on the plain prompt, is trained toward the teacher's
   distributions on its own answer tokens.

The divergence per answer token (``mode``), for student distribution p and teacher distribution q:

- ``full_logits``: the KL over the whole vocabulary; ``direction: reverse`` (the default) is
  KL(p || q) = sum_v p_v (log p_v - log q_v), the paper's objective (reverse KL on the student's own
  samples); ``forward`` is KL(q || p). TRL's default is a 0.5 mixture of the two (its
  ``distillation_alpha``), which sftlab does not offer.
- ``topk_logits``: the same KL restricted to the student's ``top_k`` tokens, both distributions
  renormalised over them (TRL's default mode, without its tail bucket).
- ``sampled_token``: the one-sample estimator of the reverse KL's gradient,
  stopgrad(log p(y) - log q(y)) * log p(y) at the sampled token y (reverse only, as in TRL). Its value is
  not the KL; its gradient in expectation over y ~ p is.

Each answer's per-token values are averaged over its tokens, and answers are averaged over the
micro-batch (as TRL). An answer that stopped on its own ends with the EOS token, which is scored too.

Samples are kept per record and reused while younger than ``resample_every`` optimizer steps: with 1
(the default) every step samples from the weights it is about to update. The sample of step ``s`` is
drawn with the seed :meth:`OnPolicyDistiller.sample_seed` (``s``), so it can be redrawn exactly.
The kept samples are not part of a checkpoint: a resumed run samples afresh.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from sftlab.data.records import Message, Record
from sftlab.data.tokenize import encode_prompt
from sftlab.errors import UserError

if TYPE_CHECKING:
    from sftlab.train.remedies.on_policy_distill import OnPolicyDistillSettings

Mode = Literal["full_logits", "topk_logits", "sampled_token"]
Direction = Literal["reverse", "forward"]
RECORD_INDEX_KEY = "record_index"
_PLACEHOLDER = re.compile(r"\{(prompt|demonstration)\}")


# --------------------------------------------------------------------------------------------------
# Prompts: the student's, and the teacher's with the demonstration


@dataclass(frozen=True)
class DistillPrompt:
    """One record's two prompts, as token ids ending where the assistant's answer begins."""

    student: list[int]
    teacher: list[int]


def fill_template(template: str, prompt: str, demonstration: str) -> str:
    """``template`` with ``{prompt}`` and ``{demonstration}`` replaced in one pass (so braces inside either
    text are left alone)."""
    values = {"prompt": prompt, "demonstration": demonstration}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def split_demonstration(record: Record) -> tuple[list[Message], str]:
    """(the turns before the record's last answer, that answer): the prompt and its demonstration."""
    if record.kind == "text":
        raise UserError(f"{record.origin}: on_policy_distill needs prompt and answer records; this one is plain text")
    messages = record.as_messages()
    if messages[-1].role != "assistant" or len(messages) < 2 or messages[-2].role != "user":
        raise UserError(f"{record.origin}: on_policy_distill needs the record to end with a user turn and its answer")
    return messages[:-1], messages[-1].content


def build_prompts(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, template: str) -> list[DistillPrompt]:
    """Each record's student prompt (its turns up to the last answer) and teacher prompt (the last user
    turn rewritten by ``template`` with the answer as demonstration), encoded as training encodes them."""
    prompts = []
    for record in records:
        turns, demonstration = split_demonstration(record)
        teacher_turns = [*turns[:-1], Message("user", fill_template(template, turns[-1].content, demonstration))]
        prompts.append(DistillPrompt(encode_prompt(tokenizer, turns), encode_prompt(tokenizer, teacher_turns)))
    return prompts


class PromptDataset(Dataset):
    """The training rows of an on-policy run: one per record, holding only the record's index."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, int]:
        return {RECORD_INDEX_KEY: index}


class PromptCollator:
    """Batches prompt rows into ``{record_index: [B]}``; any other rows (the SFT eval set) go to ``inner``."""

    def __init__(self, inner: Callable[[list[Any]], dict[str, torch.Tensor]]) -> None:
        self.inner = inner

    def __call__(self, rows: list[Any]) -> dict[str, torch.Tensor]:
        if rows and isinstance(rows[0], dict) and RECORD_INDEX_KEY in rows[0]:
            return {RECORD_INDEX_KEY: torch.tensor([row[RECORD_INDEX_KEY] for row in rows], dtype=torch.long)}
        return self.inner(rows)


# --------------------------------------------------------------------------------------------------
# The divergence


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tokens: torch.Tensor,
    mode: Mode = "full_logits",
    direction: Direction = "reverse",
    top_k: int = 100,
) -> torch.Tensor:
    """Per-token divergence [B, C] between the student's and the teacher's next-token distributions
    (logits [B, C, V], float32 inside), at answer tokens ``tokens`` [B, C]; see the module docstring.
    The teacher's logits carry no gradient."""
    student = F.log_softmax(student_logits.float(), dim=-1)
    teacher = F.log_softmax(teacher_logits.detach().float(), dim=-1)
    if mode == "sampled_token":
        if direction != "reverse":
            raise ValueError("sampled_token estimates the reverse KL only")
        chosen = student.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        ratio = chosen.detach() - teacher.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        return ratio * chosen
    if mode == "topk_logits":
        support = student.topk(min(top_k, student.size(-1)), dim=-1).indices
        student = torch.log_softmax(student.gather(-1, support), dim=-1)
        teacher = torch.log_softmax(teacher.gather(-1, support), dim=-1)
    if direction == "reverse":
        return (student.exp() * (student - teacher)).sum(-1)
    return (teacher.exp() * (teacher - student)).sum(-1)


def distillation_loss(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over answers of each answer's mean per-token value (``mask`` [B, C] marks answer tokens)."""
    mask = mask.to(per_token.dtype)
    per_answer = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_answer.mean()


# --------------------------------------------------------------------------------------------------
# Sequences: left-padded prompt, right-padded answer, so every answer starts in the same column


def _batch(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int,
           device: torch.device) -> dict[str, torch.Tensor]:
    width_p = max(len(p) for p in prompts)
    width_a = max(len(a) for a in answers)
    ids = torch.full((len(prompts), width_p + width_a), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        ids[row, width_p - len(prompt) : width_p] = torch.tensor(prompt, dtype=torch.long)
        ids[row, width_p : width_p + len(answer)] = torch.tensor(answer, dtype=torch.long)
        mask[row, width_p - len(prompt) : width_p + len(answer)] = 1
    # Positions count real tokens only, as generate() numbers them for a left-padded prompt.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def answer_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], width: int) -> torch.Tensor:
    """Logits [B, width, V] at the positions that predict the ``width`` answer columns."""
    logits = model(**batch, logits_to_keep=width + 1).logits
    return logits[:, -(width + 1) : -1]


# --------------------------------------------------------------------------------------------------
# The teacher


class Teacher:
    """The demonstration-conditioned scorer: ``base`` (the starting weights) or ``live`` (the current ones)."""

    def __init__(self, kind: Literal["base", "live"], model: torch.nn.Module) -> None:
        self.kind = kind
        self.frozen: torch.nn.Module | None = None
        if kind == "base" and not hasattr(model, "disable_adapter"):
            # A PEFT model's base is itself with the adapter off; any other model needs its own copy.
            self.frozen = copy.deepcopy(model).eval().requires_grad_(False)

    def logits(self, student: torch.nn.Module, batch: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        """The teacher's answer logits, without gradient, in eval mode (no dropout)."""
        model = self.frozen if self.frozen is not None else student
        adapter_off = student.disable_adapter() if self.kind == "base" and self.frozen is None else nullcontext()
        with torch.no_grad(), _eval_mode(model), adapter_off:
            return answer_logits(model, batch, width)


class _eval_mode(AbstractContextManager[None]):
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


# --------------------------------------------------------------------------------------------------
# The objective


class OnPolicyDistiller:
    """Sample, score, update: called by ``SFTLabTrainer.compute_loss`` in training with the micro-batch
    of record indices; returns the micro-batch's distillation loss."""

    def __init__(
        self,
        settings: OnPolicyDistillSettings,
        prompts: Sequence[DistillPrompt],
        tokenizer: PreTrainedTokenizerBase,
        teacher: Teacher,
        *,
        seed: int,
        max_length: int,
        unwrap: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
        autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.settings = settings
        self.prompts = list(prompts)
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.seed = seed
        self.max_prompt = max(1, max_length - settings.max_new_tokens)
        self.unwrap = unwrap
        self.autocast = autocast
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # record index -> (optimizer step it was sampled at, answer ids)
        self.kept: dict[int, tuple[int, list[int]]] = {}
        self._sampled = 0
        self._answer_tokens = 0

    def sample_seed(self, step: int) -> int:
        """The sampling seed at optimizer step ``step`` (0 for the first), from the run's seed."""
        return int(np.random.SeedSequence([self.seed, step, 0x0DD15]).generate_state(1)[0])

    def sample(self, model: torch.nn.Module, indices: Sequence[int], step: int) -> list[list[int]]:
        """Fresh answers of ``model`` (eval mode, no gradient) to the student prompts ``indices``; an answer
        that stopped on its own ends with EOS."""
        from sftlab.models.generate import generate
        from sftlab.settings import SamplingSettings

        s = self.settings
        sampling = SamplingSettings(num_samples=1, temperature=s.temperature, top_p=1.0, top_k=0,
                                    max_new_tokens=s.max_new_tokens, batch_size=len(indices),
                                    seed=self.sample_seed(step))
        net = self.unwrap(model)
        with _eval_mode(net):
            out = generate(net, self.tokenizer, [self.prompts[i].student for i in indices], sampling, greedy=False,
                           max_length=self.max_prompt + s.max_new_tokens)
        eos = self.tokenizer.eos_token_id
        return [ids[0] + [eos] if len(ids[0]) < s.max_new_tokens and eos is not None else ids[0]
                for ids in out.token_ids]

    def answers(self, model: torch.nn.Module, indices: Sequence[int], step: int) -> list[list[int]]:
        """The answers to train on: kept ones younger than ``resample_every`` steps, fresh ones otherwise."""
        stale = [i for i in indices if i not in self.kept or step - self.kept[i][0] >= self.settings.resample_every]
        if stale:
            for i, answer in zip(stale, self.sample(model, stale, step), strict=True):
                self.kept[i] = (step, answer)
            self._sampled += len(stale)
        return [self.kept[i][1] for i in indices]

    def __call__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        indices = inputs[RECORD_INDEX_KEY].tolist()
        answers = self.answers(model, indices, step)
        device = inputs[RECORD_INDEX_KEY].device
        width = max(len(a) for a in answers)
        tokens = torch.full((len(answers), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(answers), width), dtype=torch.bool)
        for row, answer in enumerate(answers):
            tokens[row, : len(answer)] = torch.tensor(answer, dtype=torch.long)
            mask[row, : len(answer)] = True
        tokens, mask = tokens.to(device), mask.to(device)
        # Prompts cut as the sampler cut them: the last max_length - max_new_tokens tokens.
        student_prompts = [self.prompts[i].student[-self.max_prompt :] for i in indices]
        teacher_prompts = [self.prompts[i].teacher[-self.max_prompt :] for i in indices]
        student_batch = _batch(student_prompts, answers, self.pad_id, device)
        teacher_batch = _batch(teacher_prompts, answers, self.pad_id, device)
        with self.autocast():
            teacher = self.teacher.logits(self.unwrap(model), teacher_batch, width)
        student = answer_logits(model, student_batch, width)
        s = self.settings
        per_token = token_divergence(student, teacher, tokens, s.mode, s.direction, s.top_k)
        self._answer_tokens += int(mask.sum())
        return distillation_loss(per_token, mask)

    def log_values(self) -> dict[str, float]:
        """Answers sampled and their mean length (tokens) since the last log."""
        values = {"onpolicy/sampled": float(self._sampled)}
        if self._sampled:
            values["onpolicy/answer_tokens"] = self._answer_tokens / self._sampled
        self._sampled = self._answer_tokens = 0
        return values


def attach_on_policy_distill(trainer: Any, settings: OnPolicyDistillSettings, tokenizer: PreTrainedTokenizerBase,
                             seed: int, max_length: int) -> OnPolicyDistiller:
    """Switch ``trainer`` (an ``SFTLabTrainer`` built on the SFT rows) to on-policy distillation: its
    training rows become the records' prompts and its training loss the distiller's. Called after the
    Trainer has placed the model on its device and before any hook is attached (the base teacher's copy
    must carry none). The eval set and its cross-entropy are left as they are."""
    records = trainer.train_dataset.records
    distiller = OnPolicyDistiller(
        settings, build_prompts(records, tokenizer, settings.demo_template), tokenizer,
        Teacher(settings.teacher, trainer.model), seed=seed, max_length=max_length,
        unwrap=trainer.accelerator.unwrap_model, autocast=trainer.accelerator.autocast,
    )
    trainer.train_dataset = PromptDataset(len(records))
    trainer.data_collator = PromptCollator(trainer.data_collator)
    trainer.objective = distiller
    return distiller
