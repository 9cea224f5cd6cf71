"""The near-miss guard: reasons a cached answer must not serve a similar-looking question.

Sentence embeddings score "How do I enable 2FA?" and "How do I disable 2FA?" as near-identical,
so a similarity threshold alone serves wrong answers. The guard compares the two questions word
by word and rejects when they differ in something that changes the answer:

1. negation (not, n't, never, no, without, …);
2. numbers, amounts, dates, versions and periods (digits, number words, Q3, v2, weekdays,
   months, "last week", "monthly", …), compared as normalised values;
3. an antonym: a compact list of opposites plus morphology (un-/dis-/in-/de-/non- prefixes,
   in/ex, en/dis, in/de, up/down swaps, -ful/-less), so lock/unlock and include/exclude need no
   entry;
4. a named entity or code (capitalised mid-sentence, ALLCAPS, CamelCase) with no counterpart:
   same word, same stem, abbreviation (prod/production, DB/database) or acronym (PR/pull
   request) — never mere similarity, since Berlin and Toronto are "similar";
5. a content word with no counterpart in the other question: same stem, abbreviation, or a
   near-synonym by word-vector cosine (WordLlama embeds single words; cohyponyms such as
   production/staging score near zero while synonyms such as buy/purchase score high).

Question scaffolding ("how do I", "what is the best way to", "can you") and function words never
count. :meth:`NearMissGuard.analyse` does the per-question work once (cache it with the entry);
:meth:`NearMissGuard.check_analysed` compares two analyses in a few microseconds.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
import numpy as np
from numpy.typing import NDArray

__all__ = ["Analysis", "GuardSettings", "NearMissGuard", "Verdict", "WordVectors", "stem"]


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Which checks run and how strict they are. Defaults come from bench/QUALITY.md."""

    negation: bool = True
    numbers: bool = True
    antonyms: bool = True
    entities: bool = True
    unmatched_words: bool = True
    # Cosine between two words' vectors from which one counts as the other's counterpart; None
    # turns word vectors off (only same stem and abbreviations match).
    word_similarity: float | None = 0.5
    # Words whose WordLlama vector is shorter than this carry little meaning ("some", "really")
    # and never count as unmatched; 0 turns this off and leaves only the stop-word list.
    light_word_norm: float = 6.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer: ``ok`` to serve, or why not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class _Word:
    surface: str  # as written
    lower: str
    stem: str
    entity: bool


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """What the guard needs to know about one question; immutable, safe to share and store."""

    question: str
    negated: bool
    quantities: frozenset[str]  # normalised: "30", "q1", "monday", "week:-1", "per:month", "v2"
    words: tuple[_Word, ...]  # content words and entities, in order
    lowers: frozenset[str]  # every token lower-cased, function words included
    stems: frozenset[str]  # stems of every token
    vectors: NDArray[np.float32] | None = field(default=None, repr=False)  # one unit row per word

    @property
    def content(self) -> tuple[str, ...]:
        return tuple(w.lower for w in self.words)


# -- word lists (closed classes only; open-class behaviour comes from rules and vectors) ---------

_NEGATIONS = frozenset(
    "not n't no never without none nobody nothing nowhere neither nor cannot".split()
)
# Function words and question scaffolding. Never counted as content.
_STOP = frozenset(
    """
    a an the this that these those there here it its it's itself they them their theirs
    i me my mine myself we us our ours ourselves you your yours yourself yourselves
    he him his himself she her hers herself one's someone somebody anyone anybody everyone
    is am are was were be been being do does did doing done have has had having
    can could shall should will would may might must ought need needs needed
    what whats which who whom whose when where why how whether if then than so such
    and or but as of at by for from in into onto on off over under to up down out with
    about above across after against along among around before behind below beneath beside
    between beyond during except inside near outside per since through throughout till toward
    towards until upon via within
    some any all each every both either few many much more most other another same own
    very really quite just only also too even still yet already again ever
    please thanks thank hi hello hey ok okay
    way ways thing things stuff something anything everything lot lots kind sort type
    get gets got getting make makes made making let lets go goes going gone went
    know tell explain find show help want like
    possible allowed able best good better
    s t d ll m re ve
    """.split()
) - _NEGATIONS
# Verbs/nouns that frame a question rather than say what it is about ("how do refunds work",
# "what's the refund policy", "what are the steps to …").
_FRAME = frozenset("work works working policy policies process procedure procedures rule rules step steps".split())

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 10**9,
    "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3,
}  # fmt: skip
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "last": -1,
}  # fmt: skip
_MONTHS = {
    "january": "jan", "february": "feb", "march": "mar", "april": "apr", "may": "may",
    "june": "jun", "july": "jul", "august": "aug", "september": "sep", "october": "oct",
    "november": "nov", "december": "dec", "jan": "jan", "feb": "feb", "apr": "apr",
    "jun": "jun", "jul": "jul", "aug": "aug", "sep": "sep", "sept": "sep", "oct": "oct",
    "nov": "nov",
}  # fmt: skip
_AMBIGUOUS_MONTHS = frozenset({"march", "may"})  # also verbs: months only when capitalised
_WEEKDAYS = {
    "monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu", "friday": "fri",
    "saturday": "sat", "sunday": "sun", "tue": "tue", "tues": "tue", "thu": "thu",
    "thur": "thu", "thurs": "thu", "fri": "fri", "weekday": "weekday", "weekend": "weekend",
}  # fmt: skip
_DAY_WORDS = {"today": "day:0", "tonight": "day:0", "tomorrow": "day:+1", "yesterday": "day:-1"}
_UNITS = {
    "second": "second", "sec": "second", "minute": "minute", "min": "minute", "hour": "hour",
    "hr": "hour", "day": "day", "week": "week", "wk": "week", "fortnight": "fortnight",
    "month": "month", "quarter": "quarter", "year": "year", "yr": "year", "sprint": "sprint",
    "weekend": "weekend", "semester": "semester", "term": "term",
}  # fmt: skip
_RELATIVE = {"last": -1, "previous": -1, "past": -1, "prior": -1, "this": 0, "current": 0, "next": 1,
             "coming": 1, "upcoming": 1, "following": 1}  # fmt: skip
_PERIODIC = {
    "hourly": "per:hour", "daily": "per:day", "nightly": "per:day", "weekly": "per:week",
    "biweekly": "per:fortnight", "fortnightly": "per:fortnight", "monthly": "per:month",
    "quarterly": "per:quarter", "yearly": "per:year", "annually": "per:year", "annual": "per:year",
}  # fmt: skip
_PER = frozenset({"per", "every", "each", "a", "an"})

# Opposites that morphology cannot see. Symmetric; compared on stems.
_ANTONYM_PAIRS = [
    ("start", "stop"), ("start", "end"), ("begin", "end"), ("open", "close"), ("open", "shut"),
    ("grant", "revoke"), ("add", "remove"), ("add", "delete"), ("create", "delete"), ("create", "destroy"),
    ("allow", "deny"), ("allow", "block"), ("allow", "forbid"), ("accept", "reject"), ("accept", "decline"),
    ("approve", "reject"), ("approve", "deny"), ("permit", "forbid"), ("include", "omit"),
    ("min", "max"), ("minimum", "maximum"), ("first", "last"), ("before", "after"), ("above", "below"),
    ("buy", "sell"), ("send", "receive"), ("win", "lose"), ("push", "pull"), ("read", "write"),
    ("public", "private"), ("upper", "lower"), ("high", "low"), ("fast", "slow"), ("old", "new"),
    ("early", "late"), ("more", "less"), ("more", "fewer"), ("most", "least"), ("best", "worst"),
    ("true", "false"), ("yes", "no"), ("on", "off"), ("in", "out"), ("up", "down"), ("enter", "exit"),
    ("join", "leave"), ("login", "logout"), ("hire", "fire"), ("arrive", "depart"), ("pass", "fail"),
    ("success", "failure"), ("succeed", "fail"), ("import", "export"), ("upload", "download"),
    ("lend", "borrow"), ("give", "take"), ("increase", "reduce"), ("raise", "lower"), ("long", "short"),
    ("big", "small"), ("large", "small"), ("light", "dark"), ("hot", "cold"), ("sync", "async"),
    ("online", "offline"), ("remote", "local"), ("input", "output"), ("implicit", "explicit"),
    ("inbound", "outbound"), ("attach", "detach"), ("mount", "unmount"), ("show", "hide"),
    ("expand", "collapse"), ("pause", "resume"), ("freeze", "unfreeze"), ("internal", "external"),
    ("client", "server"), ("source", "target"), ("sender", "recipient"), ("debit", "credit"),
    ("income", "expense"), ("profit", "loss"), ("asset", "liability"), ("employee", "contractor"),
    ("manager", "report"), ("parent", "child"), ("leader", "follower"), ("win", "loss"),
    ("agree", "disagree"), ("love", "hate"), ("like", "hate"), ("rich", "poor"), ("easy", "hard"),
    ("easy", "difficult"), ("cheap", "expensive"), ("safe", "dangerous"), ("strong", "weak"),
    ("positive", "negative"), ("right", "wrong"), ("right", "left"), ("north", "south"), ("east", "west"),
    ("male", "female"), ("man", "woman"), ("boy", "girl"), ("day", "night"), ("past", "future"),
]  # fmt: skip
_PREFIX_NEGATION = ("un", "dis", "in", "im", "il", "ir", "non", "de", "anti")
# (prefix, prefix, shortest shared remainder) swaps that make opposites.
_PREFIX_SWAPS = (
    ("in", "ex", 5), ("in", "out", 3), ("in", "de", 5), ("en", "dis", 3), ("en", "de", 3),
    ("up", "down", 3), ("over", "under", 3), ("pre", "post", 3), ("max", "min", 0), ("inc", "dec", 4),
    ("on", "off", 4), ("inter", "intra", 4), ("with", "without", 0), ("ac", "de", 5),
)  # fmt: skip
_SUFFIX_SWAPS = (("ful", "less"),)

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
_TOKEN = re.compile(
    r"[$€£¥]?\d[\d,]*(?:\.\d+)*[a-z%]*"  # 30, 1,000, $5, 3.11, 2nd, 30s, 5gb, 50%
    r"|[a-z]+\d[a-z\d]*(?:\.\d+)*"  # v2, q3, python3, ipv6, fy24, v1.2
    r"|[a-z][a-z+#]*(?:[.-][a-z]+)*(?:'[a-z]+)?",  # words, c++, c#, node.js, e-mail, don't
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.?!:;]\s+")
_CONTRACTIONS = {"can't": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"), "ain't": ("is", "not")}
_NUM_TOKEN = re.compile(r"^[$€£¥]?(\d[\d,]*(?:\.\d+)*)([a-z%]*)$")
_CODE_TOKEN = re.compile(r"^([a-z]+)(\d[a-z\d]*(?:\.\d+)*)$")
_ORDINAL_SUFFIX = frozenset({"st", "nd", "rd", "th"})


def stem(word: str) -> str:
    """A light English stemmer: plural, -ing/-ed, -ation/-ment, final e, doubled consonant.

    Crude on purpose: it only has to make the two questions' forms of one word meet.
    """
    w = word.lower()
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith(("sses", "shes", "ches", "xes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is", "ous")):
        w = w[:-1]
    for suffix, keep in (("ing", 3), ("ed", 3), ("ation", 4), ("ment", 4)):
        if w.endswith(suffix) and len(w) - len(suffix) >= keep:
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w.endswith("e"):
        w = w[:-1]
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiousl":
        w = w[:-1]
    if len(w) > 3 and w.endswith("i"):
        w = w[:-1] + "y"
    return w


_ANTONYMS: frozenset[tuple[str, str]] = frozenset(
    pair for a, b in _ANTONYM_PAIRS for pair in ((stem(a), stem(b)), (stem(b), stem(a)))
)


def antonymous(a: str, b: str) -> bool:
    """Whether two (lower-case) words are opposites, by the list or by their morphology."""
    if a == b:
        return False
    sa, sb = stem(a), stem(b)
    if (sa, sb) in _ANTONYMS or (a, b) in _ANTONYMS:
        return True
    for x, y in ((sa, sb), (sb, sa)):
        for p in _PREFIX_NEGATION:
            if y == p + x and len(x) >= 4 or y == p + "-" + x and len(x) >= 3:
                return True
        for p, q, shortest in _PREFIX_SWAPS:
            if x.startswith(p) and y.startswith(q) and x[len(p) :] == y[len(q) :] and len(x) - len(p) >= shortest:
                return True
    for x, y in ((a, b), (b, a)):
        for p, q in _SUFFIX_SWAPS:
            if x.endswith(p) and y.endswith(q) and x[: -len(p)] == y[: -len(q)] and len(x) - len(p) >= 3:
                return True
    return False


def _abbreviates(short: str, long: str) -> bool:
    """``short`` is a clipping (prod → production, config → configuration) or a consonant
    abbreviation (db → database, pwd → password, mgmt → management) of ``long``."""
    if len(short) < 2 or len(long) < len(short) + 3 or short[0] != long[0]:
        return False
    if len(short) <= 6 and long.startswith(short) and len(short) >= 3:
        return True
    if len(short) <= 4:
        it = iter(long)
        return all(ch in it for ch in short)
    return False


def _acronym_of(short: str, words: Sequence[str]) -> str | None:
    """The run of ``words`` whose initials spell ``short`` (PR → pull request), if any."""
    n = len(short)
    if n < 2 or n > 6:
        return None
    for i in range(len(words) - n + 1):
        run = words[i : i + n]
        if "".join(w[0] for w in run) == short:
            return " ".join(run)
    return None


class WordVectors:
    """Unit vectors and raw lengths of single words, computed once per word (bounded LRU).

    ``raw_fn`` returns un-normalised vectors: with static embeddings such as WordLlama a word's
    vector length says how much it weighs in a sentence ("the" ≈ 1.6, "budget" ≈ 18).
    """

    def __init__(
        self, raw_fn: Callable[[list[str]], NDArray[np.float32]], *, dims: int, max_words: int = 50_000
    ) -> None:
        self._raw_fn = raw_fn
        self.dims = dims
        self._max = max_words
        self._cache: OrderedDict[str, tuple[NDArray[np.float32], float]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def wordllama(cls, dims: int = 256) -> WordVectors:
        from proxy_core.semantic.embedders import WordLlamaEmbedder

        embedder = WordLlamaEmbedder(dims)
        return cls(embedder.embed_raw, dims=dims)

    def lookup(self, words: Sequence[str]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """(unit vectors, raw lengths) of ``words``, one row each."""
        with self._lock:
            found = {w: self._cache[w] for w in words if w in self._cache}
        missing = [w for w in dict.fromkeys(words) if w not in found]
        if missing:
            raw = np.asarray(self._raw_fn(missing), dtype=np.float32)
            norms = np.linalg.norm(raw, axis=1)
            units = np.divide(raw, norms[:, None], out=np.zeros_like(raw), where=norms[:, None] > 0)
            with self._lock:
                for w, v, n in zip(missing, units, norms, strict=True):
                    found[w] = self._cache[w] = (v, float(n))
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        if not words:
            return np.zeros((0, self.dims), np.float32), np.zeros(0, np.float32)
        return (
            np.stack([found[w][0] for w in words]),
            np.array([found[w][1] for w in words], dtype=np.float32),
        )


class NearMissGuard:
    """Decides whether a cached question's answer may serve a new, similar question."""

    def __init__(
        self,
        settings: GuardSettings | None = None,
        *,
        word_vectors: WordVectors | None = None,
        light_words: Iterable[str] = (),
        max_memo: int = 20_000,
    ) -> None:
        self.settings = settings or GuardSettings()
        if word_vectors is None and (self.settings.word_similarity is not None or self.settings.light_word_norm > 0):
            word_vectors = WordVectors.wordllama()
        self._vectors = word_vectors
        self._light = frozenset(w.lower() for w in light_words)
        self._memo: OrderedDict[str, Analysis] = OrderedDict()
        self._memo_max = max_memo
        self._lock = threading.Lock()

    # -- public API --------------------------------------------------------------------------------

    def check(self, cached_q: str, new_q: str) -> Verdict:
        return self.check_analysed(self.analyse(cached_q), self.analyse(new_q))

    def analyse(self, question: str) -> Analysis:
        """The guard's view of one question (memoised; store it with the cache entry)."""
        with self._lock:
            found = self._memo.get(question)
            if found is not None:
                self._memo.move_to_end(question)
                return found
        analysis = self._analyse(question)
        with self._lock:
            self._memo[question] = analysis
            while len(self._memo) > self._memo_max:
                self._memo.popitem(last=False)
        return analysis

    def check_analysed(self, cached: Analysis, new: Analysis) -> Verdict:
        s = self.settings
        if s.negation and cached.negated != new.negated:
            return Verdict(False, "negation differs")
        if s.numbers and cached.quantities != new.quantities:
            left = " ".join(sorted(cached.quantities - new.quantities)) or "(none)"
            right = " ".join(sorted(new.quantities - cached.quantities)) or "(none)"
            return Verdict(False, f"number differs: {left} vs {right}")
        if s.antonyms:
            only_c = cached.lowers - new.lowers
            only_n = new.lowers - cached.lowers
            if only_c and only_n:
                for a in sorted(only_c):
                    for b in sorted(only_n):
                        if antonymous(a, b):
                            return Verdict(False, f"antonym: {a}/{b}")
        unmatched_c = self._unmatched(cached, new)
        unmatched_n = self._unmatched(new, cached)
        if s.entities:
            ents_c = [w for w in unmatched_c if cached.words[w].entity]
            ents_n = [w for w in unmatched_n if new.words[w].entity]
            if ents_c or ents_n:
                left = cached.words[ents_c[0]].surface if ents_c else "(none)"
                right = new.words[ents_n[0]].surface if ents_n else "(none)"
                if ents_c and not ents_n and unmatched_n:
                    right = new.words[unmatched_n[0]].surface
                if ents_n and not ents_c and unmatched_c:
                    left = cached.words[unmatched_c[0]].surface
                return Verdict(False, f"entity differs: {left} vs {right}")
        if s.unmatched_words:
            if unmatched_c and unmatched_n:
                return Verdict(
                    False,
                    f"word differs: {cached.words[unmatched_c[0]].lower} vs {new.words[unmatched_n[0]].lower}",
                )
            if unmatched_c or unmatched_n:
                word = cached.words[unmatched_c[0]] if unmatched_c else new.words[unmatched_n[0]]
                return Verdict(False, f"unmatched word: {word.lower}")
        return Verdict(True, "no near-miss found")

    # -- matching ----------------------------------------------------------------------------------

    def _unmatched(self, a: Analysis, b: Analysis) -> list[int]:
        """Indexes of ``a``'s words with no counterpart in ``b``."""
        out: list[int] = []
        b_words = [w.lower for w in b.words]
        a_words = [w.lower for w in a.words]
        # words of ``a`` inside a phrase that ``b`` abbreviates (pull request ↔ PR)
        b_spelled = {part for x in b_words for part in (_acronym_of(x, a_words) or "").split()}
        for i, w in enumerate(a.words):
            if w.lower in b.lowers or w.stem in b.stems:
                continue
            if any(_abbreviates(w.lower, x) or _abbreviates(x, w.lower) for x in b_words):
                continue
            if w.lower in b_spelled or (len(w.lower) <= 6 and _acronym_of(w.lower, b_words)):
                continue
            out.append(i)
        if not out:
            return out
        threshold = self.settings.word_similarity
        if threshold is None or a.vectors is None or b.vectors is None or len(b.words) == 0:
            return out
        sims = a.vectors[out] @ b.vectors.T
        kept: list[int] = []
        for row, i in enumerate(out):
            best = int(np.argmax(sims[row]))
            if sims[row, best] >= threshold and not (
                self.settings.antonyms and antonymous(a.words[i].lower, b.words[best].lower)
            ):
                continue
            kept.append(i)
        return kept

    # -- analysis ----------------------------------------------------------------------------------

    def _analyse(self, question: str) -> Analysis:
        tokens, starts = _tokenise(question)
        lowers = [t.lower() for t in tokens]
        negated = False
        quantities: set[str] = set()
        consumed: set[int] = set()
        for i, low in enumerate(lowers):
            if low in _NEGATIONS:
                negated = True
                consumed.add(i)
        _quantities(tokens, lowers, starts, quantities, consumed)
        words: list[_Word] = []
        for i, (tok, low) in enumerate(zip(tokens, lowers, strict=True)):
            if i in consumed or low in _STOP or low in _FRAME or low in self._light or not low[0].isalpha():
                continue
            if len(low) == 1:
                continue
            entity = _is_entity(tok, i in starts)
            words.append(_Word(tok, low, stem(low), entity))
        vectors = None
        if self._vectors is not None and words:
            vectors, norms = self._vectors.lookup([w.surface if w.entity else w.lower for w in words])
            if self.settings.light_word_norm > 0:
                keep = [k for k, n in enumerate(norms) if n >= self.settings.light_word_norm or words[k].entity]
                words = [words[k] for k in keep]
                vectors = vectors[keep]
        return Analysis(
            question=question,
            negated=negated,
            quantities=frozenset(quantities),
            words=tuple(words),
            lowers=frozenset(lowers),
            stems=frozenset(stem(x) for x in lowers),
            vectors=vectors,
        )


def _is_entity(token: str, sentence_start: bool) -> bool:
    letters = [c for c in token if c.isalpha()]
    if len(letters) < 2:
        return False
    if all(c.isupper() for c in letters):
        return True
    if any(c.isupper() for c in token[1:]):
        return True  # CamelCase, iOS, macOS
    return token[0].isupper() and not sentence_start


def _tokenise(question: str) -> tuple[list[str], set[int]]:
    """Tokens as written (contractions split) and the indexes that start a sentence."""
    text = unicodedata.normalize("NFKC", question).translate(_APOSTROPHES)
    tokens: list[str] = []
    starts: set[int] = set()
    for sentence in _SENTENCE_END.split(text):
        first = True
        for match in _TOKEN.finditer(sentence):
            tok = match.group(0).rstrip(".-")
            low = tok.lower()
            if low in _CONTRACTIONS:
                parts: tuple[str, ...] = _CONTRACTIONS[low]
            elif low.endswith("n't"):
                parts = (tok[:-3], "n't")
            elif "'" in tok:
                head, _, tail = tok.partition("'")
                parts = (head,) if tail in ("s", "d", "ll", "m", "re", "ve") else (head + tail,)
            else:
                parts = (tok,)
            for part in parts:
                if not part:
                    continue
                if first:
                    starts.add(len(tokens))
                    first = False
                tokens.append(part)
    return tokens, starts


def _number(text: str) -> str:
    value = float(text.replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def _quantities(
    tokens: Sequence[str], lowers: Sequence[str], starts: set[int], out: set[str], consumed: set[int]
) -> None:
    """Numbers, dates, versions and periods, normalised, into ``out``; their tokens into ``consumed``."""
    n = len(lowers)
    for i, low in enumerate(lowers):
        if i in consumed:
            continue
        nxt = lowers[i + 1] if i + 1 < n else ""
        unit = _UNITS.get(stem(nxt)) if nxt else None
        num = _NUM_TOKEN.match(low)
        if num:
            value, suffix = num.groups()
            if suffix in _ORDINAL_SUFFIX and unit in ("quarter", "half"):
                out.add(f"{unit[0]}{_number(value)}")
                consumed.update((i, i + 1))
                continue
            out.add(_number(value))
            consumed.add(i)
            continue
        code = _CODE_TOKEN.match(low)
        if code:
            head, digits = code.groups()
            out.add(digits if head in ("v", "ver", "version") else low)
            consumed.add(i)
            continue
        if low in _NUMBER_WORDS:
            if low == "one" and (nxt in ("of", "") or (i > 0 and lowers[i - 1] in _STOP)):
                continue
            out.add(_number(str(_NUMBER_WORDS[low])))
            consumed.add(i)
            continue
        if low in _ORDINALS and unit in ("quarter",) or (low in _ORDINALS and nxt == "half"):
            q = "q" if unit == "quarter" else "h"
            out.add(f"{q}{_ORDINALS[low]}" if _ORDINALS[low] > 0 else f"{q}:last")
            consumed.update((i, i + 1))
            continue
        if low in _RELATIVE and unit is not None and (low != "this" or unit != "second"):
            out.add(f"{unit}:{_RELATIVE[low]:+d}")
            consumed.update((i, i + 1))
            continue
        if low in _PER and unit is not None and i + 1 < n and lowers[i + 1] == nxt and (low != "a" or i > 0):
            if low in ("per", "every", "each"):
                out.add(f"per:{unit}")
                consumed.update((i, i + 1))
            continue
        if low in _PERIODIC:
            out.add(_PERIODIC[low])
            consumed.add(i)
            continue
        if low in _DAY_WORDS:
            out.add(_DAY_WORDS[low])
            consumed.add(i)
            continue
        day = _WEEKDAYS.get(stem(low)) or _WEEKDAYS.get(low)
        if day:
            out.add(day)
            consumed.add(i)
            continue
        month = _MONTHS.get(low)
        if month and (low not in _AMBIGUOUS_MONTHS or (tokens[i][0].isupper() and i not in starts)):
            out.add(month)
            consumed.add(i)
            continue
