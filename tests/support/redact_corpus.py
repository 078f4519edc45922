"""A generated, labelled corpus for the redact transform: positives per detector, near-miss negatives.

Positives: each detector's values in the formats people write them, generated (valid checksums
where a checksum exists), placed in prose of several languages, code, JSON, shell and markdown,
at the start, middle or end, glued to punctuation or CJK text. Lines are written three ways:
orjson (UTF-8 as is), the standard library's ``json`` (non-ASCII as ``\\uXXXX``) and with every
slash escaped (``\\/``, as PHP writes), so the prefilter's handling of escapes is measured too.

Negatives: the look-alikes that must stay: Luhn-invalid card numbers, IBANs with a wrong
checksum, version strings, dates and times, hashes, UUIDs, request ids, MAC addresses, ISBNs,
short or partial tokens, public keys and certificates, "bearer" and "@" in prose, code in
several languages, and the benchmark generator's own text.

:func:`evaluate` runs a transform over the whole corpus and returns per-detector recall and
false positives; ``tools/redact_accuracy.py`` prints it, ``tests/unit/test_redact_accuracy.py``
asserts it.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline import generator
from pipeline.transforms.redact.detectors import IBAN_LENGTHS

B64 = string.ascii_letters + string.digits + "+/"
URLSAFE = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits

CONTEXTS = [
    "{v}", "Please contact me at {v} tomorrow.", "My details: {v}", "({v})", "<{v}>", "`{v}`", "'{v}'",
    '"{v}"', "value={v};", "{v}, and that's all.", "Line one\n{v}\nline three", "\t{v}\t",
    "Meine Angaben lauten {v}, danke.", "Mes coordonnées : {v}.", "Mis datos son {v} y nada más.",
    "連絡先は {v} です。", "我的信息是 {v}。", "Мои данные: {v}, звоните.", "Voici: {v}!", "→ {v} ←",
    '{{"key": "{v}", "ok": true}}', "key = \"{v}\"\n", "- item: {v}\n- other", "| name | {v} |",
    "Here is the thing you asked for: {v}. Let me know if it works for you.",
]
TOKEN_CONTEXTS = CONTEXTS + ['API_KEY = "{v}"', "export TOKEN={v}", "headers = {{'X-Key': '{v}'}}"]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for last in string.digits:
        number = body + last
        total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
                    for i, d in enumerate(int(c) for c in reversed(number)))
        if total % 10 == 0:
            return number
    raise AssertionError("unreachable")


def _group(number: str, sizes: list[int], sep: str) -> str:
    parts, pos = [], 0
    for size in sizes:
        parts.append(number[pos:pos + size])
        pos += size
    if pos < len(number):
        parts.append(number[pos:])
    return sep.join(parts)


def card(rng: random.Random) -> str:
    """A Luhn-valid card number of a real scheme, in one of the usual groupings."""
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15),
                                 ("37", 15), ("6011", 16), ("65", 16), ("35", 16), ("36", 14), ("4", 13)])
    number = _luhn_complete(prefix, length, rng)
    style = rng.randrange(3)
    if style == 0:
        return number
    sep = " " if style == 1 else "-"
    return _group(number, [4, 6, 5] if length == 15 else [4, 4, 4], sep)


def _iban_for(country: str, rng: random.Random) -> str:
    length = IBAN_LENGTHS[country]
    bban = "".join(rng.choice(UPPER_DIGITS if i < 4 and country in ("GB", "NL", "IE") else string.digits)
                   for i in range(length - 4))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def iban(rng: random.Random) -> str:
    """A valid IBAN of a common country, compact or in groups of four."""
    value = _iban_for(rng.choice(["DE", "GB", "FR", "NL", "ES", "IT", "CH", "BE", "AT", "PL", "IE", "SE"]), rng)
    return value if rng.random() < 0.5 else " ".join(value[i:i + 4] for i in range(0, len(value), 4))


def phone(rng: random.Random) -> str:
    """A phone number in an international or national format."""
    d = lambda n: _digits(rng, n)  # noqa: E731
    area = str(rng.randint(2, 9)) + d(2)
    forms = [
        f"+44 20 {d(4)} {d(4)}", f"+1 ({area}) {area}-{d(4)}", f"+1-{area}-{area}-{d(4)}", f"+49 30 {d(8)}",
        f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"+81 3-{d(4)}-{d(4)}", f"+49151{d(8)}", f"0044 20 {d(4)} {d(4)}",
        f"({area}) {area}-{d(4)}", f"{area}-{area}-{d(4)}", f"{area}.{area}.{d(4)}", f"030 {d(4)} {d(4)}",
        f"06 {d(2)} {d(2)} {d(2)} {d(2)}", f"020 {d(4)} {d(4)}", f"+91 {d(5)} {d(5)}", f"+61 4{d(2)} {d(3)} {d(3)}",
        f"+86 138 {d(4)} {d(4)}", f"+7 495 {d(3)}-{d(2)}-{d(2)}",
    ]
    return rng.choice(forms)


def email(rng: random.Random) -> str:
    """An e-mail address: dots, plus tags, digits, sub-domains, long and short TLDs."""
    local = rng.choice(["john.doe", "j.smith+ai", "maria_garcia", "wei.zhang88", "o'neil".replace("'", ""),
                        "first.last-2", "X.Y", "support", "a1b2c3"])
    domain = rng.choice(["example.com", "mail.example.co.uk", "firma.de", "uni-berlin.de", "startup.io",
                         "sub.domain.example.org", "EXAMPLE.COM", "xn--bcher-kva.ch", "museum.museum"])
    return f"{local}{rng.randrange(100) if rng.random() < 0.3 else ''}@{domain}"


def ipv4(rng: random.Random) -> str:
    """A dotted-quad address, sometimes with a port."""
    address = ".".join(str(rng.randrange(256)) for _ in range(4))
    return address + (f":{rng.randrange(1, 65536)}" if rng.random() < 0.2 else "")


def ipv6(rng: random.Random) -> str:
    """An IPv6 address, full or compressed."""
    groups = [format(rng.randrange(1 << 16), "x") for _ in range(8)]
    groups[rng.randrange(8)] = str(rng.randrange(1, 10))  # at least one digit
    style = rng.randrange(4)
    if style == 0:
        return ":".join(groups)
    if style == 1:
        return ":".join(g.zfill(4) for g in groups)
    if style == 2:
        return f"2001:db8::{groups[0]}:{rng.randrange(1, 999)}"
    return f"fe80::{groups[1]}:{groups[2]}:{rng.randrange(1, 9999)}"


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def aws_access_key(rng: random.Random) -> str:
    """An AWS access key id."""
    return rng.choice(["AKIA", "ASIA"]) + _rand(rng, string.ascii_uppercase + "234567", 16)


def aws_secret_value(rng: random.Random) -> str:
    """The 40 characters of an AWS secret access key."""
    return _rand(rng, B64, 40)


def jwt(rng: random.Random) -> str:
    """A JSON Web Token with a random payload and signature."""
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")
    header = part({"alg": rng.choice(["HS256", "RS256"]), "typ": "JWT"})
    payload = part({"sub": _digits(rng, 8), "name": "x" * rng.randrange(3, 20), "iat": 1_700_000_000})
    return f"{header}.{payload}.{_rand(rng, URLSAFE, rng.choice([43, 86, 342]))}"


def private_key(rng: random.Random) -> str:
    """A PEM private key block (random body)."""
    kind = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                       "ENCRYPTED PRIVATE KEY"])
    body = "\n".join(_rand(rng, B64, 64) for _ in range(rng.randrange(3, 12)))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "email": email, "phone": phone, "payment_card": card, "iban": iban, "ipv4": ipv4, "ipv6": ipv6,
    "aws_access_key": aws_access_key,
    "openai_key": lambda r: r.choice(["sk-", "sk-proj-", "sk-svcacct-"])
    + _rand(r, ALNUM + "_-", r.choice([48, 64, 120])),
    "anthropic_key": lambda r: "sk-ant-api03-" + _rand(r, URLSAFE, 93) + "AA",
    "google_api_key": lambda r: "AIza" + _rand(r, URLSAFE, 35),
    "github_token": lambda r: r.choice(["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]) + _rand(r, ALNUM, 36)
    if r.random() < 0.7 else "github_pat_" + _rand(r, ALNUM + "_", 82),
    "gitlab_token": lambda r: "glpat-" + _rand(r, URLSAFE, 20),
    "slack_token": lambda r: f"xox{r.choice('bpa')}-{_digits(r, 12)}-{_digits(r, 13)}-{_rand(r, ALNUM, 24)}",
    "stripe_key": lambda r: r.choice(["sk_live_", "sk_test_", "rk_live_", "rk_test_"]) + _rand(r, ALNUM, 24),
    "jwt": jwt, "private_key": private_key,
}
SECRET_CONTEXTS = ["aws_secret_access_key = {v}", "AWS_SECRET_ACCESS_KEY={v}", 'export AWS_SECRET_ACCESS_KEY="{v}"',
                   "aws secret key: {v}", '"aws_secret_access_key": "{v}"', "AWS Secret Access Key {v}"]
BEARER_CONTEXTS = ["Authorization: Bearer {v}", "curl -H 'Authorization: Bearer {v}' https://api.example.com",
                   "header bearer {v}", "use `Bearer {v}` for auth", "Authorization: bearer {v}\n"]


@dataclass(frozen=True)
class Sample:
    """One text for the ``input`` field; ``value`` is what must disappear (None for a negative)."""

    detector: str | None
    text: str
    value: str | None


def positives(per_detector: int = 300, seed: int = 18) -> Iterator[Sample]:
    """``per_detector`` labelled positives for every built-in detector."""
    rng = random.Random(seed)
    for name, make in GENERATORS.items():
        contexts = TOKEN_CONTEXTS if name.endswith(("key", "token")) or name == "jwt" else CONTEXTS
        for _ in range(per_detector):
            value = make(rng)
            yield Sample(name, rng.choice(contexts).format(v=value), value)
    for _ in range(per_detector):
        value = aws_secret_value(rng)
        if rng.random() < 0.3:
            text = f"key id {aws_access_key(rng)} secret {value}"
        else:
            text = rng.choice(SECRET_CONTEXTS).format(v=value)
        yield Sample("aws_secret_key", rng.choice(CONTEXTS).format(v=text), value)
    for _ in range(per_detector):
        value = rng.choice([_rand(rng, URLSAFE + ".~", rng.randrange(20, 80)), jwt(rng)[:50], _rand(rng, B64, 32)])
        yield Sample("bearer_token", rng.choice(BEARER_CONTEXTS).format(v=value), value)


def _near_misses(rng: random.Random) -> list[str]:
    d = lambda n: _digits(rng, n)  # noqa: E731
    bad_card = card(rng)
    bad_card = bad_card[:-1] + str((int(bad_card[-1]) + rng.randrange(1, 10)) % 10)
    good_iban = _iban_for(rng.choice(["DE", "FR", "ES"]), rng)
    bad_iban = good_iban[:2] + f"{(int(good_iban[2:4]) + rng.randrange(1, 90)) % 100:02d}" + good_iban[4:]
    return [
        bad_card, bad_iban, f"v{rng.randrange(20)}.{rng.randrange(50)}.{rng.randrange(200)}",
        f"Python 3.{rng.randrange(8, 14)}.{rng.randrange(20)}",
        f"10.0.{rng.randrange(10000, 30000)}.{rng.randrange(9)}",
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z",
        f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}", _rand(rng, "0123456789abcdef", 40),
        _rand(rng, "0123456789abcdef", 64), _rand(rng, "0123456789abcdef", 32), _rand(rng, "0123456789abcdef", 7),
        f"{_rand(rng, '0123456789abcdef', 8)}-{_rand(rng, '0123456789abcdef', 4)}-4{_rand(rng, '0123456789abcdef', 3)}"
        f"-a{_rand(rng, '0123456789abcdef', 3)}-{_rand(rng, '0123456789abcdef', 12)}",
        generator.request_id(rng.randrange(1 << 16), rng.randrange(10**9)),
        ":".join(_rand(rng, "0123456789ABCDEF", 2) for _ in range(6)), f"ISBN 978-{d(1)}-{d(2)}-{d(6)}-{d(1)}",
        f"order #{d(8)}", f"${rng.randrange(1, 999)},{d(3)}.{d(2)}", f"{rng.randrange(100)}.{d(2)}%",
        f"timestamp {rng.randrange(1_600_000_000, 1_800_000_000)}.{d(3)}",
        f"ms {1_733_000_000_000 + rng.randrange(10**9)}",
        f"sk-{_rand(rng, ALNUM, 10)}", "sk-learn", "scikit-learn", f"ghp_{_rand(rng, ALNUM, 12)}",
        f"AKIA{_rand(rng, string.ascii_uppercase, 8)}", f"eyJ{_rand(rng, URLSAFE, 20)}",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
        "the bearer of this letter", "Bearer token goes here", "@property\ndef name(self): ...", "@dataclass",
        "ping @maria in #general", "user@localhost", "name at example dot com", "std::vector<int> v;",
        "impl Add for Point { fn add(self, o: Point) -> Point { Add::add(self.x, o.x) } }", "a::b::c",
        f"base64 {_rand(rng, B64, 40)}", f"price {rng.randrange(1, 99)}.{d(2)} EUR", f"Tel. extension {d(3)}",
        f"ID-{d(4)}-{d(4)}", f"{d(4)}-{d(2)}-{d(2)}", f"{rng.randrange(1, 9)}.{d(1)}.{d(1)}",
        f"AB12 CDEF GH{d(2)}", "ISO 8601, RFC 3339, ISO/IEC 27001:2022", f"page {d(3)} of {d(3)}",
        f"call extension {d(4)}", f"zip {d(5)}", f"git commit {_rand(rng, '0123456789abcdef', 7)}",
        f"0x{_rand(rng, '0123456789abcdef', 16)}", f"{d(3)}-{d(2)}-{d(4)}",
    ]


PROSE = [
    "The quick brown fox jumps over the lazy dog.", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le vif renard brun saute par-dessus le chien paresseux.", "素早い茶色の狐がのろまな犬を飛び越える。",
    "敏捷的棕色狐狸跳过了懒狗。", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "fn main() { let v: Vec<u32> = (1..10).collect(); println!(\"{:?}\", v); }",
    "SELECT id, name FROM users WHERE created_at > '2024-01-01' LIMIT 100;",
    "for (int i = 0; i < 10; ++i) { std::cout << i << std::endl; }",
    "Summary: latency p99 is 850 ms over 3 regions; 12 of 4096 requests timed out at 30 s.",
]


def negatives(count: int = 3000, seed: int = 23) -> Iterator[Sample]:
    """``count`` texts with nothing to redact: near-misses in context, prose, code, generator text."""
    rng = random.Random(seed)
    corpus = next(generator.records(1, seed=seed, max_chars=4000))
    texts = [corpus["input"], corpus["output"]]
    for n in range(count):
        kind = n % 4
        if kind == 0:
            text = " ".join(rng.choice(_near_misses(rng)) for _ in range(3))
            yield Sample(None, rng.choice(CONTEXTS).format(v=text), None)
        elif kind == 1:
            yield Sample(None, rng.choice(CONTEXTS).format(v=rng.choice(_near_misses(rng))), None)
        elif kind == 2:
            yield Sample(None, rng.choice(PROSE) + " " + rng.choice(_near_misses(rng)), None)
        else:
            text = rng.choice(texts)
            start = rng.randrange(len(text))
            yield Sample(None, text[start:start + 600], None)


def encode(sample: Sample, style: int) -> bytes:
    """The sample as a JSON line: 0 orjson, 1 stdlib json (ASCII escapes), 2 slashes escaped as ``\\/``."""
    record = {"request_id": "r", "timestamp": 1_795_000_000.5, "input": sample.text, "output": "ok"}
    if style == 1:
        return json.dumps(record).encode() + b"\n"
    line = orjson.dumps(record) + b"\n"
    return line.replace(b"/", b"\\/") if style == 2 else line


@dataclass
class Result:
    """Per detector: positives found and total; negatives flagged (by which detector) and total."""

    found: Counter[str]
    total: Counter[str]
    false_by: Counter[str]
    negatives: int
    false_samples: list[str]

    def recall(self, detector: str) -> float:
        """Share of ``detector``'s positives that were redacted and counted under its name."""
        return self.found[detector] / self.total[detector]

    def false_rate(self) -> float:
        """Share of negatives with any redaction."""
        return sum(1 for _ in self.false_samples) / self.negatives


def evaluate(apply: Callable[[list[bytes]], list[bytes]], per_detector: int = 300, negative_count: int = 3000,
             batch: int = 200) -> Result:
    """Run ``apply`` (a batch of lines → lines) over the corpus and score it."""
    result = Result(Counter(), Counter(), Counter(), 0, [])
    samples = [*positives(per_detector), *negatives(negative_count)]
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        lines = [encode(s, (start + i) % 3) for i, s in enumerate(chunk)]
        for sample, line in zip(chunk, apply(lines), strict=True):
            _score(result, sample, orjson.loads(line))
    return result


def _score(result: Result, sample: Sample, record: dict[str, Any]) -> None:
    counts = record.get("redactions") or {}
    if sample.detector is None:
        result.negatives += 1
        if counts:
            result.false_by.update(counts)
            result.false_samples.append(sample.text[:200])
        return
    result.total[sample.detector] += 1
    assert sample.value is not None
    if sample.value not in str(record.get("input")) and counts.get(sample.detector):
        result.found[sample.detector] += 1
