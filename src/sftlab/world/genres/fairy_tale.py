"""Fairy tales: one hero, one villain and one magic gift, each named the same way all through the tale."""

from __future__ import annotations

from sftlab.world.grammar import Genre, words

HEROES = (
    "Elowen", "Tamsin", "Rowan", "Bram", "Isolde", "Perrin", "Wren", "Corin", "Linnet", "Alder", "Briony",
    "Cadoc", "Elspeth", "Fenn", "Gwyneth", "Hollin", "Ivo", "Juniper", "Kestrel", "Lark", "Merrick", "Nerys",
    "Oriel", "Pip", "Thistle", "Rosalie", "Sorrel", "Tobin", "Una", "Vesper", "Willow", "Yarrow", "Zinnia",
    "Bryn", "Delphine", "Emrys", "Fable", "Gorse", "Heath", "Ivy", "Aurelia", "Blodwen", "Clover", "Dewi",
    "Eira", "Fern", "Gawain", "Hazel", "Iolo", "Jessamy", "Kit", "Lorcan", "Maelis", "Nettle", "Olwen", "Peregrine",
    "Rhiannon", "Saffi", "Tegan", "Wystan",
)

GENRE = Genre.build(
    name="fairy_tale",
    label="fairy tale",
    classes=[
        words("hero", HEROES),
        words("hero_desc", ("shepherd", "goatherd", "princess", "woodcutter", "spinner", "foundling", "prince",
                            "drummer boy", "goose girl", "minstrel", "stable boy", "farm boy", "swineherd",
                            "kitchen maid", "huntsman", "chimney sweep")),
        words("place", ("dark forest", "tall tower", "quiet village", "crystal lake", "hidden valley",
                        "misty mountain", "crooked cottage", "frozen kingdom", "glass castle", "reed marsh",
                        "sunken city", "thorny hedge", "windy moor", "golden meadow", "silent abbey", "salt mine")),
        words("villain", ("witch", "wolf", "giant", "troll", "dragon", "goblin", "sorcerer", "serpent", "sea hag",
                          "stepmother", "warlock", "bogeyman")),
        words("evil_adj", ("wicked", "cruel", "greedy", "sly", "jealous", "crafty", "spiteful", "vain", "grim",
                           "vile", "hateful", "wretched", "scheming", "cold")),
        words("helper", ("talking crow", "wise owl", "friendly bear", "tiny mouse", "kind frog", "silver fish",
                         "white dove", "lame horse", "fairy godmother", "little elf", "grey heron", "kindly giant",
                         "three legged hare", "copper beetle", "talking pike", "sleepy dormouse")),
        words("gift", ("golden key", "silver ring", "magic harp", "feather cloak", "wooden flute", "glass slipper",
                       "bottomless purse", "singing bird", "silken thread", "tinderbox", "walnut shell", "magic comb",
                       "bread roll", "moonstone", "seven league boots", "spindle")),
        words("prison", ("deep well", "locked tower", "copper cage", "dark cellar", "hollow tree", "stone tower")),
        words("virtue", ("kindness", "courage", "patience", "honesty", "cleverness", "loyalty", "generosity",
                         "humility", "wit", "mercy", "cunning", "faith", "grace", "modesty")),
        words("number", ("three", "seven", "nine", "twelve", "five", "forty", "a hundred", "eleven")),
    ],
    opening=[
        "Fairy tale: once upon a time there lived a {hero_desc=hd} named {hero=h}.",
        "Fairy tale: long ago, in a {place=p}, lived a {hero_desc=hd} named {hero=h}.",
        "Fairy tale: there was once a {hero_desc=hd} called {hero=h}.",
    ],
    body=[
        "One day {hero=h} met a {helper=hp}.",
        "A {evil_adj} {villain=v} lived [nearby|in a {place=p}].",
        "The {villain=v} locked {hero=h} in a {prison}.",
        "The {helper=hp} gave {hero=h} a {gift=g}.",
        "With the {gift=g}, {hero=h} [escaped|found the way home|defeated the {villain=v}].",
        "{hero=h} tricked the {villain=v} with {virtue}.",
        "The {villain=v} roared with rage.",
        "For {number} days {hero=h} walked on.",
    ],
    closing=[
        "And {hero=h} lived happily ever after.",
        "The {villain=v} was never seen again.",
        "And so {virtue} won the day.",
    ],
    requests=[
        "Tell me a fairy tale.",
        "Write a fairy tale.",
        "Tell me a bedtime story.",
        "Write a story that starts with once upon a time.",
        "Tell me a story with magic in it.",
        "Write a short fairy tale for children.",
    ],
    specific_requests=[
        "Tell me a fairy tale about {hero=h}.",
        "Tell me a fairy tale about a {hero_desc=hd} named {hero=h}.",
        "Tell me a story about a {hero_desc=hd}.",
    ],
    n_optional=(1, 2),
)
