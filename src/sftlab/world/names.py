"""Invented proper names, most of them built as full cross products of syllables.

A built class of names is *every* prefix + suffix pair, never a subset: a model that learned the parts and
recombines them still writes a valid name, and each class has its own syllables, so a name of one class
cannot be mistaken for a name of another. The lists are fixed (no randomness), so the lexicon is the same
for every world seed.
"""

from __future__ import annotations

from collections.abc import Sequence


def cross(prefixes: Sequence[str], suffixes: Sequence[str], sep: str = "") -> list[str]:
    """Every ``prefix + sep + suffix``, prefix-major."""
    return [p + sep + s for p in prefixes for s in suffixes]


# Biography: birth towns.
BIRTH_TOWNS = cross(["Ash", "Bram", "Cor", "Dun", "Ely", "Fal", "Gar", "Hol", "Ick", "Jes"],
                    ["ford", "mere", "wick", "stead", "bury", "combe", "ham", "ley", "thorpe", "worth"])
# Weather: towns the forecasts are for.
FORECAST_TOWNS = cross(["Kin", "Lor", "Mar", "Nes", "Orm", "Pel", "Quar", "Rud", "Sen", "Tur"],
                       ["port", "haven", "field", "moor", "gate", "cliff", "dale", "ness", "mouth", "holm"])
# Finance: listed companies.
COMPANIES = cross(["Apex", "Blue", "Crest", "Delta", "Ever", "Forge", "Grand", "Helix", "Iron", "Juno",
                   "Keystone", "Lumen"], ["core", "line", "vest", "works", "tech", "mark", "well", "ridge", "field",
                                          "gate"])
# Astronomy: stars, planets, comets and nebulae.
STARS = cross(["Al", "Bet", "Cae", "Dra", "Ery", "Kor", "Lum", "Myr", "Nai", "Sel"],
              ["ara", "ion", "ix", "os", "una", "eth", "ar", "elle"])
PLANETS = cross(["Tor", "Vel", "Xan", "Zeph", "Ory", "Pyx", "Quo", "Ryl"], ["is", "us", "ea", "on", "ith"])
COMETS = ["Halvard", "Brisa", "Tolland", "Merrow", "Questa", "Vantor", "Ilse", "Ormund", "Kessa", "Dunleavy"]
NEBULAE = cross(["Veil", "Lantern", "Heron", "Ember"], ["mist", "glow", "shroud"])
# Sports: players' surnames.
PLAYERS = cross(["Oka", "Bala", "Dimi", "Mora", "Rusk", "Tava", "Ivan", "Sola", "Kuba", "Pere"],
                ["for", "nko", "ssi", "rez", "lund", "vic", "tti", "ba"])
# Movie reviews: film titles, directors and actors.
FILM_TITLES = cross(["Silent", "Crimson", "Broken", "Hidden", "Last", "Velvet", "Paper", "Winter", "Midnight",
                     "Distant", "Hollow", "Scarlet"],
                    ["Harbor", "Garden", "Signal", "Letter", "Empire", "Mirror", "Station", "Orchard",
                     "Promise", "Frontier", "Lantern", "Carnival"], sep=" ")
DIRECTORS = cross(["Anja", "Bruno", "Carla", "Dario", "Elsa", "Felix", "Greta", "Hanno"],
                  ["Marchetti", "Lindqvist", "Okonkwo", "Haverford", "Castellan", "Duvall", "Brennan", "Sato"], sep=" ")
ACTORS = cross(["Jonah", "Kira", "Lena", "Milo", "Nadia", "Oscar", "Priya", "Rafe", "Stella"],
               ["Bellamy", "Carrow", "Delacroix", "Ashdown", "Fairweather", "Goldsworth", "Lacey", "Moreau"], sep=" ")
