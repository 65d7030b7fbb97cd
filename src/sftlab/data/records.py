"""Record kinds and format detection: one parsed JSON-like object -> one or more :class:`Record`.

Formats are recognised by their keys (checked in this order):

==================  ==========================================  =====================
format              keys                                        record kind
==================  ==========================================  =====================
``messages``        ``messages``: [{role, content}, ...]        conversation
``sharegpt``        ``conversations``: [{from, value}, ...]     conversation
``oasst``           ``prompt``: {text, role, replies: [...]}    conversation (several)
``self_instruct``   ``instruction`` + ``instances``: [{input,   prompt_completion (one
                    output}]                                    per instance)
``prompt_completion`` ``prompt`` + ``completion``               prompt_completion (a
                                                                conversation when both are
                                                                message lists, as in TRL)
``alpaca``          ``instruction`` + ``output`` (+ ``input``)  prompt_completion
``text``            ``text``                                    text
==================  ==========================================  =====================

Roles are ``system``, ``user`` and ``assistant``. These aliases are accepted and mapped:
``human``/``prompter`` -> user, ``gpt``/``bot``/``model`` -> assistant (ShareGPT and OpenAssistant
spellings). A conversation is an optional leading system turn, then user and assistant
turns alternating, starting with a user turn and ending with an assistant turn.

OpenAssistant message trees are flattened to one conversation per root-to-leaf path. A path that ends
in a prompter message is cut back to its last assistant message, as OpenAssistant's own SFT loader
(model/model_training/custom_datasets/oasst_dataset.py) does. Unlike that loader, a path that is then
identical to, or a prefix of, another path of the same tree is left out, because all its turns are
trained in the longer one. Deleted messages and messages that failed review are pruned with their
subtree and reported as rejections.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"human": "user", "prompter": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant"}
RecordKind = Literal["text", "prompt_completion", "conversation"]

# Lone surrogates: what undecodable bytes become under the surrogateescape error handler (and what a JSON
# "\udXXX" escape without its pair decodes to). Tokenizers cannot encode them.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Origin:
    """Where a record came from.

    ``line`` is 1-based: the line a jsonl record, json element, csv row or txt document starts on, or
    the row number in a parquet file or `datasets` dataset. ``item`` numbers (from 1) the records that
    share a line or an object: the elements of a .json array (a one-line file puts all of them on line
    1), the conversations of an OpenAssistant tree, the instances of a self-instruct task.
    """

    file: str
    line: int | None
    item: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return where if self.item is None else f"{where}#{self.item}"


@dataclass
class Message:
    """One chat turn."""

    role: str
    content: str


@dataclass
class Record:
    """One training example; ``kind`` decides which fields are set.

    ``format`` is the source format (see the module docstring). ``meta`` keeps source fields that
    tools need later, for alpaca the raw ``instruction`` and ``input`` (augmentation edits only the
    instruction).
    """

    kind: RecordKind
    origin: Origin
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    messages: list[Message] | None = None
    format: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def as_messages(self) -> list[Message]:
        """The record as chat turns: prompt_completion -> [user, assistant]; text records have none."""
        if self.kind == "conversation":
            assert self.messages is not None
            return list(self.messages)
        if self.kind == "prompt_completion":
            assert self.prompt is not None and self.completion is not None
            return [Message("user", self.prompt), Message("assistant", self.completion)]
        raise ValueError(f"{self.origin}: a text record has no chat turns")


class RecordError(ValueError):
    """A record that cannot be used: ``code`` is the short reason counted in summaries."""

    def __init__(self, code: str, field: str | None, message: str, raw: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message
        self.raw = raw  # the offending part, when it is smaller than the whole record (a pruned tree node)


def alpaca_prompt(instruction: str, input_: str) -> str:
    """The user turn of an alpaca record: the instruction, then its input after a blank line (if any)."""
    return f"{instruction}\n\n{input_}" if input_.strip() else instruction


def detect_format(obj: dict[str, Any]) -> str:
    """The source format of one record object, from its keys; RecordError when none fits."""
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if isinstance(obj.get("prompt"), dict) and "replies" in obj["prompt"]:
        return "oasst"
    if "instruction" in obj and "instances" in obj and "output" not in obj:
        return "self_instruct"
    if "prompt" in obj or "completion" in obj:
        missing = "completion" if "prompt" in obj else "prompt"
        if missing not in obj:
            raise RecordError("missing field", missing, f"prompt/completion record has no {missing!r} field")
        return "prompt_completion"
    if "instruction" in obj or "output" in obj:
        missing = "output" if "instruction" in obj else "instruction"
        if missing not in obj:
            raise RecordError("missing field", missing, f"alpaca record has no {missing!r} field")
        return "alpaca"
    if "text" in obj:
        return "text"
    keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
    raise RecordError(
        "unrecognised format",
        None,
        f"no known format fits keys {keys}; expected text | prompt+completion | instruction+output (alpaca) "
        "| messages | conversations (ShareGPT) | an OpenAssistant tree (prompt with replies)",
    )


def parse_record(obj: Any, origin: Origin, fmt: str | None = None) -> tuple[list[Record], list[RecordError]]:
    """Parse one object into records (several for an OpenAssistant tree).

    Returns the records and the problems found inside a tree (pruned branches). A record that cannot be
    used at all raises RecordError. ``fmt`` skips detection when the format is already known.
    """
    if not isinstance(obj, dict):
        raise RecordError("not an object", None, f"a record must be a JSON object, got {_type_name(obj)}")
    fmt = fmt or detect_format(obj)
    _check_unicode(obj)
    if fmt == "oasst":
        return _parse_oasst(obj, origin)
    if fmt == "self_instruct":
        return _parse_self_instruct(obj, origin), []
    parser = _PARSERS[fmt]
    return [parser(obj, origin)], []


# --------------------------------------------------------------------------------------------------
# Field helpers


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", type(None): "null", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _check_unicode(value: Any, path: str = "") -> None:
    """RecordError for any string holding undecodable bytes (lone surrogates), naming the field."""
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        if match:
            code = ord(match.group())
            byte = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
            raise RecordError(
                "not UTF-8", path or None, f"text is not valid UTF-8 ({byte} at character {match.start()})"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_unicode(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_unicode(item, f"{path}[{i}]")


def _string(obj: dict[str, Any], key: str, path: str | None = None, *, required: bool = True) -> str:
    """``obj[key]`` as a string; RecordError naming ``path`` when missing or of the wrong type."""
    name = path or key
    if key not in obj or obj[key] is None:
        if not required:
            return ""
        raise RecordError(
            "missing field", name, f"field {name!r} is missing" if key not in obj else f"field {name!r} is null"
        )
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError("wrong type", name, f"field {name!r} must be a string, got {_type_name(value)}")
    return value


def _nonempty(value: str, name: str, code: str) -> str:
    if not value.strip():
        raise RecordError(code, name, f"field {name!r} is empty or whitespace-only")
    return value


# --------------------------------------------------------------------------------------------------
# One parser per format


def _parse_text(obj: dict[str, Any], origin: Origin) -> Record:
    text = _nonempty(_string(obj, "text"), "text", "empty text")
    return Record("text", origin, text=text, format="text")


def _parse_prompt_completion(obj: dict[str, Any], origin: Origin) -> Record:
    # TRL's conversational prompt/completion: both sides are message lists.
    if isinstance(obj["prompt"], list) and isinstance(obj["completion"], list):
        messages = _messages(obj["prompt"], "prompt", "role", "content") + _messages(
            obj["completion"], "completion", "role", "content"
        )
        _check_conversation(messages, "prompt")
        return Record("conversation", origin, messages=messages, format="prompt_completion")
    prompt = _nonempty(_string(obj, "prompt"), "prompt", "empty prompt")
    completion = _nonempty(_string(obj, "completion"), "completion", "empty response")
    return Record("prompt_completion", origin, prompt=prompt, completion=completion, format="prompt_completion")


def _parse_alpaca(obj: dict[str, Any], origin: Origin) -> Record:
    instruction = _nonempty(_string(obj, "instruction"), "instruction", "empty prompt")
    input_ = _string(obj, "input", required=False)
    output = _nonempty(_string(obj, "output"), "output", "empty response")
    return Record(
        "prompt_completion",
        origin,
        prompt=alpaca_prompt(instruction, input_),
        completion=output,
        format="alpaca",
        meta={"instruction": instruction, "input": input_},
    )


def _parse_self_instruct(obj: dict[str, Any], origin: Origin) -> list[Record]:
    """A self-instruct task: one alpaca record per instance (``instances``: [{input, output}])."""
    instances = obj["instances"]
    if not isinstance(instances, list) or not instances:
        raise RecordError("wrong type", "instances", "field 'instances' must be a non-empty array of {input, output}")
    records = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RecordError(
                "wrong type", f"instances[{i}]", f"instances[{i}] must be an object, got {_type_name(inst)}"
            )
        try:
            record = _parse_alpaca({**inst, "instruction": obj["instruction"]}, dataclasses.replace(origin, item=i + 1))
        except RecordError as exc:
            field_ = exc.field if exc.field == "instruction" else f"instances[{i}].{exc.field}"
            raise RecordError(exc.code, field_, f"{exc.message} (instance {i})") from None
        record.format = "self_instruct"
        records.append(record)
    return records


def _parse_messages(obj: dict[str, Any], origin: Origin) -> Record:
    messages = _messages(obj["messages"], "messages", "role", "content")
    _check_conversation(messages, "messages")
    return Record("conversation", origin, messages=messages, format="messages")


def _parse_sharegpt(obj: dict[str, Any], origin: Origin) -> Record:
    messages = _messages(obj["conversations"], "conversations", "from", "value")
    _check_conversation(messages, "conversations")
    return Record("conversation", origin, messages=messages, format="sharegpt")


def _messages(value: Any, name: str, role_key: str, content_key: str) -> list[Message]:
    if not isinstance(value, list):
        raise RecordError("wrong type", name, f"field {name!r} must be an array of turns, got {_type_name(value)}")
    if not value:
        raise RecordError("empty conversation", name, f"field {name!r} has no turns")
    out = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError("wrong type", where, f"turn {where} must be an object, got {_type_name(turn)}")
        role = _string(turn, role_key, f"{where}.{role_key}")
        content = _string(turn, content_key, f"{where}.{content_key}")
        role = ROLE_ALIASES.get(role.strip().lower(), role.strip().lower())
        if role not in ROLES:
            raise RecordError(
                "unknown role",
                f"{where}.{role_key}",
                f"unknown role {turn[role_key]!r} in {where}; expected system, user or assistant",
            )
        out.append(Message(role, content))
    return out


def _check_conversation(messages: list[Message], name: str) -> None:
    """Optional system turn, then user/assistant alternating from a user turn, ending with an assistant turn."""
    start = 1 if messages[0].role == "system" else 0
    for i, msg in enumerate(messages):
        where = f"{name}[{i}]"
        if i < start:
            continue
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if msg.role != expected:
            what = "a system turn after the first turn" if msg.role == "system" else f"two {msg.role} turns in a row"
            if i == start and msg.role == "assistant":
                what = "the first turn (after any system turn) is an assistant turn"
            raise RecordError(
                "bad turn order", f"{where}.role", f"{what} at {where}; turns must alternate user/assistant"
            )
        if not msg.content.strip():
            code = "empty response" if msg.role == "assistant" else "empty prompt"
            raise RecordError(code, f"{where}.content", f"{msg.role} turn {where} is empty or whitespace-only")
    if messages[-1].role != "assistant":
        last = len(messages) - 1
        raise RecordError(
            "no final assistant turn",
            f"{name}[{last}].role",
            f"the conversation ends with a {messages[-1].role} turn, not an assistant turn",
        )


# --------------------------------------------------------------------------------------------------
# OpenAssistant trees


def _parse_oasst(obj: dict[str, Any], origin: Origin) -> tuple[list[Record], list[RecordError]]:
    problems: list[RecordError] = []
    paths: list[list[Message]] = []
    _walk_oasst(obj["prompt"], "prompt", [], "user", paths, problems)
    # Cut each path back to its last assistant turn; keep only paths that are not a prefix of another.
    cut = []
    for path in paths:
        while path and path[-1].role != "assistant":
            path = path[:-1]
        if path:
            cut.append(path)
    keys = [tuple((m.role, m.content) for m in p) for p in cut]
    unique = list(dict.fromkeys(keys))
    kept = [k for k in unique if not any(len(o) > len(k) and o[: len(k)] == k for o in unique)]
    if not kept:
        raise RecordError("no final assistant turn", "prompt.replies", "the message tree has no usable assistant reply")
    records = [
        Record(
            "conversation", dataclasses.replace(origin, item=n), messages=[Message(r, c) for r, c in k], format="oasst"
        )
        for n, k in enumerate(kept, start=1)
    ]
    return records, problems


def _walk_oasst(
    node: Any, path: str, history: list[Message], expected: str, out: list[list[Message]], problems: list[RecordError]
) -> None:
    """Depth-first: append every root-to-leaf path to ``out``; a bad node is reported and its subtree pruned."""
    try:
        if not isinstance(node, dict):
            raise RecordError("wrong type", path, f"tree node {path} must be an object, got {_type_name(node)}")
        if node.get("deleted") is True:
            raise RecordError("deleted message", path, f"message {path} is marked deleted")
        if node.get("review_result") is False:
            raise RecordError("failed review", path, f"message {path} failed review (review_result false)")
        raw_role = _string(node, "role", f"{path}.role")
        role = ROLE_ALIASES.get(raw_role.strip().lower(), raw_role.strip().lower())
        if role not in ("user", "assistant"):
            raise RecordError(
                "unknown role", f"{path}.role", f"unknown role {raw_role!r} in {path}; expected prompter or assistant"
            )
        if role != expected:
            raise RecordError(
                "bad turn order",
                f"{path}.role",
                f"{path} is a {raw_role} message where a reply of the other role was expected",
            )
        text = _string(node, "text", f"{path}.text")
        if not text.strip():
            code = "empty response" if role == "assistant" else "empty prompt"
            raise RecordError(code, f"{path}.text", f"message {path} is empty or whitespace-only")
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise RecordError(
                "wrong type", f"{path}.replies", f"{path}.replies must be an array, got {_type_name(replies)}"
            )
    except RecordError as exc:
        if isinstance(node, dict):
            exc.raw = json.dumps({k: v for k, v in node.items() if k != "replies"}, ensure_ascii=False)
        problems.append(exc)
        return
    here = [*history, Message(role, text)]
    if not replies:
        out.append(here)
        return
    before = len(out)
    for i, child in enumerate(replies):
        _walk_oasst(child, f"{path}.replies[{i}]", here, "assistant" if role == "user" else "user", out, problems)
    if len(out) == before:  # every reply was pruned: this node is a leaf now
        out.append(here)


_PARSERS = {
    "text": _parse_text,
    "prompt_completion": _parse_prompt_completion,
    "alpaca": _parse_alpaca,
    "messages": _parse_messages,
    "sharegpt": _parse_sharegpt,
}
