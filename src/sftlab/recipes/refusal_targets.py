"""The refusal-target check: a harmful prompt becomes a training target only with a refusal as its answer.

A demo plan that names ``harmful_prompts`` (prompt sets, JSON lines with ``prompt``) has every training file
it will read checked before anything runs: the base step's and each strategy's ``train_file`` entries, and
the prompts of self-replay (whose targets are the model's own answers, so a harmful prompt there would be
trained on with whatever the model says). A user turn that contains a harmful prompt (compared lower-cased,
spaces collapsed) must be followed by an assistant answer that the refusal judge's rules call a refusal
(:func:`sftlab.audit.refusal.rule_verdict`); a plain-text record that contains one has no answer and breaks
the check too. Any breach is a UserError that names the file, the line and the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftlab.audit.refusal import rule_verdict
from sftlab.audit.safety_prompts import load_prompt_set
from sftlab.data.readers import read_records
from sftlab.errors import UserError

SHOWN = 5  # breaches named in the error message


def _key(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class RefusalCheck:
    """What the check found: records answering a harmful prompt (all refusals when it passed), per file."""

    prompts: int
    files: list[str]
    harmful_records: dict[str, int] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the demo's output."""
        n = sum(self.harmful_records.values())
        per_file = ", ".join(f"{Path(f).name} {k}" for f, k in self.harmful_records.items() if k)
        return (f"refusal check: {len(self.files)} training files read against {self.prompts} harmful prompts; "
                f"{n} records answer a harmful prompt ({per_file or 'none'}), and every one answers with a refusal "
                "(the refusal judge's rules)")


def train_files(train: Mapping[str, Any]) -> list[str]:
    """The ``train_file`` entries of a train-config mapping: a path, a list of paths or of {path, weight}."""
    entries = train.get("train_file") or []
    entries = [entries] if isinstance(entries, str) else entries
    return [e["path"] if isinstance(e, dict) else e for e in entries]


def self_replay_prompts(train: Mapping[str, Any]) -> list[str]:
    """The prompts file of self-replay (``replay: {source: self, prompts: FILE}``), if the mapping has one."""
    replay = train.get("replay") or {}
    return [replay["prompts"]] if replay.get("source") == "self" and replay.get("prompts") else []


def _harmful_in(text: str, harmful: Sequence[str]) -> str | None:
    key = _key(text)
    return next((h for h in harmful if h in key), None)


def check_refusal_targets(harmful_sets: Sequence[str], trains: Sequence[Mapping[str, Any]]) -> RefusalCheck:
    """Check every training file of ``trains`` (train-config mappings) against the prompts of ``harmful_sets``
    (built-in set names or files); returns what was found, or raises a UserError naming the breaches."""
    harmful = sorted({_key(p.prompt) for s in harmful_sets for p in load_prompt_set(s)})
    files = list(dict.fromkeys(f for t in trains for f in train_files(t)))
    replay = list(dict.fromkeys(f for t in trains for f in self_replay_prompts(t)))
    result = RefusalCheck(len(harmful), files + [f for f in replay if f not in files])
    for path in files:
        count = 0
        for record in read_records([path]).records:
            if record.kind == "text":
                if _harmful_in(record.text or "", harmful) is not None:
                    count += 1
                    result.breaches.append(f"{record.origin}: a plain-text record holds a harmful prompt, no refusal")
                continue
            messages = record.as_messages()
            for i, message in enumerate(messages):
                if message.role != "user" or _harmful_in(message.content, harmful) is None:
                    continue
                count += 1
                answer = messages[i + 1].content if i + 1 < len(messages) and messages[i + 1].role == "assistant" else None
                if answer is None:
                    result.breaches.append(f"{record.origin}: a harmful prompt with no answer to train on")
                elif rule_verdict(answer) is not True:
                    result.breaches.append(f"{record.origin}: a harmful prompt answered without a refusal: {answer[:80]!r}")
        result.harmful_records[path] = count
    for path in replay:
        for record in read_records([path]).records:
            turns = [m.content for m in record.as_messages() if m.role == "user"]
            if any(_harmful_in(t, harmful) is not None for t in turns):
                result.breaches.append(f"{record.origin}: a harmful prompt among self-replay's prompts, whose "
                                       "targets are the model's own answers, refusals or not")
    if result.breaches:
        shown = "; ".join(result.breaches[:SHOWN])
        more = f" (and {len(result.breaches) - SHOWN} more)" if len(result.breaches) > SHOWN else ""
        raise UserError(f"harmful_prompts: {len(result.breaches)} training records would make a harmful prompt a "
                        f"target without a refusal: {shown}{more}. Pair every harmful prompt with a refusal, or "
                        "drop it from the training data")
    return result
