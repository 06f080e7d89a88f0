"""The ``embedded`` task: synthetic English topic classification generated from a seed.

It exists so that examples, tests and smoke runs work with no files and no network, yet
exercise a real pretrained encoder: sentences are ordinary English built from a subject,
a verb and an object, each chosen from a topic's word list, wrapped in topic-neutral
filler. A small encoder with LoRA separates the topics within a few federated rounds.

To keep accuracy from being trivially 100%, a share of sentences (``ambiguous_fraction``)
mixes two topics: subject and object come from the labelled topic and a distractor in
random roles, and the verb from either. By symmetry such a sentence is 50/50, so the best
achievable accuracy is about ``1 - ambiguous_fraction / 2`` (0.9 by default).
"""

from __future__ import annotations

import numpy as np

from fedmpi.data.task import TaskData, TextSplit

# topic -> (subjects, verbs, objects); every list has words no other topic uses.
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "sports": (
        ("team", "striker", "goalkeeper", "coach", "athlete", "runner",
         "captain", "referee", "pitcher", "swimmer", "cyclist", "boxer"),
        ("won", "scored", "defended", "trained for", "lost", "celebrated",
         "dominated", "qualified for"),
        ("the championship", "a late goal", "the final match", "the tournament",
         "the league title", "the marathon", "a penalty kick", "the season opener",
         "the gold medal", "the playoff game"),
    ),
    "science": (
        ("researcher", "physicist", "chemist", "biologist", "laboratory", "astronomer",
         "professor", "telescope", "scientist", "geologist", "mathematician", "engineer"),
        ("discovered", "measured", "analyzed", "published", "observed", "tested",
         "predicted", "simulated"),
        ("a new molecule", "the gene sequence", "a distant galaxy", "the experiment data",
         "a quantum effect", "the protein structure", "the climate model", "a rare fossil",
         "the particle collision", "the vaccine trial"),
    ),
    "food": (
        ("chef", "baker", "restaurant", "cook", "waiter", "bakery",
         "kitchen", "food critic", "pastry chef", "butcher", "cafe", "grandmother"),
        ("cooked", "baked", "served", "tasted", "seasoned", "grilled",
         "prepared", "roasted"),
        ("a spicy curry", "fresh bread", "the chocolate cake", "a bowl of noodles",
         "the tomato soup", "grilled salmon", "a garlic pasta", "the vegetable stew",
         "a cheese pizza", "the apple pie"),
    ),
    "travel": (
        ("tourist", "traveler", "pilot", "airline", "hotel", "tour guide",
         "backpacker", "cruise ship", "passenger", "travel agent", "explorer", "hiker"),
        ("booked", "visited", "explored", "flew to", "toured", "reached",
         "photographed", "checked into"),
        ("the island resort", "a mountain village", "the old harbor", "a beach hotel",
         "the national park", "the airport lounge", "a train to Paris", "the ancient temple",
         "a coastal road", "the city museum"),
    ),
}

# Topic-neutral filler shared by every class, so that only the content words carry signal.
OPENERS = ("", "Yesterday,", "On Monday,", "Last week,", "According to reports,",
           "Once again,", "Surprisingly,", "Earlier today,", "This morning,", "In the end,")
DETERMINERS = ("the", "a young", "the local", "a famous", "the new", "an experienced",
               "the veteran", "a determined")
CLOSERS = ("", "after a long day", "in front of a small crowd", "despite the rain",
           "for the first time", "with great care", "as everyone expected", "before noon",
           "again this year", "without any help")

LABEL_NAMES: tuple[str, ...] = tuple(TOPICS)

# Distinct streams for the two splits, so eval sentences are drawn independently of train.
_SPLIT_STREAM = {"train": 0, "eval": 1}


def make_embedded_task(
    seed: int = 0,
    num_train: int = 4000,
    num_eval: int = 800,
    ambiguous_fraction: float = 0.2,
) -> TaskData:
    """The synthetic 4-topic task; the same ``seed`` always gives the same sentences."""
    if num_train < 1 or num_eval < 1:
        raise ValueError(f"embedded task needs num_train, num_eval >= 1, got {num_train}, {num_eval}")
    if not 0.0 <= ambiguous_fraction <= 1.0:
        raise ValueError(f"ambiguous_fraction must be in [0, 1], got {ambiguous_fraction}")
    return TaskData(
        name="embedded",
        kind="classification",
        train=make_split(num_train, np.random.default_rng([seed, _SPLIT_STREAM["train"]]), ambiguous_fraction),
        eval=make_split(num_eval, np.random.default_rng([seed, _SPLIT_STREAM["eval"]]), ambiguous_fraction),
        label_names=LABEL_NAMES,
    )


def make_split(num: int, rng: np.random.Generator, ambiguous_fraction: float) -> TextSplit:
    """``num`` sentences with balanced labels (class counts differ by at most one)."""
    num_classes = len(LABEL_NAMES)
    labels = rng.permutation(np.arange(num, dtype=np.int64) % num_classes)
    ambiguous = rng.random(num) < ambiguous_fraction
    # A distractor topic different from the label: shift by 1..C-1 modulo C.
    distractor = (labels + rng.integers(1, num_classes, size=num)) % num_classes
    # For ambiguous rows: which of the two topics gives the subject, and which the verb.
    subject_from_label = rng.random(num) < 0.5
    verb_from_label = rng.random(num) < 0.5
    words = rng.random((num, 6))  # uniform draws turned into list positions below

    def pick(options: tuple[str, ...], u: float) -> str:
        return options[int(u * len(options))]

    topics = list(TOPICS.values())
    inputs = []
    for i in range(num):
        own, other = int(labels[i]), int(distractor[i])
        if ambiguous[i]:
            subj_topic, obj_topic = (own, other) if subject_from_label[i] else (other, own)
            verb_topic = own if verb_from_label[i] else other
        else:
            subj_topic = verb_topic = obj_topic = own
        u = words[i]
        parts = [
            pick(OPENERS, u[0]),
            pick(DETERMINERS, u[1]),
            pick(topics[subj_topic][0], u[2]),
            pick(topics[verb_topic][1], u[3]),
            pick(topics[obj_topic][2], u[4]),
            pick(CLOSERS, u[5]),
        ]
        sentence = " ".join(p for p in parts if p)
        inputs.append(sentence[0].upper() + sentence[1:] + ".")
    return TextSplit(inputs=inputs, labels=labels, targets=None)
