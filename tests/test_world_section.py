"""The audit's world section: recognises world prompts and calls a collapse to one genre a loss."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sftlab.audit.measures.context import AuditContext
from sftlab.config import AuditConfig
from sftlab.data.records import Message
from sftlab.world.entities import FACTS, make_entities
from sftlab.world.generator import OPEN_PROMPTS, WorldSizes, generate_world
from sftlab.world.genres import GENRES
from sftlab.world.grammar import sample_document
from sftlab.audit.measures.world import find_world, world_section


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=1, sizes=WorldSizes(corpus_docs=200, heldout_per_genre=2, known_people=8,
                                                 new_people=2, sft_train=8, sft_eval=8))
    return out


def test_world_section_sees_a_collapse(world: Path, tmp_path: Path) -> None:
    assert find_world(world / "prompts/open.jsonl") == world.resolve()
    assert find_world(tmp_path / "x.jsonl") is None
    rng = random.Random(0)
    people = make_entities(rng, 10)
    names = list(GENRES)
    open_prompts = list(OPEN_PROMPTS[:16])

    def doc(genre: str) -> str:
        return sample_document(GENRES[genre], rng, rng.choice(people).state() if genre == "biography" else None).text

    k = 8
    base = [[doc(names[(p * k + i) % 8]) for i in range(k)] for p in range(len(open_prompts))]
    tuned = [[doc("movie_review") for _ in range(k)] for _ in open_prompts]
    messages = [[Message("user", p)] for p in open_prompts]
    cfg = AuditConfig(base="b", tuned=["t"], prompts=str(world / "prompts/open.jsonl"))
    ctx = AuditContext(cfg, tmp_path, "base", {"base": "b", "tuned": "t"}, messages,
                       {"base": base, "tuned": tuned}, {"base": [s[0] for s in base], "tuned": [s[0] for s in tuned]})
    section = world_section(world, n_boot=200)(ctx)
    assert section is not None and section.key == "world"
    models = section.data["models"]
    assert models["base"]["open"]["covered"] == 8 and models["tuned"]["open"]["covered"] == 1
    assert models["tuned"]["open"]["entropy"] == 0.0 and models["base"]["valid_rate"] == 1.0
    assert section.data["deltas"]["tuned"]["entropy"]["ci_high"] < 0
    assert any(f.kind == "lost" and "entropy" in f.text for f in section.findings)
    assert "genres covered" in section.markdown

    # A genre request and a question, answered right by the base and wrongly by the tuned model.
    genre_row = json.loads((world / "prompts/genre.jsonl").read_text().splitlines()[0])
    qa_row = json.loads((world / "sft/qa_known/test.jsonl").read_text().splitlines()[0])
    wrong = next(v for v in GENRES["biography"].classes[FACTS[qa_row["fact"]].cls].entries if v != qa_row["answer"])
    ctx.messages += [[Message("user", genre_row["prompt"])], [Message("user", qa_row["prompt"])]]
    ctx.samples["base"] += [[doc(genre_row["genre"])] * k, [qa_row["completion"]] * k]
    ctx.samples["tuned"] += [[doc("movie_review")] * k, [wrong] * k]
    ctx.greedy["base"] += [ctx.samples["base"][-2][0], qa_row["completion"]]
    ctx.greedy["tuned"] += [ctx.samples["tuned"][-2][0], wrong]
    models = world_section(world, n_boot=200)(ctx).data["models"]
    assert models["base"]["adherence"] == 1.0 and models["tuned"]["adherence"] == 0.0
    assert models["base"]["fact"] == 1.0 and models["tuned"]["fact"] == 0.0

    other = AuditContext(cfg, tmp_path, "base", {"base": "b"}, [[Message("user", "Hello?")]], {"base": [["x"]]},
                         {"base": ["x"]})
    assert world_section(world)(other) is None, "prompts from elsewhere get no world section"
