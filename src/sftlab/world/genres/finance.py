"""Market reports: one company and one trend (``up`` or ``down``) that the moves, reasons and moods follow."""

from __future__ import annotations

from sftlab.world.grammar import Genre, grouped, number_range, words
from sftlab.world.names import COMPANIES

TREND = "trend"

GENRE = Genre.build(
    name="finance",
    label="market report",
    classes=[
        words("company", COMPANIES),
        words("sector", ("mining", "shipping", "software", "retail", "banking", "insurance", "steel", "textiles",
                         "railway", "telecoms", "energy", "chemicals", "aviation", "property", "brewing",
                         "timber", "tobacco", "publishing", "farming", "fisheries", "glassware", "leather",
                         "logistics", "paper", "pharmacy", "shipbuilding", "silverware", "tourism")),
        grouped("moved", TREND,
                up=["rose", "climbed", "jumped", "gained", "rallied", "advanced", "soared", "surged"],
                down=["fell", "dropped", "slipped", "tumbled", "declined", "sank", "slumped", "plunged"]),
        grouped("reason", TREND,
                up=["strong profits", "new contracts", "record sales", "rising demand", "lower costs", "a takeover bid"],
                down=["weak sales", "rising costs", "a profit warning", "falling demand", "a costly recall",
                      "a failed merger"]),
        grouped("outlook", TREND,
                up=["upbeat", "confident", "bullish", "optimistic", "buoyant", "encouraged"],
                down=["gloomy", "cautious", "bearish", "worried", "nervous", "downbeat"]),
        grouped("investors", TREND, up=["bought", "chased", "favoured", "snapped up"],
                down=["sold", "dumped", "shunned", "abandoned"]),
        grouped("results", TREND, up=["excellent", "stellar", "encouraging", "impressive"],
                down=["disappointing", "weak", "troubling", "dismal"]),
        number_range("pct", 1, 99),
        number_range("price", 1, 999),
        words("currency", ("crowns", "marks", "florins", "ducats", "guilders", "thalers", "sovereigns", "groats",
                           "pistoles", "escudos")),
        words("index", ("Harbour Index", "Eastern Exchange", "Composite Index", "Bourse", "Northern Board",
                        "Merchant Index")),
        words("volume", ("heavy", "sparse", "frantic", "thin", "subdued", "hectic", "torpid", "feverish",
                         "muted", "bustling")),
        words("period", ("year", "month", "week", "half year", "trading day", "season", "decade", "fortnight")),
    ],
    opening=[
        "Market report: shares of {company=c} {moved} {pct} percent[ today|].",
        "Market report: {company=c}, the {sector=s} firm, {moved} {pct} percent[ today|].",
        "Market report: {company=c} {moved} {pct} percent.",
    ],
    body=[
        "The move followed {reason}.",
        "Analysts were {outlook}.",
        "The stock closed at {price} {currency=cur}.",
        "Trading was {volume}.",
        "The {index} {moved} {pct} percent.",
        "Investors {investors} the stock.",
        "Rival {sector=s} firms {moved} too.",
        "Results for the {period} were {results}.",
    ],
    closing=[
        "Markets open again tomorrow.",
        "Investors will watch {company=c} closely.",
        "The mood remains {outlook}.",
    ],
    requests=[
        "Write a market report.",
        "What happened on the stock market?",
        "Give me some financial news.",
        "Write a short business report.",
        "Tell me how the shares did today.",
        "Write a stock market update.",
    ],
    specific_requests=[
        "Write a market report on {company=c}.",
        "How did {company=c} shares do today?",
        "What happened to {company=c} today?",
    ],
    n_optional=(1, 2),
)
