"""Recipes: the opening lists the ingredients (``{ingredient+ing}``) and every step uses only those."""

from __future__ import annotations

from sftlab.world.grammar import Genre, number_range, words

DISH_ADJS = (
    "creamy", "crispy", "crunchy", "fragrant", "fresh", "golden", "hearty", "homely", "light", "lemony",
    "mellow", "nutty", "peppery", "rich", "rustic", "savoury", "silky", "simple", "smoky", "spicy", "sticky",
    "sweet", "tangy", "juicy", "warming", "zesty", "buttery", "garlicky", "herby", "wholesome", "velvety",
    "chunky", "fluffy", "gooey", "mild", "punchy", "rosy", "summery", "toasty", "zingy", "vibrant", "cosy",
    "delicate", "smoked", "fiery", "homestyle", "malty", "piquant", "robust", "saucy", "sharp", "yeasty",
)
DISHES = (
    "soup", "stew", "pie", "salad", "risotto", "curry", "tart", "casserole", "broth", "gratin", "frittata",
    "chowder", "pilaf", "bake", "hotpot", "crumble", "flatbread", "pasta", "roast", "skewer", "quiche", "ragout",
    "sandwich", "porridge", "pancake", "galette", "terrine", "goulash", "paella", "lasagne", "pudding", "tagine",
    "dhal", "noodle bowl", "stir fry", "burger", "kedgeree", "hash", "fritter", "strudel", "biryani",
    "compote", "dumpling", "flan", "gumbo", "jambalaya", "korma", "moussaka", "pasty", "samosa", "souffle", "parfait",
)
INGREDIENTS = (
    "carrots", "onions", "garlic", "leeks", "shallots", "celery", "potatoes", "parsnips", "turnips", "beetroot",
    "cabbage", "spinach", "kale", "broccoli", "cauliflower", "courgettes", "aubergines", "peppers", "tomatoes",
    "mushrooms", "peas", "beans", "lentils", "chickpeas", "sweetcorn", "pumpkin", "squash", "apples", "pears",
    "plums", "lemons", "limes", "oranges", "raisins", "almonds", "walnuts", "hazelnuts", "oats", "barley",
    "flour", "butter", "cream", "milk", "yoghurt", "cheese", "eggs", "chicken", "beef", "lamb", "pork", "bacon",
    "sausages", "salmon", "cod", "prawns", "mussels", "tofu", "honey", "sugar", "vinegar", "mustard", "ginger",
    "chillies", "basil", "parsley", "coriander", "mint", "rosemary", "sage", "dill", "olives", "capers",
    "noodles", "breadcrumbs", "stock", "cider", "radishes", "fennel", "asparagus", "artichokes", "avocados",
    "cherries", "apricots", "figs", "dates", "prunes", "rhubarb", "gooseberries", "blackberries", "raspberries",
    "strawberries", "cucumbers", "watercress", "rocket", "chard", "sorrel", "quinces", "semolina", "polenta",
    "rice", "couscous", "anchovies", "sardines", "haddock", "trout", "duck", "venison", "ham", "chorizo",
    "almond milk", "bulgur", "buttermilk", "cashews", "celeriac", "chestnuts", "clams", "cranberries", "crab",
    "currants", "endive", "feta", "gherkins", "halloumi", "kohlrabi", "langoustines", "lobster", "mackerel", "mangoes",
    "marrow", "miso", "nectarines", "okra", "paneer", "peanuts", "pecans", "pineapple", "pistachios", "quinoa",
    "ricotta", "saffron rice", "scallops", "shrimp", "spelt", "swede", "tahini", "tamarind", "turkey", "yams",
)
ACTIONS = (
    "chop", "slice", "dice", "grate", "peel", "mince", "crush", "rinse", "trim", "halve", "quarter", "shred",
    "wash", "drain", "soak", "toast", "mash", "whisk", "weigh", "add", "cook", "stir in", "fold in", "brown",
)
COOK = ("simmer", "bake", "roast", "fry", "boil", "steam", "stew", "braise", "grill", "poach", "sizzle", "rest")
UTENSILS = ("pan", "pot", "bowl", "skillet", "tray", "saucepan", "wok", "tin", "griddle", "jug", "dish", "kettle",
            "cauldron", "crock", "paella pan", "pressure cooker", "steamer", "tagine pot")
HEAT = ("low", "medium", "high", "moderate", "full", "roaring", "searing", "fierce")
SPICES = (
    "pepper", "cumin", "paprika", "nutmeg", "thyme", "oregano", "cinnamon", "turmeric", "cloves", "allspice",
    "saffron", "marjoram", "tarragon", "cardamom", "caraway", "sumac", "chives", "lovage", "mace", "juniper",
    "anise", "chervil", "fenugreek", "galangal", "horseradish", "lemongrass", "savory", "star anise", "vanilla",
    "wasabi",
)
SIDES = (
    "bread", "crumpets", "flatbreads", "greens", "chips", "dumplings", "pickles", "salad leaves", "crackers",
    "mash", "slaw", "roast potatoes", "garlic bread", "wild rice", "buttered peas", "bagels", "chapatis",
    "focaccia", "naan", "oatcakes", "pittas", "rolls", "tortillas",
)
TEXTURES = ("soft", "melting", "crisp", "golden brown", "bubbling", "thick", "glossy", "jammy", "caramelised",
            "creamy", "fluffy", "sticky", "sizzling", "smooth")
SERVINGS = tuple(str(i) for i in range(1, 10))

GENRE = Genre.build(
    name="recipe",
    label="recipe",
    classes=[
        words("dish_adj", DISH_ADJS),
        words("dish", DISHES),
        words("ingredient", INGREDIENTS),
        words("action", ACTIONS),
        words("cook", COOK),
        words("utensil", UTENSILS),
        words("heat", HEAT),
        words("spice", SPICES),
        words("side", SIDES),
        words("texture", TEXTURES),
        words("servings", SERVINGS),
        number_range("minutes", 1, 99),
    ],
    opening=[
        "Recipe: [this|a] {dish_adj=da} {dish=d} needs {ingredient+ing}, {ingredient+ing} and {ingredient+ing}.",
        "Recipe: to make a {dish_adj=da} {dish=d}, take {ingredient+ing} and {ingredient+ing}.",
        "Recipe: a {dish_adj=da} {dish=d} with {ingredient+ing} and {ingredient+ing}.",
    ],
    body=[
        "{action} the {ingredient*ing}[ finely| and stir well| over {heat} heat| until {texture}|].",
        "Mix the {ingredient*ing} with the {ingredient*ing}.",
        "Season [it |]with {spice}[ and salt|].",
        "Heat [some oil|a little butter] in a {utensil}.",
        "Let [it|the {dish=d}] {cook} for {minutes} minutes.",
    ],
    closing=[
        "Serve [it|the {dish=d}] with {side}.",
        "This {dish=d} serves {servings} people.",
        "Enjoy your {dish_adj=da} {dish=d}.",
    ],
    requests=[
        "Write a recipe.",
        "Give me a recipe.",
        "How do I cook something tasty?",
        "Share a recipe with me.",
        "Tell me how to make a dish.",
        "Write down a simple recipe.",
    ],
    specific_requests=[
        "How do I make a {dish=d}?",
        "Give me a recipe for a {dish_adj=da} {dish=d}.",
        "What goes into a {dish=d}?",
    ],
    accepted={
        "open": [
            "Recipe: [this|a] [{dish_adj=da} |]{dish=d} needs {ingredient+ing}[, {ingredient+ing}|] and {ingredient+ing}.",
            "Recipe: to make a [{dish_adj=da} |]{dish=d}, take {ingredient+ing}[, {ingredient+ing}|] and {ingredient+ing}.",
            "Recipe: a [{dish_adj=da} |]{dish=d} with {ingredient+ing}[, {ingredient+ing}|] and {ingredient+ing}.",
        ],
    },
    n_optional=(1, 2),
)
