"""Match reports: a winner and a loser (different teams) and a final score in which the winner leads."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

from sftlab.world.grammar import Genre, number_range, words
from sftlab.world.names import PLAYERS

TEAMS = (
    "Falcons", "Lions", "Rovers", "Wolves", "Tigers", "Hornets", "Pirates", "Badgers", "Bears", "Eagles",
    "Foxes", "Hawks", "Jaguars", "Kestrels", "Lynxes", "Mariners", "Otters", "Panthers", "Ravens", "Rams",
    "Saints", "Sharks", "Spartans", "Stags", "Swifts", "Thunder", "Vikings", "Wanderers", "Wildcats", "Wasps",
    "Bulldogs", "Cobras", "Dragons", "Giants", "Harriers", "Knights", "Raiders", "Rangers", "Royals", "Titans",
    "Albatrosses", "Bisons", "Cougars", "Dolphins", "Ferrets", "Gannets", "Herons", "Ibexes", "Jackals",
    "Koalas", "Leopards", "Magpies", "Narwhals", "Ospreys", "Pelicans", "Puffins", "Rhinos", "Seagulls",
    "Terriers", "Vultures",
)
MAX_GOALS = 6


def _draw_score(rng: random.Random) -> tuple[dict[str, tuple[str, str]], float]:
    """A final score with the winner ahead: uniform over the pairs 0 <= loser < winner <= MAX_GOALS."""
    pairs = [(w, l) for w in range(1, MAX_GOALS + 1) for l in range(w)]
    w, l = rng.choice(pairs)
    return {"ws": ("goals", str(w)), "ls": ("goals", str(l))}, -math.log(len(pairs))


def _winner_leads(bindings: Mapping[str, str]) -> str | None:
    if "ws" in bindings and "ls" in bindings and int(bindings["ws"]) <= int(bindings["ls"]):
        return f"the winners scored {bindings['ws']} but the losers {bindings['ls']}"
    return None


GENRE = Genre.build(
    name="sports",
    label="match report",
    classes=[
        words("team", TEAMS),
        number_range("goals", 0, 9),
        words("player", PLAYERS),
        words("position", ("striker", "goalkeeper", "defender", "captain", "winger", "midfielder", "substitute",
                           "playmaker", "sweeper", "stopper", "debutant", "veteran", "youngster", "skipper")),
        words("match_adj", ("tense", "thrilling", "scrappy", "dramatic", "drab", "feisty", "bruising", "nervy",
                            "pulsating", "heated", "tetchy", "rousing", "gritty", "breathless")),
        words("praise", ("clinical", "composed", "magnificent", "relentless", "unstoppable", "electric", "tireless",
                         "fearless", "majestic", "imperious", "industrious", "inspired")),
        number_range("minute", 1, 99),
        words("stadium", ("Riverside", "Kingsway", "Millfield", "Dockside", "Parkhead", "Castlegate")),
        number_range("cards", 1, 9),
    ],
    opening=[
        "Match report: the {team=win} beat the {team=lose} {goals=ws} to {goals=ls}.",
        "Match report: a {match_adj} game between the {team=win} and the {team=lose}.",
        "Match report: {team=win} {goals=ws}, {team=lose} {goals=ls}.",
    ],
    body=[
        "{player=p1} scored [after {minute} minutes|for the {team=win}|twice].",
        "[The {position} |]{player=p1} was {praise}.",
        "The {team=lose} never recovered.",
        "A [big|small|loud] crowd watched at {stadium}.",
        "The referee showed {cards} yellow cards.",
        "The {team=win} led at half time.",
        "The final score was {goals=ws} to {goals=ls}.",
        "{player=p2} missed a penalty for the {team=lose}.",
    ],
    closing=[
        "The {team=win} play again next week.",
        "It was a great day for the {team=win}.",
        "The {team=lose} must now regroup.",
    ],
    requests=[
        "Write a match report.",
        "Tell me about a football match.",
        "Write a sports report.",
        "Describe a game that was played.",
        "Give me the result of a match.",
        "Write a short report on a game.",
    ],
    specific_requests=[
        "Write a match report about the {team=win}.",
        "How did the {team=lose} get on in their last game?",
        "Write a report on the game between the {team=win} and the {team=lose}.",
    ],
    n_optional=(1, 2),
    prebind=_draw_score,
    prebind_vars=("ws", "ls"),
    check=_winner_leads,
)
