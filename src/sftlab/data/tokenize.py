"""Records -> token ids and labels, with the prompt masked from the loss.

Prompt format:

* a tokenizer with a chat template: the template, rendered incrementally. For assistant turn i the
  prompt is ``template(turns[:i], add_generation_prompt=True)`` and the answer is what
  ``template(turns[:i+1])`` adds after it, so every assistant turn of a multi-turn chat is trained and
  every other token is masked: the system prompt (the template's default one too), the user turns and
  each ``<|im_start|>assistant\n``-style header the generation prompt writes. When the answer holds the
  EOS token (ChatML templates whose EOS is ``<|im_end|>``, as SmolLM2's), it is trained through that
  EOS and the text the template writes after it (ChatML's ``"\n"``) is masked: generation stops at EOS,
  so that text is never generated, only read as the start of the next turn (templates with
  ``{% generation %}`` markers leave it outside the trained span too; TRL's prompt-completion path
  trains it). Otherwise the whole rendered answer, the template's end-of-turn text included, is trained
  and EOS is appended. Templated text is tokenized without adding special tokens (the template writes
  BOS itself), as TRL does.
* otherwise a built-in format (:data:`FORMATS`, the first is the default): alpaca-style for a single
  turn (optional system, one user, one assistant turn), a role-tagged chat for longer conversations.
  The tokenizer's leading special tokens (BOS, if it adds one) start the sequence, and EOS ends every
  assistant turn.

Text records train every token. ``completion_only_loss=False`` trains the prompt too. The first token
of a sequence is never a target (nothing predicts it), so its label is always -100: under packing this
also keeps one document's last token from being trained to predict the next document's first token.

Each text segment (prompt part, answer part) is tokenized on its own and the ids concatenated, so the
prompt ids are exactly those :func:`encode_prompt` gives at generation time. Sequences longer than
``max_length`` are cut at the end; this is counted (``truncated``), and an example left with no trained
token is dropped and counted (``no_target``).

With ``overflow="split"`` a long sequence is not cut but split into documents of at most ``max_length``
tokens that overlap by one token: each piece's first token is context only (as the first token of any
document), and it is the previous piece's last token, trained there, so every trained token is trained
exactly once. A later piece sees only its own tokens (no prompt, when the prompt was in an earlier piece):
the price of keeping every token, as in concatenate-and-cut packing. This is counted (``split``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from transformers import PreTrainedTokenizerBase

from sftlab.data.records import Message, Origin, Record
from sftlab.errors import UserError
from sftlab.models.tokens import IGNORE_INDEX


@dataclass(frozen=True)
class PromptFormat:
    """A built-in prompt format, for tokenizers without a chat template."""

    name: str
    preamble: str  # the system text of a single-turn prompt when the record has none
    instruction_header: str
    response_header: str
    system_tag: str
    user_tag: str
    assistant_tag: str

    def single_turn(self, system: str | None, user: str) -> str:
        """Everything before the answer of a one-turn exchange."""
        head = self.preamble if system is None else system
        return f"{head}\n\n{self.instruction_header}\n{user}\n\n{self.response_header}\n"


# FORMATS[0] is the default (Stanford Alpaca's prompt). The others are paraphrases for template variety.
FORMATS: tuple[PromptFormat, ...] = (
    PromptFormat(
        "alpaca",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
        "### Instruction:",
        "### Response:",
        "<|system|>",
        "<|user|>",
        "<|assistant|>",
    ),
    PromptFormat(
        "task",
        "Complete the task below.",
        "Task:",
        "Answer:",
        "System:",
        "User:",
        "Assistant:",
    ),
    PromptFormat(
        "request",
        "You are a helpful assistant. Read the request and write a reply that fulfils it.",
        "### Request:",
        "### Reply:",
        "### System",
        "### User",
        "### Assistant",
    ),
    PromptFormat(
        "dialogue",
        "The following is a request from a user, followed by a response that answers it well.",
        "User request:",
        "Response:",
        "[system]",
        "[user]",
        "[assistant]",
    ),
)
DEFAULT_FORMAT = FORMATS[0]

# A segment is (text, trained); text None stands for the EOS token id.
Segment = tuple[str | None, bool]


@dataclass
class TokenizedExample:
    """One document: ``labels`` are ``input_ids`` with untrained positions set to -100 (HF, unshifted)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    origin: Origin | None = None
    is_replay: bool = False

    @property
    def num_trained(self) -> int:
        """Tokens that are loss targets."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class TokenizeStats:
    """What tokenization did to a set of records."""

    examples: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    split: int = 0  # sequences split into several documents (overflow="split")
    no_target: int = 0
    no_target_origins: list[Origin] = field(default_factory=list)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template (then it, not a built-in format, is used)."""
    return bool(getattr(tokenizer, "chat_template", None))


def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer puts before text by itself (BOS for Llama-style tokenizers, none for GPT-2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def tokenize_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added; one batched call."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: the same ids as tokenizer(texts), without the offsets and masks
        # that the HF wrapper builds and converts for every text (a third of the time on Alpaca).
        return [enc.ids for enc in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def build_segments(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    fmt: PromptFormat | None = None,
    generation: bool = False,
) -> list[Segment]:
    """The text segments of a chat, each marked trained or not.

    ``generation=True``: ``messages`` end with a user turn and the result ends with the prompt for the
    next assistant turn; otherwise they end with an assistant turn.
    """
    if has_chat_template(tokenizer):
        if fmt is not None and fmt is not DEFAULT_FORMAT:
            raise UserError(
                "built-in prompt formats (template_variety) do not apply to a tokenizer with a chat template"
            )
        return _template_segments(tokenizer, messages, generation)
    return _builtin_segments(messages, fmt or DEFAULT_FORMAT, generation)


def _builtin_segments(messages: Sequence[Message], fmt: PromptFormat, generation: bool) -> list[Segment]:
    system = messages[0].content if messages and messages[0].role == "system" else None
    turns = list(messages[1:] if system is not None else messages)
    if len(turns) == (1 if generation else 2):
        segments: list[Segment] = [(fmt.single_turn(system, turns[0].content), False)]
        if not generation:
            segments += [(turns[1].content, True), (None, True)]
        return segments
    segments = []
    pending = f"{fmt.system_tag}\n{system}\n" if system is not None else ""
    for msg in turns:
        if msg.role == "user":
            pending += f"{fmt.user_tag}\n{msg.content}\n"
        else:
            segments += [(pending + f"{fmt.assistant_tag}\n", False), (msg.content, True), (None, True)]
            pending = "\n"
    if generation:
        segments.append((pending + f"{fmt.assistant_tag}\n", False))
    return segments


def _template_segments(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation: bool
) -> list[Segment]:
    turns = [{"role": m.role, "content": m.content} for m in messages]

    def render(n: int, add_generation_prompt: bool) -> str:
        try:
            return tokenizer.apply_chat_template(turns[:n], tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja raises TemplateError, and templates raise their own errors
            raise UserError(f"the tokenizer's chat template failed on a conversation: {exc}") from None

    full = render(len(turns), generation)
    segments: list[Segment] = []
    pos = 0
    for i, msg in enumerate(messages):
        if msg.role != "assistant":
            continue
        prompt, through = render(i, True), render(i + 1, False)
        if not (through.startswith(prompt) and full.startswith(through)):
            raise UserError(
                "the tokenizer's chat template does not render a conversation as a growing prefix (turn "
                f"{i}'s prompt is not the start of the full chat), so its assistant turns cannot be located "
                "for loss masking; use a template that only appends, or remove the chat template to use the "
                "built-in format"
            )
        answer = through[len(prompt) :]
        eos = tokenizer.eos_token
        has_eos = bool(eos) and eos in answer
        if has_eos:
            # Train through the EOS the template writes; what follows it in the turn (ChatML's "\n") is
            # never generated, since generation stops at EOS, so it is context for the next turn.
            answer = answer[: answer.rindex(eos) + len(eos)]
        segments += [(full[pos : len(prompt)], False), (answer, True)]
        if eos and not has_eos:
            segments.append((None, True))
        pos = len(prompt) + len(answer)
    if pos < len(full):
        segments.append((full[pos:], False))
    return segments


class Encoder:
    """Turns records into :class:`TokenizedExample` for one tokenizer, tokenizing in batches."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no EOS token; set eos_token in its tokenizer_config.json")
        self.tokenizer = tokenizer
        self.eos = int(tokenizer.eos_token_id)
        # Plain text and the built-in format start with the tokenizer's leading special tokens (BOS);
        # templated text writes its own BOS.
        self.text_lead = leading_special_ids(tokenizer)
        self.chat_lead = [] if has_chat_template(tokenizer) else self.text_lead

    def segments(self, record: Record, fmt: PromptFormat | None = None) -> list[Segment]:
        """The segments of one record (text records: the text, then EOS, all trained)."""
        if record.kind == "text":
            return [(record.text, True), (None, True)]
        return build_segments(self.tokenizer, record.as_messages(), fmt)

    def lead(self, record: Record | None) -> list[int]:
        """The ids before a record's first segment (None: a chat prompt)."""
        return self.text_lead if record is not None and record.kind == "text" else self.chat_lead

    def ids(
        self, segment_lists: Sequence[Sequence[Segment]], leads: Sequence[list[int]] | None = None
    ) -> list[tuple[list[int], list[bool]]]:
        """Token ids and a trained flag per token, for each segment list (after its lead ids, default
        the chat lead); one tokenizer call for all."""
        texts = [text for segments in segment_lists for text, _ in segments if text is not None]
        pieces = iter(tokenize_texts(self.tokenizer, texts))
        out = []
        for k, segments in enumerate(segment_lists):
            lead = self.chat_lead if leads is None else leads[k]
            ids, trained = list(lead), [False] * len(lead)
            for text, train in segments:
                piece = [self.eos] if text is None else list(next(pieces))
                ids += piece
                trained += [train] * len(piece)
            out.append((ids, trained))
        return out

    def example(
        self, record: Record, ids: list[int], trained: list[bool], max_length: int, completion_only_loss: bool
    ) -> TokenizedExample:
        """Labels from the trained flags (the first token never a target), cut to ``max_length``."""
        labels = _labels(ids, trained, completion_only_loss)
        return TokenizedExample(ids[:max_length], labels[:max_length], len(ids) > max_length, record.origin)

    def pieces(
        self, record: Record, ids: list[int], trained: list[bool], max_length: int, completion_only_loss: bool
    ) -> list[TokenizedExample]:
        """Labels as in :meth:`example`, the sequence split into one-token-overlapping pieces of at most
        ``max_length`` (see the module docstring); a short sequence is one piece."""
        labels = _labels(ids, trained, completion_only_loss)
        step = max_length - 1
        out = []
        for start in range(0, max(1, len(ids) - 1), step):
            piece_labels = labels[start : start + max_length]
            if start:
                piece_labels = [IGNORE_INDEX, *piece_labels[1:]]  # the overlap token was trained in the last piece
            out.append(TokenizedExample(ids[start : start + max_length], piece_labels, False, record.origin))
        return out

    def encode(
        self,
        records: Sequence[Record],
        max_length: int,
        completion_only_loss: bool = True,
        formats: Sequence[PromptFormat | None] | None = None,
        overflow: Literal["truncate", "split"] = "truncate",
    ) -> tuple[list[TokenizedExample], TokenizeStats]:
        """Encode ``records`` (``formats[i]`` is record i's built-in format, None = default); ``overflow``
        says what becomes of tokens beyond ``max_length`` (see the module docstring)."""
        fmts = formats or [None] * len(records)
        encoded = self.ids([self.segments(r, f) for r, f in zip(records, fmts)], [self.lead(r) for r in records])
        stats = TokenizeStats()
        examples = []
        for record, (ids, trained) in zip(records, encoded):
            if overflow == "split":
                pieces = self.pieces(record, ids, trained, max_length, completion_only_loss)
                stats.split += len(pieces) > 1
            else:
                pieces = [self.example(record, ids, trained, max_length, completion_only_loss)]
                stats.truncated += pieces[0].truncated
            kept = [p for p in pieces if p.num_trained]
            if not kept:
                stats.no_target += 1
                stats.no_target_origins.append(record.origin)
                continue
            stats.examples += len(kept)  # documents: a split sequence counts once per piece
            for piece in kept:
                stats.tokens += len(piece.input_ids)
                stats.trained_tokens += piece.num_trained
            examples += kept
        return examples, stats


def _labels(ids: list[int], trained: list[bool], completion_only_loss: bool) -> list[int]:
    labels = [t if (flag or not completion_only_loss) else IGNORE_INDEX for t, flag in zip(ids, trained)]
    if labels:
        labels[0] = IGNORE_INDEX  # nothing predicts a sequence's first token
    return labels


def encode_record(
    record: Record,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    completion_only_loss: bool = True,
    fmt: PromptFormat | None = None,
) -> TokenizedExample:
    """One record as token ids and labels (see the module docstring); it may have no trained token."""
    encoder = Encoder(tokenizer)
    ids, trained = encoder.ids([encoder.segments(record, fmt)], [encoder.lead(record)])[0]
    return encoder.example(record, ids, trained, max_length, completion_only_loss)


def encode_records(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    completion_only_loss: bool = True,
    formats: Sequence[PromptFormat | None] | None = None,
    overflow: Literal["truncate", "split"] = "truncate",
) -> tuple[list[TokenizedExample], TokenizeStats]:
    """Encode many records; examples left without a trained token are dropped and counted in the stats."""
    return Encoder(tokenizer).encode(records, max_length, completion_only_loss, formats, overflow)


def render_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], fmt: PromptFormat | None = None
) -> str:
    """The exact text training puts before the next assistant answer; ``messages`` end with a user turn.

    With a chat template this is ``apply_chat_template(messages, add_generation_prompt=True)``, except
    that earlier answers end with the EOS training appended when the template writes none. To get the
    ids training uses, call :func:`encode_prompt` rather than re-tokenizing this text.
    """
    _check_prompt(messages)
    eos = tokenizer.eos_token or ""
    return "".join(
        eos if text is None else text for text, _ in build_segments(tokenizer, messages, fmt, generation=True)
    )


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], fmt: PromptFormat | None = None
) -> list[int]:
    """The token ids training puts before the next assistant answer (leading BOS included)."""
    _check_prompt(messages)
    encoder = Encoder(tokenizer)
    return encoder.ids([build_segments(tokenizer, messages, fmt, generation=True)])[0][0]


def _check_prompt(messages: Sequence[Message]) -> None:
    if not messages or messages[-1].role != "user":
        raise ValueError("a prompt must end with a user turn")
