"""The words synthetic problems are made of: names, shop items, snacks, vehicles, jobs ...

Why a table of its own: the templates (``templates_*.py``) and the name drawing in
``problem_engine.py`` share these lists, and a problem's wording changes only here. The order
of every list is part of what a seed means: reordering changes the generated problems.
"""

from __future__ import annotations

LEVELS = (1, 2, 3)

# fmt: off
NAMES = [
    "Tom", "Maria", "Liam", "Aisha", "Noah", "Sofia", "Ethan", "Mei", "Lucas", "Fatima",
    "Oliver", "Priya", "James", "Yuki", "Mateo", "Chloe", "Omar", "Hannah", "Diego", "Grace",
    "Kofi", "Elena", "Ravi", "Zoe", "Samuel", "Ingrid", "Jamal", "Lena", "Hiro", "Amara",
    "Ben", "Carmen", "Felix", "Nadia", "Pablo", "Rosa", "Theo", "Uma", "Victor", "Wendy",
]
SHOP_ITEMS = [
    "notebooks", "pencils", "apples", "stickers", "comic books", "bottles of juice",
    "packs of gum", "oranges", "toy cars", "markers", "erasers", "cupcakes", "candles",
    "socks", "postcards", "bananas", "batteries", "paintbrushes",
]
SNACKS = ["cookies", "grapes", "candies", "crackers", "strawberries", "pretzels", "almonds",
          "cherries", "chocolates", "marshmallows"]
PASTRIES = ["muffins", "cookies", "cupcakes", "rolls", "brownies", "scones", "bagels", "pies",
            "croissants", "tarts"]
VEHICLES = ["bus", "train", "truck", "car", "ferry", "van", "motorbike", "tractor"]
THINGS = ["book", "board game", "scarf", "kite", "puzzle", "water bottle", "backpack", "hat",
          "lamp", "football"]
COLLECTIBLES = ["seashells", "marbles", "stamps", "trading cards", "coins", "buttons", "rocks",
                "feathers", "badges"]
PLANTS = ["tomato", "pepper", "lettuce", "carrot", "bean", "sunflower", "cabbage", "onion",
          "strawberry"]
CROPS = ["tomatoes", "peppers", "cucumbers", "zucchinis", "apples", "lemons", "plums", "pears"]
JOBS = ["at a cafe", "at the library", "at a bike shop", "as a dog walker", "at a bakery",
        "as a tutor", "at the farm stand", "at a bookstore"]
# fmt: on
