"""Scrub personal data from captions before they are used for training.

Web alt-text carries contact details, profile links and ID numbers that a text-to-image model should
neither learn nor be able to print back. Each kind is found by a precompiled pattern and then, where the
format has one, validated by its checksum or numbering rules (Luhn for cards, mod-97 for IBANs, Verhoeff
for Aadhaar, ISO 7064 for the German tax ID, the SSA's rules for SSNs, libphonenumber's plan for phone
numbers), because captions are full of numbers that only look like PII: years, prices, counts,
resolutions, versions. Names need a language model, so they are found only by a local token-
classification model named in the config.

Speed matters (every caption of every image passes through here): a caption with no digit, '@', ':' or
'/' and no obfuscated "at"/"dot" costs one character-class scan, and each detector has its own cheap
guard (a run of seven digits, the words of a street type, ...) before its full patterns run.

    from limner.data.pii import Scrubber
    Scrubber().scrub("mail jane.doe@example.com or call +44 20 7946 0958")
    # ('mail <EMAIL> or call <PHONE>', [Finding('email', 5, 25, ...), Finding('phone', 34, 50, ...)])

Deliberately left alone, for precision: bare social handles ("@jane.doe" outside a URL), street names
without a house number, unseparated 9-digit SSNs and 13-digit Visa numbers (indistinguishable from IDs
and EAN barcodes), unformatted runs of digits as phone numbers unless a word like "call" precedes them,
lower-cased NINOs, PANs and IBANs, and obfuscated emails with a plain " at " and a real dot ("jane at
example.com" reads like "photo at flickr.com"). National phone formats are checked for NANP and the
plans in _TRUNK_REGIONS and _NO_TRUNK only; international (+...) numbers for every plan.
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

import phonenumbers

KINDS = ("email", "phone", "credit_card", "ip_address", "url_personal", "street_address", "national_id", "person")
# When two findings overlap the longer one wins ("mailto:a@b.org" is a URL, not an email); on a tie,
# the kind whose validation is stricter.
_PRIORITY = {k: i for i, k in enumerate(("credit_card", "national_id", "ip_address", "email", "url_personal",
                                         "phone", "street_address", "person"))}


@dataclass
class Finding:
    kind: str      # one of KINDS
    start: int
    end: int
    text: str


@dataclass
class PIIConfig:
    """What to scrub and how.

    kinds: the kinds to find; "person" needs `ner_model` (and is implied by it).
    replacement: what a finding becomes; "{kind}" is filled with the upper-case kind ("<EMAIL>").
    ner_model: folder of a saved transformers token-classification model (with a fast tokenizer) whose
      PER/PERSON entities are names; None finds no names. Never a hub name: nothing is downloaded.
    """
    kinds: tuple[str, ...] = tuple(k for k in KINDS if k != "person")
    replacement: str = "<{kind}>"
    ner_model: str | None = None


# Hot patterns start with a character class and check the character before it by a lookbehind, not with
# "\b", so that re can skip to candidate characters in C; the others sit behind a cheap guard.
_RUN7 = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6}")   # seven digits in a row: phones, cards, most IDs


def _alternatives(words) -> str:
    return "(?:" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + ")"


# --- email -------------------------------------------------------------------------------------------
_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_][\w-]*\.)+(?P<tld>[^\W\d_]{2,})(?![\w-])")
_NOT_TLDS = {"png", "jpg", "jpeg", "gif", "webp", "svg", "bmp", "tif", "tiff", "avif"}   # "logo@2x.png"
# "jane [at] example [dot] org", "jane(at)example.org", "jane at example dot org"
_OB_AT = r"\s*[\[({<]at[\])}>]\s*|\s+at\s+"
_OB_DOT = r"\s*[\[({<]dot[\])}>]\s*|\s+dot\s+"
_OB_TLDS = "com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|ca|au|in|jp|ru|br|info|me|us|eu|ch|se|no|dk|pl|be|at"
_OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.+-])[\w.+-]+(?:{_OB_AT})[\w-]+(?:(?:{_OB_DOT}|\.)[\w-]+)*(?:{_OB_DOT}|\.)(?:{_OB_TLDS})\b", re.I)
_SPELLED = re.compile(rf"{_OB_DOT}|[\[({{<]at[\])}}>]", re.I)


def _may_be_obfuscated(text: str) -> bool:   # substring tests: much cheaper than a regex scan
    low = text.lower()
    return "dot" in low or "at]" in low or "at)" in low or "at}" in low or "at>" in low


def _emails(text: str) -> Iterator[tuple[int, int]]:
    if "@" in text:
        for m in _EMAIL.finditer(text):
            if m["tld"].lower() not in _NOT_TLDS:
                yield m.span()
    if _may_be_obfuscated(text):
        for m in _OBFUSCATED_EMAIL.finditer(text):
            if _SPELLED.search(m.group()):   # a plain " at " and a "." is how places are named, not emails
                yield m.span()


# --- phone -------------------------------------------------------------------------------------------
_PHONE_GAP = r"[\-./]|\s?\(|\)\s?|\s"     # one separator between two digits: "020 7946", "(415) 555-2671"
_PHONE = re.compile(rf"(?<![\w+.\-/])(?:\+\s?)?\(?\d(?:(?:{_PHONE_GAP})?\d){{6,17}}(?!\w|[.\-/]\d)")
_DATE = re.compile(r"\d{1,4}([./-])\d{1,2}\1\d{1,4}")
_SPACE = re.compile(r"\s")
# An unformatted run of digits ("photo 9968593273") is an ID far more often than a phone number, unless
# a word like "call" comes just before it.
_PHONE_WORD = re.compile(r"\b(?:phone|tel|call|mobile|cell|whatsapp|sms|text|fax|ph|ring|dial)\b(?:\W+\w+){0,3}\W*$",
                         re.I)
# A national number with the trunk prefix 0 is checked against these numbering plans.
_TRUNK_REGIONS = ("GB", "DE", "FR", "IT", "NL", "AU", "IN", "JP")
# Without a trunk prefix only plans strict enough not to match counts and years, written in their usual
# groups: NANP ("(415) 555-2671", "1-800-555-0199"), Indian mobiles ("98765 43210"), Italian mobiles.
_NO_TRUNK = (("23456789", "US", ((3, 3, 4), (10,))), ("6789", "IN", ((5, 5), (10,))),
             ("3", "IT", ((3, 3, 4), (3, 7), (10,))))


def _valid_number(s: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(s, region))
    except phonenumbers.NumberParseException:
        return False


def _is_phone(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    if not 7 <= len(digits) <= 15 or _DATE.fullmatch(s):
        return False
    if s[0] == "+":
        return _valid_number(s, None)
    if s.startswith("00"):
        return _valid_number("+" + s[2:], None)
    if digits[0] == "0":
        return any(_valid_number(s, r) for r in _TRUNK_REGIONS)
    if s[0] == "1":   # the NANP country code written nationally
        s = s[1:].lstrip(" .-")
    groups = tuple(len(g) for g in re.findall(r"\d+", s))
    return any(s.lstrip("(")[0] in first and groups in shapes and _valid_number(s, region)
               for first, region, shapes in _NO_TRUNK)


def _phones(text: str) -> Iterator[tuple[int, int]]:
    if not _RUN7.search(text):
        return
    for m in _PHONE.finditer(text):
        cand = m.group()
        # a number run into the next figure ("020 7946 0958 24 hours"): retry without its last groups
        ends = [len(cand)] + [g.start() for g in reversed(list(_SPACE.finditer(cand)))][:2]
        for end in ends:
            if cand[:end].isdigit() and not _PHONE_WORD.search(text, max(0, m.start() - 30), m.start()):
                continue
            if _is_phone(cand[:end]):
                yield m.start(), m.start() + end
                break


# --- credit card -------------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w.+\-/])\d{4}(?:[ -]?\d{2,7}){2,4}(?![\w-]|[.,]\d)")
# Issuer prefixes and lengths of the major networks: Visa, Mastercard, Amex, Diners, JCB, Discover/
# UnionPay/Maestro (6), Maestro (50, 56-58). Not the obsolete 13-digit Visa: it collides with EAN-13
# barcodes ("SKU 4006381333931"), a tenth of which pass Luhn.
_CARD_IIN = re.compile(r"4(?:\d{15}|\d{18})|5[1-5]\d{14}|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)\d{12}|3[47]\d{13}"
                       r"|3(?:0[0-5]|[689]\d)\d{11,16}|35\d{14,17}|6\d{15,18}|5[06-8]\d{14,17}")


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _cards(text: str) -> Iterator[tuple[int, int]]:
    if not _RUN7.search(text):
        return
    for m in _CARD.finditer(text):
        s = m.group()
        digits = s.replace(" ", "").replace("-", "")
        one_separator = len(set(s) - set("0123456789")) <= 1   # "4111 1111 1111 1111", not "4111-1111 1111"
        if one_separator and _CARD_IIN.fullmatch(digits) and _luhn(digits):
            yield m.span()


# --- IP addresses ------------------------------------------------------------------------------------
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?<!version )(?<!Version ){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){1,7}(?:\.\d{1,3}){0,3}(?:%\w+)?(?![\w:])")


def _ips(text: str) -> Iterator[tuple[int, int]]:
    if _IPV4_HINT.search(text):
        yield from (m.span() for m in _IPV4.finditer(text))
    if "::" in text or text.count(":") >= 7:   # an IPv6 address either compresses zeros or has 7 colons
        for m in _IPV6.finditer(text):
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            if any(c.isdigit() for c in m.group()):   # "::" alone or a word like "ab::cd" is not an address
                yield m.span()


# --- URLs with a person in them ----------------------------------------------------------------------
_USER_SUBDOMAINS = (".github.io", ".tumblr.com", ".blogspot.com", ".substack.com")   # a person's own site
_URL = re.compile(r"\bmailto:[^\s<>\"']+|(?:\bhttps?://|\bwww\.|(?<![\w@.\-])(?=(?:[a-z0-9\-]+\.)+[a-z]{2,}/|"
                  rf"[a-z0-9\-]+{_alternatives(_USER_SUBDOMAINS)}))[^\s<>\"']+", re.I)
# Sites whose first path segment is an account, unless it is one of these words or a number (a video).
_SOCIAL = ("instagram.com", "facebook.com", "fb.com", "twitter.com", "x.com", "tiktok.com", "linkedin.com",
           "github.com", "youtube.com", "pinterest.com", "reddit.com", "medium.com", "flickr.com", "tumblr.com",
           "vk.com", "t.me", "threads.net", "snapchat.com", "soundcloud.com", "twitch.tv", "behance.net",
           "dribbble.com", "deviantart.com", "patreon.com", "onlyfans.com", "500px.com", "mastodon.social",
           "vimeo.com", "linktr.ee", "about.me", "ko-fi.com", "buymeacoffee.com")
_NOT_ACCOUNTS = {"p", "reel", "reels", "tv", "stories", "explore", "hashtag", "tag", "tags", "topics", "watch",
                 "shorts", "embed", "results", "playlist", "feed", "search", "about", "help", "legal", "privacy",
                 "terms", "policies", "login", "signup", "share", "sharer", "sharer.php", "intent", "i", "home",
                 "settings", "jobs", "company", "groups", "events", "pages", "marketplace", "pin", "ideas", "r",
                 "features", "pricing", "trending", "discover", "directory", "accounts", "business", "channels",
                 "charts"}
_USER_PATH = re.compile(r"/(?:~|(?:users?|u|profiles?|members?|authors?)/)[\w.%+-]", re.I)
_PERSONAL_QUERY = re.compile(r"(?:^|[&;])(?:e-?mail|mail|phone|tel|mobile|user(?:name|_?id)?|uid|profile_?id)=",
                             re.I)
_AT_NAME = re.compile(r"@[^\W\d]")   # "/@jane", "?to=jane@example.org"; not "logo@2x.png" nor a map's "/@48.85,2.29"


def _is_personal_url(url: str) -> bool:
    if url[:7].lower() == "mailto:":
        return True
    try:
        parts = urlsplit(url if "://" in url else "http://" + url)
        host = (parts.hostname or "").removeprefix("www.").removeprefix("m.")
    except ValueError:   # a malformed port or bracket: not a URL we can judge
        return False
    path, query = unquote(parts.path), unquote(parts.query)
    if parts.username or host.endswith(_USER_SUBDOMAINS) or _AT_NAME.search(path + "?" + query) \
            or _USER_PATH.search(path) or _PERSONAL_QUERY.search(query):
        return True
    first = next((s for s in path.split("/") if s), "").lower()
    return bool(first) and first not in _NOT_ACCOUNTS and not first.isdigit() \
        and any(host == s or host.endswith("." + s) for s in _SOCIAL)


def _urls(text: str) -> Iterator[tuple[int, int]]:
    low = text.lower()
    if "/" not in text and "mailto:" not in low and not any(d in low for d in _USER_SUBDOMAINS):
        return
    for m in _URL.finditer(text):
        url = m.group().rstrip(".,;:!?'\"")
        if url.endswith(")") and url.count("(") < url.count(")"):   # "(see example.com/u/jo)"
            url = url[:-1]
        if _is_personal_url(url):
            yield m.start(), m.start() + len(url)


# --- street addresses --------------------------------------------------------------------------------
# Street types: English ones follow the name, French and southern European ones lead it, German, Dutch
# and Nordic ones end it. A caption is matched against a form only when it has one of that form's words.
_EN_TYPES = {"street", "st", "avenue", "ave", "road", "rd", "boulevard", "blvd", "lane", "ln", "drive", "dr",
             "court", "ct", "place", "pl", "terrace", "way", "circle", "cir", "highway", "hwy", "parkway", "pkwy",
             "square", "sq", "crescent", "close", "row", "mews", "grove", "gardens", "walk", "trail", "plaza",
             "alley", "broadway"}
_FR_TYPES = {"rue", "avenue", "boulevard", "bd", "place", "allée", "chemin", "impasse", "quai", "cours"}
_SOUTH_TYPES = {"Via", "Viale", "Piazza", "Corso", "Calle", "Carrer", "Avenida", "Paseo", "Rua", "Praça", "Largo"}
_COMPOUND_TYPES = ("straße", "strasse", "str", "weg", "platz", "allee", "gasse", "damm", "gracht", "straat", "laan",
                   "plein", "vej", "gatan", "vägen")
_PO_BOX_WORDS = {"box", "postfach", "apartado"}
_STOP = r"(?!(?:the|a|an|and|or|of|on|in|at|to|by|for|from|with|near|into|over)\b)"
_NAME_WORD = rf"{_STOP}(?:[A-Za-zÀ-ÿ][\w'’.\-]*|\d{{1,3}}(?:st|nd|rd|th))"
_DIR = r"(?:north|south|east|west|[NSEW]\.?|NE|NW|SE|SW)"
_UNIT = r"(?:,?\s+(?:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|#)\.?\s*#?[\w-]{1,5})"
_ZIP = r"(?:\d{5}(?:-\d{4})?(?![\s-]?\d)|[A-Z]{1,2}\d[A-Z\d]?\s*\d[A-Z]{2})"   # US ZIP or UK postcode
# City, state and postcode are matched case-sensitively so that ", the museum" is not taken for a city;
# a lower-case city counts only before a ZIP code.
_CITY = r"(?:St\.\s)?[A-ZÀ-Ý][A-Za-zà-ÿ'\-]*\b(?:\s[A-Z][A-Za-zà-ÿ'\-]*\b){0,2}"
_TAIL = (rf"(?-i:(?:,\s*{_CITY}(?:,\s*[A-Z]{{2}}\b|,\s*[A-Z][a-z]+)?(?:,?\s+{_ZIP})?"
         r"|,\s*[a-zà-ÿ]+(?:\s[a-zà-ÿ]+){0,2},?\s+\d{5}(?:-\d{4})?)?)")
_EU_TAIL = r"(?-i:(?:,\s*(?:[A-Z]{1,2}-)?\d{4,5}(?:\s?[A-Z]{2})?\s+[A-ZÀ-Ý][\w\-]+)?)"   # ", 10115 Berlin"
_EU_NUM = r"\d{1,3}[a-zA-Z]?\b"   # house numbers there follow the name and are never four digits (years)
# 221B Baker Street, London NW1 6XE / 1600 Pennsylvania Ave NW, Washington, DC 20500
_EN_ADDRESS = re.compile(
    rf"(?P<house>\d(?<![\w.\-]\d)\d{{0,4}}[A-Za-z]?(?:-\d{{1,5}})?)\s+(?:{_DIR}\s+)?"
    rf"(?P<name>(?:{_NAME_WORD}\s+){{1,3}}){_alternatives(_EN_TYPES)}\b\.?(?:\s+{_DIR}\b)?{_UNIT}?{_TAIL}", re.I)
# 12 rue de la Paix, 75002 Paris
_FR_ADDRESS = re.compile(
    rf"\d(?<![\w.\-]\d)\d{{0,3}}(?:\s?(?:bis|ter))?,?\s+{_alternatives(_FR_TYPES)}\s+(?:(?:de|du|des|la|le)\s+|l'|d')*"
    rf"(?-i:[A-ZÀ-Ý])[\w'’\-]*(?:\s+(?-i:[A-ZÀ-Ý])[\w'’\-]*){{0,3}}{_EU_TAIL}", re.I)
# Via Roma 12, Calle de Alcalá 45
_SOUTH_ADDRESS = re.compile(
    rf"{_alternatives(_SOUTH_TYPES)}\s+(?:(?:de|del|della|di|da|do|dos|das|la|el|los|las)\s+)*[A-ZÀ-Ý][\w'’\-]*"
    rf"(?:\s+[A-ZÀ-Ý][\w'’\-]*){{0,3}},?\s+(?:n\.?\s?|nº\s?)?{_EU_NUM}{_EU_TAIL}")
# Hauptstraße 5, Keizersgracht 123
_COMPOUND_ADDRESS = re.compile(
    rf"[A-ZÄÖÜÅØÆ](?<!\w[A-ZÄÖÜÅØÆ])[\wäöüß]{{2,}}(?:-[\wäöüß]+)*"
    rf"(?i:{_alternatives(_COMPOUND_TYPES)})\.?\s+{_EU_NUM}{_EU_TAIL}")
# PO Box 1234, Springfield, IL 62704
_PO_BOX = re.compile(rf"(?:P(?i:\.?\s?O\.?\s?Box|ost\s+Office\s+Box|ostfach)|Apartado)\s+\d{{1,6}}\b{_TAIL}")
_DIGIT = re.compile(r"\d")
_LETTERS = re.compile(r"[^\W\d_]+")
_ZIP_END = re.compile(rf"{_ZIP}$")
_UNIT_FIRST = re.compile(r"(?:flat|apt\.?|apartment|unit|suite)\s+\w{1,4},?\s+$", re.I)   # "Flat 2, 15 Abbey Road"


def _addresses(text: str) -> Iterator[tuple[int, int]]:
    if not _DIGIT.search(text):
        return
    words = set(_LETTERS.findall(text.lower()))
    if not words.isdisjoint(_EN_TYPES):
        for m in _EN_ADDRESS.finditer(text):
            # street types match in any case, but a street name all in lower case ("a 2 lane road")
            # counts only when a letter on the house number ("221b") or a ZIP code at the end backs it
            if not m["name"][0].islower() or m["house"][-1].isalpha() or _ZIP_END.search(m.group()):
                unit = _UNIT_FIRST.search(text, max(0, m.start() - 20), m.start())
                yield (unit or m).start(), m.end()
    if not words.isdisjoint(_FR_TYPES):
        yield from (m.span() for m in _FR_ADDRESS.finditer(text))
    if any(t in text for t in _SOUTH_TYPES):
        yield from (m.span() for m in _SOUTH_ADDRESS.finditer(text))
    if any(w.endswith(_COMPOUND_TYPES) for w in words):
        yield from (m.span() for m in _COMPOUND_ADDRESS.finditer(text))
    if not words.isdisjoint(_PO_BOX_WORDS):
        yield from (m.span() for m in _PO_BOX.finditer(text))


# --- national IDs ------------------------------------------------------------------------------------
# US SSN (3-2-4, separators required), Aadhaar (4-4-4) and the German tax ID (2-3-3-3), each not part of
# a longer run of digit groups (a card or phone number) nor of a URL path.
_DIGIT_IDS = re.compile(r"\d(?<![\d/-]\d)(?<!\d \d)"
                        r"(?:(?P<ssn>\d\d([- ])\d\d\2\d{4})|(?P<aadhaar>\d{3}([ -]?)\d{4}\4\d{4})|\d(?: ?\d{3}){3})"
                        r"(?![ -]?\d|/)")
_SSN_ADVERTISED = {"078051120", "219099999"}   # printed on sample cards, never anyone's
# UK National Insurance number: the prefixes HMRC never issues are excluded.
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z](?<!\w[A-Z])[A-CEGHJ-NPR-TW-Z](?<!BG|GB|NK|KN|TN|NT|ZZ) ?\d{2} ?\d{2} ?\d{2} ?"
                   r"[A-D]\b")
# India PAN: the fourth letter is the holder type (P for a person, C company, ...).
_PAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]{2}[ABCFGHJLPT][A-Z]\d{4}[A-Z]\b")
_IBAN = re.compile(r"[A-Z](?<!\w[A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]){11,30}")
_IBAN_LENGTHS = {c[:2]: int(c[2:]) for c in (
    "AD24 AE23 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 ES24 FI18 FO18 FR27 "
    "GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 "
    "MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 "
    "TN24 TR26 UA29 VA22 VG24 XK20").split()}
_VERHOEFF_D = ["0123456789", "1234067895", "2340178956", "3401289567", "4012395678",
               "5987604321", "6598710432", "7659821043", "8765932104", "9876543210"]
_VERHOEFF_P = ["0123456789", "1576283094", "5803796142", "8916043527",
               "9453126870", "4286573901", "2793806415", "7046913258"]


def _verhoeff(digits: str) -> bool:
    c = 0
    for i, n in enumerate(reversed(digits)):
        c = int(_VERHOEFF_D[c][int(_VERHOEFF_P[i % 8][int(n)])])
    return c == 0


def _steuer_id(digits: str) -> bool:
    """German tax ID: one digit of the first ten occurs two or three times (not three in a row), and the
    last is an ISO 7064 MOD 11,10 check digit."""
    repeated = [(d, n) for d, n in Counter(digits[:10]).items() if n > 1]
    if len(repeated) != 1 or repeated[0][1] > 3 or repeated[0][0] * 3 in digits[:10]:
        return False
    product = 10
    for c in digits[:10]:
        product = ((int(c) + product) % 10 or 10) * 2 % 11
    return (11 - product) % 10 == int(digits[10])


def _valid_digit_id(m: re.Match) -> bool:
    d = re.sub(r"\D", "", m.group())
    if m["ssn"]:   # area not 000, 666 or 900-999, group not 00, serial not 0000
        return d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000" \
            and d not in _SSN_ADVERTISED
    if m["aadhaar"]:
        return d[0] not in "01" and _verhoeff(d)
    return d[0] != "0" and _steuer_id(d)


def _iban(text: str, m: re.Match) -> tuple[int, int] | None:
    """The IBAN's country fixes its length, so letters that follow it ("... 00 FOR") are cut off."""
    length = _IBAN_LENGTHS.get(m.group()[:2])
    compact = m.group().replace(" ", "")
    if not length or len(compact) < length:
        return None
    code = compact[4:length] + compact[:4]
    if int("".join(str(int(ch, 36)) for ch in code)) % 97 != 1:
        return None
    end, seen = m.start(), 0
    while seen < length:
        seen += text[end] != " "
        end += 1
    return m.start(), end


def _national_ids(text: str) -> Iterator[tuple[int, int]]:
    yield from (m.span() for m in _NINO.finditer(text))
    yield from (m.span() for m in _PAN.finditer(text))
    if not _RUN7.search(text):   # every other ID, IBANs included, has a run of seven digits
        return
    yield from (m.span() for m in _DIGIT_IDS.finditer(text) if _valid_digit_id(m))
    yield from filter(None, (_iban(text, m) for m in _IBAN.finditer(text)))


_DETECTORS = {"email": _emails, "phone": _phones, "credit_card": _cards, "ip_address": _ips,
              "url_personal": _urls, "street_address": _addresses, "national_id": _national_ids}
# Every pattern kind needs one of these or an obfuscated "at"/"dot"; most captions have neither.
_HINT = re.compile(r"[\d@:/]")


class Scrubber:
    """Finds and replaces PII; build one and reuse it (a NER model loads once)."""

    def __init__(self, config: PIIConfig | None = None):
        self.config = config or PIIConfig()
        unknown = set(self.config.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {KINDS}")
        if "person" in self.config.kinds and not self.config.ner_model:
            raise ValueError("kind 'person' needs PIIConfig.ner_model, a local token-classification model")
        self._detectors = [(k, d) for k, d in _DETECTORS.items() if k in self.config.kinds]
        self._ner = _load_ner(self.config.ner_model) if self.config.ner_model else None

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings sorted by start."""
        spans = []
        if _HINT.search(text) or _may_be_obfuscated(text):
            spans = [(kind, s, e) for kind, detect in self._detectors for s, e in detect(text)]
        if self._ner is not None:
            spans += [("person", ent["start"], ent["end"]) for ent in self._ner(text)
                      if ent["entity_group"] in ("PER", "PERSON")]
        chosen: list[tuple[str, int, int]] = []
        for kind, s, e in sorted(spans, key=lambda f: (f[1] - f[2], _PRIORITY[f[0]], f[1])):
            if all(e <= cs or s >= ce for _, cs, ce in chosen):
                chosen.append((kind, s, e))
        return [Finding(kind, s, e, text[s:e]) for kind, s, e in sorted(chosen, key=lambda f: f[1])]

    def scrub(self, text: str) -> tuple[str, list[Finding]]:
        """The text with each finding replaced, and the findings (spans index the original text)."""
        findings = self.find(text)
        out, pos = [], 0
        for f in findings:
            out += [text[pos:f.start], self.config.replacement.format(kind=f.kind.upper())]
            pos = f.end
        return "".join(out) + text[pos:], findings


def _load_ner(path: str):
    if not Path(path).is_dir():
        raise ValueError(f"ner_model={path!r} is not a local folder. PII scrubbing runs offline and never "
                         "downloads models: save the model with save_pretrained (or download it elsewhere) and "
                         "pass that folder's path.")
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline   # only for names

    model = AutoModelForTokenClassification.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # A caption longer than the model's window is read in overlapping windows, not cut: a name past the cut
    # would be left in. Windowing needs a fast tokenizer (its offsets), which is also what word-level
    # aggregation needs.
    if not tokenizer.is_fast:
        raise ValueError(f"ner_model={path!r} has no fast tokenizer (tokenizer.json), which PII scrubbing needs "
                         "to read long captions whole and to tag whole words")
    window = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings", None) or 512)
    tokenizer.model_max_length = window
    # "first": a word is a name when its first sub-token is, as NER models are usually trained
    return pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="first",
                    stride=window // 4)
