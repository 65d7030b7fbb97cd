"""Movie reviews: one film, and one mood (``pos`` or ``neg``) that every judgement in the review shares."""

from __future__ import annotations

from sftlab.world.grammar import Genre, grouped, words
from sftlab.world.names import ACTORS, DIRECTORS, FILM_TITLES

MOOD = "mood"

GENRE = Genre.build(
    name="movie_review",
    label="movie review",
    classes=[
        words("film", FILM_TITLES),
        words("director", DIRECTORS),
        words("actor", ACTORS),
        words("kind", ("thriller", "comedy", "drama", "western", "romance", "mystery", "musical", "documentary",
                       "heist film", "ghost story", "road movie", "satire", "biopic", "farce", "melodrama", "noir",
                       "spy film", "war epic", "disaster movie", "fantasy")),
        grouped("verdict", MOOD,
                pos=["brilliant", "moving", "gripping", "charming", "stunning", "delightful", "superb", "masterful",
                     "tender", "witty", "haunting", "dazzling", "powerful", "beautiful"],
                neg=["dull", "tedious", "clumsy", "bland", "messy", "lifeless", "forgettable", "shallow", "bloated",
                     "tiresome", "muddled", "hollow", "plodding", "lazy"]),
        grouped("ending", MOOD, pos=["delights", "satisfies", "soars", "shines", "lingers", "sings"],
                neg=["disappoints", "drags", "fizzles", "stumbles", "sags", "flops"]),
        grouped("pace", MOOD, pos=["brisk", "lively", "taut", "nimble"], neg=["sluggish", "uneven", "slow", "leaden"]),
        grouped("stars", MOOD, pos=["four stars", "five stars"], neg=["one star", "two stars"]),
        grouped("recommend", MOOD, pos=["Go and see it", "Do not miss it", "See it twice"],
                neg=["Skip it", "Save your money", "Stay at home"]),
        grouped("tone", MOOD, pos=["positive", "glowing", "loving", "rapturous"],
                neg=["negative", "harsh", "critical", "scathing"]),
        words("aspect", ("script", "soundtrack", "camera work", "editing", "dialogue", "lighting", "score",
                         "set design", "costume design", "casting", "screenplay", "cinematography", "choreography",
                         "makeup", "sound design", "plot")),
        words("role", ("detective", "widow", "soldier", "farmer", "runaway", "stranger", "smuggler", "priest",
                       "spy", "boxer", "singer", "lighthouse keeper", "gambler", "nun", "pilot officer", "sheriff",
                       "tycoon", "vagabond", "fiddler", "widower")),
    ],
    opening=[
        "Movie review: {film=f} is a {verdict} {kind=k}.",
        "Movie review: I watched {film=f}, a {kind=k} by {director=dr}.",
        "Movie review: {film=f}, a {verdict} {kind=k}.",
    ],
    body=[
        "{actor=a1} is {verdict}[ as the {role}|].",
        "The [{aspect}|story|acting] is {verdict}[ from start to finish|].",
        "The pace is {pace}.",
        "{director=dr} keeps it {verdict}.",
        "Every scene with {actor=a2} is {verdict}.",
        "Fans of the {kind=k} will find it {verdict}.",
        "The ending {ending}.",
    ],
    closing=[
        "I give [{film=f}|it] {stars}.",
        "{recommend}.",
        "Overall, a {verdict} film.",
    ],
    requests=[
        "Write a movie review.",
        "Review a film for me.",
        "What did you think of the last film you saw?",
        "Write a short film review.",
        "Tell me about a movie you watched.",
        "Give me a review of a film.",
    ],
    specific_requests=[
        "Write a review of {film=f}.",
        "Write a {tone} review of {film=f}.",
        "What do you think of {film=f}?",
        "Write a {tone} review of the {kind=k} {film=f}.",
    ],
    n_optional=(1, 2),
)
