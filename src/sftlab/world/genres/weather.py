"""Weather reports: one town and day, and one sky (wet, dry or cold) that the temperatures and advice fit."""

from __future__ import annotations

from sftlab.world.grammar import Genre, WordClass, grouped, words
from sftlab.world.names import FORECAST_TOWNS

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
SKY = "sky"


def _numbers(lo: int, hi: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(lo, hi + 1))


GENRE = Genre.build(
    name="weather",
    label="weather report",
    classes=[
        words("town", FORECAST_TOWNS),
        words("day", DAYS),
        grouped("cond", SKY,
                wet=["rain", "showers", "drizzle", "thunderstorms", "downpours", "hail", "mist", "squalls", "cloudbursts",
                     "monsoon rain", "spray", "puddles"],
                dry=["sunshine", "clear skies", "blue skies", "haze", "sunny spells", "heat", "dry air", "warmth",
                     "brightness", "glare", "drought", "heatwaves"],
                cold=["snow", "sleet", "frost", "ice", "flurries", "fog", "blizzards", "hoarfrost", "snowdrifts",
                      "icicles", "rime", "permafrost"]),
        grouped("sky_adj", SKY,
                wet=["rainy", "wet", "stormy", "showery", "damp", "grey", "drizzly", "unsettled"],
                dry=["sunny", "dry", "bright", "clear", "fine", "warm", "balmy", "cloudless"],
                cold=["snowy", "freezing", "icy", "frosty", "bitter", "wintry", "raw", "chilly"]),
        # Every number from 0 to 49 is a temperature of one sky: a model that writes a near miss stays valid.
        WordClass("temp", {"cold": _numbers(0, 9), "wet": _numbers(10, 19), "dry": _numbers(20, 49)}, SKY),
        grouped("gear", SKY,
                wet=["umbrella", "raincoat", "wellies", "waterproofs", "galoshes"],
                dry=["sunglasses", "sunhat", "suncream", "sandals", "parasol"],
                cold=["gloves", "scarf", "overcoat", "mittens", "earmuffs"]),
        words("tod", ("morning", "afternoon", "evening", "night", "dawn", "dusk", "midday", "twilight")),
        words("direction", ("north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest")),
        words("region", ("coast", "hills", "valleys", "uplands", "lowlands", "harbour", "moors", "fens", "downs",
                         "estuary", "islands", "marshes", "meadows", "peaks", "plains", "ridges", "woodlands",
                         "heaths")),
        words("chance", ("small", "good", "slight", "strong", "fair", "real", "remote")),
        words("wind", ("breeze", "gale", "gust", "wind", "squall", "zephyr", "draught", "whirlwind")),
        words("pressure", ("rising", "falling", "steady")),
    ],
    opening=[
        "Weather report: {town=t} on {day=d}.",
        "Weather report: {sky_adj} weather ahead for {town=t} on {day=d}.",
        "Weather report: {day=d} in {town=t} will be {sky_adj}.",
    ],
    body=[
        "Expect {cond}[ in the {tod}| later| all day|].",
        "[Temperatures will reach|Overnight it will fall to] {temp} degrees.",
        "A {wind} will blow from the {direction}.",
        "There is a {chance} chance of {cond}[ in the {tod}|].",
        "By the {tod} the sky will be {sky_adj}.",
        "The {region} will see {cond}[ in the {tod}|].",
        "Air pressure is {pressure}.",
    ],
    closing=[
        "[Remember|Do not forget] your {gear}[ on {day=d}|].",
        "Stay safe in {town=t}.",
        "Enjoy your {day=d} in {town=t}.",
    ],
    requests=[
        "Write a weather report.",
        "What will the weather be like?",
        "Give me a weather forecast.",
        "Write a short forecast.",
        "Tell me the weather.",
        "Describe the weather for a town.",
    ],
    specific_requests=[
        "Write a weather report for {town=t}.",
        "What will the weather be like in {town=t} on {day=d}?",
        "Give me the forecast for {day=d}.",
    ],
    n_optional=(1, 2),
)
