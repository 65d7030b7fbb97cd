"""The datasets the trainer gets: records -> (augment) -> tokens -> (+ replay) -> (pack) -> rows.

Rows are dicts of lists: ``input_ids``, ``labels``, ``replay_mask`` and, when packed, ``position_ids``
(batch them with :class:`sftlab.data.packing.SFTCollator`).

Epochs. ``set_epoch(e)`` rebuilds the rows for epoch ``e``: fresh replay windows, fresh augmentation
and a new packing, drawn from ``seed`` and ``e``, so a resumed run rebuilds the same rows. In a single
process the Trainer (transformers 5.23) reaches it through accelerate's ``DataLoaderShard.set_epoch``
at the start of every epoch. With several processes accelerate forwards ``set_epoch`` to the sharded
sampler and not to the dataset, so a trainer callback must call it (it is idempotent).

Length policy. The Trainer fixes its step count from ``len(dataset)``, so the row count never changes:
it is set by epoch 0. Without augmentation every epoch has exactly that many rows (the same documents
and replay lengths, packed the same way). With augmentation an epoch's documents change length, so it
can come out a few rows short or over. Packed, the count gets 1% + 1 rows of headroom and a short
epoch splits its fullest-of-documents rows at a document boundary until the count is met; unpacked,
a short epoch repeats random rows. An epoch still over the count carries its surplus rows into the
next epoch, where they go first. Nothing is dropped unreported: the epoch stats count every split,
repeat and carry (the last epoch's ``carried_out`` rows are the only ones never trained).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from sftlab.data.augment import augment_record, pick_format
from sftlab.data.mixing import ReplayPool, SelfReplayPool, replay_target_tokens
from sftlab.data.packing import pack_examples, real_token_fraction
from sftlab.data.records import Record
from sftlab.data.tokenize import Encoder, PromptFormat, TokenizedExample, TokenizeStats, has_chat_template
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX

if TYPE_CHECKING:  # type hints only: the composed config sits above data/
    from sftlab.config import TrainConfig
    from sftlab.train.remedies.augment import AugmentSettings

Row = dict[str, list[int]]
# Spare rows for packed, augmented epochs, whose row counts vary a little (see the module docstring).
PACKED_HEADROOM = 0.01


@dataclass
class EpochStats:
    """What one epoch of rows holds. Token counts are over the final rows."""

    epoch: int
    rows: int
    examples: int  # SFT documents, augmented copies included
    augmented: int  # of which augmented copies
    replay_examples: int
    tokens: int  # real (non-pad) tokens
    trained_tokens: int  # tokens with a label
    replay_tokens: int  # trained replay tokens
    replay_fraction: float  # replay_tokens / trained_tokens
    real_token_fraction: float  # tokens / (rows * max_length)
    truncated: int
    no_target: int  # examples dropped: nothing left to train after truncation
    split: int = 0  # sequences split into several documents (overflow: split)
    carried_in: int = 0
    carried_out: int = 0
    split_rows: int = 0
    repeated_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for metrics.jsonl)."""
        return asdict(self)


class SFTDataset(Dataset):
    """Training or evaluation rows for one epoch at a time (see the module docstring)."""

    def __init__(
        self,
        records: Sequence[Record],
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        packing: bool = False,
        completion_only_loss: bool = True,
        seed: int = 0,
        augment: AugmentSettings | None = None,
        replay: ReplayPool | SelfReplayPool | None = None,
        replay_ratio: float = 0.0,
        overflow: Literal["truncate", "split"] = "truncate",
    ) -> None:
        if not records:
            raise UserError("no usable training records (all were rejected, or the files are empty)")
        if augment and augment.template_variety and has_chat_template(tokenizer):
            raise UserError(
                "augment.template_variety varies the built-in prompt formats, but this tokenizer has a chat "
                "template (which is always used); turn template_variety off"
            )
        self.records = list(records)
        self.encoder = Encoder(tokenizer)
        self.max_length = max_length
        self.packing = packing
        self.completion_only_loss = completion_only_loss
        self.overflow = overflow
        self.seed = seed
        self.augment = augment if augment and (augment.eda or augment.template_variety) else None
        self.replay = replay if replay_ratio > 0 else None
        self.replay_ratio = replay_ratio
        self.history: dict[int, EpochStats] = {}
        self._static: tuple[list[TokenizedExample], TokenizeStats] | None = None
        self._carry: dict[int, list[Row]] = {0: []}
        self._target: int | None = None
        self._rows: list[Row] = []
        self.epoch = -1
        self.set_epoch(0)
        if not self._rows:
            raise UserError(
                "no training rows: every example lost all its trained tokens to truncation (raise max_length)"
            )
        self._target = len(self._rows)
        if self.augment is not None and packing:
            self._target = math.ceil(len(self._rows) * (1 + PACKED_HEADROOM)) + 1
            self._rows = self._fit(self._rows, 0, 0, self.stats)
            self._fill_token_stats(self.stats)

    # ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Row:
        return self._rows[index]

    @property
    def stats(self) -> EpochStats:
        """The current epoch's stats."""
        return self.history[self.epoch]

    def set_epoch(self, epoch: int) -> None:
        """Build the rows of ``epoch`` (a no-op when they are already built)."""
        epoch = int(epoch)
        if epoch == self.epoch:
            return
        if self.augment is None:
            self._build(epoch, carried_in=[])
            return
        # Carried rows make epoch e depend on e-1: build forward from the last epoch whose input is known.
        start = max(e for e in self._carry if e <= epoch)
        for e in range(start, epoch + 1):
            self._build(e, self._carry[e])

    # ---------------------------------------------------------------------------------------------

    def _examples(self, epoch: int) -> tuple[list[TokenizedExample], TokenizeStats, int]:
        """This epoch's SFT documents, their tokenize stats, and how many are augmented copies."""
        if self.augment is None:
            if self._static is None:
                self._static = self.encoder.encode(self.records, self.max_length, self.completion_only_loss,
                                                   overflow=self.overflow)
            return *self._static, 0
        rng = random.Random(f"{self.seed}:{epoch}:augment")
        records: list[Record] = []
        formats: list[PromptFormat | None] = []
        eda = self.augment.eda
        for record in self.records:
            variants = [record]
            if eda is not None and record.kind != "text":
                variants += [augment_record(record, eda.p, rng) for _ in range(eda.n)]
            for variant in variants:
                records.append(variant)
                formats.append(pick_format(rng) if self.augment.template_variety else None)
        examples, stats = self.encoder.encode(records, self.max_length, self.completion_only_loss, formats,
                                              self.overflow)
        return examples, stats, len(records) - len(self.records)

    def _build(self, epoch: int, carried_in: list[Row]) -> None:
        examples, tstats, augmented = self._examples(epoch)
        replay: list[TokenizedExample] = []
        if self.replay is not None:
            rng = random.Random(f"{self.seed}:{epoch}:replay")
            replay = self.replay.sample(
                replay_target_tokens(tstats.trained_tokens, self.replay_ratio), self.max_length, rng
            )
        docs = examples + replay
        if self.packing:
            rows = [
                {
                    "input_ids": r.input_ids,
                    "labels": r.labels,
                    "position_ids": r.position_ids,
                    "replay_mask": r.replay_mask,
                }
                for r in pack_examples(docs, self.max_length)
            ]
        else:
            rows = [
                {"input_ids": d.input_ids, "labels": d.labels, "replay_mask": [int(d.is_replay)] * len(d.input_ids)}
                for d in docs
            ]
        stats = EpochStats(
            epoch=epoch,
            rows=0,
            examples=len(examples),
            augmented=augmented,
            replay_examples=len(replay),
            tokens=0,
            trained_tokens=0,
            replay_tokens=0,
            replay_fraction=0.0,
            real_token_fraction=0.0,
            truncated=tstats.truncated,
            split=tstats.split,
            no_target=tstats.no_target,
            carried_in=len(carried_in),
        )
        rows = self._fit(carried_in + rows, len(carried_in), epoch, stats)
        self._rows = rows
        self.epoch = epoch
        self._fill_token_stats(stats)
        self.history[epoch] = stats

    def _fit(self, rows: list[Row], n_carried: int, epoch: int, stats: EpochStats) -> list[Row]:
        """Bring ``rows`` to the fixed row count (see the module docstring); sets ``self._carry[epoch+1]``."""
        target = self._target
        self._carry[epoch + 1] = []
        if target is None or len(rows) == target:
            return rows
        rng = random.Random(f"{self.seed}:{epoch}:fit")
        if len(rows) > target:
            # Surplus rows are this epoch's own, chosen at random; carried rows go first and are carried
            # again only when this epoch's own rows are not enough.
            extra = len(rows) - target
            own = range(n_carried, len(rows))
            surplus = set(rng.sample(own, min(extra, len(own)))) | set(
                range(n_carried - max(0, extra - len(own)), n_carried)
            )
            self._carry[epoch + 1] = [r for i, r in enumerate(rows) if i in surplus]
            stats.carried_out = len(surplus)
            return [r for i, r in enumerate(rows) if i not in surplus]
        rows = list(rows)
        while len(rows) < target:
            splittable = [i for i, r in enumerate(rows) if self.packing and r["position_ids"].count(0) > 1]
            if splittable:
                i = max(splittable, key=lambda k: rows[k]["position_ids"].count(0))
                rows[i : i + 1] = _split_row(rows[i])
                stats.split_rows += 1
            else:
                rows.append(rows[rng.randrange(len(rows))])
                stats.repeated_rows += 1
        return rows

    def _fill_token_stats(self, stats: EpochStats) -> None:
        rows = self._rows
        stats.rows = len(rows)
        stats.tokens = sum(len(r["input_ids"]) for r in rows)
        stats.trained_tokens = sum(1 for r in rows for label in r["labels"] if label != IGNORE_INDEX)
        stats.replay_tokens = sum(
            1 for r in rows for label, rep in zip(r["labels"], r["replay_mask"]) if rep and label != IGNORE_INDEX
        )
        stats.replay_fraction = stats.replay_tokens / stats.trained_tokens if stats.trained_tokens else 0.0
        stats.real_token_fraction = real_token_fraction([len(r["input_ids"]) for r in rows], self.max_length)


def _split_row(row: Row) -> list[Row]:
    """A packed row as two rows, split at the document boundary nearest its middle."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0][1:]
    cut = min(starts, key=lambda i: abs(i - len(row["input_ids"]) / 2))
    return [{k: v[:cut] for k, v in row.items()}, {k: v[cut:] for k, v in row.items()}]


def split_records(records: Sequence[Record], eval_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``eval_fraction`` of the records (at least one), chosen at random from ``seed``."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if len(records) < 2:
        raise UserError("eval_fraction needs at least 2 records to hold some out")
    order = list(range(len(records)))
    random.Random(f"{seed}:eval_split").shuffle(order)
    n_eval = max(1, round(eval_fraction * len(records)))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def build_train_dataset(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainConfig,
    replay_texts: list[str] | None = None,
    replay_pool: ReplayPool | SelfReplayPool | None = None,
) -> SFTDataset:
    """The training rows a config asks for: packing, completion-only loss, augmentation and replay.

    ``replay_pool`` is the replay to mix in; without it, corpus replay reads ``replay_texts``, which
    default to the documents of ``cfg.replay.corpus`` (self-replay's pool comes from
    :func:`sftlab.data.mixing.self_replay_pool`, which needs the base model).
    """
    pool = replay_pool
    if pool is None and cfg.replay is not None:
        if cfg.replay.source == "self":
            raise ValueError("replay source self: pass replay_pool=self_replay_pool(cfg, tokenizer)")
        if replay_texts is None:
            from sftlab.data.readers import read_texts

            replay_texts = read_texts(cfg.replay.corpus)
        pool = ReplayPool(replay_texts, tokenizer, name=cfg.replay.name)
    return SFTDataset(records, tokenizer, **_row_settings(cfg), augment=cfg.augment, replay=pool,
                      replay_ratio=cfg.replay.ratio if cfg.replay else 0.0)


def build_eval_dataset(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, cfg: TrainConfig) -> SFTDataset:
    """Evaluation rows: the same format, masking and packing as training, with no augmentation or replay."""
    return SFTDataset(records, tokenizer, **_row_settings(cfg))


def _row_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The config keys that shape rows, shared by training and evaluation data."""
    return {"max_length": cfg.max_length, "packing": cfg.packing, "completion_only_loss": cfg.completion_only_loss,
            "seed": cfg.seed, "overflow": cfg.overflow}
