"""Forgetting: perplexity on reference text, and multiple-choice benchmarks scored by log-likelihood.

Perplexity is token-level: exp(total NLL / number of predicted tokens) over the whole corpus. Each
document starts with the tokenizer's BOS token when it has one, so every text token is predicted. A
document longer than ``max_length`` is cut into windows that overlap by one token: each window's first
token is only context (it was predicted as the previous window's last), so every token is predicted
exactly once, with at most ``max_length - 1`` tokens of context.

Multiple choice (``{"question", "choices", "answer"}`` jsonl, ``answer`` the 0-based index of the
right choice; an optional ``context`` replaces the default ``"{question}\\nAnswer:"``) is scored as
lm-evaluation-harness scores it (Gao et al., ``ConfigurableTask.process_results`` and
``HFLM._encode_pair``): each choice is the continuation ``" " + choice`` after the context, tokenized
with no special tokens added (lm-eval's default ``add_bos_token=False``), and its token ids are those
of ``tokenize(context + continuation)`` after the ids of ``tokenize(context)``. Its log-likelihood
``LL = sum_t log p(c_t | context, c_<t)`` gives three rules, :data:`MC_SCORES`:

* ``acc`` (the default): argmax over choices of ``LL``, lm-eval's ``acc``;
* ``acc_norm``: argmax of ``LL / len(choice)``, lm-eval's ``acc_norm``. lm-eval's docs call this the
  byte length; its code divides by the choice string's ``len`` (characters, the delimiter space not
  counted), which equals the byte length for ASCII text, and this follows the code;
* ``mean_token``: argmax of ``LL / number of continuation tokens``, the mean token log-probability
  (sftlab's earlier rule). Unlike ``acc_norm`` it depends on the tokenizer, so two models with
  different vocabularies are not scored alike; kept for comparison with older reports.

A context plus choice longer than the model's positions (``max_length``: the audit's ``max_length``
capped at the model's ``max_position_embeddings``) loses the start of its context, as lm-eval's
``HFLM`` truncates from the left; the report counts the questions that lost context (``truncated``). A
choice that alone needs all the positions cannot be scored, and is a UserError naming it.

``acc`` is the default (``AuditConfig.mc_score``): it is lm-eval's first metric and the plain
likelihood comparison, with no normaliser to choose. Summed log-probabilities favour short choices when
the choices differ much in length, which is what ``acc_norm`` corrects; docs/results.md shows the three
rules side by side on SmolLM2 and PIQA.

:func:`read_piqa` maps PIQA's own ``{goal, sol1, sol2, label}`` rows onto these items with lm-eval's
prompt, ``"Question: {goal}\\nAnswer:"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.audit.stats import paired_bootstrap_ci
from sftlab.audit.teacher_forcing import continuation_logprobs
from sftlab.data.tokenize import tokenize_texts
from sftlab.errors import UserError, require_file


@dataclass
class Perplexity:
    """Total NLL (nats) over ``n_tokens`` predicted tokens, and the same per document (for intervals)."""

    nll_sum: float
    n_tokens: int
    doc_nll: list[float] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)

    @property
    def value(self) -> float:
        """exp(mean NLL); NaN when nothing was scored."""
        return math.exp(self.nll_sum / self.n_tokens) if self.n_tokens else float("nan")


def _bos(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Any id serves as padding: batches are right-padded under an attention mask, and padded positions are
    never scored. A tokenizer with neither a pad nor an EOS token gets id 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    return 0


def windows(ids: Sequence[int], max_length: int) -> list[list[int]]:
    """Cut ``ids`` into windows of at most ``max_length`` that overlap by one token (see module doc)."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2")
    if len(ids) < 2:
        return []
    step = max_length - 1
    return [list(ids[s : s + max_length]) for s in range(0, len(ids) - 1, step)]


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> Perplexity:
    """Token-level perplexity of ``model`` on ``texts`` (documents), batched."""
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    chunks = [(doc, w) for doc, ids in enumerate(encoded) for w in windows(_bos(tokenizer) + ids, max_length)]
    chunks.sort(key=lambda c: len(c[1]))  # similar lengths per batch: little padding
    doc_nll, doc_tokens = [0.0] * len(encoded), [0] * len(encoded)
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        lps = continuation_logprobs(model, [w[:1] for _, w in batch], [w[1:] for _, w in batch], _pad_id(tokenizer))
        for (doc, _), lp in zip(batch, lps):
            doc_nll[doc] -= float(lp.double().sum())
            doc_tokens[doc] += len(lp)
        if on_done is not None:
            on_done(len(batch))
    return Perplexity(nll_sum=sum(doc_nll), n_tokens=sum(doc_tokens), doc_nll=doc_nll, doc_tokens=doc_tokens)


def perplexity_change_ci(base: Perplexity, tuned: Perplexity, n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, float, float]:
    """Relative perplexity change tuned / base - 1, with a paired bootstrap 95% interval over documents.

    Each replicate draws documents with replacement and recomputes both corpus-level perplexities from
    the drawn documents' NLL and token counts (the same documents for both models, since they share a
    tokenizer). NaN interval when the per-document numbers are missing or disagree in token counts.
    """
    change = tuned.value / base.value - 1
    if not base.doc_nll or base.doc_tokens != tuned.doc_tokens:
        return change, float("nan"), float("nan")
    nll_b, nll_t = np.asarray(base.doc_nll), np.asarray(tuned.doc_nll)
    tokens = np.asarray(base.doc_tokens, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(tokens), size=(n_boot, len(tokens)))
    n = tokens[idx].sum(axis=1)
    replicates = np.exp((nll_t[idx].sum(axis=1) - nll_b[idx].sum(axis=1)) / n) - 1  # ppl_t / ppl_b - 1
    low, high = np.percentile(replicates, [2.5, 97.5])
    return change, float(low), float(high)


PIQA_KEYS = frozenset({"goal", "sol1", "sol2"})


@dataclass
class MCItem:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: list[str]
    answer: int
    context: str | None = None  # the text the choices follow; None: question + "\nAnswer:"


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, parsed row)`` for every non-blank line of a jsonl file; bad JSON is a UserError there."""
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None


def read_multiple_choice(path: str | Path) -> list[MCItem]:
    """Read a multiple-choice jsonl; a bad line raises a UserError naming file, line and field.

    A file whose first row has PIQA's keys (``goal``, ``sol1``, ``sol2``) is read by :func:`read_piqa`.
    """
    p = require_file(path, "benchmark file")
    items = []
    for where, row in _json_lines(p):
        if not items and isinstance(row, dict) and PIQA_KEYS <= row.keys() and "question" not in row:
            return read_piqa(p)
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object with question, choices, answer")
        for key in ("question", "choices", "answer"):
            if key not in row:
                raise UserError(f"{where}: field {key!r} is missing")
        question, choices, answer = row["question"], row["choices"], row["answer"]
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: field 'question' must be a non-empty string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise UserError(f"{where}: field 'answer' must be the 0-based index of a choice (0..{len(choices) - 1}), "
                            f"got {answer!r}")
        context = row.get("context")
        if context is not None and (not isinstance(context, str) or not context.strip()):
            raise UserError(f"{where}: field 'context' must be a non-empty string when given")
        items.append(MCItem(question, choices, answer, context))
    if not items:
        raise UserError(f"{p}: no questions in the file")
    return items


def mc_context(item: MCItem) -> str:
    """The text each choice is appended to."""
    return item.context if item.context is not None else f"{item.question}\nAnswer:"


# The rules that pick a multiple-choice answer from a choice's log-likelihood (see the module docstring).
MC_SCORES = ("acc", "acc_norm", "mean_token")


@dataclass(frozen=True)
class ChoiceScore:
    """The log-likelihood of one choice after its context, and the lengths the rules divide it by."""

    logprob: float  # sum of the continuation tokens' log-probabilities (nats)
    n_tokens: int  # continuation tokens (the leading space included)
    n_chars: int  # len(choice): lm-eval's acc_norm denominator
    context_cut: int = 0  # context tokens dropped from the left to fit the model's positions

    def value(self, rule: str) -> float:
        """The score ``rule`` ranks by: LL (acc), LL / len(choice) (acc_norm), LL / tokens (mean_token)."""
        if rule == "acc":
            return self.logprob
        if rule == "acc_norm":
            return self.logprob / self.n_chars
        if rule == "mean_token":
            return self.logprob / self.n_tokens
        raise ValueError(f"unknown multiple-choice rule {rule!r}; one of {', '.join(MC_SCORES)}")


def fit_positions(ctx: list[int], cont: list[int], max_length: int, what: str) -> tuple[list[int], int]:
    """``ctx`` cut from the left so that ``ctx + cont`` fits ``max_length`` positions; also how many tokens went.

    The continuation is never cut (its log-likelihood is the score); one that leaves no room for a context
    token is a UserError naming ``what``.
    """
    room = max_length - len(cont)
    if room < 1:
        raise UserError(f"{what} is {len(cont)} tokens, and the model reads at most {max_length} positions "
                        "(max_length, capped at the model's own limit): shorten that choice or drop the question")
    cut = max(0, len(ctx) - room)
    return ctx[cut:], cut


def encode_choice_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) for each (context, continuation) text pair, as lm-eval splits them.

    Trailing spaces of the context move to the continuation; the continuation's ids are those that
    ``tokenize(context + continuation)`` has after the ids of ``tokenize(context)``. No special tokens.
    """
    moved = []
    for context, continuation in pairs:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        moved.append((context, continuation))
    contexts = tokenize_texts(tokenizer, [c for c, _ in moved])
    wholes = tokenize_texts(tokenizer, [c + a for c, a in moved])
    out = []
    for (context, continuation), ctx, whole in zip(moved, contexts, wholes):
        if not ctx:
            raise UserError(f"a multiple-choice context tokenizes to nothing: {context!r}")
        cont = whole[len(ctx) :]
        if not cont:
            raise UserError(f"a multiple-choice choice tokenizes to nothing after its context: {continuation!r}")
        out.append((ctx, cont))
    return out


@torch.no_grad()
def choice_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[MCItem],
    batch_size: int = 16,
    on_done: Callable[[int], None] | None = None,
    max_length: int | None = None,
) -> list[list[ChoiceScore]]:
    """The log-likelihood of every choice of every item (``" " + choice`` after the context), batched:
    one forward pass per batch of (item, choice) pairs, pairs of similar length batched together.
    With ``max_length``, a pair longer than that loses the start of its context (see the module docstring)."""
    flat = [(i, c) for i, it in enumerate(items) for c in it.choices]
    encoded = encode_choice_pairs(tokenizer, [(mc_context(items[i]), " " + c) for i, c in flat])
    cuts = [0] * len(flat)
    if max_length is not None:
        for k, ((i, choice), (ctx, cont)) in enumerate(zip(flat, encoded)):
            ctx, cuts[k] = fit_positions(ctx, cont, max_length, f"choice {choice[:60]!r} of question {i + 1}")
            encoded[k] = (ctx, cont)
    order = sorted(range(len(flat)), key=lambda k: len(encoded[k][0]) + len(encoded[k][1]))  # little padding
    logprobs: list[float] = [0.0] * len(flat)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        lps = continuation_logprobs(model, [encoded[k][0] for k in batch], [encoded[k][1] for k in batch],
                                    _pad_id(tokenizer))
        for k, lp in zip(batch, lps):
            logprobs[k] = float(lp.double().sum())
        if on_done is not None:
            on_done(len(batch))
    out: list[list[ChoiceScore]] = [[] for _ in items]
    for k, (i, choice) in enumerate(flat):
        out[i].append(ChoiceScore(logprobs[k], len(encoded[k][1]), len(choice), cuts[k]))
    return out


def mc_truncated(scores: Sequence[Sequence[ChoiceScore]]) -> int:
    """How many questions had context cut from the left for at least one choice."""
    return sum(any(s.context_cut for s in per_item) for per_item in scores)


def mc_predictions(scores: Sequence[Sequence[ChoiceScore]], rule: str = "acc") -> list[int]:
    """Each item's predicted choice under ``rule`` (:data:`MC_SCORES`); the first index wins a tie, as
    numpy's argmax in lm-eval."""
    return [int(np.argmax([s.value(rule) for s in per_item])) for per_item in scores]


def mc_correct(items: Sequence[MCItem], scores: Sequence[Sequence[ChoiceScore]], rule: str = "acc") -> list[bool]:
    """Per item, whether the prediction under ``rule`` is the right choice."""
    return [p == it.answer for p, it in zip(mc_predictions(scores, rule), items)]


def mc_accuracy(items: Sequence[MCItem], scores: Sequence[Sequence[ChoiceScore]], rule: str = "acc") -> float:
    """Share of items whose prediction under ``rule`` is right; NaN for no items."""
    correct = mc_correct(items, scores, rule)
    return sum(correct) / len(correct) if correct else float("nan")


def read_piqa(path: str | Path) -> list[MCItem]:
    """PIQA rows ``{goal, sol1, sol2, label}`` (Bisk et al. 2020) as multiple-choice items, with
    lm-eval's ``piqa`` prompt: context ``"Question: {goal}\\nAnswer:"``, choices ``[sol1, sol2]``."""
    p = require_file(path, "PIQA file")
    items = []
    for where, row in _json_lines(p):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("goal", "sol1", "sol2")):
            raise UserError(f"{where}: expected an object with string fields goal, sol1, sol2 and a label")
        label = row.get("label")
        if label not in (0, 1) or isinstance(label, bool):
            raise UserError(f"{where}: field 'label' must be 0 or 1, got {label!r}")
        items.append(MCItem(row["goal"], [row["sol1"], row["sol2"]], label, context=f"Question: {row['goal']}\nAnswer:"))
    if not items:
        raise UserError(f"{p}: no PIQA items in the file")
    return items


def forgetting_table(
    perplexities: dict[str, dict[str, Perplexity]],
    mc_correct: dict[str, dict[str, list[bool]]],
    base: str,
    n_boot: int = 1000,
    seed: int = 0,
    mc_score: str = "acc",
    mc_truncated: dict[str, dict[str, int]] | None = None,
) -> dict[str, object]:
    """Perplexity per corpus and accuracy per benchmark for every model, with each tuned model's change.

    ``perplexities[corpus][model]`` and ``mc_correct[bench][model]`` (per-question correctness under
    the rule ``mc_score``, recorded in the result). The
    accuracy delta gets a paired bootstrap 95% interval over questions; the perplexity change is
    relative (tuned / base - 1), with a paired bootstrap 95% interval over documents.
    ``mc_truncated[bench][model]``: questions whose context was cut to fit the model's positions.
    """
    ppl_out: dict[str, object] = {}
    for corpus, per_model in perplexities.items():
        rows = {}
        for model, p in per_model.items():
            row: dict[str, object] = {"perplexity": p.value, "nll_sum": p.nll_sum, "n_tokens": p.n_tokens,
                                      "relative_change": None}
            if model != base:
                change, low, high = perplexity_change_ci(per_model[base], p, n_boot, seed)
                row.update(relative_change=change, change_ci_low=low, change_ci_high=high)
            rows[model] = row
        ppl_out[corpus] = rows
    mc_out: dict[str, object] = {}
    for bench, per_model in mc_correct.items():
        rows: dict[str, object] = {}
        for model, correct in per_model.items():
            row: dict[str, object] = {"accuracy": sum(correct) / len(correct) if correct else float("nan"),
                                      "n": len(correct),
                                      "truncated": (mc_truncated or {}).get(bench, {}).get(model, 0)}
            if model != base:
                d, lo, hi = paired_bootstrap_ci([float(c) for c in per_model[base]], [float(c) for c in correct],
                                                n_boot, seed)
                row.update(delta=d, ci_low=lo, ci_high=hi)
            rows[model] = row
        mc_out[bench] = rows
    return {"perplexity": ppl_out, "multiple_choice": mc_out, "mc_score": mc_score}
