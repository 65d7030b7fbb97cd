"""Biographies of the world's people: each states every fact of its person, in one of several paraphrases.

A biography is an opening, a sentence on the birth (year and town) and one on the life (profession and
hobby), in either order, and a closing.

The facts (birth year, birth town, profession, hobby) are the variables ``by``, ``bc``, ``pro`` and ``hb``;
the generator pre-binds them from an entity, so a biography never contradicts the world.
"""

from __future__ import annotations

from sftlab.world.grammar import Genre, grouped, number_range, words
from sftlab.world.names import BIRTH_TOWNS

MALE_NAMES = (
    "Albert", "Ambrose", "Arthur", "Barnaby", "Benedict", "Cedric", "Clement", "Cornelius", "Desmond", "Edmund",
    "Edwin", "Ezra", "Frederick", "Gilbert", "Godfrey", "Harold", "Horace", "Hugo", "Isaac", "Jasper",
    "Jeremiah", "Julian", "Lambert", "Laurence", "Leopold", "Lucian", "Magnus", "Matthias", "Mortimer", "Nathaniel",
    "Neville", "Octavius", "Percival", "Quentin", "Reginald", "Roderick", "Rupert", "Sebastian", "Silas", "Simeon",
    "Thaddeus", "Theodore", "Tobias", "Ulric", "Valentine", "Walter", "Wilfred", "Xavier", "Zachary", "Augustin",
    "Alfred", "Bernard", "Conrad", "Dominic", "Eustace", "Gregory", "Humphrey", "Ignatius", "Lionel", "Osmund",
    "Anselm", "Basil", "Crispin", "Dunstan", "Elias", "Fabian", "Gideon", "Hector", "Jerome", "Kenelm",
    "Leander", "Marcus", "Nicolas", "Oswin", "Piers", "Raphael", "Stephen", "Timothy", "Vincent", "Wendell",
)
FEMALE_NAMES = (
    "Adelaide", "Agatha", "Beatrice", "Bernadette", "Camilla", "Cecilia", "Clementine", "Cordelia", "Dorothea",
    "Edith", "Eleanor", "Eloise", "Florence", "Frances", "Genevieve", "Georgina", "Harriet", "Henrietta", "Imogen",
    "Isadora", "Josephine", "Judith", "Leonora", "Lucinda", "Mabel", "Margery", "Matilda", "Millicent", "Miriam",
    "Nell", "Octavia", "Ophelia", "Philippa", "Prudence", "Rosalind", "Rosamund", "Sabina", "Seraphina",
    "Sylvia", "Tabitha", "Theodora", "Ursula", "Veronica", "Victoria", "Vivienne", "Wilhelmina", "Winifred",
    "Yvette", "Zelda", "Honora", "Alice", "Blanche", "Constance", "Dulcie", "Esther", "Gwendolyn", "Hester",
    "Lavinia", "Marigold", "Opal", "Adeline", "Beryl", "Cressida", "Delia", "Evangeline", "Felicity", "Gertrude",
    "Hilda", "Iris", "Juliana", "Katherine", "Lettice", "Maud", "Nora", "Olive", "Pearl", "Rhoda", "Susanna",
    "Thomasina", "Violet",
)
SURNAMES = (
    "Abbott", "Ainsley", "Barrow", "Blackwood", "Bramble", "Calloway", "Carrick", "Chadwick", "Colby", "Crane",
    "Dalloway", "Draper", "Dunmore", "Ellery", "Emberly", "Fairbank", "Fenwick", "Fletcher", "Galloway", "Garrick",
    "Goodfellow", "Greaves", "Hadley", "Hargrove", "Hawthorne", "Holloway", "Huxley", "Ingram", "Jessop",
    "Keating", "Kendrick", "Kingsley", "Langley", "Latimer", "Lockwood", "Lovell", "Marlow", "Merriweather",
    "Morland", "Netherby", "Norbury", "Oakley", "Osgood", "Pembroke", "Penrose", "Pickering", "Quill",
    "Radcliffe", "Redmayne", "Rowntree", "Sackville", "Selwyn", "Shelby", "Stanhope", "Sterling", "Sutcliffe",
    "Tennant", "Thackeray", "Thornbury", "Tolliver", "Underhill", "Vance", "Wakefield", "Warrender", "Westbrook",
    "Whitlock", "Wickham", "Winslow", "Woodhouse", "Yardley", "Yorke", "Ashcombe", "Beckwith", "Cartwright",
    "Dorrington", "Everleigh", "Farrington", "Gladwell", "Harcourt", "Kimber", "Lindley", "Mortlake", "Nettleton",
    "Ormsby", "Prescott", "Rathbone", "Singleton", "Trelawney", "Upton", "Verity", "Waverley", "Aldridge",
    "Bellingham", "Coverdale", "Davenport", "Eastwood", "Fairfax", "Gresham", "Hollis", "Ironside",
    "Ashworth", "Bagshaw", "Cavendish", "Dempsey", "Eversley", "Fothergill", "Grimshaw", "Hathaway", "Jellicoe",
    "Kershaw", "Lambourne", "Molyneux", "Newcombe", "Oldfield", "Pennington", "Quarles", "Rushworth",
    "Sheridan", "Tattersall", "Unwin", "Vickers", "Wetherby", "Ackroyd", "Birkett", "Clitheroe", "Dimbleby",
    "Entwistle", "Fanshawe", "Gascoigne", "Hepworth", "Illingworth", "Jowett", "Knatchbull", "Loxley",
    "Mainwaring", "Northcote", "Pettigrew", "Ramsbottom", "Scrivener", "Thistlewood",
)
PROFESSIONS = (
    "baker", "barber", "blacksmith", "bookbinder", "botanist", "brewer", "builder", "butcher", "carpenter",
    "cartographer", "chemist", "clockmaker", "cobbler", "composer", "cooper", "dancer", "doctor", "draughtsman",
    "dressmaker", "ferryman", "fisherman", "gardener", "geologist", "glassblower", "goldsmith", "harpist",
    "historian", "jeweller", "journalist", "lawyer", "librarian", "locksmith", "mapmaker", "mason", "merchant",
    "midwife", "miner", "musician", "novelist", "nurse", "painter", "pharmacist", "photographer", "pilot",
    "poet", "potter", "printer", "sailor", "sculptor", "shipwright", "surgeon", "surveyor", "tailor", "teacher",
    "translator", "violinist", "weaver", "writer", "beekeeper", "bricklayer", "candlemaker", "dentist", "farrier",
    "glazier", "hatter", "lacemaker", "miller", "plumber", "saddler", "tanner", "spicer", "bellfounder",
    "chandler", "clerk", "coachman", "gilder", "gamekeeper", "hosier", "publican", "joiner", "lamplighter",
    "milliner", "choirmaster", "parson", "quarryman", "ropemaker", "scribe", "thatcher", "furrier", "wheelwright",
)
HOBBIES = (
    "archery", "beekeeping", "birdwatching", "bowling", "calligraphy", "chess", "climbing", "cycling", "dominoes",
    "embroidery", "fencing", "fishing", "gardening", "hiking", "juggling", "knitting", "puzzles", "riddles",
    "rowing", "singing", "skating", "sketching", "swimming", "tennis", "whittling", "woodcarving", "yodelling",
    "pottery", "origami", "croquet", "quilting", "sailing", "stargazing", "baking bread", "painting", "poetry",
    "cards", "kite flying", "stamp collecting", "bird song", "long walks", "model ships", "crosswords",
    "beachcombing", "weaving baskets", "boxing", "dancing", "golf", "astrology", "ballooning", "bridge",
    "carpentry", "draughts", "falconry", "genealogy", "hunting", "jigsaws", "kayaking", "lacrosse", "marbles",
    "needlepoint", "orienteering", "photography", "quoits", "rambling", "snooker", "tapestry", "watercolours",
)
TRAITS = (
    "bold", "careful", "cheerful", "clever", "curious", "daring", "diligent", "faithful", "dauntless", "gentle",
    "generous", "gracious", "hardworking", "humble", "kind", "loyal", "methodical", "modest", "patient",
    "persistent", "principled", "quiet", "restless", "serious", "shy", "sociable", "stubborn", "thoughtful",
    "tenacious", "wise", "famous", "gifted", "respected", "beloved", "talented", "dedicated", "fussy",
    "frugal", "jovial", "spirited", "meticulous", "resourceful", "rugged", "sensible", "studious", "valiant",
    "dutiful", "gallant", "hospitable", "canny", "jolly", "kindly", "brave", "calm", "devout", "gruff", "placid",
    "sprightly",
)
# Any of the ways to name the person can start any statement of a fact.
S = "[{first=pf}|{first=pf} {last=pl}|{pron}]"

GENRE = Genre.build(
    name="biography",
    label="biography",
    classes=[
        grouped("first", "gender", m=MALE_NAMES, f=FEMALE_NAMES),
        words("last", SURNAMES),
        grouped("pron", "gender", m=["he"], f=["she"]),
        grouped("poss", "gender", m=["his"], f=["her"]),
        number_range("year", 1700, 1999),
        words("city", BIRTH_TOWNS),
        words("profession", PROFESSIONS),
        words("hobby", HOBBIES),
        words("trait", TRAITS),
    ],
    opening=[
        "Biography: {first=pf} {last=pl} was a [{trait} |]{profession=pro}.",
        "Biography: the life of {first=pf} {last=pl}.",
        "Biography: {first=pf} {last=pl} was born in [{city=bc}|{year=by}].",
    ],
    body={
        "birth": [f"{S} was born in {{city=bc}} in {{year=by}}.", f"{S} was born in {{year=by}} in {{city=bc}}.",
                  f"In {{year=by}}, {S} was born in {{city=bc}}."],
        "life": [f"{S} [worked as|was] a {{profession=pro}} and [loved|enjoyed] {{hobby=hb}}.",
                 "In {poss} free time, the {profession=pro} {first=pf} enjoyed {hobby=hb}."],
    },
    closing=[
        "That is the life of {first=pf} {last=pl}.",
        "[{first=pf}|{first=pf} {last=pl}] is still remembered [today|in {city=bc}].",
        "Many people in {city=bc} still remember {first=pf}.",
    ],
    requests=[
        "Write a biography.",
        "Tell me about the life of a person.",
        "Write a short biography of someone.",
        "Describe the life of a person from history.",
        "Write a life story.",
        "Give me a short biography.",
    ],
    specific_requests=[
        "Write a biography of {first=pf} {last=pl}.",
        "Tell me about the life of {first=pf} {last=pl}.",
        "Who was {first=pf} {last=pl}?",
    ],
    accepted={
        "body": [f"{S} was born in [{{city=bc}}|{{year=by}}].", f"{S} [worked as|was] a {{profession=pro}}.",
                 f"{S} [loved|enjoyed|was fond of] {{hobby=hb}}.", "{poss} home town was {city=bc}."],
    },
    required_topics=("birth", "life"),
    required_vars=("by", "bc", "pro", "hb"),
    n_optional=(0, 0),
)
