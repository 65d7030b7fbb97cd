"""Proper names of the world, most of them two words built as full cross products of two word lists.

A built class of names is *every* first-word + second-word pair, never a subset, and its words are common
enough in the corpus that the tokenizer keeps each one whole: a model that learned the two lists and
recombines them still writes a valid name. (Names glued from syllables, "Ashford" from "Ash" + "ford",
were split into sub-word pieces that small models recombined across classes into non-words.) Each class
has its own words, so a name of one class cannot be mistaken for a name of another. The lists are fixed,
so the lexicon is the same for every world seed.
"""

from __future__ import annotations

from collections.abc import Sequence


def cross(firsts: Sequence[str], seconds: Sequence[str], sep: str = " ") -> list[str]:
    """Every ``first + sep + second``, first-major."""
    return [a + sep + b for a in firsts for b in seconds]


# Biography: birth towns.
BIRTH_TOWNS = cross(["Saint", "Port", "Fort", "Mount", "Old", "New", "Long", "High"],
                    ["Albans", "Agnes", "Bridget", "Clement", "Denis", "Edmund", "Giles", "Osric"])
# Weather: towns the forecasts are for.
FORECAST_TOWNS = cross(["North", "South", "East", "West", "Upper", "Lower", "Great", "Little"],
                       ["Ashby", "Barton", "Chilton", "Dunham", "Elston", "Felling", "Gorton", "Hexley"])
# Finance: listed companies.
COMPANIES = cross(["Apex", "Blue", "Crest", "Delta", "Iron", "Juno", "Grand", "Helix", "Orbit", "Summit"],
                  ["Holdings", "Industries", "Works", "Group", "Trading", "Mills", "Foods", "Motors"])
# Astronomy: stars (Bayer-style), planets, comets and nebulae.
STARS = cross(["Alpha", "Beta", "Gamma", "Epsilon", "Zeta", "Theta", "Kappa", "Sigma"],
              ["Lyrae", "Cygni", "Aquilae", "Tauri", "Orionis", "Leonis"])
PLANETS = cross(["Kepler", "Gliese", "Tycho", "Lacaille", "Wolf", "Ross"], ["b", "c", "d", "e", "f"])
NEBULAE = cross(["Veil", "Lantern", "Heron", "Ember", "Crab", "Lagoon"], ["Nebula"])
# Sports: players' surnames.
PLAYERS = ["Silva", "Costa", "Kowalski", "Novak", "Jensen", "Murphy", "Rossi", "Santos", "Dubois", "Schmidt",
           "Nilsson", "Moreno", "Okafor", "Petrov", "Haddad", "Tanaka", "Fischer", "Larsen", "Romero", "Bakker",
           "Andersen", "Barros", "Castillo", "Dembele", "Eriksen", "Ferreira", "Garcia", "Hansen", "Ibrahim",
           "Jovanovic", "Kaya", "Lindgren", "Mendes", "Nakamura", "Oliveira", "Pereira", "Quinn", "Rahman",
           "Sorensen", "Torres", "Urban", "Vargas", "Weber", "Yilmaz", "Zielinski", "Alves", "Benitez", "Chavez",
           "Diallo", "Esposito", "Fontaine", "Gomez", "Horvat", "Iversen", "Jimenez", "Koch", "Lopez", "Mensah",
           "Nunez", "Ortiz"]
COMETS = ["Halley", "Encke", "Biela", "Tempel", "Holmes", "Brooks", "Faye", "Borrelly", "Giacobini", "Kohoutek",
          "Westphal", "Pons", "Swift", "Tuttle", "Wirtanen", "Hartley"]
# Movie reviews: film titles, directors and actors.
FILM_TITLES = cross(["Silent", "Crimson", "Broken", "Hidden", "Last", "Velvet", "Paper", "Winter", "Midnight",
                     "Distant", "Hollow", "Scarlet"],
                    ["Harbor", "Garden", "Signal", "Letter", "Empire", "Mirror", "Station", "Orchard",
                     "Promise", "Frontier", "Lantern", "Carnival"])
DIRECTORS = cross(["Anja", "Bruno", "Carla", "Dario", "Elsa", "Felix", "Greta", "Hanno"],
                  ["Marchetti", "Lindqvist", "Okonkwo", "Haverford", "Castellan", "Duvall", "Brennan", "Sato"])
ACTORS = cross(["Jonah", "Kira", "Lena", "Milo", "Nadia", "Oscar", "Priya", "Rafe", "Stella"],
               ["Bellamy", "Carrow", "Delacroix", "Ashdown", "Fairweather", "Goldsworth", "Lacey", "Moreau"])
