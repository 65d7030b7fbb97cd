"""Pattern copying: do a tuned model's shifted tokens come from its SFT training examples?

For each answer we retrieve the k nearest SFT examples with BM25 (``rank_bm25.BM25Okapi``; query: the
answer's words, documents: each example's prompt and response, lowercased word tokens). A token counts
as *copied* when it occurs in those examples' responses but not in the prompt that was answered, so
the model could not have taken it from the question.

Tokens are compared as normalised strings (each token id decoded alone, whitespace stripped,
lowercased; whitespace-only tokens are skipped): the same word can carry different ids in different
contexts (with or without a leading space), and we ask whether the *word piece* was available.

* Tuned: the fraction of its **shifted** tokens (rank > 3 under the base, see ``shift.py``) that are
  copied, pooled over answers. It is also given over all the tuned answer's tokens.
* Base: its greedy answer has no shifted tokens against itself, so its figure is the fraction of all
  its answer tokens that are copied by the same rule, with neighbours retrieved for its own answer:
  the rate at which overlap with the SFT responses happens without fine-tuning.

A tuned shifted-token rate well above the base's rate points to tokens learned from the SFT data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rank_bm25 import BM25Okapi
from transformers import PreTrainedTokenizerBase

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lowercased word tokens for BM25."""
    return _WORD.findall(text.lower())


@dataclass
class SFTExample:
    """One training example as text; ``origin`` says where it came from (``file:line``)."""

    prompt: str
    response: str
    origin: str


class SFTIndex:
    """BM25 over SFT examples (prompt and response words)."""

    def __init__(self, examples: Sequence[SFTExample]) -> None:
        if not examples:
            raise ValueError("no SFT examples to index")
        self.examples = list(examples)
        # BM25Okapi divides by the mean document length: an all-empty corpus would divide by zero.
        self._bm25 = BM25Okapi([words(e.prompt + " " + e.response) or ["<empty>"] for e in self.examples])

    def nearest(self, text: str, k: int) -> list[int]:
        """Indices of the ``k`` best-scoring examples for ``text`` (ties by index)."""
        query = words(text)
        if not query:
            return list(range(min(k, len(self.examples))))
        scores = self._bm25.get_scores(query)
        return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def normalized_pieces(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> list[str]:
    """Each token decoded alone, stripped and lowercased ("" for whitespace-only tokens)."""
    return [tokenizer.decode([t]).strip().lower() for t in token_ids]


def piece_set(tokenizer: PreTrainedTokenizerBase, text: str) -> set[str]:
    """The set of non-empty normalised pieces of ``text`` under ``tokenizer``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return {p for p in normalized_pieces(tokenizer, ids) if p}


@dataclass
class CopyCount:
    """Copied pieces among the considered positions of one answer."""

    copied: list[str]
    considered: int
    neighbours: list[int]


def count_copied(
    pieces: Sequence[str], considered: Sequence[bool], neighbour_pieces: set[str], prompt_pieces: set[str],
    neighbours: list[int],
) -> CopyCount:
    """Pieces at considered positions that are in the neighbours' responses and not in the prompt."""
    copied, n = [], 0
    for piece, use in zip(pieces, considered):
        if not use or not piece:
            continue
        n += 1
        if piece in neighbour_pieces and piece not in prompt_pieces:
            copied.append(piece)
    return CopyCount(copied=copied, considered=n, neighbours=neighbours)


def pooled_fraction(counts: Sequence[CopyCount]) -> float:
    """Copied / considered, pooled over answers; NaN when nothing was considered."""
    total = sum(c.considered for c in counts)
    return sum(len(c.copied) for c in counts) / total if total else float("nan")


def worst_cases(
    counts: Sequence[CopyCount], prompts: Sequence[str], answers: Sequence[str], index: SFTIndex,
    response_pieces: list[set[str]], n: int = 5,
) -> list[dict[str, object]]:
    """The answers with the most copied shifted tokens, each with the neighbour that holds most of them."""
    order = sorted(range(len(counts)), key=lambda i: (-len(counts[i].copied), i))
    out = []
    for i in order[:n]:
        c = counts[i]
        if not c.copied:
            break
        copied = Counter(c.copied)
        source = max(c.neighbours, key=lambda j: sum(copied[p] for p in response_pieces[j] & copied.keys()))
        ex = index.examples[source]
        out.append({
            "prompt_index": i,
            "prompt": prompts[i],
            "answer": answers[i],
            "copied_tokens": [p for p, _ in copied.most_common()],
            "copied_count": len(c.copied),
            "shifted_count": c.considered,
            "source": {"origin": ex.origin, "prompt": ex.prompt, "response": ex.response},
        })
    return out


def copying_table(
    index: SFTIndex,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    base_answers: Sequence[tuple[str, Sequence[int]]],
    tuned_answers: dict[str, Sequence[tuple[str, Sequence[int], Sequence[bool]]]],
    k: int,
    n_worst: int = 5,
) -> dict[str, object]:
    """Copy rates of the base's answers and of each tuned model's answers (see the module docstring).

    ``prompts[i]`` is the text the model saw (template included: a word in the template was available
    to copy from the prompt too). ``base_answers[i]`` is (text, token ids); ``tuned_answers[model][i]``
    is (text, token ids, shifted flag per token).
    """
    response_pieces = [piece_set(tokenizer, e.response) for e in index.examples]
    prompt_pieces = [piece_set(tokenizer, p) for p in prompts]

    def count(i: int, text: str, ids: Sequence[int], considered: Sequence[bool]) -> CopyCount:
        neighbours = index.nearest(text, k)
        pool = set().union(*(response_pieces[j] for j in neighbours))
        return count_copied(normalized_pieces(tokenizer, ids), considered, pool, prompt_pieces[i], neighbours)

    base_counts = [count(i, text, ids, [True] * len(ids)) for i, (text, ids) in enumerate(base_answers)]
    models: dict[str, object] = {}
    for model, answers in tuned_answers.items():
        shifted = [count(i, text, ids, flags) for i, (text, ids, flags) in enumerate(answers)]
        every = [count(i, text, ids, [True] * len(ids)) for i, (text, ids, _) in enumerate(answers)]
        models[model] = {
            "shifted_copy_rate": pooled_fraction(shifted),
            "all_copy_rate": pooled_fraction(every),
            "shifted_tokens": sum(c.considered for c in shifted),
            "copied_shifted_tokens": sum(len(c.copied) for c in shifted),
            "worst_cases": worst_cases(shifted, prompts, [a[0] for a in answers], index, response_pieces, n_worst),
        }
    return {"k": k, "n_examples": len(index.examples), "base_copy_rate": pooled_fraction(base_counts),
            "models": models}
