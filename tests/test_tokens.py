"""Token estimates are upper bounds of the real counts, and not wildly above them for prose.

The samples below carry their true token counts, measured once with the real tokenizers:
``cl100k_base`` with tiktoken 0.14 on the published BPE file (sha256 223921b7…, the file tiktoken
itself pins) and ``o200k_base`` with js-tiktoken. Spot checks anyone can verify: "hello world" is
[15339, 1917] in cl100k_base and [24912, 2375] in o200k_base; "Hello, world!" is 4 tokens in both.
The hostile-text tests further down count with the real tokenizers at test time, through
``bpe-openai`` (the dev extra, offline; tests/true_tokens.py): a client chooses its prompt, so the
estimate must bound any text, not only realistic text.
"""

from __future__ import annotations

import math
import random
import string
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_core.tokens import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    estimate_chat_tokens,
    estimate_text_tokens,
)
from tests.true_tokens import LOWER, SCRIPTS, hostile_catalogue
from tests.true_tokens import counter as true_token_counter

# (name, text, cl100k_base count, o200k_base count)
SAMPLES: list[tuple[str, str, int, int]] = [
    ("en_short", "Hello, world!", 4, 4),
    ("en_question", "How do I rotate the API key for the staging workspace without downtime?", 14, 14),
    (
        "en_prose",
        "Penny is a Slack bot that answers questions about our internal documen"
        "tation. Every call to the language model goes through a proxy that enf"
        "orces per-user budgets, rate limits and retries, and records what each"
        " request cost in a ledger. When the provider is failing, a circuit bre"
        "aker stops sending traffic for a while so that users get a quick, clea"
        "r answer instead of a timeout.",
        75,
        75,
    ),
    (
        "en_legal",
        "Notwithstanding the foregoing, the Licensee shall indemnify, defend an"
        "d hold harmless the Licensor from and against any and all claims, liab"
        "ilities, damages, losses, costs and expenses (including reasonable att"
        "orneys' fees) arising out of or in connection with the Licensee's use "
        "of the Software.",
        59,
        59,
    ),
    (
        "en_rare_words",
        "Pneumonoultramicroscopicsilicovolcanoconiosis, antidisestablishmentari"
        "anism and floccinaucinihilipilification are sesquipedalian.",
        40,
        38,
    ),
    (
        "python_code",
        "def chat_cost(price: ModelPrice, prompt_tokens: int, cached: int, comp"
        'letion: int) -> int:\n    """Cost in micro-dollars, rounded up."""\n    '
        'if cached > prompt_tokens:\n        raise ValueError(f"cached ({cached}'
        ') > prompt ({prompt_tokens})")\n    pico = (prompt_tokens - cached) * p'
        "rice.input + cached * price.cached_input\n    return -(-pico // 1_000_0"
        "00)\n",
        94,
        92,
    ),
    (
        "json",
        '{\n  "user": "U0123ABCD",\n  "workspace": "T04XYZ",\n  "cost_micros": 123'
        '4,\n  "tokens": [\n    1,\n    22,\n    333,\n    4444\n  ],\n  "ok": true,\n '
        ' "nested": {\n    "a": null,\n    "b": [\n      0.5,\n      1e-09\n    ]\n  '
        "}\n}",
        95,
        96,
    ),
    (
        "url",
        "See https://platform.openai.com/docs/guides/rate-limits?context=tier-f"
        "ree#usage-tiers and https://example.com/a/b/c?x=1&y=2.",
        41,
        41,
    ),
    (
        "numbers",
        "1234567890 3.14159265358979 2026-01-01T00:00:00Z 192.168.100.254 +1 (555) 010-9999 $1,234,567.89",
        52,
        52,
    ),
    (
        "digits_spaced",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26"
        " 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 "
        "50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 7"
        "3 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95 96"
        " 97 98 99",
        199,
        199,
    ),
    (
        "uuid",
        "6513270e-269e-0d37-f2a7-4de452e6b438 d23f0824-128b-2f33-0c5c-7fd0a6a3a"
        "450 9531985d-5d9d-c9f8-1818-e811892f902b 36f675cc-81e7-4ef5-e8e2-5d940"
        "ed90475 6b0d549b-6f03-675a-1600-a35a099950d8",
        121,
        121,
    ),
    (
        "hex_sha",
        "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9 6b86b"
        "273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b d4735e3a26"
        "5e16eee03f59718b9b5d03019c07d8b6c51f90da3a666eec13ab35 4e07408562bedb8"
        "b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce",
        151,
        154,
    ),
    (
        "base64",
        "ET0XjWwP05Af8jmhoJXyD5OVZQz5OAuO2yJKaySKHpJOj9CuLhqUkqMwXxiMthCQD540f6"
        "6IbcZQd5XsdFxMP8sussc+FJNMhn7gV7pySZv6Eh6DayrBVybufWsK9qsTw46SyuDRUFex"
        "WZh/lMx0EdcX8UV5sqoQD7uzT6WT/q7Scki3YuOrWAXwdlornB1+DzfESSG9P2Vk6t9/FC"
        "pyZoxH4iPRbt2MR7Rq/Fuu4mH1OyYVLSY7qDsDfNSWLkNIASVriF6ckFHzILDbg/Oep629"
        "DXTm3sfz367Mj2RlZmQae6JmDzAR/DVwKRxXmQ0aAJEmiRnyXZ0GEt81nWAmokD0WJpdeR"
        "8d2Xz++nd6e08VJBq/V71DetSxKYQFNPPzh1wlsIvqBsKHTPqk",
        283,
        266,
    ),
    (
        "random_letters",
        "fSqHxkwXoIIXGvOoNZYWmZpzVZomHFwUbbYrEqmSMwCZUwxfogoEmvnENNaEPwZPfQhyYT"
        "WmElBYOvfZUzDzVfUkkibjLDZPjNMEQwjJJibaZUPgHViBmnbqnsGpWLuqIAidVwDQLHAG"
        "iIjHGbCXlMaXZjljENUhJduRHHJEYXgJdpmrcXgGCJbWeCuNGMGmSrCGIZEG",
        139,
        125,
    ),
    (
        "random_ascii",
        "85CZ!BOKgJ@%H<N8!KQ+]Dat:@a!,B,3Tl&S#GGq>+kd4u|mRJ}`4E}ps3&|bqW~za2dai"
        "#xk|xys>+$&2rO.QZh'q#qex@_B![)ae,ud)]A*B?~;>t[`Q*^xE&oqs:*m3KAtyGpi2\"^"
        "(_Cw-y<w_F{cE\\\\\\0g:H+]#F[*aZCR;;*k,3dBO1nqbD/{O>`_S$5!_xZTG~",
        148,
        151,
    ),
    (
        "markdown",
        "# Title\n\n- **bold** item\n- `code` item\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
        "\n> quote\n\n```bash\nls -la /tmp && echo $HOME\n```\n",
        50,
        50,
    ),
    (
        "stack_trace",
        'Traceback (most recent call last):\n  File "/work/main/proxy_core/engin'
        'e.py", line 212, in call\n    result = self._client.chat.completions.cr'
        "eate(**kwargs)\nopenai.RateLimitError: Error code: 429 - {'error': {'me"
        "ssage': 'Rate limit reached for gpt-4o-mini', 'type': 'requests'}}\n",
        77,
        78,
    ),
    ("zh", "我们的内部文档机器人会回答关于部署、预算和速率限制的问题。请不要在频道里粘贴密钥。", 45, 28),
    (
        "ja",
        "このボットは社内ドキュメントに関する質問に答えます。予算を超えると、リクエストは拒否されます。",
        43,
        36,
    ),
    ("ko", "이 봇은 내부 문서에 대한 질문에 답합니다. 예산을 초과하면 요청이 거부됩니다.", 37, 26),
    ("zh_rare", "鬱龘靐齉爩麤驫籲灩鸞鑾钃躞", 32, 26),
    (
        "ru",
        "Этот бот отвечает на вопросы о внутренней документации. Если бюджет исчерпан, запрос отклоняется.",
        47,
        22,
    ),
    ("ar", "يجيب هذا الروبوت على الأسئلة المتعلقة بالوثائق الداخلية.", 41, 14),
    ("hi", "यह बॉट आंतरिक दस्तावेज़ों के बारे में सवालों के जवाब देता है।", 64, 21),
    ("th", "บอทนี้ตอบคำถามเกี่ยวกับเอกสารภายใน", 32, 14),
    ("emoji", "🚀🔥👍😀🎉💸🤖🧠", 22, 14),
    ("emoji_zwj", "👩\u200d👩\u200d👧\u200d👦🏳️\u200d🌈👨🏽\u200d💻🧑🏿\u200d🚀", 48, 32),
    ("emoji_text", "Shipped it 🚀🚀🚀 thanks team 🙏🎉 budget is fine 💸✅", 27, 21),
    ("accents", "Crème brûlée, naïve café, façade, São Paulo, Zürich, Ærøskøbing, Łódź, Dvořák.", 39, 32),
    ("math_symbols", "∀x∈ℝ: ∑ᵢ xᵢ² ≥ 0 ⇒ √(a²+b²) ≤ |a|+|b| ≈ ∞ ≠ ∅ ⊆ ∩ ∪ ∂ ∇ ∫", 57, 57),
    ("box_drawing", "├── proxy_core\n│   ├── limiter.py\n│   └── budget.py\n└── tests", 25, 25),
    ("whitespace", "a\n\n\n\n    b\t\t\tc          d\r\n\r\ne", 10, 10),
    (
        "punct_run",
        "!!!??? ... --- === *** ### @@@ $$$ %%% ^^^ &&& ((( ))) [[[ ]]] {{{ }}} <<< >>> ~~~ ``` |||",
        30,
        32,
    ),
    (
        "slack_markup",
        "<@U0123ABCD> can you check <#C0456EFGH|deploys>? :white_check_mark: <h"
        "ttps://x.io/y|link> `penny usage --days 7`",
        46,
        45,
    ),
    ("cjk_mix", "Use the `penny usage` command 查看预算 and 使用情况 — 日本語もOK 👍", 26, 19),
    ("single_char", "a", 1, 1),
    ("space", " ", 1, 1),
    ("newlines", "\n\n\n", 1, 1),
    (
        "html",
        '<div class="answer"><p>Budget: <b>$5.00</b>/day</p><a href="/usage?u=U1&amp;d=7">usage</a></div>',
        42,
        43,
    ),
    (
        "sql",
        "SELECT user_id, SUM(cost_micros) AS spent FROM ledger WHERE day >= '20"
        "26-01-01' GROUP BY user_id ORDER BY spent DESC LIMIT 10;",
        36,
        37,
    ),
    (
        "repeated_char",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        13,
        13,
    ),
    (
        "repeated_word",
        "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffal"
        "o buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo buff"
        "alo buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo bu"
        "ffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo "
        "buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffal"
        "o buffalo buffalo buffalo buffalo buffalo buffalo ",
        52,
        52,
    ),
    ("mixed_case_ids", "xQ9kT2mZ vB7nR4pL aH3jW8sD eF6gY1cU kP0oI5uY", 40, 40),
    (
        "spaces100",
        "x                                                                     "
        "                               y",
        4,
        4,
    ),
    (
        "newlines50",
        "a\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nb",
        5,
        6,
    ),
    (
        "indent_code",
        "class A:\n    def f(self):\n        if x:\n            return {\n         "
        "       'k': [1, 2, 3],\n            }\n",
        30,
        30,
    ),
    ("mixed_ws", "a \n \n \n \t \t b  \r\n  c", 9, 9),
    ("single_letters", "a b c d e f g h i j k l m n o p q r s t u v w x y z", 26, 26),
    (
        "contractions",
        "I'm sure you'll see they're right; we've done it, haven't we? It's Bob's, isn't it?",
        28,
        21,
    ),
    ("curly", "“Smart quotes” — and ‘single’ ones… plus • bullets and – en dashes.", 19, 20),
    (
        "camel",
        "getUserNameFromDatabase HTTPServerErrorHandler XMLHttpRequest parseJSO"
        "NResponseBody userLimitOverrides",
        14,
        18,
    ),
    (
        "snake",
        "user_limit_overrides workspace_monthly_budget_usd retry_max_wait_s PENNY_REQUESTS_PER_MINUTE",
        21,
        21,
    ),
    (
        "german",
        "Donaudampfschifffahrtsgesellschaftskapitän und Rechtsschutzversicherun"
        "gsgesellschaften sind lange Wörter.",
        36,
        24,
    ),
    ("slack_ids", "U01ABCDEFGH T04XYZ12345 C0456EFGH1J W9KLMNOPQRS", 23, 23),
    (
        "api_key_like",
        "key_live_s1SWOpQaPRYpzbLGViYXjU2JgJngKtFI3OyV2dZAkg05rK_gqv81RKMGHZEM9"
        "YpvujA-C5Q52ryFlwRlOEVHzc0X0AWIRh-JUqBlIFXZ53Ncqe28_ajY75Fn",
        85,
        79,
    ),
    (
        "jwt_like",
        "OScmhfiuG_HTuLOl2MPldRWNxgoAyCA7kesJpbdN9iCgQIeib7LDHBkSTIbxlTFjQjnKmQ"
        "ACiU3_dUf1UKXW4j55hjyMPwf1abSmTg4FMX_irKVrFEE6qmzsXjp-CLJWt2tcrmUyAcxK"
        "vdiBETR--DNPxNExO3c4Q8LjSxvzn36cL-U5fGrpqg7ymCXsZA02BvmYJGoN",
        142,
        131,
    ),
    ("kana", "カタカナとひらがなのテキスト、ラーメン、コンピューター、プログラミング。", 35, 29),
    ("vietnamese", "Tiếng Việt có nhiều dấu thanh điệu và chữ cái đặc biệt như ơ, ư, đ.", 39, 23),
    ("greek", "Αυτό το ρομπότ απαντά σε ερωτήσεις σχετικά με την εσωτερική τεκμηρίωση.", 63, 28),
    ("hebrew", "הבוט הזה עונה על שאלות לגבי התיעוד הפנימי.", 40, 17),
    ("rare_cjk_ext", "𠀀𠀁𠀂𪚥𩸽𠮷𡈽", 25, 25),
    ("flags", "🇺🇸🇬🇧🇯🇵🇩🇪🇫🇷🇧🇷", 36, 24),
    (
        "long_number",
        "3141592653589793238462643383279502884197169399375105820974944592307816"
        "4062862089986280348253421170679",
        34,
        34,
    ),
    ("dotted_version", "v1.2.3 v10.20.30 3.11.7 0.0.1-alpha.1 2.14.4", 33, 33),
    ("emails", "alice.smith@example.com, bob+penny@corp.example.org; ops-team@x.io", 19, 19),
    ("path", "/work/main/.venv/lib/python3.11/site-packages/openai/_base_client.py:1234", 21, 22),
    ("lone_space_end", "done ", 2, 2),
    ("space_digit", "a 1 b 2 c 3", 9, 9),
]

_BY_NAME = {name: (text, cl100k, o200k) for name, text, cl100k, o200k in SAMPLES}
EN_PROSE = _BY_NAME["en_prose"][0]
# Long inputs, measured the same way.
LONG_EN = (EN_PROSE + " ") * 20  # cl100k 1482, o200k 1482
LONG_ZH = _BY_NAME["zh"][0] * 10  # cl100k 450, o200k 280
ENGLISH = ["en_question", "en_prose", "en_legal", "contractions", "sql", "stack_trace"]


@pytest.mark.parametrize(("name", "text", "cl100k", "o200k"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_estimate_is_at_least_the_true_count_of_both_encodings(
    name: str, text: str, cl100k: int, o200k: int
) -> None:
    assert estimate_text_tokens(text) >= max(cl100k, o200k)


@pytest.mark.parametrize(("text", "true_count"), [(LONG_EN, 1482), (LONG_ZH, 450)], ids=["en", "zh"])
def test_long_inputs_are_not_underestimated(text: str, true_count: int) -> None:
    assert estimate_text_tokens(text) >= true_count


@pytest.mark.parametrize("name", ENGLISH)
def test_english_is_not_wildly_over_reserved(name: str) -> None:
    text, _, o200k = _BY_NAME[name]
    assert estimate_text_tokens(text) <= 2 * o200k


def test_long_english_prose_stays_within_twice_the_true_count() -> None:
    estimate = estimate_text_tokens(LONG_EN)
    assert 1482 <= estimate <= 2 * 1482


def test_cjk_and_emoji_count_at_least_one_token_per_character() -> None:
    for name in ("zh", "ja", "ko", "zh_rare", "kana", "emoji", "emoji_zwj", "flags", "rare_cjk_ext"):
        text = _BY_NAME[name][0]
        assert estimate_text_tokens(text) >= len(text), name


def test_empty_and_tiny_inputs() -> None:
    assert estimate_text_tokens("") == 0
    for text in (" ", "a", "\n", "\x00", "é", "中", "🚀", "7"):
        assert estimate_text_tokens(text) >= 1, repr(text)


def test_grows_as_whole_words_are_appended() -> None:
    words = EN_PROSE.split(" ")
    estimates = [estimate_text_tokens(" ".join(words[:n])) for n in range(1, len(words) + 1)]
    assert estimates == sorted(estimates)
    assert estimates[-1] > estimates[0]


def test_grows_with_repetition() -> None:
    for name, text, _, _ in SAMPLES:
        if not text:
            continue
        estimates = [estimate_text_tokens(text * k) for k in (1, 2, 4, 8)]
        assert estimates == sorted(estimates), name


def test_never_far_above_the_byte_count_which_bounds_every_byte_level_bpe() -> None:
    # Every token covers at least one UTF-8 byte, so bytes is a hard upper bound of the true count;
    # the estimate may exceed it only by the per-whitespace-run slack (1/24 per character).
    rng = random.Random(1234)
    alphabet = "aZ9 \n\t.,;-_/=+{}é中🚀\u200d"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        n_bytes = len(text.encode("utf-8"))
        assert estimate_text_tokens(text) <= math.ceil(n_bytes * 25 / 24), repr(text)
    for _, text, _, _ in SAMPLES:
        assert estimate_text_tokens(text) <= math.ceil(len(text.encode("utf-8")) * 25 / 24)


def test_fast_on_long_text() -> None:
    text = (LONG_EN + LONG_ZH + _BY_NAME["python_code"][0] + _BY_NAME["base64"][0]) * 10  # ~100k chars
    started = time.perf_counter()
    estimate_text_tokens(text)
    assert time.perf_counter() - started < 1.0


# -- chat ----------------------------------------------------------------------------------------


def _true_chat_tokens(*contents: str) -> int:
    """OpenAI's documented accounting for gpt-4o-era models: 3 per message + role + content, +3."""
    counts = {text: max(cl, o) for _, text, cl, o in SAMPLES}
    return 3 + sum(3 + 1 + counts[c] for c in contents)


def test_chat_estimate_bounds_the_documented_accounting() -> None:
    system, question = _BY_NAME["en_short"][0], _BY_NAME["en_question"][0]
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    estimate = estimate_chat_tokens(messages)
    assert estimate >= _true_chat_tokens(system, question)
    assert estimate == (
        REPLY_PRIMING
        + 2 * MESSAGE_OVERHEAD
        + estimate_text_tokens("system")
        + estimate_text_tokens("user")
        + estimate_text_tokens(system)
        + estimate_text_tokens(question)
    )


def test_empty_conversation_still_costs_the_reply_priming() -> None:
    assert estimate_chat_tokens([]) == REPLY_PRIMING


def test_content_parts_count_like_the_same_text() -> None:
    as_string = [{"role": "user", "content": EN_PROSE}]
    half = len(EN_PROSE) // 2
    as_parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": EN_PROSE[:half]}, {"type": "text", "text": EN_PROSE[half:]}],
        }
    ]
    assert estimate_chat_tokens(as_parts) >= estimate_chat_tokens(as_string) - 1


def test_name_and_tool_calls_are_counted() -> None:
    plain = estimate_chat_tokens([{"role": "user", "content": "hi"}])
    named = estimate_chat_tokens([{"role": "user", "content": "hi", "name": "alice"}])
    assert named >= plain + 2
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
        ],
    }
    assert estimate_chat_tokens([call]) > REPLY_PRIMING + MESSAGE_OVERHEAD + 10


def test_parts_that_cannot_be_bounded_offline_are_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(ValueError, match="image_url"):
        estimate_chat_tokens([{"role": "user", "content": [image]}])
    with pytest.raises(ValueError, match="string or a list"):
        estimate_chat_tokens([{"role": "user", "content": 42}])


# -- hostile text, against the real tokenizers ---------------------------------------------------
# A client chooses its prompt: the estimate must bound the true count of any text, not only of prose.
# These use bpe-openai (tests/true_tokens.py), which skips locally without it and fails under CI=true.

HOSTILE = hostile_catalogue()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_text_is_never_underestimated(name: str) -> None:
    true_tokens = true_token_counter()
    text = HOSTILE[name]
    assert estimate_text_tokens(text) >= true_tokens(text)


def test_hostile_chat_is_never_underestimated() -> None:
    true_tokens = true_token_counter()
    for name, text in HOSTILE.items():
        messages = [
            {"role": "system", "content": "You are Penny."},
            {"role": "user", "content": text, "name": "mallory"},
        ]
        # OpenAI's accounting: 3 per message, its role, content and name (+1), and 3 priming the reply.
        documented = 3 + sum(3 + 1 + true_tokens(str(m["content"])) for m in messages) + 1 + true_tokens("mallory")
        assert estimate_chat_tokens(messages) >= documented, name


_hostile_alphabets = [
    LOWER, LOWER + " ", string.ascii_uppercase + " ", string.ascii_letters + " ", string.digits + " ",
    string.ascii_letters + string.digits, string.punctuation + " \t\n\r\x0b\x0c", string.printable,
    LOWER + "'", *SCRIPTS.values(),
]


@st.composite
def _hostile_text(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(
        st.sampled_from(_hostile_alphabets).flatmap(lambda a: st.text(a, max_size=80)),
        st.text(max_size=40),  # anything
        st.builds(lambda pre, w, post: pre + w + post, st.sampled_from(["", " ", "(", "'", "\t", "_", "\u201c", "\n"]),
                  st.text(LOWER, min_size=1, max_size=12).map(lambda w: w.title() if len(w) % 3 == 0 else w),
                  st.sampled_from(["", " ", ")", "'s", "'ll", ".", "\u2019", "\u00e9", "\n\n"])),
        st.sampled_from(["\r" * 30, " " * 100, "\n" * 25, "\t" * 41, "\u3000" * 9, "\n\n"]),
    ), max_size=12))
    return "".join(parts)


@settings(derandomize=True, database=None, max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=_hostile_text())
def test_any_text_is_bounded(text: str) -> None:
    assert estimate_text_tokens(text) >= true_token_counter()(text)


def test_long_hostile_text_is_bounded_across_paragraph_splits() -> None:
    # Past _SPLIT_FROM a text is estimated per "\n\n" paragraph: the split must stay a bound.
    true_tokens = true_token_counter()
    rng = random.Random(5)
    for _ in range(20):
        pieces = [rng.choice(list(HOSTILE.values()))[: rng.randint(0, 600)] for _ in range(8)]
        text = rng.choice(["\n\n", "\n\n\n", " \n\n ", "\n\n\t"]).join(pieces)
        assert estimate_text_tokens(text) >= true_tokens(text)


def test_readme_prose_and_source_stay_tight() -> None:
    true_tokens = true_token_counter()
    root = Path(__file__).resolve().parent.parent
    prose = (root / "README.md").read_text(encoding="utf-8")[:8000]
    code = (root / "proxy_core" / "gateway.py").read_text(encoding="utf-8")[:8000]
    assert true_tokens(prose) <= estimate_text_tokens(prose) <= 1.5 * true_tokens(prose)
    assert true_tokens(code) <= estimate_text_tokens(code) <= 2 * true_tokens(code)


def test_at_least_one_token_per_24_characters() -> None:
    # bot/docs/parse/_chunk.py prunes its search on this density (_MAX_CHARS_PER_TOKEN).
    for text in [" " * 5000, "\t" * 999, "\n" * 3001, "x" + " " * 2000 + "y", *HOSTILE.values(), LONG_EN]:
        assert estimate_text_tokens(text) >= len(text) / 24, repr(text[:20])


def test_a_lone_surrogate_is_counted_as_its_escape_at_the_most_and_never_raises() -> None:
    """JSON can carry a lone surrogate ("\\ud800"), which UTF-8 cannot encode: the provider sees U+FFFD
    or, at the most, the 6-character escape. It is bounded as 6 bytes that never merge (6 tokens)."""
    assert estimate_text_tokens("\ud800") == 6
    assert estimate_text_tokens("ok \udfff then") >= 6 + estimate_text_tokens("ok  then") - 1
    assert estimate_chat_tokens([{"role": "user", "content": "\ud83d" * 10}]) >= 60
