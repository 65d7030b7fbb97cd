"""The world's grammar: word classes, sentence templates with bound slots, and genres built from them.

A genre is a family of sentence templates over its own word classes. A template is literal text with slots
in braces::

    {cls}        any entry of word class ``cls``
    {cls=var}    an entry bound to the document variable ``var``: every ``{..=var}`` in one document has the
                 same value, and two different variables of one class never share a value
    {cls+var}    adds a new entry to the list variable ``var`` (a recipe's ingredient list)
    {cls*var}    an entry already in the list ``var`` (the ingredients recur in the steps)

A class may be split into groups along an *axis* (``mood``: ``pos`` / ``neg``). Every grouped slot of one
document draws from the same group of its axis, which is how a review's sentiment holds through the
document or a weather report's advice fits its sky.

A line may hold alternatives, ``[was born in|grew up in]``: it stands for every combination of them, each
a template of its own. Lines are written so that what a small model tends to recombine (one subject with
another predicate, one step with another manner) is itself a sentence of the genre, and a genre may list
*accepted* near misses that the judge parses but the generator never writes.

A document is one opening sentence, its body sentences and one closing sentence, on one line. The body is
either every *required* topic of the genre once, in random order (a biography states each fact), or a few
sentences each of a topic drawn at random (a recipe's steps); a topic is a set of paraphrase templates. The
first letter of every sentence is upper-cased.

This module holds the machinery shared by the generator (sampling, with the exact log-probability of each
choice, so the corpus entropy is known) and the judge (each template compiled to one anchored regex).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

SLOT_RE = re.compile(r"\{(\w+)(?:([=+*])(\w+))?\}")
ALT_RE = re.compile(r"\[([^\[\]]*)\]")
WORD_RE = re.compile(r"[a-z]+|\d+")
SENTENCE_END = (".", "!", "?")


def words_of(text: str) -> set[str]:
    """Lower-cased letter runs and digit runs of ``text``: the unit of the vocabulary count and prefilter."""
    return set(WORD_RE.findall(text.lower()))


@dataclass(frozen=True)
class WordClass:
    """A set of interchangeable entries (single words or short phrases), optionally grouped on an axis.

    With ``zipf = s > 0`` the entries of each group are drawn with weight ``rank ** -s`` (Zipf's law, as
    words are in natural text), the ranks fixed by a hash of each entry so that the order of the list does
    not matter: a few words are common and learned fast, the long tail keeps the class from being used up.
    ``zipf = 0`` draws them uniformly.
    """

    name: str
    groups: Mapping[str, tuple[str, ...]]
    axis: str | None = None
    zipf: float = 0.0

    @cached_property
    def entries(self) -> tuple[str, ...]:
        return tuple(e for group in self.groups.values() for e in group)

    @cached_property
    def group_of(self) -> dict[str, str]:
        return {e: g for g, group in self.groups.items() for e in group}

    @cached_property
    def weight(self) -> dict[str, float]:
        """Each entry's sampling weight within its group (unnormalised)."""
        if self.zipf <= 0:
            return dict.fromkeys(self.entries, 1.0)
        out: dict[str, float] = {}
        for group in self.groups.values():
            ranked = sorted(group, key=lambda e: hashlib.sha256(e.encode()).hexdigest())
            out.update({e: rank ** -self.zipf for rank, e in enumerate(ranked, 1)})
        return out

    @cached_property
    def pattern(self) -> str:
        # Longest first, so that "light rain" is tried before "light" would stop a shorter match.
        return "(?:" + "|".join(re.escape(e) for e in sorted(self.entries, key=len, reverse=True)) + ")"


# The exponent of every word class. English is about 1; 2 keeps a long tail (over 2,000 words occur in the
# default corpus) while a tiny model learns the common words fast: with 1.5, or uniform words (0), its
# samples were less often valid after the same pretraining (see docs/_fragments/world.md).
ZIPF = 2.0


def words(name: str, entries: Iterable[str]) -> WordClass:
    """A plain word class, Zipf-weighted."""
    return WordClass(name, {"": tuple(entries)}, zipf=ZIPF)


def grouped(name: str, axis: str, **groups: Iterable[str]) -> WordClass:
    """A Zipf-weighted word class whose entries are split into groups along ``axis``."""
    return WordClass(name, {g: tuple(es) for g, es in groups.items()}, axis, zipf=ZIPF)


def number_range(name: str, lo: int, hi: int) -> WordClass:
    """The integers ``lo..hi`` written in digits, uniformly likely."""
    return WordClass(name, {"": tuple(str(i) for i in range(lo, hi + 1))})


@dataclass(frozen=True)
class Slot:
    """One ``{cls op var}`` of a template."""

    cls: str
    op: str  # "" | "=" | "+" | "*"
    var: str | None


@dataclass(frozen=True)
class Template:
    """A sentence (or request) template: literal strings and slots, in order."""

    source: str
    parts: tuple[str | Slot, ...]
    section: str  # "open" | "body" | "close" | "request"
    topic: str
    line: str  # the written line this reading was expanded from
    sampled: bool = True  # False: accepted by the judge, never written by the generator

    @staticmethod
    def parse(source: str, section: str, topic: str | None = None, line: str | None = None,
              sampled: bool = True) -> Template:
        parts: list[str | Slot] = []
        pos = 0
        for m in SLOT_RE.finditer(source):
            if m.start() > pos:
                parts.append(source[pos : m.start()])
            parts.append(Slot(m.group(1), m.group(2) or "", m.group(3)))
            pos = m.end()
        if pos < len(source):
            parts.append(source[pos:])
        if "{" in "".join(p for p in parts if isinstance(p, str)):
            raise ValueError(f"malformed slot in template {source!r}")
        return Template(source, tuple(parts), section, topic or line or source, line or source, sampled)

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(p for p in self.parts if isinstance(p, Slot))

    @property
    def literal_words(self) -> frozenset[str]:
        return frozenset(w for p in self.parts if isinstance(p, str) for w in words_of(p))


def expand(line: str) -> list[str]:
    """Every reading of ``line`` with one option of each ``[a|b|...]`` group (groups do not nest)."""
    m = ALT_RE.search(line)
    if m is None:
        return [line]
    head, tail = line[: m.start()], line[m.end() :]
    return [head + option + rest for option in m.group(1).split("|") for rest in expand(tail)]


@dataclass
class DocState:
    """What a document has bound so far: variables, list variables and axis groups."""

    bindings: dict[str, str] = field(default_factory=dict)
    var_class: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    axes: dict[str, str] = field(default_factory=dict)

    def copy(self) -> DocState:
        return DocState(dict(self.bindings), dict(self.var_class),
                        {k: list(v) for k, v in self.lists.items()}, dict(self.axes))

    def bind(self, var: str, cls: str, value: str) -> None:
        """Pre-bind ``var`` (of class ``cls``) before sampling: a request's subject, an entity's facts."""
        self.bindings[var] = value
        self.var_class[var] = cls

    def taken(self, cls: str, var: str) -> set[str]:
        """Values of other variables of class ``cls`` (a new variable must differ from them)."""
        return {self.bindings[v] for v, c in self.var_class.items() if c == cls and v != var}


@dataclass(frozen=True)
class Genre:
    """One template family: its word classes, opening/body/closing templates and request phrasings.

    ``prebind`` draws the variables ``prebind_vars`` jointly, for a constraint the slot syntax cannot say (a
    sports winner's score above the loser's), as ``{var: (class, value)}`` with the log-probability of the
    draw; ``check`` verifies that constraint when judging.
    """

    name: str
    label: str
    classes: Mapping[str, WordClass]
    opening: tuple[Template, ...]
    body: tuple[Template, ...]
    closing: tuple[Template, ...]
    requests: tuple[str, ...]
    specific_requests: tuple[Template, ...]
    required_topics: tuple[str, ...] = ()
    required_vars: tuple[str, ...] = ()
    n_optional: tuple[int, int] = (1, 2)
    prebind: Callable[[random.Random], tuple[dict[str, tuple[str, str]], float]] | None = None
    prebind_vars: tuple[str, ...] = ()
    check: Callable[[Mapping[str, str]], str | None] | None = None

    @staticmethod
    def build(
        name: str,
        label: str,
        classes: Sequence[WordClass],
        opening: Sequence[str],
        body: Mapping[str, Sequence[str]] | Sequence[str],
        closing: Sequence[str],
        requests: Sequence[str],
        specific_requests: Sequence[str] = (),
        accepted: Mapping[str, Sequence[str]] | None = None,
        **kwargs: object,
    ) -> Genre:
        """Expand and parse template lines; ``body`` is a list (each line its own topic) or topic -> lines.

        ``accepted`` maps a section ("open", "body", "close") to more lines the judge accepts there but the
        generator never writes: the near misses a small model makes (a biography sentence with one fact
        where the generator always states two), so that validity measures the grammar, not the sampler.
        """
        topics = body if isinstance(body, Mapping) else {line: [line] for line in body}
        extra = accepted or {}

        def parse(lines: Iterable[str], section: str, topic: str | None = None, sampled: bool = True,
                  ) -> tuple[Template, ...]:
            return tuple(Template.parse(t, section, topic, line, sampled) for line in lines for t in expand(line))

        def section(written: tuple[Template, ...], key: str) -> tuple[Template, ...]:
            """The written templates of a section, then the accepted ones that are not among them."""
            sources = {t.source for t in written}
            return written + tuple(t for t in parse(extra.get(key, ()), key, sampled=False) if t.source not in sources)

        genre = Genre(
            name=name,
            label=label,
            classes={c.name: c for c in classes},
            opening=section(parse(opening, "open"), "open"),
            body=section(tuple(t for topic, lines in topics.items() for t in parse(lines, "body", topic)), "body"),
            closing=section(parse(closing, "close"), "close"),
            requests=tuple(requests),
            specific_requests=parse(specific_requests, "request"),
            **kwargs,  # type: ignore[arg-type]
        )
        genre.validate()
        return genre

    @property
    def templates(self) -> tuple[Template, ...]:
        return self.opening + self.body + self.closing

    @cached_property
    def topics(self) -> dict[str, tuple[Template, ...]]:
        """The generator's body topics and their templates."""
        out: dict[str, list[Template]] = {}
        for t in self.body:
            if t.sampled:
                out.setdefault(t.topic, []).append(t)
        return {k: tuple(v) for k, v in out.items()}

    def sampled(self, section: str) -> tuple[Template, ...]:
        """The templates of ``section`` the generator writes."""
        return tuple(t for t in getattr(self, section) if t.sampled)

    @property
    def optional_topics(self) -> tuple[str, ...]:
        return tuple(t for t in self.topics if t not in self.required_topics)

    @property
    def body_range(self) -> tuple[int, int]:
        """Fewest and most body sentences of a well-formed document."""
        return len(self.required_topics) + self.n_optional[0], len(self.required_topics) + self.n_optional[1]

    @cached_property
    def lexicon(self) -> frozenset[str]:
        """Every word a valid document of this genre can contain."""
        vocab = {w for c in self.classes.values() for e in c.entries for w in words_of(e)}
        return frozenset(vocab | {w for t in self.templates for w in t.literal_words})

    @cached_property
    def written_lexicon(self) -> frozenset[str]:
        """Every word the generator can write in a document of this genre (requests and near misses aside)."""
        written = [t for t in self.templates if t.sampled]
        classes = {s.cls for t in written for s in t.slots}
        vocab = {w for c in classes for e in self.classes[c].entries for w in words_of(e)}
        return frozenset(vocab | {w for t in written for w in t.literal_words})

    def validate(self) -> None:
        """Fail fast on a template that names an unknown class or an entry that would break sentence splits."""
        for t in self.templates + self.specific_requests:
            for s in t.slots:
                if s.cls not in self.classes:
                    raise ValueError(f"{self.name}: template {t.source!r} uses unknown class {s.cls!r}")
                if s.op and not s.var:
                    raise ValueError(f"{self.name}: slot {{{s.cls}{s.op}}} needs a variable name")
        for c in self.classes.values():
            for e in c.entries:
                if not e or e != e.strip() or any(ch in e for ch in ".!?\n{}"):
                    raise ValueError(f"{self.name}: class {c.name} has a bad entry {e!r}")
            if len(set(c.entries)) != len(c.entries):
                raise ValueError(f"{self.name}: class {c.name} repeats an entry")
        if not set(self.required_topics) <= set(self.topics):
            raise ValueError(f"{self.name}: a required topic has no template")
        if bool(self.required_topics) == bool(self.n_optional[1]):
            raise ValueError(f"{self.name}: a genre has either required topics or optional ones (n_optional)")


# --------------------------------------------------------------------------------------------------
# Sampling (the generator's side)


def capitalize(sentence: str) -> str:
    """Upper-case the first character only (``str.capitalize`` would lower-case the rest)."""
    return sentence[:1].upper() + sentence[1:]


def fill_slot(genre: Genre, slot: Slot, state: DocState, rng: random.Random, used: set[str]) -> tuple[str, float]:
    """Choose a value for ``slot`` under the binding rules; return it with the log-probability of the choice."""
    cls = genre.classes[slot.cls]
    logp = 0.0
    if cls.axis is not None:
        if cls.axis not in state.axes:
            state.axes[cls.axis] = rng.choice(sorted(cls.groups))
            logp -= math.log(len(cls.groups))
        candidates: Sequence[str] = cls.groups[state.axes[cls.axis]]
    else:
        candidates = cls.entries
    if slot.op == "=":
        assert slot.var is not None
        if slot.var in state.bindings:
            return state.bindings[slot.var], logp
        taken = state.taken(slot.cls, slot.var)
        candidates = [c for c in candidates if c not in taken]
    elif slot.op == "+":
        assert slot.var is not None
        have = state.lists.setdefault(slot.var, [])
        candidates = [c for c in candidates if c not in have]
    elif slot.op == "*":
        assert slot.var is not None
        # Distinct within one sentence, so a step never mixes "the leeks with the leeks".
        candidates = [c for c in state.lists.get(slot.var, []) if c in set(candidates) and c not in used]
    if not candidates:
        raise ValueError(f"{genre.name}: no value left for slot {{{slot.cls}{slot.op}{slot.var or ''}}}")
    weights = [cls.weight[c] for c in candidates]
    value = rng.choices(list(candidates), weights)[0]
    logp += math.log(cls.weight[value] / sum(weights))
    if slot.op == "=":
        assert slot.var is not None
        state.bindings[slot.var] = value
        state.var_class[slot.var] = slot.cls
    elif slot.op == "+":
        assert slot.var is not None
        state.lists[slot.var].append(value)
    elif slot.op == "*":
        used.add(value)
    return value, logp


def render(genre: Genre, template: Template, state: DocState, rng: random.Random) -> tuple[str, float]:
    """Fill ``template``'s slots in order; returns the capitalised sentence and its log-probability."""
    out: list[str] = []
    logp = 0.0
    used: set[str] = set()
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
        else:
            value, lp = fill_slot(genre, part, state, rng, used)
            out.append(value)
            logp += lp
    return capitalize("".join(out)), logp


@dataclass(frozen=True)
class Document:
    """A generated document, the variables it bound, its templates and ``-log p`` of its derivation (nats)."""

    text: str
    genre: str
    bindings: Mapping[str, str]
    nats: float
    templates: tuple[str, ...] = ()


def sample_document(genre: Genre, rng: random.Random, state: DocState | None = None) -> Document:
    """Sample one document of ``genre``; ``state`` may pre-bind variables (a request's film, an entity's facts).

    ``nats`` counts every choice made here (plan, templates, slot values); choices made before (the genre,
    the entity, pre-bound values) are the caller's to add.
    """
    state = state.copy() if state is not None else DocState()
    logp = 0.0
    if genre.prebind is not None and not any(v in state.bindings for v in genre.prebind_vars):
        extra, lp = genre.prebind(rng)
        for var, (cls, value) in extra.items():
            state.bind(var, cls, value)
        logp += lp
    if genre.required_topics:
        # Each required topic once, in an order uniform over all orders.
        topics = list(genre.required_topics)
        rng.shuffle(topics)
        logp -= math.lgamma(len(topics) + 1)
    else:
        # A uniform number of body sentences, each of a topic drawn uniformly (a step may come twice).
        lo, hi = genre.n_optional
        topics = [rng.choice(genre.optional_topics) for _ in range(rng.randint(lo, hi))]
        logp -= math.log(hi - lo + 1) + len(topics) * math.log(len(genre.optional_topics))
    openings, closings = genre.sampled("opening"), genre.sampled("closing")
    plan = [rng.choice(openings)]
    logp -= math.log(len(openings))
    for topic in topics:
        choices = genre.topics[topic]
        plan.append(rng.choice(choices))
        logp -= math.log(len(choices))
    plan.append(rng.choice(closings))
    logp -= math.log(len(closings))
    sentences = []
    for template in plan:
        text, lp = render(genre, template, state, rng)
        sentences.append(text)
        logp += lp
    return Document(" ".join(sentences), genre.name, dict(state.bindings), -logp, tuple(t.source for t in plan))


# --------------------------------------------------------------------------------------------------
# Matching (the judge's side)


@dataclass(frozen=True)
class Match:
    """A sentence parsed by one template: the genre, the template and each slot's value."""

    genre: str
    template: Template
    values: tuple[str, ...]


def compile_template(genre: Genre, template: Template) -> re.Pattern[str]:
    """One anchored regex per template; slot ``i`` is group ``i + 1``."""
    pieces = []
    for part in template.parts:
        if isinstance(part, str):
            pieces.append(re.escape(part))
        else:
            pieces.append("(" + genre.classes[part.cls].pattern + ")")
    return re.compile("".join(pieces))


def split_sentences(text: str) -> list[str]:
    """Split after ``.``, ``!`` or ``?`` followed by whitespace (entries never contain those marks)."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def uncapitalize(sentence: str) -> str:
    return sentence[:1].lower() + sentence[1:]


def consume(genre: Genre, match: Match, state: DocState) -> str | None:
    """Apply ``match``'s slot values to ``state`` under the binding rules; return why not, or None if fine."""
    used: set[str] = set()
    for slot, value in zip(match.template.slots, match.values):
        cls = genre.classes[slot.cls]
        if cls.axis is not None:
            group = cls.group_of[value]
            have = state.axes.setdefault(cls.axis, group)
            if have != group:
                return f"{value!r} is {cls.axis} {group!r} but the document is {cls.axis} {have!r}"
        if slot.op == "=":
            assert slot.var is not None
            bound = state.bindings.get(slot.var)
            if bound is None:
                if value in state.taken(slot.cls, slot.var):
                    return f"{value!r} already plays another {slot.cls} role"
                state.bindings[slot.var] = value
                state.var_class[slot.var] = slot.cls
            elif bound != value:
                return f"{value!r} contradicts {bound!r} stated before ({slot.var})"
        elif slot.op == "+":
            assert slot.var is not None
            have_list = state.lists.setdefault(slot.var, [])
            if value in have_list:
                return f"{value!r} is listed twice"
            have_list.append(value)
        elif slot.op == "*":
            assert slot.var is not None
            if value not in state.lists.get(slot.var, []) or value in used:
                return f"{value!r} was not introduced before ({slot.var})"
            used.add(value)
    return None
