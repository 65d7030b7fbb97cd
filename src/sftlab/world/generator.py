"""Generate a synthetic world: a pretraining corpus, held-out text, SFT sets, prompts and a fact benchmark.

Everything is drawn from the grammar in :mod:`sftlab.world.genres` with a seeded RNG, so the genre of every
document and every fact of every person is known exactly, and the same seed writes the same files byte for
byte. Each part has its own RNG stream (``"<seed>:<part>"``), so resizing one part leaves the others alone.

Layout of ``OUT`` (all jsonl, one JSON object per line, UTF-8)::

    world.json                  manifest: seed, sizes, genre mixture, counts, files, entropy of the corpus
    entities.jsonl              every person: name, first, last, gender, the four facts, split
    corpus/train.jsonl          pretraining corpus: {"text", "genre"}, genres drawn from the mixture; a quarter
                                of the texts start with a request in sftlab's prompt format ({"prefix"} holds it)
    heldout/<genre>.jsonl       held-out documents of one genre: {"text", "genre"}
    heldout/all.jsonl           all held-out documents
    sft/narrow/{train,eval}.jsonl   {"prompt", "completion", "genre"}: movie reviews only (the collapse case)
    sft/broad/{train,eval}.jsonl    the same, with every genre equally often
    sft/qa_known/{train,test}.jsonl {"prompt", "completion", "entity", "fact", "answer"}: questions on
                                    people of the corpus; train and test people are disjoint
    sft/qa_new/{train,test}.jsonl   the same on people who never appear in the corpus; the test asks the
                                    training facts with other paraphrases (set B), so it measures injection
    prompts/open.jsonl          {"prompt"}: requests that name no genre ("Write something.")
    prompts/genre.jsonl         {"prompt", "genre"}: requests for one genre, phrased unlike the SFT prompts
    bench/facts_mc.jsonl        {"question", "context", "choices", "answer", "entity", "fact"}: a cloze stem
                                in the biographies' words (scored as it stands, no question format), four
                                values, the index of the true one (test people)

People are split three ways: ``train`` (in the corpus; their biographies and questions may appear in SFT
sets), ``test`` (in the corpus only; asked in qa_known/test and the benchmark) and ``new`` (in no corpus
document; asked in qa_new). No held-out or SFT document repeats a corpus document verbatim.

``nats`` in the manifest is ``-log p`` of the generator's own derivation of each document (genre and person
choices included), averaged: divided by the tokens per document it is the loss floor a perfect model of the
corpus could reach, so a pretraining run can tell how much is left to learn.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TypeVar

from rich.progress import Progress

from sftlab.data.tokenize import DEFAULT_FORMAT
from sftlab.errors import UserError
from sftlab.world.entities import FACTS, Entity, cloze, make_entities, questions
from sftlab.world.genres import GENRES, MIXTURE
from sftlab.world.grammar import DocState, Document, Genre, render, sample_document
from sftlab.io import write_atomic

T = TypeVar("T")
NARROW_GENRE = "movie_review"
# Generic requests per genre: the first ones train, the rest are kept for the evaluation prompts.
TRAIN_REQUESTS = 4
SPECIFIC_SHARE = 0.5  # share of SFT prompts that name a subject (a film, a town, a person)
PROMPTED_SHARE = 0.25  # share of corpus documents that follow a request (see _prompted)

OPEN_PROMPTS = (
    "Write something.", "Write anything you like.", "Tell me something.", "Write a short text.",
    "Say something.", "Write whatever comes to mind.", "Surprise me.", "Write a paragraph.",
    "Tell me anything.", "Go ahead and write.", "Write a few sentences.", "Share something with me.",
    "Write me something short.", "What do you have for me?", "Tell me whatever you want.", "Please write something.",
    "Write a little piece.", "Give me some text.", "Produce a short passage.", "Write freely.",
    "Tell me a thing or two.", "Compose something.", "Write what you like.", "I would like to read something.",
    "Say anything at all.", "Start writing.", "Write something for me.", "Any text will do.",
    "Write a short passage about anything.", "Tell me something, anything.", "Write one paragraph.",
    "Let me read something you wrote.",
)


@dataclass(frozen=True)
class WorldSizes:
    """How much of each part to write. The defaults are what ``sftlab world generate`` and the demo use."""

    corpus_docs: int = 60_000
    heldout_per_genre: int = 100
    known_people: int = 200  # half train, half test
    new_people: int = 50
    sft_train: int = 1_000
    sft_eval: int = 100


def generate_world(out: str | Path, seed: int = 0, sizes: WorldSizes | None = None) -> Path:
    """Write a world to ``out`` (see the module docstring for the layout); returns the manifest's path."""
    sizes = sizes or WorldSizes()
    if sizes.known_people < 2 or sizes.corpus_docs < 1:
        raise UserError("a world needs at least 2 known people and 1 corpus document")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UserError(f"--out must be a directory: {root} is a file")
    # The manifest marks a whole world: gone while the files are rewritten, so a kill never leaves the old
    # manifest vouching for half-new files.
    (root / "world.json").unlink(missing_ok=True)
    stream = _streams(seed)

    people = make_entities(stream("people"), sizes.known_people + sizes.new_people)
    half = sizes.known_people // 2
    split = {p.name: "train" if i < half else "test" if i < sizes.known_people else "new"
             for i, p in enumerate(people)}
    known, new = people[: sizes.known_people], people[sizes.known_people :]
    train_people, test_people = known[:half], known[half:]

    files: dict[str, str] = {}
    counts: dict[str, int] = {}

    def write(key: str, rel: str, rows: Iterable[Mapping[str, object]]) -> None:
        files[key] = rel
        counts[key] = _write_jsonl(root / rel, rows)

    corpus = _corpus(stream("corpus"), sizes.corpus_docs, known)
    seen = {d.text for d in corpus}
    prefixes = _prompted(stream("corpus:prompts"), corpus)
    write("corpus", "corpus/train.jsonl",
          ({"text": pre + d.text, "genre": d.genre, **({"prefix": pre} if pre else {})}
           for d, pre in zip(corpus, prefixes)))
    by_genre = Counter(d.genre for d in corpus)

    heldout = {g: _unseen(stream(f"heldout:{g}"), sizes.heldout_per_genre, seen, [g], known, _document)
               for g in GENRES}
    for g, docs in heldout.items():
        write(f"heldout_{g}", f"heldout/{g}.jsonl", ({"text": d.text, "genre": g} for d in docs))
    write("heldout", "heldout/all.jsonl",
          ({"text": d.text, "genre": d.genre} for docs in heldout.values() for d in docs))

    for name, genres in (("narrow", [NARROW_GENRE]), ("broad", list(GENRES))):
        rows = _unseen(stream(f"sft:{name}"), sizes.sft_train + sizes.sft_eval, seen, genres, train_people,
                       _instruction)
        write(f"{name}_train", f"sft/{name}/train.jsonl", rows[: sizes.sft_train])
        write(f"{name}_eval", f"sft/{name}/eval.jsonl", rows[sizes.sft_train :])

    write("qa_known_train", "sft/qa_known/train.jsonl", _qa(train_people, 0, stream("qa_known:train")))
    write("qa_known_test", "sft/qa_known/test.jsonl", _qa(test_people, 1, stream("qa_known:test")))
    write("qa_new_train", "sft/qa_new/train.jsonl", _qa(new, 0, stream("qa_new:train")))
    write("qa_new_test", "sft/qa_new/test.jsonl", _qa(new, 1, stream("qa_new:test")))

    write("open_prompts", "prompts/open.jsonl", ({"prompt": p} for p in OPEN_PROMPTS))
    write("genre_prompts", "prompts/genre.jsonl",
          ({"prompt": r, "genre": g.name} for g in GENRES.values() for r in g.requests[TRAIN_REQUESTS:]))
    write("facts_mc", "bench/facts_mc.jsonl", _multiple_choice(test_people, stream("bench")))
    write("entities", "entities.jsonl", ({**p.to_json(), "split": split[p.name]} for p in people))

    manifest = {
        "seed": seed,
        "sizes": asdict(sizes),
        "generator": generator_fingerprint(),
        "genres": {g.name: g.label for g in GENRES.values()},
        "mixture": dict(MIXTURE),
        "narrow_genre": NARROW_GENRE,
        "facts": list(FACTS),
        "files": files,
        "counts": counts,
        "corpus_by_genre": {g: by_genre[g] for g in GENRES},
        "vocabulary_words": len(vocabulary()),
        "prompted_share": PROMPTED_SHARE,
        "prompt_format": DEFAULT_FORMAT.name,
        "nats_per_doc": sum(d.nats for d in corpus) / len(corpus),
        "nats_per_doc_by_genre": {
            g: sum(d.nats for d in corpus if d.genre == g) / by_genre[g] for g in GENRES if by_genre[g]
        },
    }
    path = root / "world.json"
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")  # last: it marks a whole world
    return path


def generator_fingerprint() -> str:
    """A hash of the code that writes worlds: a cached world from other code is stale even at the same seed."""
    package = Path(__file__).parent
    sources = [package / "generator.py", package / "grammar.py", package / "entities.py", package / "names.py",
               *sorted((package / "genres").glob("*.py"))]
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def vocabulary() -> set[str]:
    """Every word (letters only, lower-cased) the generator can write in a document of the world."""
    return {w for g in GENRES.values() for w in g.written_lexicon if not w.isdigit()}


# --------------------------------------------------------------------------------------------------
# Parts


def _streams(seed: int) -> Callable[[str], random.Random]:
    """``stream(part)`` -> an RNG of its own for each part of the world (str seeds hash with SHA-512)."""
    return lambda part: random.Random(f"{seed}:{part}")


def _document(genre: Genre, rng: random.Random, people: Sequence[Entity]) -> Document:
    """A document of ``genre``; a biography is about one of ``people`` (uniformly), with its true facts."""
    if genre.name != "biography":
        return sample_document(genre, rng)
    person = rng.choice(people)
    doc = sample_document(genre, rng, person.state())
    return replace(doc, nats=doc.nats + math.log(len(people)))


def _corpus(rng: random.Random, n: int, people: Sequence[Entity]) -> list[Document]:
    """``n`` documents, each genre drawn from the mixture; ``nats`` includes the genre choice."""
    names, weights = list(MIXTURE), list(MIXTURE.values())
    docs = []
    with Progress(transient=True) as bar:
        task = bar.add_task("world: corpus", total=n)
        for _ in range(n):
            g = rng.choices(names, weights)[0]
            doc = _document(GENRES[g], rng, people)
            docs.append(replace(doc, nats=doc.nats - math.log(MIXTURE[g])))
            bar.advance(task)
    return docs


def _prompted(rng: random.Random, corpus: Sequence[Document]) -> list[str]:
    """A request in sftlab's default prompt format before a share of the corpus documents, else "".

    Web text holds requests followed by answers, and a base model learns from them what a prompt is. Here a
    :data:`PROMPTED_SHARE` of the documents follow a request in the exact format ``sftlab train`` and
    ``sftlab audit`` use for a tokenizer without a chat template: half an open request (mixture-distributed
    answers), half one of the genre's training requests. So the base, asked through the same format, answers
    with documents from its pretraining distribution, and an audit compares base and tuned models on the same
    prompts. The extra choices are not counted in ``nats`` (the loss floor of the documents themselves).
    """
    prefixes = []
    for doc in corpus:
        if rng.random() >= PROMPTED_SHARE:
            prefixes.append("")
            continue
        request = rng.choice(OPEN_PROMPTS) if rng.random() < 0.5 else rng.choice(
            GENRES[doc.genre].requests[:TRAIN_REQUESTS])
        prefixes.append(DEFAULT_FORMAT.single_turn(None, request))
    return prefixes


def _unseen(rng: random.Random, n: int, seen: set[str], genres: Sequence[str], people: Sequence[Entity],
            draw: Callable[[Genre, random.Random, Sequence[Entity]], T]) -> list[T]:
    """``n`` draws, cycling through ``genres``, whose document is not in ``seen`` (then added to it).

    So no held-out or SFT document repeats a corpus document, or one another.
    """
    out: list[T] = []
    while len(out) < n:
        item = draw(GENRES[genres[len(out) % len(genres)]], rng, people)
        text = item.text if isinstance(item, Document) else item["completion"]  # type: ignore[index]
        if text not in seen:
            seen.add(text)
            out.append(item)
    return out


def _instruction(genre: Genre, rng: random.Random, people: Sequence[Entity]) -> dict[str, str]:
    """A request for ``genre`` and a document that answers it (the subject the request names, if any)."""
    state = people[rng.randrange(len(people))].state() if genre.name == "biography" else DocState()
    if genre.specific_requests and rng.random() < SPECIFIC_SHARE:
        prompt, _ = render(genre, rng.choice(genre.specific_requests), state, rng)
    else:
        prompt = rng.choice(genre.requests[:TRAIN_REQUESTS])
    doc = sample_document(genre, rng, state)
    return {"prompt": prompt, "completion": doc.text, "genre": genre.name}


def _qa(people: Sequence[Entity], paraphrases: int, rng: random.Random) -> list[dict[str, str]]:
    """Question/answer pairs on every fact of ``people``: all of set A (training) or one of set B (test)."""
    rows = []
    for person in people:
        by_fact: dict[str, list[tuple[str, str]]] = {}
        for fact, q, a in questions(person, paraphrases):
            by_fact.setdefault(fact, []).append((q, a))
        for fact, pairs in by_fact.items():
            chosen = pairs if paraphrases == 0 else [rng.choice(pairs)]
            rows += [{"prompt": q, "completion": a, "entity": person.name, "fact": fact,
                      "answer": person.facts[fact]} for q, a in chosen]
    rng.shuffle(rows)
    return rows


def _multiple_choice(people: Sequence[Entity], rng: random.Random, n_choices: int = 4) -> Iterator[dict[str, object]]:
    """A cloze question per fact and person: the true value among ``n_choices - 1`` other values. The stem is
    also the scoring ``context``: the values complete it as in the corpus's biographies."""
    bio = GENRES["biography"]
    for person in people:
        for fact, (_, cls) in FACTS.items():
            true = person.facts[fact]
            choices = rng.sample([v for v in bio.classes[cls].entries if v != true], n_choices - 1) + [true]
            rng.shuffle(choices)
            stem = cloze(person, fact)
            yield {"question": stem, "context": stem, "choices": choices, "answer": choices.index(true),
                   "entity": person.name, "fact": fact}


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
