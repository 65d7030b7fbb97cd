"""Sky notes: one celestial object, and one kind of object (star, planet, comet or nebula) its facts fit."""

from __future__ import annotations

from sftlab.world.grammar import Genre, grouped, number_range, words
from sftlab.world.names import COMETS, NEBULAE, PLANETS, STARS

BODY = "body"

GENRE = Genre.build(
    name="astronomy",
    label="sky note",
    classes=[
        grouped("object", BODY, star=STARS, planet=PLANETS, comet=COMETS, nebula=NEBULAE),
        grouped("kind", BODY, star=["star"], planet=["planet"], comet=["comet"], nebula=["nebula"]),
        grouped("feature", BODY,
                star=["burns blue", "shines white", "is a red giant", "flickers faintly", "is a binary"],
                planet=["has three moons", "has icy rings", "is covered in dust", "is made of gas", "has no moons"],
                comet=["has a long tail", "returns every century", "is made of ice", "glows green", "sheds meteors"],
                nebula=["glows pink", "hides young stars", "is a cloud of gas", "looks like smoke", "is a stellar nursery"]),
        words("constellation", ("Hunter", "Swan", "Lyre", "Great Bear", "Archer", "Whale", "Stork", "Twins",
                                "Crown", "Dolphin", "Scales", "Ship", "Little Fox", "Eagle Bearer", "Altar",
                                "Centaur", "Chameleon", "Compass", "Furnace", "Giraffe", "Harp", "Lizard",
                                "Peacock", "Phoenix", "Sextant", "Unicorn")),
        number_range("distance", 1, 999),
        words("instrument", ("binoculars", "a telescope", "the naked eye", "a camera", "a spyglass",
                             "a reflector", "a refractor", "an astrolabe", "opera glasses")),
        words("when_sky", ("after midnight", "before dawn", "in spring", "in autumn", "in winter", "in summer",
                           "at dusk")),
        words("century", ("thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth",
                          "nineteenth", "twentieth")),
        words("observers", ("astronomers", "stargazers", "observers", "skywatchers", "monks", "navigators",
                            "shepherds", "sailors")),
        words("sky_dir", ("eastward", "westward", "skyward", "southward", "northward", "upward")),
        words("colour", ("blue", "red", "white", "orange", "yellow", "amber", "crimson", "gold", "violet",
                         "silvery")),
    ],
    opening=[
        "Sky note: {object=o} is a {kind} in the {constellation=cn}.",
        "Sky note: tonight we look at the {kind} {object=o} in the {constellation=cn}.",
        "Sky note: {object=o} lies in the {constellation=cn}.",
    ],
    body=[
        "It is about {distance=dist} light years away.",
        "[{object=o}|It|The {kind}] {feature}.",
        "You can see it with {instrument}.",
        "It is best seen {when_sky}.",
        "Its colour is {colour}.",
        "{observers} first saw it in the {century} century.",
        "In the {constellation=cn}, look {sky_dir}.",
        "Its light takes {distance=dist} years to reach us.",
    ],
    closing=[
        "Look for {object=o} on a clear night.",
        "{object=o} is a fine sight.",
        "Happy hunting in the {constellation=cn}.",
    ],
    requests=[
        "Tell me about something in the night sky.",
        "Write a note about astronomy.",
        "What can I see in the sky tonight?",
        "Describe a star or a planet.",
        "Write a short piece about space.",
        "Tell me about an object in space.",
    ],
    specific_requests=[
        "Tell me about {object=o}.",
        "What can I see in the {constellation=cn}?",
        "Write a sky note about a {kind}.",
    ],
    n_optional=(1, 2),
)
