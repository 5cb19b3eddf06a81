"""Pronounceable made-up names for the world's entities, unique and reproducible from a seed.

Every word a generator makes is new to it (and to the names it was told to avoid), so two entities
never share a name by accident; the only shared words are the deliberate near-duplicates made by
``near``. A later stage builds a generator with the whole world reserved to get fresh names for a
copy curriculum.
"""

from __future__ import annotations

import random
from typing import Iterable

ONSETS = (
    "b", "br", "d", "dr", "f", "fl", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "sh",
    "st", "t", "tr", "th", "v", "z", "ch", "j", "w",
)
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ae", "ei", "ou", "ia")
CODAS = ("", "", "", "", "n", "r", "l", "s", "th", "x", "nd", "rn", "m", "k")
SINGLE_VOWELS = "aeiou"
SWAP_CONSONANTS = "bdgklmnprstvz"

# Organisation suffixes by the kind of work an organisation publishes ("" for none).
ORG_SUFFIXES = {
    "": ("Labs", "Institute", "Works", "Systems", "University", "Foundry", "Group", "Industries"),
    "book": ("Press", "Books", "Publishing"),
    "film": ("Studios", "Pictures", "Films"),
    "album": ("Records", "Music", "Sound"),
}
KINDS = ("person", "city", "country", "organisation", "work")


class NameGenerator:
    """Makes names that never repeat and never collide with ``reserved`` (names or their words)."""

    def __init__(self, seed: int | str, reserved: Iterable[str] = ()) -> None:
        self._rng = random.Random(seed)
        self._names: set[str] = set()
        self._words: set[str] = set()
        self.reserve(reserved)

    def reserve(self, names: Iterable[str]) -> None:
        """Mark names, and every word in them, as taken."""
        for name in names:
            self._names.add(name.casefold())
            self._words.update(w.casefold() for w in name.split())

    def name(self, kind: str) -> str:
        """A fresh name for an entity of ``kind`` (one of ``KINDS``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown name kind {kind!r}: choose one of {', '.join(KINDS)}")
        return getattr(self, kind)()

    def person(self) -> str:
        return self._claim(f"{self.word(2, 2)} {self.word(2, 3)}")

    def city(self) -> str:
        return self._claim(self.word(2, 3))

    def country(self) -> str:
        return self._claim(self.word(2, 3))

    def organisation(self, publishes: str = "") -> str:
        """An organisation name; ``publishes`` (book/film/album) picks a fitting suffix."""
        return self._claim(f"{self.word(2, 3)} {self._rng.choice(ORG_SUFFIXES[publishes])}")

    def work(self) -> str:
        count = self._rng.choice((1, 2, 2, 3))
        return self._claim(" ".join(self.word(2, 2 if count > 1 else 3) for _ in range(count)))

    def word(self, min_syllables: int, max_syllables: int) -> str:
        """A fresh capitalised word of syllables, reserved from now on."""
        while True:
            syllables = self._rng.randint(min_syllables, max_syllables)
            word = "".join(self._syllable(i == 0) for i in range(syllables))
            if 4 <= len(word) <= 10 and self._fresh_word(word):
                return self._claim_word(word.capitalize())

    def near(self, name: str) -> str:
        """A fresh near-duplicate of ``name``: one word changed by one or two letters, or (for an
        organisation) the same first word with another suffix of the same kind."""
        words = name.split()
        suffix_pool = next((pool for pool in ORG_SUFFIXES.values() if words[-1] in pool), None)
        while True:
            if suffix_pool and len(words) == 2 and self._rng.random() < 0.5:
                candidate = [words[0], self._rng.choice(suffix_pool)]
            else:
                index = len(words) - 1 if suffix_pool is None else 0
                candidate = list(words)
                candidate[index] = self._mutate(words[index])
            text = " ".join(candidate)
            if text.casefold() not in self._names and all(self._fresh_word(w) or w in words for w in candidate):
                for word in candidate:
                    self._claim_word(word)
                return self._claim(text)

    def _syllable(self, first: bool) -> str:
        onset = "" if first and self._rng.random() < 0.1 else self._rng.choice(ONSETS)
        return onset + self._rng.choice(VOWELS) + self._rng.choice(CODAS)

    def _mutate(self, word: str) -> str:
        """Change one or two letters, keeping the word readable."""
        letters = list(word.lower())
        for _ in range(1 if self._rng.random() < 0.7 else 2):
            spots = [j for j in range(1, len(letters)) if self._swappable(letters, j)]
            i = self._rng.choice(spots or [len(letters) - 1])
            pool = SINGLE_VOWELS if letters[i] in SINGLE_VOWELS else SWAP_CONSONANTS
            letters[i] = self._rng.choice([c for c in pool if c != letters[i]])
        return "".join(letters).capitalize()

    @staticmethod
    def _swappable(letters: list[str], i: int) -> bool:
        """A vowel, or a consonant between vowels: changing it keeps the word pronounceable."""
        if letters[i] in SINGLE_VOWELS:
            return True
        return all(letters[j] in SINGLE_VOWELS for j in (i - 1, i + 1) if 0 <= j < len(letters))

    def _fresh_word(self, word: str) -> bool:
        return word.casefold() not in self._words

    def _claim_word(self, word: str) -> str:
        self._words.add(word.casefold())
        return word

    def _claim(self, name: str) -> str:
        self._names.add(name.casefold())
        return name
