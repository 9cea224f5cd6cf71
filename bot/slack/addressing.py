"""Is a thread reply without a mention for Penny? A local decision (no LLM call, no Slack call)
that comes with a reason for the log.

In a thread Penny answered in, people go on talking: they thank her, react, and talk to each other.
With ``PENNY_THREAD_REPLIES=questions`` (the default) such a reply is answered only when it asks
Penny something. The rules, in order; the first that decides wins:

1. A mention of someone else (``<@U…>``) is for them (``to_someone_else``); ``<!here>``,
   ``<!channel>`` or a user group is for people (``to_people``).
2. Nothing left but emoji and punctuation: ``emoji``.
3. A reply that opens by addressing a colleague (``@bob …``, ``hey Priya …``, ``Tom, where did
   you …``, ``dan you around?``, ``Carol can you …``) is for them; one that opens on a group
   (``hey team``, ``folks, …``) is for people. Penny's own name is read past.
4. Each sentence is read on its own, after its opening fillers (``ok``, ``thanks``, ``lol``, …):

   - not for Penny: a question put to people (``anyone know…``, ``is it just me or…``:
     ``to_people``), to a person about themselves or plans (``did you try…``, ``are you
     around?``, ``lunch?``, ``what do you think?``, and outside English any question in the
     second person that asks nothing Penny does, e.g. ``tu es dispo ?``: ``social``), a
     rhetorical one (``who knew?``, ``how did we live without this``: ``rhetorical``) or a bare
     reaction (``really?``: ``reaction``);
   - for Penny: a question mark (``question``), an interrogative opening in English, French,
     German, Spanish, Portuguese, Italian or Dutch (``interrogative``), a request (``show me…``,
     ``explain…``, ``I need the link…``: ``request``), an elliptical follow-up (``and for
     contractors``, ``same for…``: ``follow_up``) or a report that her answer did not work
     (``still getting 403``, ``I'm stuck at step 2``: ``problem_report``).

   A reply is answered when any of its sentences is for Penny (``thanks! and for contractors?``).
5. Otherwise it is chatter, named for the log: ``thanks``, ``plus_one``, ``laughter``,
   ``acknowledgement`` or ``statement``.

``all`` answers every reply but those that mention someone else (rule 1's first half: Penny's
behaviour before this setting) and those with no words at all (a file dropped in the thread:
``no_words``); ``mentions`` answers none (a mention reaches Penny as
``app_mention``). A reply that mentions Penny is always for her. The rules are measured on a
labelled set of thread replies, ``tests/data/thread_replies.jsonl`` (see its README).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bot.settings import ThreadReplies

__all__ = ["Addressing", "ThreadReplies", "classify_thread_reply"]


@dataclass(frozen=True, slots=True)
class Addressing:
    """Whether a thread reply is for Penny, and the rule that said so (a short name for the log)."""

    for_penny: bool
    reason: str


def classify_thread_reply(text: str, *, bot_user_id: str | None, mode: ThreadReplies = "questions") -> Addressing:
    """Whether ``text`` (as Slack sent it), a reply in a thread Penny knows, is for her under ``mode``."""
    mentions = {m.group(1) for m in _USER_MENTION.finditer(text)}
    if bot_user_id and bot_user_id in mentions:
        return Addressing(True, "mentions_penny")
    if mentions:
        return Addressing(False, "to_someone_else")
    if mode == "mentions":
        return Addressing(False, "mentions_only")
    if not text.strip():
        return Addressing(False, "no_words")  # a file or a shared message dropped in the thread, for people
    if mode == "all":
        return Addressing(True, "all_replies")
    if _GROUP_MENTION.search(text):
        return Addressing(False, "to_people")
    return _questions(_plain(text))


def _questions(text: str) -> Addressing:
    """Rules 2 to 5 on ``text`` made plain."""
    sentences = [(sentence, words) for sentence in _SENTENCE_END.split(text) if (words := _words(sentence))]
    if not sentences:
        return Addressing(False, "emoji")
    vocative = _vocative(*sentences[0])
    if vocative is not None:
        return Addressing(False, vocative)
    verdicts = [_sentence(words) for _, words in sentences]
    for for_penny, reason in verdicts:
        if for_penny and reason is not None:
            return Addressing(True, reason)
    named = next((reason for _, reason in verdicts if reason is not None), None)
    return Addressing(False, named or _chatter([w for _, words in sentences for w in words]))


# ---------------------------------------------------------------------------------------------
# Slack's text made plain

# A Slack control sequence holds no "<" (Slack escapes the people's own): reading up to the next "<"
# keeps a message of many "<" from being read again from each of them (and a line break never
# starts a quote, so a message of many blank lines is read once).
_USER_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^<>]*)?>")
_GROUP_MENTION = re.compile(r"<!(?:here|channel|everyone|subteam\^[A-Z0-9]+)(?:\|[^<>]*)?>")
_LINK = re.compile(r"<[^<>|]*\|([^<>]*)>|<(?:https?|mailto):[^<>]*>|<#[A-Z0-9]+>")
_CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
_SHORTCODE = re.compile(r":[a-z0-9_+'\-]+:")
_QUOTE = re.compile(r"^[ \t]*(?:&gt;|>).*$", re.MULTILINE)
# A sentence ends at . ! ? ; … or a line break; its "?" stays with it.
_SENTENCE_END = re.compile(r"(?<=[.!?;\u2026])\s+|\n+|(?<=\?)(?=[^?\s!])")
_WORD = re.compile(r"@?[\w$€£%+^]+(?:['\-]\w+)*|\?")


def _plain(text: str) -> str:
    """``text`` as words the rules read: no quoted lines (someone else's words), links as their
    label, code as ``code``, no emoji, no accents, lower case."""
    text = _QUOTE.sub("", text)
    text = _LINK.sub(lambda m: m.group(1) or " link ", text)
    text = _CODE.sub(" code ", text)
    text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    text = _SHORTCODE.sub(" ", text)
    kept = []
    for char in unicodedata.normalize("NFKD", text):
        if ord(char) > 127 and unicodedata.category(char) in ("So", "Sk", "Cs", "Co", "Mn", "Cf"):
            continue  # emoji, skin tones, variation selectors, joiners, accents
        kept.append(char)
    return "".join(kept).replace("\u2019", "'").replace("\u00bf", " ").replace("\u00a1", " ").casefold()


def _words(sentence: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(sentence))


# ---------------------------------------------------------------------------------------------
# The lexicon (accent-free, lower case)


def _set(*groups: str) -> frozenset[str]:
    return frozenset(word for group in groups for word in group.split())


PENNY: Final = _set("penny @penny")
THANKS: Final = _set("thanks thank thx ty tysm tyvm thnx cheers appreciate appreciated merci danke dank gracias",
                     "obrigado obrigada valeu grazie bedankt")
LAUGHTER: Final = re.compile(r"^(?:lol+|lmao+|rofl|haha[ha]*|hehe[he]*|jaja[ja]*|kkk+|mdr|ptdr|xd+)$")
ACKS: Final = _set(
    "ok okay k kk okie okey cool great nice perfect awesome excellent good fine sure yep yes yeah yup right alright",
    "gotcha roger noted understood done super top parfait genial vale perfecto perfeito beleza entendi entendido",
    "d'accord daccord passt klar verstanden alles np ah ahh oh ohh aha see got it makes sense will do sounds fair",
    "enough clear works worked",
)
PLUS_ONE: Final = _set("+1 ++ ^ ^^ same this bump following subscribing +100")
PLUS_ONE_PHRASES: Final = frozenset({"me too", "same here", "^ this", "following this thread"})
# Read past at the start of a sentence, before the rules look at its first word.
FILLERS: Final = _set(
    "ok okay k kk cool great nice perfect awesome thanks thank thx ty tysm cheers so well hmm hm hmmm um uh",
    "oh ah ahh wait sorry yeah yes yep no nope right alright btw fwiw tbh actually anyway basically quick q",
    "question followup follow-up penny @penny hey hi hello yo gotcha",
    "merci danke gracias obrigado obrigada valeu super top parfait bon alors donc genial vale bueno pues entonces",
    "beleza perfeito entao ja oui si sim claro okey",
)
FILLER_PAIRS: Final = frozenset({("thank", "you"), ("got", "it"), ("makes", "sense"), ("i", "see"), ("one", "more"),
                                 ("will", "do"), ("sounds", "good"), ("that", "worked")})
PLEASE: Final = _set("please pls plz bitte svp")
CONJUNCTIONS: Final = _set("and or but plus then also et ou und oder y e en ma pero mas aber")
WH: Final = _set(
    "what what's whats how how's hows where where's wheres when when's why who who's whos which whom whose",
    "wat wht wht's whts waht hw hwo wher",  # common typos
    "comment pourquoi quand qui quoi quel quelle quels quelles combien est-ce qu'est-ce",
    "wie wo wann warum wieso weshalb wer wen wem welche welcher welches welchen wieviel wohin woher womit wozu",
    "como cuando donde quien quienes cual cuales cuanto cuanta cuantos cuantas",
    "quando onde quem qual quais quanto quanta quantos quantas",
    "dove perche quale hoe waar wanneer waarom welke",
)
AUX: Final = _set("is isn't are aren't do does doesn't did can could would should will shall may might have has",
                  "am was were any")
# After an auxiliary, words that make the sentence a statement ("should be fine", "will do").
AUX_STATEMENT: Final = _set("be do try work have help check go see been done fine also probably just not never",
                            "need get")
# Other languages' auxiliaries: known words, never a colleague's name.
AUX_ELSEWHERE: Final = _set(
    "kannst kann konnen konntest konnte hast habe haben bist ist sind gibt gilt soll sollte muss darf brauche",
    "peux pouvez puis dois faut puedes puede podes pode posso tem hay kun kan mag moet wil",
)
REQUEST_VERBS: Final = _set(
    "show explain tell list give summarize summarise share send walk remind point elaborate describe clarify",
    "link compare define outline recap expand rephrase translate detail",
    "explique explique-moi expliquez montre montre-moi montrez donne donne-moi donnez envoie envoie-moi dis-moi",
    "zeig zeige erklar erklare gib schick schicke nenn nenne",
    "explicame explica muestrame muestra dame dime pasame enviame mandame mostra manda",
)
REQUEST_NOUNS: Final = _set("link steps step details detail info example examples instructions form doc docs page",
                            "template runbook policy url checklist")
# What Penny does when asked: give, show, explain, … (words, and stems for the inflected languages).
PENNY_VERBS: Final = REQUEST_VERBS | _set(
    "paste break repeat find dis dire gib geben sag sagen nenn nennen dar dame dime decir da diz dizer"
)
PENNY_STEMS: Final = ("donn", "envoi", "envoy", "montr", "expliq", "explic", "resum", "partag", "indiq",
                      "schick", "zeig", "erklar", "teil", "auflist", "pasar", "pasam", "envia", "mostr", "manda",
                      "passa", "compart", "indic", "tradu")
# Words that make "and …" a follow-up rather than more chatter ("and for contractors", not "and thanks").
FOLLOW_WORDS: Final = _set(
    "for on in at if with without during after before about per via under over outside inside only even",
    "same the a an my our their your what how when where who why which is does do can could should are",
    "pour si en les le la des dans avec sans apres avant",
    "fur wenn bei mit ohne nach vor die der das den",
    "para con sin los las el del antes despues se no na nos nas os as com sem depois",
    "per voor als met zonder",
)
ELLIPTIC: Final = _set("same even only including incl except")
SECOND_PERSON: Final = _set("you u ya you're youre you've you'd you'll tu du vous voce usted jij")
# Words that, after "Name, …", show the sentence is put to that person ("Tom, where did you …").
ADDRESSEE: Final = SECOND_PERSON | _set(
    "your yours we us our ton ta tes votre vos nous dein deine dir dich euch ihr wir tus te nosotros seu sua",
    "puedes podes pode kannst hast bist peux pouvez tienes jou consegue",
)
# French, German, Spanish and Portuguese ask generic questions with on / man / se, so a question
# in the second person there is put to a person ("tu es dispo ?", "hast du Zeit?", "¿tienes un
# momento?"), unless it asks for something Penny does ("kannst du mir den Link schicken?").
# (English "you" is often generic: "how do you request PTO?".)
YOU_ELSEWHERE: Final = _set(
    "tu t'es toi es-tu as-tu t'as vous dir dich hast bist kannst willst musst kommst weisst hattest habt seid",
    "euch tienes puedes quieres vienes eres sabes podrias revisas voce vc consegue ta podes",
)
GREETINGS: Final = _set("hey hi hello yo hola salut hallo oi ola ciao")
GROUPS: Final = _set("team all everyone everybody folks guys y'all yall people gang friends tous todos alle")
GROUP_VOCATIVES: Final = _set("team folks everyone everybody guys y'all yall")
REACTIONS: Final = _set("what really seriously srsly huh right wait no way for real sure correct true is it isn't",
                        "hein quoi vraiment echt wirklich que como")
MEALS: Final = _set("lunch coffee drinks beer beers dinner cafe kaffee mittag mittagessen essen dej dejeuner",
                    "almoco almocar cafezinho comer comemos pranzo")
# Common first words, so that "sorry, …" or "tried that, …" is not read as addressing a colleague.
COMMON: Final = _set(
    "i i'm im i'll i've i'd it it's its this that these those the a an my we our they he she there here not",
    "just tried got honestly interesting weird ugh oof update edit note context fyi ps also nvm nevermind",
    "ignore please pls me mine hmm thx ty done merged deployed classic",
)
_KNOWN: Final = (THANKS | ACKS | FILLERS | PLEASE | CONJUNCTIONS | WH | AUX | AUX_ELSEWHERE | PENNY_VERBS
                 | GREETINGS | GROUPS | REACTIONS | COMMON | PLUS_ONE | SECOND_PERSON | ELLIPTIC)

# ---------------------------------------------------------------------------------------------
# Patterns, read on a sentence's words (after its fillers) joined by spaces

TO_PEOPLE: Final = re.compile(
    r"^(?:(?:does|do|did|has|have|is|can|could|would|will)\s+)?(?:anyone|anybody|someone|somebody)\b"
    r"|\b(?:is it just me|am i the only one|any of you|anyone else|you guys|y'?all)\b"
    r"|^(?:who wants|who's up for|who is up for|who's joining|who is joining|who's in)\b"
    r"|^(?:quelqu'un|qqn|jemand|alguien|alguem|qualcuno|iemand)\b"
    r"|^(?:weiss|weis|kann|hat)\s+jemand\b"
)
SOCIAL: Final = re.compile(
    r"^(?:did|have|had|were)\s+you\b(?!\s+mean)"
    r"|^are\s+you\b(?!\s+(?:allowed|able|required|supposed|expected|eligible|entitled|meant|covered|paid)\b)"
    r"|^(?:you're|youre|you've|you'll)\b|^(?:want|wanna)\b|^(?:got|have you got) a (?:sec|second|minute|min)\b"
    r"|^do you have (?:a (?:sec|second|minute|min)|time)\b"
    r"|^(?:you|u)\b(?! mean\b)"  # "you still in the office?": a question to a person, its verb dropped
    r"|\b(?:for|with|to) (?:you|u)$"  # "did it work for you?"
    r"|\b(?:what do you think|wdyt|thoughts|objections|how are you|how's it going|what's up)\b"
    r"|^how(?:'s| is| was) (?:the|your) (?:new|trip|weekend|offsite|holiday|vacation)\b|^how was\b"
    r"|^(?:lunch|coffee|drinks|beers?)(?: (?:later|today|tomorrow|tonight|now|break))?$"
    r"|\b(?:wanna|want to grab|shall we|are we still|we still on|still on for)\b"
    r"|^(?:should|can) we (?:move|take|sync|meet|grab|chat|talk|hop|catch)\b"
    r"|^did (?:the|your|our) .* already\b"
    r"|\b(?:tu viens|vous venez|dej|kommst du|kommt ihr|mittag|vienes|comemos|almocar|almoco|bora)\b"
)
RHETORICAL: Final = re.compile(
    r"^(?:who knew|who cares|why not|how cool|how is it already|how did i not|what would we do without"
    r"|can you believe|what a|is it friday|why didn't anyone|why didnt anyone|why is it always)\b"
    r"|^why is (?:this|it|everything) (?:so|always)\b|^how (?:is|are|was) (?:this|that|it) not\b"
)
PROBLEM: Final = re.compile(
    r"\b(?:didn't|didnt|doesn't|doesnt|does not|did not|isn't|isnt|is not|not|won't|wont|can't|cant|cannot)"
    r" (?:work|working|load|loading|open|opening|connect|exist|show|showing|let me)\b"
    r"|\bstill (?:get|getting|see|seeing|fail|failing|fails|broken|not|no)\b"
    r"|\b(?:gives?|giving|got|get|getting|says|shows) (?:me )?(?:an? )?(?:40\d|50\d|error)\b"
    r"|\b(?:greyed|grayed) out\b|\b(?:permission|access) denied\b"
    r"|\b(?:isn't|isnt|is not|aren't|arent|are not) (?:there|showing|visible|listed)\b"
    r"|\b(?:can't|cant|cannot|can not|couldn't|couldnt) (?:find|see|access|log ?in)\b"
    r"|\bstuck\b|\bkeeps? (?:failing|crashing|timing out|spinning|loading|asking)\b|\b(?:fails|failing) with\b"
)
_NOUNS = "|".join(sorted(REQUEST_NOUNS))
REQUEST_PHRASE: Final = re.compile(
    rf"^(?:i )?(?:need|want) (?:the |a |an |some |more )?(?:[\w'-]+ ){{0,3}}(?:{_NOUNS})\b"
    rf"|^(?:more|an?|some) (?:\w+ )?(?:{_NOUNS})\b"
    r"|^(?:i'm |im |i am )?looking for\b|^i(?:'d| would) like\b|^go on\b|^break (?:it )?down\b|^help (?:me|us)\b"
    r"|^(?:me |pode me |podes me )?(?:explica|mostra|passa|manda|da)\b"
)
_NAME_THEN_PUNCT: Final = re.compile(r"^\s*[^\W\d_][\w'\-]*\s*[,:\u2013\u2014-]\s")

# ---------------------------------------------------------------------------------------------
# The rules


def _vocative(sentence: str, words: tuple[str, ...]) -> str | None:
    """Rule 3 on the first sentence: whom it opens by addressing, if not Penny."""
    first = words[0]
    if first in PENNY:
        return None
    if first.startswith("@"):
        return "to_someone_else"
    if first in GREETINGS and len(words) > 1:
        name = words[1]
        if name in GROUPS:
            return "to_people"
        return None if name in PENNY or _known(name) else "to_someone_else"
    if first in GROUP_VOCATIVES and _NAME_THEN_PUNCT.match(sentence):
        return "to_people"
    if _known(first) or len(words) < 2:
        return None
    if _NAME_THEN_PUNCT.match(sentence) and any(w in ADDRESSEE for w in words[1:]):
        return "to_someone_else"  # "Tom, where did you …", "Sam - are we …"
    third = words[2] if len(words) > 2 else ""
    if words[1] in SECOND_PERSON or (words[1] in AUX and third in SECOND_PERSON):
        return "to_someone_else"  # "dan you around?", "Carol can you …"
    return None


def _known(word: str) -> bool:
    """A word of the lexicon (or not a word at all): not a colleague's name."""
    return word in _KNOWN or bool(LAUGHTER.match(word)) or not word.isalpha()


def _sentence(words: tuple[str, ...]) -> tuple[bool, str | None]:
    """Rule 4 on one sentence: (for Penny, the rule that decided), or (False, None) for chatter."""
    asked = "?" in words
    content, joined = _after_fillers([w for w in words if w != "?"])
    if not content:
        return False, None
    line = " ".join(content)
    first = content[0]
    if TO_PEOPLE.search(line):
        return False, "to_people"
    if SOCIAL.search(line) or _to_a_person(content):
        return False, "social"
    if RHETORICAL.search(line):
        return False, "rhetorical"
    if len(content) <= 2 and all(w in REACTIONS for w in content):
        return False, "reaction"
    if not (joined or first in WH or first in AUX or first in AUX_ELSEWHERE) and any(w in MEALS for w in content):
        return False, "social"  # "coffee later?", "on se fait un café ?"
    if first in WH or (len(content) > 1 and _wh_pair(first, content[1])):
        if not asked and _musing(words, content):
            return False, "rhetorical"
        return True, "question" if asked else "interrogative"
    if asked:
        return True, "question"
    if first in AUX and len(content) > 1 and content[1] not in AUX_STATEMENT:
        return True, "interrogative"
    if _request(content):
        return True, "request"
    if (joined and first in FOLLOW_WORDS) or (first in ELLIPTIC and any(w in FOLLOW_WORDS for w in content[1:3])):
        return True, "follow_up"
    if PROBLEM.search(line):
        return True, "problem_report"
    return False, None


def _after_fillers(words: list[str]) -> tuple[list[str], bool]:
    """The words after a sentence's opening fillers and conjunctions; whether a conjunction was
    among them ("and for contractors" is a follow-up, "for contractors" alone is not)."""
    joined = False
    index = 0
    while index < len(words):
        word = words[index]
        if index + 1 < len(words) and (word, words[index + 1]) in FILLER_PAIRS:
            index += 2
            continue
        if index + 1 < len(words) and _wh_pair(word, words[index + 1]):
            break  # "ou est …" is French "où est …", not "or est …"
        if word in CONJUNCTIONS:
            joined = True
        elif not (word in FILLERS or word in PLEASE or LAUGHTER.match(word)):
            break
        index += 1
    return words[index:], joined


def _wh_pair(first: str, second: str) -> bool:
    """Two-word interrogatives: French ``où est``, Spanish and Portuguese ``por que``, ``o que``."""
    if first == "ou":
        return second in {"est", "sont", "se", "trouver", "je", "on", "il", "elle", "puis", "peut", "faut", "ca"}
    return first in {"por", "o"} and second == "que"


def _to_a_person(content: list[str]) -> bool:
    """Outside English, a sentence in the second person that asks nothing Penny does."""
    if not any(w in YOU_ELSEWHERE for w in content):
        return False
    return not any(w in PENNY_VERBS or w.startswith(PENNY_STEMS) for w in content)


def _musing(words: tuple[str, ...], content: list[str]) -> bool:
    """A wh- sentence without a question mark that muses rather than asks: with a laugh ("who
    cares lol"), with "even" ("who even reads…"), or about ourselves in the past or conditional
    ("how did we live without this", "why am I not surprised", "what would we do…")."""
    if any(LAUGHTER.match(w) for w in words) or "even" in content[1:3]:
        return True
    return len(content) > 2 and content[1] in {"did", "would", "am", "was", "were"} and content[2] in {"i", "we"}


def _request(content: list[str]) -> bool:
    """An imperative or a wish for something the docs hold ("show me…", "I need the link…")."""
    words = content[1:] if content[0] in PLEASE else content
    if not words:
        return False
    if words[0] in REQUEST_VERBS:  # not "show, obrigado" (Brazilian "great, thanks")
        return len(words) > 1 and words[1] not in THANKS
    return bool(REQUEST_PHRASE.search(" ".join(words)))


def _chatter(words: Sequence[str]) -> str:
    """Rule 5: which kind of chatter, for the log."""
    words = [w for w in words if w != "?"]
    line = " ".join(words)
    if any(w in THANKS for w in words):
        return "thanks"
    if line in PLUS_ONE or line in PLUS_ONE_PHRASES or line.startswith("+1"):
        return "plus_one"
    if words and all(LAUGHTER.match(w) for w in words):
        return "laughter"
    if words and all(w in ACKS or w in FILLERS for w in words):
        return "acknowledgement"
    return "statement"
