#!/usr/bin/env python3
"""A small synthetic English->German-like corpus for the demo (no download, no s2s imports).

Sentences such as "the small dog sees a red car" become "der kleine Hund sieht ein rotes Auto":
German articles and adjective endings depend on gender and case, so the model has to learn
agreement, and subordinate clauses ("because the cat sleeps" -> "weil die Katze schläft") move the
verb to the end, which shows up as crossing lines in the attention plot.

Usage: make_corpus.py OUT_DIR [--train N] [--seed S]   -> OUT_DIR/{train,valid,test}.{en,de}
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

NOUNS = {  # english: (german, gender)
    "dog": ("Hund", "m"),
    "cat": ("Katze", "f"),
    "car": ("Auto", "n"),
    "man": ("Mann", "m"),
    "woman": ("Frau", "f"),
    "child": ("Kind", "n"),
    "bird": ("Vogel", "m"),
    "house": ("Haus", "n"),
    "tree": ("Baum", "m"),
    "book": ("Buch", "n"),
    "ball": ("Ball", "m"),
    "lamp": ("Lampe", "f"),
    "horse": ("Pferd", "n"),
    "teacher": ("Lehrer", "m"),
    "flower": ("Blume", "f"),
}
ADJECTIVES = {
    "small": "klein",
    "big": "groß",
    "red": "rot",
    "old": "alt",
    "young": "jung",
    "happy": "glücklich",
    "green": "grün",
    "fast": "schnell",
    "new": "neu",
}
TRANSITIVE = {"sees": "sieht", "likes": "mag", "finds": "findet", "hears": "hört", "has": "hat"}
INTRANSITIVE = {"sleeps": "schläft", "runs": "läuft", "sings": "singt", "waits": "wartet"}
CONJUNCTIONS = {"because": "weil", "while": "während", "although": "obwohl"}

DEFINITE = {
    ("nom", "m"): "der",
    ("nom", "f"): "die",
    ("nom", "n"): "das",
    ("acc", "m"): "den",
    ("acc", "f"): "die",
    ("acc", "n"): "das",
}
INDEFINITE = {
    ("nom", "m"): "ein",
    ("nom", "f"): "eine",
    ("nom", "n"): "ein",
    ("acc", "m"): "einen",
    ("acc", "f"): "eine",
    ("acc", "n"): "ein",
}
# adjective endings after the definite (weak) and indefinite (mixed) article
WEAK = {
    ("nom", "m"): "e",
    ("nom", "f"): "e",
    ("nom", "n"): "e",
    ("acc", "m"): "en",
    ("acc", "f"): "e",
    ("acc", "n"): "e",
}
MIXED = {
    ("nom", "m"): "er",
    ("nom", "f"): "e",
    ("nom", "n"): "es",
    ("acc", "m"): "en",
    ("acc", "f"): "e",
    ("acc", "n"): "es",
}


def noun_phrase(rng: random.Random, case: str) -> tuple[str, str]:
    noun = rng.choice(list(NOUNS))
    german, gender = NOUNS[noun]
    definite = rng.random() < 0.5
    words_en = ["the" if definite else "a"]
    words_de = [(DEFINITE if definite else INDEFINITE)[(case, gender)]]
    for adjective in rng.sample(list(ADJECTIVES), k=rng.choice([0, 0, 1, 1, 2])):
        words_en.append(adjective)
        words_de.append(ADJECTIVES[adjective] + (WEAK if definite else MIXED)[(case, gender)])
    return " ".join([*words_en, noun]), " ".join([*words_de, german])


def clause(rng: random.Random) -> tuple[list[str], list[str], str]:
    """(english words, german words without the verb, german verb)."""
    subject_en, subject_de = noun_phrase(rng, "nom")
    if rng.random() < 0.6:
        verb = rng.choice(list(TRANSITIVE))
        object_en, object_de = noun_phrase(rng, "acc")
        return [subject_en, verb, object_en], [subject_de, object_de], TRANSITIVE[verb]
    verb = rng.choice(list(INTRANSITIVE))
    return [subject_en, verb], [subject_de], INTRANSITIVE[verb]


def sentence(rng: random.Random) -> tuple[str, str]:
    en, de_rest, de_verb = clause(rng)
    english, german = list(en), [de_rest[0], de_verb, *de_rest[1:]]
    if rng.random() < 0.4:
        conjunction = rng.choice(list(CONJUNCTIONS))
        sub_en, sub_rest, sub_verb = clause(rng)
        english += [",", conjunction, *sub_en]
        german += [",", CONJUNCTIONS[conjunction], *sub_rest, sub_verb]  # verb-final
    en_text = " ".join(english).replace(" ,", ",") + " ."
    de_text = " ".join(german).replace(" ,", ",") + " ."
    return en_text[0].upper() + en_text[1:-2] + ".", de_text[0].upper() + de_text[1:-2] + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for split, count in (("train", args.train), ("valid", 300), ("test", 300)):
        pairs = []
        while len(pairs) < count:
            en, de = sentence(rng)
            if en not in seen:  # held-out sets share no sentence with training
                seen.add(en)
                pairs.append((en, de))
        (args.out / f"{split}.en").write_text("".join(f"{e}\n" for e, _ in pairs), encoding="utf-8")
        (args.out / f"{split}.de").write_text("".join(f"{d}\n" for _, d in pairs), encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
