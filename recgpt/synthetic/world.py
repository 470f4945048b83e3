"""The synthetic marketplace's world: categories, their words, seasons and festivals, and personas.

The generator draws catalogs, users and behaviour sequences from these definitions; the planted
personas are the ground truth that evaluation later tries to recover from the mined intents.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Category:
    """A leaf category: titles are "modifier + core word" phrases built from its vocabulary."""

    name: str
    path: tuple[str, ...]
    cores: tuple[str, ...]
    modifiers: tuple[str, ...]
    price: tuple[float, float]
    # Relative demand by season ("spring", "summer", "autumn", "winter"); missing seasons are 1.0.
    seasons: dict[str, float] = field(default_factory=dict)
    # Festivals that lift demand for this category in their lead-up.
    festivals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Persona:
    """A planted interest mixture: what a user with this persona browses and buys."""

    name: str
    description: str
    categories: dict[str, float]


_C = Category

CATEGORIES: tuple[Category, ...] = (
    _C(
        "hiking-boots",
        ("Sports & Outdoors", "Footwear", "Hiking Boots"),
        ("hiking boots", "trail shoes"),
        ("waterproof", "non-slip", "lightweight", "ankle-support", "breathable", "insulated"),
        (60, 220),
        {"autumn": 1.4, "spring": 1.3, "winter": 0.8},
    ),
    _C(
        "tents",
        ("Sports & Outdoors", "Camping", "Tents"),
        ("camping tent", "backpacking tent"),
        ("2-person", "ultralight", "pop-up", "waterproof", "4-season", "family-size"),
        (40, 400),
        {"summer": 1.6, "winter": 0.4},
    ),
    _C(
        "running-shoes",
        ("Sports & Outdoors", "Footwear", "Running Shoes"),
        ("running shoes", "trainers"),
        ("cushioned", "lightweight", "wide-fit", "carbon-plate", "breathable mesh", "reflective"),
        (50, 180),
    ),
    _C(
        "dumbbells",
        ("Sports & Outdoors", "Fitness", "Strength"),
        ("dumbbell set", "kettlebell"),
        ("adjustable", "rubber-coated", "hex", "quick-lock", "compact", "20kg"),
        (30, 300),
        {"winter": 1.3},
        ("new-year",),
    ),
    _C(
        "yoga",
        ("Sports & Outdoors", "Fitness", "Yoga"),
        ("yoga mat", "yoga block"),
        ("non-slip", "extra-thick", "eco-friendly cork", "foldable", "alignment-line", "travel"),
        (15, 90),
        {},
        ("new-year",),
    ),
    _C(
        "protein",
        ("Health", "Nutrition", "Supplements"),
        ("whey protein", "protein bar"),
        ("chocolate", "low-sugar", "plant-based", "vanilla", "high-fibre", "unflavoured"),
        (10, 70),
        {},
        ("new-year",),
    ),
    _C(
        "vitamins",
        ("Health", "Nutrition", "Vitamins"),
        ("vitamin d drops", "multivitamin tablets"),
        ("daily", "immune-support", "sugar-free", "chewable", "family-pack", "vegan"),
        (8, 45),
        {"winter": 1.5, "autumn": 1.2},
    ),
    _C(
        "diapers",
        ("Mother & Baby", "Nappies", "Diapers"),
        ("baby diapers", "pull-up pants"),
        ("ultra-soft", "overnight", "size-4", "hypoallergenic", "leak-guard", "eco"),
        (12, 50),
    ),
    _C(
        "strollers",
        ("Mother & Baby", "Travel", "Strollers"),
        ("baby stroller", "travel pushchair"),
        ("lightweight", "one-hand-fold", "all-terrain", "reversible-seat", "compact", "twin"),
        (90, 600),
    ),
    _C(
        "kids-costumes",
        ("Toys & Kids", "Dress Up", "Costumes"),
        ("kids costume", "dress-up set"),
        ("halloween", "pumpkin", "superhero", "glow-in-the-dark", "princess", "dinosaur"),
        (12, 45),
        {},
        ("halloween",),
    ),
    _C(
        "toys",
        ("Toys & Kids", "Toys", "Building"),
        ("building blocks", "toy car set"),
        ("educational", "magnetic", "wooden", "remote-control", "stem", "glow"),
        (15, 120),
        {},
        ("christmas", "singles-day"),
    ),
    _C(
        "cardigans",
        ("Women's Fashion", "Knitwear", "Cardigans"),
        ("cardigan", "knit sweater"),
        ("wool-blend", "oversized", "cropped", "cable-knit", "v-neck", "cashmere-touch"),
        (25, 160),
        {"autumn": 1.7, "winter": 1.5, "summer": 0.3},
    ),
    _C(
        "dresses",
        ("Women's Fashion", "Dresses", "Day Dresses"),
        ("midi dress", "sundress"),
        ("floral", "linen", "wrap", "pleated", "sleeveless", "satin"),
        (20, 150),
        {"summer": 1.7, "spring": 1.3, "winter": 0.5},
        ("valentines-day",),
    ),
    _C(
        "coats",
        ("Women's Fashion", "Outerwear", "Coats"),
        ("down coat", "puffer jacket"),
        ("long", "hooded", "water-repellent", "ultra-warm", "packable", "belted"),
        (60, 400),
        {"winter": 2.2, "autumn": 1.4, "summer": 0.1},
    ),
    _C(
        "skincare",
        ("Beauty", "Skincare", "Moisturisers"),
        ("face cream", "hydrating serum"),
        ("hyaluronic", "fragrance-free", "spf-30", "night-repair", "vitamin-c", "sensitive-skin"),
        (10, 90),
        {"winter": 1.3, "summer": 1.2},
        ("valentines-day", "mothers-day", "singles-day"),
    ),
    _C(
        "makeup",
        ("Beauty", "Makeup", "Lips"),
        ("matte lipstick", "lip gloss"),
        ("long-lasting", "nude", "velvet", "hydrating", "limited-edition", "red"),
        (8, 45),
        {},
        ("valentines-day", "christmas"),
    ),
    _C(
        "cookware",
        ("Home & Kitchen", "Cookware", "Pans"),
        ("non-stick frying pan", "cast iron skillet"),
        ("induction-ready", "ceramic-coated", "28cm", "pre-seasoned", "stainless", "deep"),
        (20, 160),
    ),
    _C(
        "small-appliances",
        ("Home & Kitchen", "Appliances", "Small Appliances"),
        ("air fryer", "stand mixer"),
        ("digital", "5-litre", "dual-basket", "quiet", "compact", "smart"),
        (40, 350),
        {},
        ("singles-day", "black-friday", "christmas"),
    ),
    _C(
        "mooncakes",
        ("Food & Grocery", "Festive Food", "Mooncakes"),
        ("mooncake gift box", "lotus mooncake"),
        ("salted-egg", "snow-skin", "premium", "red-bean", "low-sugar", "assorted"),
        (15, 80),
        {},
        ("mid-autumn",),
    ),
    _C(
        "tea",
        ("Food & Grocery", "Drinks", "Tea"),
        ("oolong tea", "green tea leaves"),
        ("organic", "loose-leaf", "aged", "jasmine", "gift-tin", "cold-brew"),
        (8, 120),
        {"winter": 1.2},
        ("spring-festival", "mid-autumn"),
    ),
    _C(
        "gaming-keyboards",
        ("Electronics", "PC Gaming", "Keyboards"),
        ("mechanical keyboard", "gaming keyboard"),
        ("rgb", "hot-swappable", "wireless", "tenkeyless", "low-profile", "silent-switch"),
        (35, 220),
        {},
        ("singles-day", "black-friday"),
    ),
    _C(
        "headsets",
        ("Electronics", "Audio", "Headphones"),
        ("gaming headset", "noise-cancelling headphones"),
        ("wireless", "surround-sound", "over-ear", "lightweight", "long-battery", "foldable"),
        (30, 350),
        {},
        ("singles-day", "black-friday", "christmas"),
    ),
    _C(
        "pet-food",
        ("Pet Supplies", "Dog", "Dog Food"),
        ("dry dog food", "dog treats"),
        ("grain-free", "puppy", "salmon", "senior", "high-protein", "dental"),
        (10, 90),
    ),
    _C(
        "pet-beds",
        ("Pet Supplies", "Dog", "Beds"),
        ("dog bed", "cat cushion"),
        ("orthopaedic", "washable", "self-warming", "donut", "waterproof", "calming"),
        (20, 120),
        {"winter": 1.6},
    ),
    _C(
        "garden-tools",
        ("Home & Garden", "Garden", "Tools"),
        ("pruning shears", "garden hose"),
        ("ergonomic", "expandable", "bypass", "rust-proof", "heavy-duty", "lightweight"),
        (10, 80),
        {"spring": 1.9, "summer": 1.3, "winter": 0.3},
    ),
    _C(
        "seeds",
        ("Home & Garden", "Garden", "Seeds"),
        ("vegetable seeds", "flower bulbs"),
        ("heirloom", "organic", "fast-growing", "balcony", "tomato", "tulip"),
        (3, 25),
        {"spring": 2.2, "autumn": 1.1, "winter": 0.4},
    ),
    _C(
        "stationery",
        ("Office & School", "Stationery", "Writing"),
        ("gel pens", "notebook set"),
        ("pastel", "dotted", "refillable", "a5", "quick-dry", "eco"),
        (4, 30),
        {},
        ("back-to-school",),
    ),
    _C(
        "backpacks",
        ("Luggage & Bags", "Backpacks", "School Bags"),
        ("school backpack", "laptop backpack"),
        ("water-resistant", "anti-theft", "ergonomic", "15-inch", "usb-charging", "lightweight"),
        (20, 120),
        {},
        ("back-to-school",),
    ),
    _C(
        "luggage",
        ("Luggage & Bags", "Suitcases", "Carry-on"),
        ("carry-on suitcase", "travel duffel"),
        ("hard-shell", "spinner-wheel", "expandable", "tsa-lock", "ultralight", "cabin-size"),
        (40, 300),
        {"summer": 1.5},
        ("spring-festival",),
    ),
    _C(
        "swimwear",
        ("Sports & Outdoors", "Swim", "Swimwear"),
        ("swimsuit", "swim shorts"),
        ("quick-dry", "uv-protective", "high-waist", "chlorine-resistant", "printed", "sporty"),
        (15, 80),
        {"summer": 2.4, "spring": 1.1, "winter": 0.2},
    ),
    _C(
        "decorations",
        ("Home & Garden", "Decor", "Festive Decor"),
        ("string lights", "christmas ornaments"),
        ("warm-white", "battery-powered", "shatterproof", "handmade", "rustic", "led"),
        (6, 60),
        {"winter": 1.3},
        ("christmas", "halloween", "spring-festival"),
    ),
)

CATEGORY_BY_NAME: dict[str, Category] = {c.name: c for c in CATEGORIES}

BRANDS: tuple[str, ...] = (
    "Northpeak",
    "Luma",
    "Kestrel",
    "Orchard&Co",
    "Vantor",
    "Mira",
    "Tidewell",
    "Brightnest",
    "Hollis",
    "Quanta",
    "Sable",
    "Pinecrest",
    "Aurelle",
    "Cobalt",
    "Fenwick",
    "Zephra",
    "Marlowe",
    "Tessellate",
    "Juniper",
    "Ostara",
)

PERSONAS: tuple[Persona, ...] = (
    Persona(
        "outdoor-enthusiast",
        "hikes and camps most weekends",
        {"hiking-boots": 3, "tents": 2, "running-shoes": 1, "luggage": 0.5},
    ),
    Persona(
        "fitness-regular",
        "trains at home and tracks nutrition",
        {"dumbbells": 2, "yoga": 2, "protein": 2, "running-shoes": 1},
    ),
    Persona(
        "new-parent",
        "shops for a baby and a toddler",
        {"diapers": 3, "strollers": 1, "toys": 2, "kids-costumes": 1},
    ),
    Persona(
        "fashion-lover",
        "follows seasonal women's fashion",
        {"cardigans": 2, "dresses": 2, "coats": 2, "makeup": 1},
    ),
    Persona("beauty-devotee", "keeps a skincare and makeup routine", {"skincare": 3, "makeup": 2}),
    Persona(
        "home-cook", "cooks daily and upgrades the kitchen", {"cookware": 3, "small-appliances": 2, "tea": 1}
    ),
    Persona("pc-gamer", "plays PC games and tunes the setup", {"gaming-keyboards": 3, "headsets": 2}),
    Persona("dog-owner", "cares for a dog", {"pet-food": 3, "pet-beds": 2}),
    Persona("gardener", "grows vegetables and flowers on a balcony", {"garden-tools": 2, "seeds": 3}),
    Persona("student", "studies and commutes to campus", {"stationery": 3, "backpacks": 2, "headsets": 1}),
    Persona("traveller", "takes several trips a year", {"luggage": 3, "swimwear": 1, "skincare": 1}),
    Persona("health-minded", "looks after family health", {"vitamins": 3, "tea": 2, "yoga": 1}),
    Persona(
        "festive-host",
        "hosts family gatherings around festivals",
        {"decorations": 2, "mooncakes": 2, "tea": 1, "small-appliances": 1},
    ),
)

PERSONA_BY_NAME: dict[str, Persona] = {p.name: p for p in PERSONAS}
