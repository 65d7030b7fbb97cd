"""The world's genres and their pretraining mixture weights.

Each module holds one genre: its word classes, its templates and how users ask for it. The weights are
deliberately unequal, so that a collapsed or a drifted model shows as a KL away from the mixture.
"""

from __future__ import annotations

from types import MappingProxyType

from sftlab.world.genres import astronomy, biography, fairy_tale, finance, movie_review, recipe, sports, weather
from sftlab.world.grammar import Genre

GENRES: MappingProxyType[str, Genre] = MappingProxyType({
    m.GENRE.name: m.GENRE
    for m in (biography, recipe, weather, sports, movie_review, fairy_tale, finance, astronomy)
})

MIXTURE: MappingProxyType[str, float] = MappingProxyType({
    "biography": 0.20,
    "recipe": 0.16,
    "weather": 0.14,
    "sports": 0.12,
    "movie_review": 0.11,
    "fairy_tale": 0.10,
    "finance": 0.09,
    "astronomy": 0.08,
})

assert list(MIXTURE) == list(GENRES) and abs(sum(MIXTURE.values()) - 1) < 1e-9
