"""The near-miss guard: reasons a cached answer must not serve a similar-looking question.

Sentence embeddings score "How do I enable 2FA?" and "How do I disable 2FA?" as near-identical,
so a similarity threshold alone serves wrong answers. The guard compares the two questions word
by word. :meth:`NearMissGuard.compare` returns a *veto* when they differ in something that
changes the answer, whatever the similarity:

1. negation (not, n't, never, no, without, non-, …), except where it negates nothing ("… or
   not?", "why or why not?");
2. numbers, amounts, dates, versions, periods and codes (digits, number words, "first quarter" =
   Q1, v2, weekdays, months, "last week", "monthly", 2FA, "Plan B"), compared as normalised values;
3. a relation next to an amount or a time: at least / at most / over / under / before / until /
   by / since / within … ("before Friday" vs "until Friday"); synonyms share a class ("no more
   than 3" = "at most 3" = "up to 3");
4. a quantifier class swapped: all / some / most ("all employees" vs "some employees");
5. the asker's scope: the asker's own (my), a team's or the company's ("my budget" vs "our team's
   budget");
6. an opposite: a compact list of pairs plus morphology (un-/dis-/in-/de-/non- prefixes, in/ex,
   en/dis, up/down swaps, -ful/-less), and opposition scales as classes — each scale has two sides
   (mandatory / required / compulsory vs optional / voluntary / elective; public vs private; paid
   vs unpaid; …) and any word of one side is the opposite of any word of the other; a word not
   listed takes the side of a listed word its WordLlama vector is near (``scale_similarity``);
   and swapped roles ("km to miles" vs "miles to km");
7. text it cannot read — another script, an emoji, a symbol such as ``<`` or ``₹`` — that is not
   the same on both sides (always on: the tokens are Latin words, numbers and codes);
8. a named entity or code (capitalised mid-sentence, ALLCAPS, CamelCase) with no counterpart:
   same word or stem, spelling variant, clipping (prod/production), abbreviation (DB/database) or
   acronym (PR/pull request) — never mere similarity, since Berlin and Toronto are "similar";
9. in a minimal pair, a content word swapped for another ("production logs" / "staging logs"),
   or a condition only one question adds ("… as a contractor?", "… on the kiosk?").

Everything else is *evidence* for the calibrated decision (:mod:`proxy_core.semantic.calibrated`):
another kind of question (why / when / where / who), advice vs fact, content words without a
counterpart, how well each word is covered (its word-vector similarity to the nearest word of the
other question), the overlap of the two questions' words. :meth:`NearMissGuard.check` is the
strict form used with a fixed threshold: any veto, and any of that evidence in a minimal pair,
rejects.

Word vectors come from the bundled WordLlama model (it embeds single words): cohyponyms such as
production/staging score near zero while buy/purchase score high. A pair sharing less than half
its words (Dice overlap below ``rewording_overlap``) is a rewording, not a minimal pair, and a word
without a literal counterpart is expected there.

Question scaffolding ("how do I", "what is the best way to", "can you") and function words never
count. :meth:`NearMissGuard.analyse` does the per-question work once (cache it with the entry);
:meth:`NearMissGuard.compare` compares two analyses in tens of microseconds.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from proxy_core.cache import compatibility_form

__all__ = [
    "Analysis", "Comparison", "GuardSettings", "NearMissGuard", "Verdict", "Word", "WordVectors", "antonymous", "stem",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class GuardSettings:
    """Which checks run and how strict they are. Defaults come from bench/QUALITY.md."""

    negation: bool = True
    numbers: bool = True  # numbers, amounts, dates, versions, periods and codes (2FA, Q3, v2)
    question_type: bool = True  # why / when / where / who must agree
    modality: bool = True  # advice (should, ought to) vs ability or fact (can, do, will)
    antonyms: bool = True  # opposites: the list, morphology and the opposition scales
    roles: bool = True  # "miles to km" vs "km to miles"
    relations: bool = True  # "at least 3" vs "at most 3", "before Friday" vs "until Friday"
    quantifiers: bool = True  # "all employees" vs "some employees"
    scope: bool = True  # whose thing is asked about: "my budget" vs "the team budget" vs "the company's"
    conditions: bool = True  # one question adds a condition the other lacks: "… as a contractor?"
    modifiers: bool = True  # one question narrows a shared word by a scale or an order: "old style guide"
    entities: bool = True
    unmatched_words: bool = True
    # Cosine between two words' vectors from which a leftover word counts as the other's
    # counterpart; None turns word vectors off (only same stem and abbreviations match).
    word_similarity: float | None = 0.3
    # Match a leftover word against every word of the other question, not only its leftovers.
    similar_to_any: bool = True
    # Below this Dice overlap of the two token sets the pair is a rewording, not a minimal pair,
    # and words without a literal counterpart are expected: only the other checks apply. None:
    # every content word always needs a counterpart.
    rewording_overlap: float | None = 0.5
    # In a minimal pair, a content word swapped for another ("production logs" / "staging logs") is
    # a veto; False leaves it to the calibrated decision as evidence.
    substitution_veto: bool = True
    # Word-vector cosine from which a word not on an opposition scale takes the side of the scale
    # word it is near (obligatory ~ mandatory); None: only the listed words are on the scales.
    scale_similarity: float | None = 0.55


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's answer: ``ok`` to serve, or why not."""

    ok: bool
    reason: str

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class Comparison:
    """How two questions differ (:meth:`NearMissGuard.compare`): a veto, or evidence to weigh."""

    veto: str | None  # a difference that changes the answer, whatever the similarity
    question_type: str | None  # why / when / where / who differ
    modality: str | None  # advice vs fact
    unmatched_cached: tuple[str, ...]  # content words of the cached question with no counterpart
    unmatched_new: tuple[str, ...]  # … and of the new one
    overlap: float  # Dice overlap of the two token sets
    reworded: bool  # overlap below ``rewording_overlap``: a rewording, not a minimal pair
    coverage: float  # mean best match of every content word in the other question (1 = all found)
    words: int  # content words of both questions
    content_similarity: float  # cosine of the two questions' mean content-word vectors (0 if none)
    aligned: bool = True  # False: the word alignment was skipped (compare(align=False), or a veto)
    # How well the worst-aligned word is matched: each content word's best match in the other
    # question (1 for a word form, else the word-vector cosine of its nearest admissible word),
    # the lowest of the cached question's words and of the new one's (1 when all match by form).
    worst_cached: float = 1.0
    worst_new: float = 1.0
    poorly_matched: int = 0  # content words of both whose best match is below 0.5
    lexical_share: float = 1.0  # share of the content words matched by a word form
    reworded_similarity: float = 1.0  # mean best match of the words not matched by a form (1 if none)


@dataclass(frozen=True, slots=True)
class Word:
    """A content word or entity of a question."""

    surface: str  # as written
    lower: str
    stem: str
    entity: bool
    position: int = -1  # index of its token in ``Analysis.tokens``


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """What the guard needs to know about one question; immutable, safe to share and store."""

    question: str
    negated: bool
    quantities: dict[str, str]  # normalised value ("num:30", "period:q1") -> as written ("30", "Q1")
    asks: frozenset[str]  # specific question types: why, when, where, who
    advice: bool  # asks what one should do
    roles: frozenset[tuple[str, str]]  # (directional preposition, stem of its object)
    words: tuple[Word, ...]  # content words and entities, in order
    lowers: frozenset[str]  # every token lower-cased, function words included
    stems: frozenset[str]  # stems of every token
    initials: str  # first letters of the content words, to find acronyms quickly
    vectors: NDArray[np.float32] | None = field(default=None, repr=False)  # one unit row per word
    relations: dict[str, str] = field(default_factory=dict)  # "ge" ("at least") ... -> as written
    quantifiers: dict[str, str] = field(default_factory=dict)  # "all" / "some" / "most" -> as written
    scope: tuple[str, str] | None = None  # ("self" | "team" | "org", as written), if the question says
    poles: dict[str, str] = field(default_factory=dict)  # word -> its side of an opposition scale
    centroid: NDArray[np.float32] | None = field(default=None, repr=False)  # unit mean of the word vectors
    tokens: tuple[str, ...] = ()  # every token lower-cased, in order
    unread: tuple[str, ...] = ()  # words and symbols the tokens do not cover ("不是", "≤", "₹"), sorted


# A content word whose best match in the other question is below this is poorly matched (evidence).
_POOR_MATCH = 0.5

# -- word lists (closed classes only; open-class behaviour comes from rules and vectors) ---------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_NEGATIONS = _words("not n't no never without none nobody nothing nowhere neither nor cannot non")
# Function words and question scaffolding. Never counted as content.
_STOP = (
    _words(
        """
    a an the this that these those there here it its it's itself they them their theirs i me my
    mine myself we us our ours ourselves you your yours yourself yourselves he him his himself
    she her hers herself one's someone somebody anyone anybody everyone is am are was were be
    been being do does did doing done have has had having can could shall should will would may
    might must ought need needs needed what whats which who whom whose when where why how
    whether if then than so such and or but as of at by for from in into onto on off over under
    to up down out with about above across after against along among around before behind below
    beneath beside between beyond during except inside near outside per since through throughout
    till toward towards until upon via within some any all each every both either few many much
    more most other another same own very really quite just only also too even still yet already
    again ever please thanks thank hi hello hey ok okay way ways thing things stuff something
    anything everything lot lots kind sort type get gets got getting make makes made making let
    lets go goes going gone went know tell explain find show help want like possible allowed
    able best good better one ones s t d ll m re ve
    """
    )
    - _NEGATIONS
)
# Verbs/nouns that frame a question rather than say what it is about ("how do refunds work",
# "what's the refund policy", "what are the steps to …").
_FRAME = _words("work works working policy policies process procedure procedures rule rules step steps")

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
    "hourly": "per-hour", "daily": "per-day", "nightly": "per-day", "weekly": "per-week",
    "biweekly": "per-fortnight", "fortnightly": "per-fortnight", "monthly": "per-month",
    "quarterly": "per-quarter", "yearly": "per-year", "annually": "per-year", "annual": "per-year",
}  # fmt: skip
# Specific question types; "what", "which" and "how" ask for anything and do not count.
_ASKS = {"why": "why", "when": "when", "where": "where", "who": "who", "whom": "who", "whose": "whose"}
_WH = frozenset({"how", "what", "which", "why", "when", "where", "who", "whom", "whose"})
_ADVICE = frozenset({"should", "ought", "shall", "shouldn't"})
# Prepositions whose object plays a role that must not move: "convert km to miles".
_DIRECTIONAL = frozenset({"to", "from", "into", "against", "than", "toward", "towards", "onto"})

# Prepositions whose object, added to one question only, narrows what it asks.
_CONDITION_PREPOSITIONS = _words("for as on in at with from during after before under over via inside outside except")

# Relations around a number, a date or a time: "at least 3", "before Friday", "3 or more". Words of
# one line mean the same; any two lines differ ("before" excludes the day "until" includes, "since"
# starts where "by" ends). Only counted next to an amount or a time, so "hand over" is no relation.
_RELATION_LINES = {
    "ge": "at least|no less than|no fewer than|not less than|not fewer than|minimum|minimum of|min|at minimum"
          "|or more|and up|and above|or above|or over",
    "le": "at most|no more than|not more than|no longer than|maximum|maximum of|max|at maximum|up to"
          "|or less|or fewer|or under|or below|and under|and below",
    "gt": "over|above|more than|greater than|longer than|older than|exceeding|beyond|upwards of",
    "lt": "under|below|less than|fewer than|shorter than|younger than|lower than",
    "before": "before|prior to|earlier than|ahead of",
    "after": "after|later than|or later",
    "until": "until|till|til|up until|up till|through|thru",
    "by": "by|no later than|not later than",
    "since": "since|as of|from|starting|starting from",
    "within": "within|in under|in less than",
    "between": "between",
    "exactly": "exactly|precisely|exact",
}  # fmt: skip
_RELATIONS: dict[tuple[str, ...], str] = {
    tuple(phrase.split()): code for code, line in _RELATION_LINES.items() for phrase in line.split("|")
}
_RELATION_MAX = max(len(k) for k in _RELATIONS)
_RELATION_FIRST = frozenset(k[0] for k in _RELATIONS)
# Times that anchor a relation besides numbers and dates ("before the deadline", "by noon").
_TIME_WORDS = _words("deadline deadlines noon midnight eod eow eom cutoff end start beginning payday morning evening")

# Quantifiers, by what they claim: all, some or most. "any" is left out: in a question it can mean
# either ("can any employee" = every, "do any employees" = some).
_QUANTIFIERS = {
    **dict.fromkeys(_words("all every each everyone everybody everything always entire"), "all"),
    **dict.fromkeys(_words("some several few certain sometimes someone somebody something occasionally"), "some"),
    **dict.fromkeys(_words("most mostly majority usually generally often"), "most"),
}
# Whose thing the question is about. The broadest one said counts ("my team's budget" is the team's).
_SCOPE_SELF = _words("my mine myself")
_SCOPE_WORDS = {
    **dict.fromkeys(_words("team teams team's squad department departments dept teammates"), "team"),
    **dict.fromkeys(_words("company company's companies companywide organization organisation org orgs orgwide "
                           "organizationwide everyone everybody"), "org"),
}
_SCOPE_RANK = {"self": 0, "team": 1, "org": 2}

# Opposition scales: each has two sides, and a word on one side is the opposite of a word on the
# other whatever their morphology (mandatory / voluntary, public / private). Word vectors put an
# unlisted word on the side of a listed word it is near (``GuardSettings.scale_similarity``).
_SCALES = (
    ("obligation", "mandatory required compulsory obligatory", "optional voluntary elective discretionary"),
    ("visibility", "public publicly", "private privately confidential secret"),
    ("permission", "allowed permitted authorized legal acceptable", "forbidden prohibited banned disallowed illegal"),
    ("payment", "paid", "unpaid free"),
    ("tenure", "permanent", "temporary interim"),
    ("hours", "fulltime", "parttime"),
    ("seniority", "senior", "junior"),
    ("place", "remote", "onsite inperson inoffice"),
    ("extreme", "maximum max highest upper ceiling", "minimum min lowest lower floor"),
    ("size", "largest biggest big large", "smallest small tiny"),
    ("age", "newest latest new", "oldest earliest old existing former"),
    ("speed", "fast faster fastest quick", "slow slower slowest"),
    ("price", "cheap cheaper cheapest inexpensive", "expensive costly priciest"),
    ("outcome", "success successful pass passed succeed", "failure failed fail unsuccessful"),
    ("verdict", "approve approved accept accepted grant granted",
     "reject rejected deny denied decline declined revoke"),
    ("truth", "true correct valid", "false wrong incorrect invalid"),
    ("direction", "increase raise grow expand extend upgrade", "decrease reduce shrink cut downgrade"),
    ("phase", "start begin launch open onboard join", "stop end finish close offboard quit"),
    ("reach", "domestic local", "international foreign abroad"),
    ("gross", "gross", "net"),
    ("rank", "primary main", "secondary backup"),
    ("ownership", "personal", "business corporate"),
    ("frequency", "frequent frequently", "rare rarely seldom infrequent"),
)  # fmt: skip
# Scales whose words qualify a noun ("temporary pass", "international policy"); not the verbs and
# judgements of the others ("start preparing", "true beauty").
_QUALIFIER_SCALES = _words("obligation visibility payment tenure hours seniority place size age price reach ownership")
_POLES: dict[str, str] = {}
for _name, _plus, _minus in _SCALES:
    for _sign, _side in (("+", _plus), ("-", _minus)):
        for _w in _side.split():
            _POLES[_w] = _name + _sign

# Opposites that morphology cannot see. Symmetric; compared on stems.
_ANTONYM_PAIRS = [
    ("start", "stop"), ("run", "stop"), ("start", "end"), ("begin", "end"), ("open", "close"), ("open", "shut"),
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

# Typographic apostrophes, and the minus sign (U+2212), read as their ASCII forms.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u2212": "-"})
# A "!" right after a digit is a factorial ("What is 10!", "10! / 8!"), not sentence punctuation: the
# exact key keeps it too (proxy_core.cache.normalize_question). Not "!=" ("x!=10"), nor "!" before a word.
_TOKEN = re.compile(
    r"(?:(?<![\w.])-)?[$€£¥]?\d[\d,]*(?:\.\d+)*(?:[a-z%]+|!(?![=\w]))?"  # 30, -1, 1,000, $5, 3.11, 2nd, 30s, 50%, 10!
    r"|[a-z]+\d[a-z\d]*(?:\.\d+)*"  # v2, q3, python3, ipv6, fy24, v1.2
    r"|[a-z][a-z+#]*(?:\.[a-z]+)*(?:-[a-z]+)*(?:'[a-z]+)?",  # words, c++, c#, node.js, e-mail, don't
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.?!:;])\s+")  # the mark stays with its sentence: "10! is" keeps its "!"
_UNIT = re.compile(r"\w+|[^\w\s]")  # a run of word characters, or one other visible character
_ASCII_READABLE = re.compile(r"[A-Za-z0-9$+<=>^`|~]")  # the ASCII letters, digits and symbols (Unicode L, N, S)
_CONTRACTIONS = {"can't": ("can", "not"), "won't": ("will", "not"), "shan't": ("shall", "not"), "ain't": ("is", "not")}
_NUM_TOKEN = re.compile(
    r"^(?P<sign>-?)(?P<currency>[$€£¥]?)(?P<value>\d[\d,]*(?:\.\d+)*)(?P<suffix>[a-z%]*)(?P<factorial>!?)$"
)
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_CODE_TOKEN = re.compile(r"^([a-z]+)(\d[a-z\d]*(?:\.\d+)*)$")
_ORDINAL_SUFFIX = frozenset({"st", "nd", "rd", "th"})
# Suffixes that keep "30s", "5gb", "2nd" an amount; any other letters make a code ("2fa").
_NUMBER_SUFFIXES = (
    _ORDINAL_SUFFIX
    | {""}
    | _words("s ms sec secs min mins h hr hrs d k m b bn x px pt gb mb kb tb g kg km mi am pm % usd eur")
)


@lru_cache(maxsize=65_536)
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


_ANTONYMS: dict[str, set[str]] = {}
for _x, _y in _ANTONYM_PAIRS:
    for _f, _g in ((_x, _y), (_y, _x)):
        _ANTONYMS.setdefault(_f, set()).update((_g, stem(_g)))
        _ANTONYMS.setdefault(stem(_f), set()).update((_g, stem(_g)))
for _w, _side_of_w in list(_POLES.items()):
    _POLES.setdefault(stem(_w), _side_of_w)
# Scale words whose vectors stand for the word (not for a glued compound like "inperson").
_SCALE_WORDS = [w for _, plus, minus in _SCALES for w in (*plus.split(), *minus.split())
                if w not in _words("fulltime parttime onsite inperson inoffice")]  # fmt: skip
_SIDE_COLUMNS = {
    pole: np.array([j for j, w in enumerate(_SCALE_WORDS) if _POLES[w] == pole]) for pole in set(_POLES.values())
}
_SIDE_MARGIN = 0.15  # how much nearer one side a word must be than the other to take it


@lru_cache(maxsize=65_536)
def _forms(word: str) -> frozenset[str]:
    return frozenset((word, stem(word)))


@lru_cache(maxsize=65_536)
def _opposites(word: str) -> frozenset[str]:
    """Every form an opposite of ``word`` could take: listed antonyms, the word with a negating
    prefix added or removed (lock/unlock), and prefix or suffix swaps (include/exclude,
    enable/disable, useful/useless)."""
    out: set[str] = set()
    for f in _forms(word):
        out |= _ANTONYMS.get(f, set())
        for p in _PREFIX_NEGATION:
            if len(f) >= 4:
                out.add(p + f)
            if f.startswith(p) and len(f) - len(p) >= 4:
                out.add(f[len(p) :])
        for p, q, shortest in _PREFIX_SWAPS:
            for x, y in ((p, q), (q, p)):
                if f.startswith(x) and len(f) - len(x) >= shortest:
                    out.add(y + f[len(x) :])
        for p, q in _SUFFIX_SWAPS:
            for x, y in ((p, q), (q, p)):
                if f.endswith(x) and len(f) - len(x) >= 3:
                    out.add(f[: -len(x)] + y)
    out.discard(word)
    return frozenset(out)


def antonymous(a: str, b: str) -> bool:
    """Whether two (lower-case) words are opposites, by the list or by their morphology."""
    if a == b:
        return False
    return not (_opposites(a).isdisjoint(_forms(b)) and _opposites(b).isdisjoint(_forms(a)))


@lru_cache(maxsize=65_536)
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


_DERIVED_SUFFIXES = ("n", "an", "ian", "ese", "ish", "i", "ean")


@lru_cache(maxsize=65_536)
def _variant(a: str, b: str) -> bool:
    """Spelling variants of one word: a typo in a long word (Zuckerberg/Zuckerburg) or a
    place and its people (India/Indian, China/Chinese)."""
    if a[0] != b[0]:
        return False
    short, long = sorted((a, b), key=len)
    if len(short) >= 8 and len(long) - len(short) <= 1 and _one_edit(short, long):
        return True
    if len(short) >= 4:
        stem_len = len(short) - 1 if short.endswith(("a", "e", "y")) else len(short)
        if long.startswith(short[:stem_len]) and long[stem_len:] in _DERIVED_SUFFIXES:
            return True
    return False


def _one_edit(a: str, b: str) -> bool:
    """``b`` is ``a`` with one letter changed, added or two neighbours swapped (len(a) <= len(b))."""
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        if len(diff) == 1:
            return True
        i, j = [*diff, 0, 0][:2]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    return any(b[:i] + b[i + 1 :] == a for i in range(len(b)))


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
    """Unit vectors of single words, computed once per word (bounded LRU, thread-safe)."""

    def __init__(
        self, embed: Callable[[list[str]], NDArray[np.float32]], *, dims: int, max_words: int = 50_000
    ) -> None:
        self._embed = embed
        self.dims = dims
        self._max = max_words
        self._cache: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def wordllama(cls, dims: int = 256) -> WordVectors:
        """Word vectors from the bundled WordLlama model (local, no network)."""
        from proxy_core.semantic.embedders import WordLlamaEmbedder

        embedder = WordLlamaEmbedder(dims)
        return cls(embedder.embed, dims=dims)

    def lookup(self, words: Sequence[str]) -> NDArray[np.float32]:
        """One unit row per word."""
        if not words:
            return np.zeros((0, self.dims), np.float32)
        with self._lock:
            found = {w: self._cache[w] for w in words if w in self._cache}
        missing = [w for w in dict.fromkeys(words) if w not in found]
        if missing:
            rows = np.asarray(self._embed(missing), dtype=np.float32)
            with self._lock:
                for w, v in zip(missing, rows, strict=True):
                    found[w] = self._cache[w] = v
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return np.stack([found[w] for w in words])


class NearMissGuard:
    """Decides whether a cached question's answer may serve a new, similar question.

    ``word_vectors`` defaults to the bundled WordLlama model whatever embedder the cache uses;
    pass ``None`` with ``word_similarity=None`` to run on word forms alone.
    """

    def __init__(
        self,
        settings: GuardSettings | None = None,
        *,
        word_vectors: WordVectors | None = None,
        max_memo: int = 20_000,
        max_memo_words: int = 200_000,
    ) -> None:
        self.settings = settings or GuardSettings()
        if word_vectors is None and self.settings.word_similarity is not None:
            word_vectors = WordVectors.wordllama()
        self._vectors = word_vectors if self.settings.word_similarity is not None else None
        self._memo: OrderedDict[str, Analysis] = OrderedDict()
        self._memo_max = max_memo
        # An analysis keeps a vector per word (~2 kB each at 256 dimensions): bound the words held
        # too, or 20,000 long questions would hold gigabytes.
        self._memo_words_max = max_memo_words
        self._memo_words = 0
        self._lock = threading.Lock()
        self._scale_vectors: NDArray[np.float32] | None = None  # rows of _SCALE_WORDS, on first use
        self._vector_poles: dict[str, str | None] = {}  # word -> the scale side its vector puts it on

    # -- public API --------------------------------------------------------------------------------

    def check(self, cached_q: str, new_q: str) -> Verdict:
        """May the answer cached for ``cached_q`` serve ``new_q``?"""
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
            if question not in self._memo:
                self._memo[question] = analysis
                self._memo_words += len(analysis.words) + 1
            while len(self._memo) > self._memo_max or (self._memo_words > self._memo_words_max and len(self._memo) > 1):
                _, dropped = self._memo.popitem(last=False)
                self._memo_words -= len(dropped.words) + 1
        return analysis

    def check_analysed(self, cached: Analysis, new: Analysis) -> Verdict:
        """:meth:`check` on two analyses (the cached one can be stored with its entry).

        Every veto of :meth:`compare` rejects, and so do its soft differences: another kind of
        question, another modality, and in a minimal pair a content word without a counterpart.
        """
        c = self.compare(cached, new)
        if c.veto is not None:
            return Verdict(False, c.veto)
        if c.question_type is not None:
            return Verdict(False, c.question_type)
        if c.modality is not None:
            return Verdict(False, c.modality)
        if not c.reworded and (c.unmatched_cached or c.unmatched_new) and self.settings.unmatched_words:
            if c.unmatched_cached and c.unmatched_new:
                return Verdict(False, f"word differs: {c.unmatched_cached[0]} vs {c.unmatched_new[0]}")
            return Verdict(False, f"unmatched word: {(c.unmatched_cached or c.unmatched_new)[0]}")
        return Verdict(True, "reworded; no near-miss found" if c.reworded else "no near-miss found")

    def compare(self, cached: Analysis, new: Analysis, *, align: bool = True) -> Comparison:
        """Everything the hit decision needs to know about how two questions differ.

        ``veto`` is the first difference that changes the answer whatever the similarity:
        negation, an amount or time, a relation around one, a quantifier, the asker's scope, an
        opposite, swapped roles, an entity, or (in a minimal pair) a content word swapped for
        another or a condition one adds. The rest is evidence the calibrated decision weighs.

        ``align=False`` skips the word-by-word alignment (most of the cost): only the vetoes that
        need none are checked, and the alignment's evidence is left at its best case (no word
        without a counterpart, full coverage; ``aligned`` False) — enough to rule a candidate out.
        """
        s = self.settings
        veto = self._veto(cached, new)
        question_type = None
        if s.question_type and cached.asks != new.asks:
            asked_c = "/".join(sorted(cached.asks - new.asks)) or "(any)"
            asked_n = "/".join(sorted(new.asks - cached.asks)) or "(any)"
            question_type = f"question type differs: {asked_c} vs {asked_n}"
        modality = None
        if s.modality and cached.advice != new.advice:
            mood_c, mood_n = ("should", "can/do") if cached.advice else ("can/do", "should")
            modality = f"modality differs: {mood_c} vs {mood_n}"
        overlap = _overlap(cached, new)
        reworded = s.rewording_overlap is not None and overlap < s.rewording_overlap
        left, right, coverage, best = self._align(cached, new) if align and veto is None else ([], [], 1.0, ([], []))
        if veto is None and s.entities:
            ents_l = [cached.words[i].surface for i in left if cached.words[i].entity]
            ents_r = [new.words[i].surface for i in right if new.words[i].entity]
            if ents_l or ents_r:
                a = (ents_l or [cached.words[i].surface for i in left] or ["(none)"])[0]
                b = (ents_r or [new.words[i].surface for i in right] or ["(none)"])[0]
                veto = f"entity differs: {a} vs {b}"
        if veto is None and s.substitution_veto and s.unmatched_words and not reworded and left and right:
            veto = f"word differs: {cached.words[left[0]].lower} vs {new.words[right[0]].lower}"
        if veto is None and s.conditions and not reworded and bool(left) != bool(right):
            added = _added_condition(cached, left) if left else _added_condition(new, right)
            if added is not None:
                veto = f"condition added: {added}"
        if veto is None and s.modifiers and not reworded and bool(left) != bool(right):
            added = _added_modifier(cached, left) if left else _added_modifier(new, right)
            if added is not None:
                veto = f"modifier added: {added}"
        total = len(cached.words) + len(new.words)
        inexact = [*best[0], *best[1]]  # best matches of the words no word form matches
        return Comparison(
            veto=veto,
            question_type=question_type,
            modality=modality,
            unmatched_cached=tuple(cached.words[i].lower for i in left),
            unmatched_new=tuple(new.words[i].lower for i in right),
            overlap=overlap,
            reworded=reworded,
            coverage=coverage,
            words=total,
            content_similarity=0.0 if cached.centroid is None or new.centroid is None
            else float(cached.centroid @ new.centroid),
            aligned=align and veto is None,
            worst_cached=min(best[0], default=1.0),
            worst_new=min(best[1], default=1.0),
            poorly_matched=sum(x < _POOR_MATCH for x in inexact),
            lexical_share=1.0 - len(inexact) / total if total else 1.0,
            reworded_similarity=sum(inexact) / len(inexact) if inexact else 1.0,
        )

    def _veto(self, cached: Analysis, new: Analysis) -> str | None:
        """The first difference of a kind that changes the answer, before any word alignment."""
        s = self.settings
        if s.negation and cached.negated != new.negated:
            return "negation differs"
        if s.numbers and cached.quantities.keys() != new.quantities.keys():
            return _quantity_reason(cached.quantities, new.quantities)
        if s.relations and cached.relations.keys() != new.relations.keys():
            return "relation differs: " + _sides(cached.relations, new.relations)
        if s.quantifiers:
            only_c = cached.quantifiers.keys() - new.quantifiers.keys()
            only_n = new.quantifiers.keys() - cached.quantifiers.keys()
            if only_c and only_n:
                return "quantifier differs: " + _sides(cached.quantifiers, new.quantifiers)
        if s.scope and cached.scope is not None and new.scope is not None and cached.scope[0] != new.scope[0]:
            return f"scope differs: {cached.scope[1]} vs {new.scope[1]}"
        if s.antonyms:
            pair = _antonym_pair(cached.lowers - new.lowers, new.lowers - cached.lowers) or _opposite_sides(
                cached, new
            )
            if pair:
                return f"antonym: {pair[0]}/{pair[1]}"
        if s.roles:
            swap = _role_swap(cached, new)
            if swap:
                return f"roles differ: {swap}"
        # Not a setting: the guard never vouches for text it cannot read (another script, an emoji,
        # a symbol such as < or ₹): "这是免费的吗" / "这不是免费的吗" differ in a negation it cannot see.
        if cached.unread != new.unread:
            c, n = Counter(cached.unread), Counter(new.unread)
            was, now = " ".join((c - n).elements()) or "(none)", " ".join((n - c).elements()) or "(none)"
            return f"unread text differs: {was} vs {now}"
        return None

    # -- matching ----------------------------------------------------------------------------------

    def _align(
        self, a: Analysis, b: Analysis
    ) -> tuple[list[int], list[int], float, tuple[list[float], list[float]]]:
        """Indexes of the words of ``a`` and of ``b`` that have no counterpart in the other, how
        well the words are covered (the mean over both sides of each word's best match: 1 for a
        word form, else the word-vector cosine of its nearest word in the other question), and the
        best matches of the words of each side that no word form matches.

        Word forms first (same word or stem, abbreviation, acronym); then word vectors: a word
        still left is matched by a similar word anywhere in the other question (by default) or
        only among the words left there, so a word already accounted for cannot absorb another
        ("x-files season" vs "season"). Two different names are never the same thing, however
        similar (Berlin ~ Toronto); nor are opposites (enable ~ disable).
        """
        left = _lexical_leftovers(a, b)
        right = _lexical_leftovers(b, a)
        total = len(a.words) + len(b.words)
        threshold = self.settings.word_similarity
        if not (left or right) or threshold is None or a.vectors is None or b.vectors is None:
            coverage = (total - len(left) - len(right)) / total if total else 1.0
            return left, right, coverage, ([0.0] * len(left), [0.0] * len(right))
        sims = a.vectors @ b.vectors.T
        if self.settings.similar_to_any:
            new_left, best_l = _similar(a, b, left, sims, range(len(b.words)), threshold)
            new_right, best_r = _similar(b, a, right, sims.T, range(len(a.words)), threshold)
        else:
            new_left, best_l = _similar(a, b, left, sims, right, threshold)
            new_right, best_r = _similar(b, a, right, sims.T, left, threshold)
        coverage = (total - len(left) - len(right) + sum(best_l) + sum(best_r)) / total
        return new_left, new_right, coverage, (best_l, best_r)

    # -- analysis ----------------------------------------------------------------------------------

    def _analyse(self, question: str) -> Analysis:
        tokens, starts, joined = _tokenise(question)
        lowers = [t.lower() for t in tokens]
        shouting = sum(t.isupper() for t in tokens) > 0.6 * max(1, len(tokens))
        consumed: set[int] = set()
        quantities = _quantities(tokens, lowers, starts, consumed)
        anchors = consumed | {i for i, low in enumerate(lowers) if low in _TIME_WORDS}
        relations, related = _relations(lowers, anchors, consumed)
        negations = {i for i, low in enumerate(lowers) if low in _NEGATIONS}
        negated = any(i not in related and not _neutral_negation(lowers, i) for i in negations)
        consumed |= negations | related
        words: list[Word] = []
        for i, (tok, low) in enumerate(zip(tokens, lowers, strict=True)):
            if i in consumed or len(low) < 2 or not low[0].isalpha():
                continue
            caps = tok.isupper() and not shouting  # "US", "IT" are names, not pronouns
            if (low in _STOP or low in _FRAME) and not caps:
                continue
            words.append(Word(tok, low, stem(low), not shouting and _is_entity(tok, i in starts), i))
        vectors = None
        if self._vectors is not None and words:
            vectors = self._vectors.lookup([w.surface if w.entity else w.lower for w in words])
        all_lowers = frozenset(lowers) | joined
        poles = {low: pole for low in all_lowers if (pole := _pole(low)) is not None}
        if vectors is not None:
            self._extend_poles(words, vectors, poles)
        return Analysis(
            question=question,
            negated=negated,
            quantities=quantities,
            asks=frozenset(_ASKS[low] for low in lowers if low in _ASKS),
            advice=any(low in _ADVICE for low in lowers) and not any(low in _WH for low in lowers),
            roles=_roles(lowers),
            words=tuple(words),
            lowers=all_lowers,
            stems=frozenset(stem(x) for x in lowers) | joined,
            initials="".join(w.lower[0] for w in words),
            vectors=vectors,
            relations=relations,
            quantifiers=_quantifiers(tokens, lowers, consumed),
            scope=_scope(tokens, lowers),
            poles=poles,
            centroid=_unit_mean(vectors),
            tokens=tuple(lowers),
            unread=_unread(question),
        )

    def _extend_poles(self, words: Sequence[Word], vectors: NDArray[np.float32], poles: dict[str, str]) -> None:
        """Put each content word not on a scale on the side of the scale word it is nearest, when
        that word is near enough and clearly nearer than any word of the other side (once per word)."""
        threshold = self.settings.scale_similarity
        if threshold is None or self._vectors is None:
            return
        rows = [k for k, w in enumerate(words) if w.lower not in poles and not w.entity]
        unknown = [k for k in rows if words[k].lower not in self._vector_poles]
        if unknown:
            if self._scale_vectors is None:
                self._scale_vectors = self._vectors.lookup(_SCALE_WORDS)
            sims = vectors[unknown] @ self._scale_vectors.T
            if len(self._vector_poles) > 50_000:
                self._vector_poles.clear()
            for k, row in zip(unknown, sims, strict=True):
                self._vector_poles[words[k].lower] = _nearest_side(words[k].lower, row, threshold)
        for k in rows:
            pole = self._vector_poles.get(words[k].lower)
            if pole is not None:
                poles[words[k].lower] = pole

def _similar(
    a: Analysis, b: Analysis, left: list[int], sims: NDArray[np.float32], among: Sequence[int], threshold: float
) -> tuple[list[int], list[float]]:
    """The ``left`` words of ``a`` with no similar word (cosine >= ``threshold``) among the words
    ``among`` of ``b``, and every ``left`` word's best admissible similarity."""
    out: list[int] = []
    bests: list[float] = []
    for i in left:
        wa = a.words[i]
        pole_a = a.poles.get(wa.lower)
        best = 0.0
        for j in among:
            sim = float(sims[i, j])
            if sim <= best:
                continue
            wb = b.words[j]
            if (wa.entity and wb.entity) or antonymous(wa.lower, wb.lower):
                continue
            pole_b = b.poles.get(wb.lower)
            if pole_a and pole_b and pole_a != pole_b and pole_a[:-1] == pole_b[:-1]:
                continue  # the two sides of one scale
            best = sim
        bests.append(best)
        if best < threshold:
            out.append(i)
    return out, bests


def _lexical_leftovers(a: Analysis, b: Analysis) -> list[int]:
    """Indexes of ``a``'s words that no word form of ``b`` accounts for."""
    b_words = [w.lower for w in b.words]
    a_words = [w.lower for w in a.words]
    # words of ``a`` inside a phrase whose initials ``b`` uses (pull request ↔ PR)
    spelled: set[str] = set()
    for x in b_words:
        if 2 <= len(x) <= 6 and x in a.initials:
            spelled.update((_acronym_of(x, a_words) or "").split())
    out: list[int] = []
    for i, w in enumerate(a.words):
        if w.lower in b.lowers or w.stem in b.stems or w.lower in spelled:
            continue
        if any(_abbreviates(w.lower, x) or _abbreviates(x, w.lower) or _variant(w.lower, x) for x in b_words):
            continue
        if 2 <= len(w.lower) <= 6 and w.lower in b.initials and _acronym_of(w.lower, b_words):
            continue
        out.append(i)
    return out


def _overlap(a: Analysis, b: Analysis) -> float:
    """Dice overlap of the two questions' token sets, function words included: high for a
    minimal pair ("production logs" / "staging logs"), low for a rewording."""
    return 2 * len(a.lowers & b.lowers) / max(1, len(a.lowers) + len(b.lowers))


def _antonym_pair(only_a: Iterable[str], only_b: Iterable[str]) -> tuple[str, str] | None:
    right = [(y, _forms(y), _opposites(y)) for y in sorted(only_b)]
    for x in sorted(only_a):
        forms_x, opposites_x = _forms(x), _opposites(x)
        for y, forms_y, opposites_y in right:
            if x != y and not (opposites_x.isdisjoint(forms_y) and opposites_y.isdisjoint(forms_x)):
                return x, y
    return None


def _role_swap(a: Analysis, b: Analysis) -> str | None:
    """A directional preposition whose object moved ("km to miles" vs "miles to km"); objects
    both questions give it ("used to convert …") do not count."""
    for prep in sorted({p for p, _ in a.roles} & {p for p, _ in b.roles}):
        objs_a = {o for p, o in a.roles if p == prep}
        objs_b = {o for p, o in b.roles if p == prep}
        only_a, only_b = objs_a - objs_b, objs_b - objs_a
        if only_a and only_b and only_a <= b.stems and only_b <= a.stems:
            return f"{prep} {min(only_a)} vs {prep} {min(only_b)}"
    return None


def _sides(a: dict[str, str], b: dict[str, str]) -> str:
    """ "at least vs at most": what each side says that the other does not."""
    left = " ".join(v for k, v in sorted(a.items()) if k not in b) or "(none)"
    right = " ".join(v for k, v in sorted(b.items()) if k not in a) or "(none)"
    return f"{left} vs {right}"


def _added_modifier(a: Analysis, extra: Sequence[int]) -> str | None:
    """The first word of ``a`` the other question lacks that picks a side of a scale or an order
    ("old", "international", "temporary", "second") and stands right before a content word both
    share, narrowing it ("old style guide", "second laptop"), as written with that word; None when
    the extra words only rephrase ("… logs kept?", "PTO requests").

    Any other added modifier ("email password", "mobile app") is evidence, not a veto: among
    random Quora pairs nine in ten such pairs are duplicates."""
    shared = {w.position for k, w in enumerate(a.words) if k not in set(extra)}
    for i in extra:
        word = a.words[i].lower
        scale = (_pole(word) or "")[:-1]  # listed words only: a vector's guess is not enough here
        if scale not in _QUALIFIER_SCALES and not (word in _ORDINALS and word not in ("first", "last")):
            continue
        pos = a.words[i].position
        nxt = pos + 1
        while nxt in {a.words[k].position for k in extra}:
            nxt += 1  # "large meeting room": the run of added words ends at a shared one
        if nxt in shared:
            return " ".join(a.tokens[pos : nxt + 1])
    return None


def _added_condition(a: Analysis, extra: Sequence[int]) -> str | None:
    """The words of ``a`` that the other question lacks, when they follow a preposition that makes
    them a condition on the question ("… for a contractor", "… on the kiosk", "… after discount"),
    as written from the preposition on; None when they only rephrase ("… logs kept?")."""
    for i in extra:
        pos = a.words[i].position
        for back in range(pos - 1, max(-1, pos - 4), -1):
            tok = a.tokens[back]
            if tok in _CONDITION_PREPOSITIONS:
                return " ".join(a.tokens[back : pos + 1])
            if tok not in _STOP:
                break  # another content word between: not this preposition's object
    return None


def _unit_mean(vectors: NDArray[np.float32] | None) -> NDArray[np.float32] | None:
    if vectors is None or not len(vectors):
        return None
    total = vectors.sum(axis=0)
    norm = math.sqrt(float(total @ total))
    return None if norm == 0 else total / np.float32(norm)


def _nearest_side(word: str, sims: NDArray[np.float32], threshold: float) -> str | None:
    """The scale side of the scale word nearest ``word`` (``sims``: its cosine to each of
    _SCALE_WORDS), if near enough and clearly nearer than the other side."""
    j = int(sims.argmax())
    near = _SCALE_WORDS[j]
    if sims[j] < threshold or near[:4] == word[:4]:
        return None  # WordLlama's vectors are built from word pieces: "passport" ~ "pass"
    pole = _POLES[near]
    other = float(sims[_SIDE_COLUMNS[_other_side(pole)]].max())
    return pole if sims[j] - other >= _SIDE_MARGIN else None


def _pole(word: str) -> str | None:
    """The side of an opposition scale a listed word (or its stem, or the adjective of an -ly
    adverb: remotely, voluntarily) is on."""
    adjective = word[:-3] + "y" if word.endswith("ily") else word[:-2] if word.endswith("ly") else ""
    for form in (word, stem(word), adjective):
        if form and form in _POLES:
            return _POLES[form]
    return None


def _other_side(pole: str) -> str:
    return pole[:-1] + ("-" if pole.endswith("+") else "+")


def _neutral_negation(lowers: Sequence[str], i: int) -> bool:
    """A negation word that negates nothing: "… or not?", "why or why not?", "not only"."""
    prev = lowers[i - 1] if i > 0 else ""
    if prev == "or" or (prev == "why" and i > 1 and lowers[i - 2] == "or"):
        return True
    return lowers[i] == "not" and i + 1 < len(lowers) and lowers[i + 1] == "only"


def _relations(lowers: Sequence[str], anchors: set[int], skip: set[int]) -> tuple[dict[str, str], set[int]]:
    """Relations written next to an amount or a time ("at least 3", "before Friday", "3 or
    more"): relation -> as written, and the indexes of their words."""
    out: dict[str, str] = {}
    used: set[int] = set()
    n = len(lowers)
    i = 0
    while i < n:
        if lowers[i] not in _RELATION_FIRST:
            i += 1
            continue
        for size in range(min(_RELATION_MAX, n - i), 0, -1):
            key = tuple(lowers[i : i + size])
            code = _RELATIONS.get(key)
            if code is None or any(j in skip for j in range(i, i + size)):
                continue
            end = i + size
            if key[0] in ("or", "and"):  # after the amount: "3 or more"
                anchored = i - 1 in anchors
            else:
                anchored = any(j in anchors for j in range(end, min(n, end + 3)))
            if anchored:
                out.setdefault(code, " ".join(key))
                used.update(range(i, end))
                i = end - 1
            break
        i += 1
    return out, used


def _quantifiers(tokens: Sequence[str], lowers: Sequence[str], consumed: set[int]) -> dict[str, str]:
    """all / some / most, as written. Not "the most" (a superlative), "at all" or "how often"."""
    out: dict[str, str] = {}
    for i, low in enumerate(lowers):
        code = _QUANTIFIERS.get(low)
        if code is None or i in consumed:
            continue
        prev = lowers[i - 1] if i > 0 else ""
        if (low == "most" and prev in ("the", "at")) or (low == "all" and prev == "at") or prev == "how":
            continue
        out.setdefault(code, tokens[i])
    return out


def _scope(tokens: Sequence[str], lowers: Sequence[str]) -> tuple[str, str] | None:
    """Whose thing the question asks about, if it says: the asker's own (my), a team's or the
    company's; the broadest wins ("my team's budget" is the team's)."""
    found: tuple[str, str] | None = None
    for i, low in enumerate(lowers):
        kind = "self" if low in _SCOPE_SELF else _SCOPE_WORDS.get(low)
        if kind is None or (found is not None and _SCOPE_RANK[kind] <= _SCOPE_RANK[found[0]]):
            continue
        prev = lowers[i - 1] if i > 0 else ""
        said = f"{tokens[i - 1]} {tokens[i]}" if prev in ("my", "our", "the", "your", "whole", "entire") else tokens[i]
        found = (kind, said)
    return found


def _opposite_sides(a: Analysis, b: Analysis) -> tuple[str, str] | None:
    """A word only ``a`` says and a word only ``b`` says on the two sides of one scale."""
    only_a = [(w, p) for w, p in sorted(a.poles.items()) if w not in b.lowers and stem(w) not in b.stems]
    if not only_a:
        return None
    only_b = [(w, p) for w, p in sorted(b.poles.items()) if w not in a.lowers and stem(w) not in a.stems]
    for x, px in only_a:
        for y, py in only_b:
            if px != py and px[:-1] == py[:-1]:
                return x, y
    return None


def _roles(lowers: Sequence[str]) -> frozenset[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for i, low in enumerate(lowers):
        if low not in _DIRECTIONAL:
            continue
        for obj in lowers[i + 1 : i + 4]:
            if obj in _DIRECTIONAL:
                break
            if obj not in _STOP and obj[0].isalnum():
                out.add((low, stem(obj)))
                break
    return frozenset(out)


def _quantity_reason(a: dict[str, str], b: dict[str, str]) -> str:
    only_a = sorted(k for k in a if k not in b)
    only_b = sorted(k for k in b if k not in a)
    kind = (only_a or only_b)[0].split(":", 1)[0]
    left = " ".join(a[k] for k in only_a if k.startswith(kind + ":")) or "(none)"
    right = " ".join(b[k] for k in only_b if k.startswith(kind + ":")) or "(none)"
    return f"{kind} differs: {left} vs {right}"


def _is_entity(token: str, sentence_start: bool) -> bool:
    letters = [c for c in token if c.isalpha()]
    if len(letters) < 2:
        return False
    if all(c.isupper() for c in letters):
        return True
    if any(c.isupper() for c in token[1:]):
        return True  # CamelCase, iOS, macOS
    return token[0].isupper() and not sentence_start


def _tokenise(question: str) -> tuple[list[str], set[int], set[str]]:
    """Tokens as written (contractions and hyphenated words split), the indexes that start a
    sentence, and hyphenated words joined ("e-mail" → "email") to match either spelling."""
    text = compatibility_form(question).translate(_APOSTROPHES)
    tokens: list[str] = []
    starts: set[int] = set()
    joined: set[str] = set()
    for sentence in _SENTENCE_END.split(text):
        first = True
        for match in _TOKEN.finditer(sentence):
            tok = match.group(0).rstrip(".-,")
            low = tok.lower()
            parts: tuple[str, ...]
            if low in _CONTRACTIONS:
                parts = _CONTRACTIONS[low]
            elif low.endswith("n't"):
                parts = (tok[:-3], "n't")
            elif "'" in tok:
                head, _, tail = tok.partition("'")
                parts = (head,) if tail.lower() in ("s", "d", "ll", "m", "re", "ve") else (head + tail,)
            elif "-" in tok and tok[0].isalpha():
                pieces = tok.split("-")
                joined.add("".join(pieces).lower())
                parts = tuple(p for p in pieces if len(p) > 1)
            else:
                parts = (tok,)
            for part in parts:
                if not part:
                    continue
                if first:
                    starts.add(len(tokens))
                    first = False
                tokens.append(part)
    return tokens, starts, joined


def _unread(question: str) -> tuple[str, ...]:
    """The words and symbols of ``question`` the tokens do not cover, case-folded and sorted: every
    run of word characters or symbol holding a letter, digit, mark or symbol outside a token
    (text in another script, an accented word, an emoji, ``<``, ``=``, ``₹``)."""
    text = compatibility_form(question).translate(_APOSTROPHES)
    rest = _TOKEN.sub(" ", text)  # the characters no token covers
    if rest.isascii() and _ASCII_READABLE.search(rest) is None:
        return ()  # nearly every question: its letters, digits and symbols are all in tokens
    covered = bytearray(len(text))
    for match in _TOKEN.finditer(text):
        covered[match.start() : match.end()] = b"\x01" * (match.end() - match.start())
    found = [
        unit.group(0).casefold()
        for unit in _UNIT.finditer(text)
        if any(not covered[i] and unicodedata.category(text[i])[0] in "LNMS" for i in range(unit.start(), unit.end()))
    ]
    return tuple(sorted(found))


def _number(text: str) -> str:
    """ "1,000" → "1000", "2.50" → "2.5", "-1" → "-1"; dotted versions ("4.4.4") and commas that are
    not thousands separators ("1,5", a decimal comma: not 15) stay as written."""
    if "," in text and not _THOUSANDS.fullmatch(text):
        return text
    plain = text.replace(",", "")
    try:
        value = float(plain)
    except ValueError:
        return plain
    return str(int(value)) if value.is_integer() else repr(value)


def _quantities(tokens: Sequence[str], lowers: Sequence[str], starts: set[int], consumed: set[int]) -> dict[str, str]:
    """Numbers, dates, versions, periods and codes: normalised value -> as written.

    Their tokens are added to ``consumed`` so they are not also compared as words.
    """
    out: dict[str, str] = {}
    n = len(lowers)

    def take(key: str, *idx: int) -> None:
        out.setdefault(key, " ".join(tokens[j] for j in idx))
        consumed.update(idx)

    for i, low in enumerate(lowers):
        if i in consumed:
            continue
        nxt = lowers[i + 1] if i + 1 < n else ""
        unit = _UNITS.get(stem(nxt)) if nxt else None
        num = _NUM_TOKEN.match(low)
        if num and num["suffix"] in _NUMBER_SUFFIXES:
            value, suffix = num["sign"] + num["value"], num["suffix"]
            if suffix in _ORDINAL_SUFFIX and unit in ("quarter", "half"):
                take(f"period:{unit[0]}{_number(value)}", i, i + 1)
            else:
                kind = "version" if value.count(".") > 1 else "number"
                take(f"{kind}:{num['currency']}{_number(value)}{num['factorial']}", i)  # €5 is not $5, 10! not 10
            continue
        code = _CODE_TOKEN.match(low)
        if num or code:
            if code and code.group(1) in ("v", "ver", "version"):
                take(f"version:{_number(code.group(2))}", i)
            elif code and code.group(1) in ("q", "h") and code.group(2).isdigit():
                take(f"period:{low}", i)
            else:
                take(f"code:{low}", i)  # 2fa, python3, ipv6, fy24
            continue
        if len(low) == 1 and low.isalpha() and low not in "ai":
            take(f"code:{low}", i)  # "Plan B", "letter v", "Measure E"
            continue
        if low in _NUMBER_WORDS:
            if low == "one" and (nxt in ("of", "") or (i > 0 and lowers[i - 1] in _STOP)):
                continue
            take(f"number:{_number(str(_NUMBER_WORDS[low]))}", i)
            continue
        if low in _ORDINALS and (unit == "quarter" or nxt == "half"):
            q = "q" if unit == "quarter" else "h"
            take(f"period:{q}{_ORDINALS[low] if _ORDINALS[low] > 0 else 'last'}", i, i + 1)
            continue
        if low in _RELATIVE and unit is not None and not (low == "this" and unit == "second"):
            take(f"period:{unit}{_RELATIVE[low]:+d}", i, i + 1)
            continue
        if low in ("per", "every", "each") and unit is not None:
            take(f"period:per-{unit}", i, i + 1)
            continue
        if low in _PERIODIC:
            take(f"period:{_PERIODIC[low]}", i)
            continue
        if low in _DAY_WORDS:
            take(f"date:{_DAY_WORDS[low]}", i)
            continue
        day = _WEEKDAYS.get(low) or _WEEKDAYS.get(stem(low))
        if day:
            take(f"date:{day}", i)
            continue
        month = _MONTHS.get(low)
        if month and (low not in _AMBIGUOUS_MONTHS or (tokens[i][0].isupper() and i not in starts)):
            take(f"date:{month}", i)
    return out
