"""Items with topics, prices and generated text.

Each topic owns a small English vocabulary; an item's title and description are
drawn from its main topic (and a little from a second one), so a text encoder can
tell from the words alone which items are alike. That is what lets the policy
score a new item before anyone has clicked it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: topic -> (category, nouns, adjectives). Words are ordinary so a sentence encoder knows them.
VOCABULARY: dict[str, tuple[list[str], list[str]]] = {
    "running": (
        ["running shoes", "trail shoes", "sports watch", "running shorts", "hydration vest",
         "marathon socks", "headlamp", "compression tights", "rain jacket", "energy gels"],
        ["lightweight", "cushioned", "breathable", "fast", "waterproof", "grippy"],
    ),
    "coffee": (
        ["espresso machine", "coffee grinder", "pour-over dripper", "milk frother", "coffee beans",
         "french press", "gooseneck kettle", "moka pot", "latte cups", "cold brew maker"],
        ["roasted", "aromatic", "barista-grade", "single-origin", "creamy", "bold"],
    ),
    "gaming": (
        ["gaming mouse", "mechanical keyboard", "game controller", "gaming headset", "graphics card",
         "gaming chair", "console", "racing wheel", "stream deck", "monitor"],
        ["rgb", "wireless", "low-latency", "competitive", "ergonomic", "high-refresh"],
    ),
    "books": (
        ["mystery novel", "poetry collection", "history book", "science fiction novel", "biography",
         "cookbook", "graphic novel", "fantasy saga", "philosophy essay", "travel memoir"],
        ["bestselling", "classic", "illustrated", "hardcover", "gripping", "award-winning"],
    ),
    "garden": (
        ["tomato seeds", "garden hose", "pruning shears", "raised bed", "compost bin",
         "flower bulbs", "watering can", "garden gloves", "lawn mower", "bird feeder"],
        ["organic", "perennial", "heirloom", "sturdy", "flowering", "drought-tolerant"],
    ),
    "music": (
        ["acoustic guitar", "digital piano", "studio headphones", "vinyl record", "guitar strings",
         "microphone", "drum pads", "ukulele", "audio interface", "violin"],
        ["handcrafted", "vintage", "studio", "warm-sounding", "portable", "tuned"],
    ),
    "travel": (
        ["carry-on suitcase", "travel pillow", "passport wallet", "packing cubes", "hiking backpack",
         "travel adapter", "city guidebook", "noise-cancelling earbuds", "luggage scale", "tent"],
        ["compact", "durable", "foldable", "lightweight", "water-resistant", "packable"],
    ),
    "beauty": (
        ["face serum", "moisturizer", "lipstick", "perfume", "hair dryer",
         "sunscreen", "nail polish", "eye shadow palette", "shampoo", "face mask"],
        ["hydrating", "fragrant", "vegan", "radiant", "gentle", "long-lasting"],
    ),
}
TOPIC_NAMES = tuple(VOCABULARY)


@dataclass
class Catalog:
    """Item arrays indexed by item number; ``item_ids[i]`` is the public id."""

    item_ids: np.ndarray       # (n,) str
    topics: np.ndarray         # (n, T) float32, rows on the simplex
    main_topic: np.ndarray     # (n,) int
    quality: np.ndarray        # (n,) float32, intrinsic appeal independent of the user
    price: np.ndarray          # (n,) float32
    release_step: np.ndarray   # (n,) int, first interaction step at which the item exists
    titles: list[str]
    descriptions: list[str]

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def categories(self) -> list[str]:
        return [TOPIC_NAMES[t] for t in self.main_topic]

    def released(self, step: int) -> np.ndarray:
        """Indices of items that exist at ``step``."""
        return np.flatnonzero(self.release_step <= step)

    def item_record(self, i: int, ts: float) -> dict:
        """The item as it appears on the ``items`` topic."""
        return {
            "item_id": str(self.item_ids[i]),
            "title": self.titles[i],
            "description": self.descriptions[i],
            "category": TOPIC_NAMES[int(self.main_topic[i])],
            "price": round(float(self.price[i]), 2),
            "ts": ts,
        }


def make_catalog(
    rng: np.random.Generator,
    n_items: int,
    n_topics: int,
    new_items: int = 0,
    new_items_from: int = 0,
    new_items_until: int = 0,
) -> Catalog:
    """``n_items`` exist from the start; ``new_items`` more are released between the two steps."""
    if not 1 <= n_topics <= len(TOPIC_NAMES):
        raise ValueError(f"n_topics must be in 1..{len(TOPIC_NAMES)}")
    total = n_items + new_items
    main = rng.integers(0, n_topics, size=total)
    second = (main + rng.integers(1, max(n_topics, 2), size=total)) % n_topics
    topics = np.zeros((total, n_topics), dtype=np.float32)
    mix = rng.uniform(0.75, 0.95, size=total).astype(np.float32)
    topics[np.arange(total), main] = mix
    topics[np.arange(total), second] += 1.0 - mix
    quality = rng.normal(0.0, 0.35, size=total).astype(np.float32)
    price = np.exp(rng.normal(3.6, 0.8, size=total)).astype(np.float32)  # median ~37
    release = np.zeros(total, dtype=np.int64)
    if new_items:
        release[n_items:] = np.sort(rng.integers(new_items_from, max(new_items_until, new_items_from + 1),
                                                 size=new_items))
    titles, descriptions = [], []
    for i in range(total):
        nouns, adjectives = VOCABULARY[TOPIC_NAMES[main[i]]]
        nouns2, adjectives2 = VOCABULARY[TOPIC_NAMES[second[i]]]
        noun = nouns[rng.integers(len(nouns))]
        adjective = adjectives[rng.integers(len(adjectives))]
        titles.append(f"{adjective.capitalize()} {noun}")
        extra = rng.choice(len(nouns), size=2, replace=False)
        descriptions.append(
            f"A {adjectives[rng.integers(len(adjectives))]} {noun} for people who love "
            f"{TOPIC_NAMES[main[i]]}. Goes well with a {nouns[extra[0]]} and a {nouns[extra[1]]}; "
            f"some buyers pair it with a {adjectives2[rng.integers(len(adjectives2))]} "
            f"{nouns2[rng.integers(len(nouns2))]}."
        )
    ids = np.array([f"item-{i}" for i in range(total)])
    return Catalog(ids, topics, main, quality, price, release, titles, descriptions)
