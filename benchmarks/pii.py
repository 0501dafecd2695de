"""PII scrubbing benchmark: per-kind recall and precision on a planted-PII caption corpus, and speed, side by
side with Microsoft Presidio's pattern recognizers on the same captions.

    python benchmarks/pii.py [--captions 4000] [--seed 0]

The corpus is synthetic and its ground truth exact: realistic alt-text and captions (most with numbers,
versions, prices, dates, resolutions, file names or ordinary URLs that must be left alone) with planted
PII of every pattern kind in varied formats. It was written alongside `limner.data.pii`, so its formats
are mostly ones the scrubber was built for; two per-format rows show what it does not claim: national
phone formats of numbering plans it does not check, and profiles on sites chosen after its lists were
written.

A planted span counts as found when findings of its kind cover at least 80% of it; a finding counts as
correct when at least half of it lies in planted spans of its kind. Presidio runs without its spaCy NLP
engine (which needs a model download) at AnalyzerEngine's default score threshold (anything above 0),
its results overlap-resolved like ours; it has no street-address recognizer, and its URL recognizer
flags every URL, so its url_personal precision is that of "all URLs".
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import re
import statistics
import string
import time
from collections import defaultdict

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")   # Presidio's email check: bundled list, no fetch

import phonenumbers  # noqa: E402

from limner.data import pii  # noqa: E402
from limner.data.pii import KINDS, Scrubber  # noqa: E402

FIRST = ["jane", "john", "maria", "li", "ahmed", "sofia", "lukas", "emma", "raj", "yuki", "olga", "pierre", "ana",
         "kwame", "chloe", "mateo", "priya", "noah", "fatima", "sven"]
LAST = ["doe", "smith", "garcia", "wang", "khan", "rossi", "muller", "brown", "patel", "tanaka", "ivanova",
        "dubois", "silva", "mensah", "martin", "lopez", "sharma", "jones", "hassan", "larsen"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.org", "studio-lumen.co.uk", "mail.uni-heidelberg.de",
           "orange.fr", "proton.me", "company.io", "icloud.com"]
SUBJECTS = ["a golden retriever", "two cats", "a red vintage car", "a bowl of ramen", "a woman in a yellow raincoat",
            "an old man reading a newspaper", "three kids", "a wooden cabin", "the Eiffel Tower", "a mountain lake",
            "a bride and groom", "a plate of sushi", "a modern kitchen", "an orange tabby kitten", "a skateboarder",
            "a bouquet of tulips", "a lighthouse", "a steam locomotive", "a street market", "a hot air balloon",
            "a pair of running shoes", "a leather handbag", "a cup of coffee", "a snowy forest", "a city skyline"]
SCENES = ["at sunset", "in the snow", "on a busy street in Tokyo", "on a white background", "by the sea",
          "in a sunny meadow", "under neon lights", "in the rain", "at golden hour", "in a cozy living room",
          "on a wooden table", "in front of a brick wall", "during a festival", "at night", "in soft focus"]
STYLES = ["photo of", "close-up of", "aerial view of", "watercolor painting of", "3D render of", "illustration of",
          "Stock Photo:", "vintage postcard of", "minimalist poster of", "portrait of"]


def _digits(rng, n):
    return "".join(rng.choice(string.digits) for _ in range(n))


def benign(rng: random.Random) -> str:
    """A caption with no PII, often with the numbers and URLs that PII detectors mistake for PII."""
    base = f"{rng.choice(STYLES)} {rng.choice(SUBJECTS)} {rng.choice(SCENES)}"
    extras = [
        lambda: f"{rng.randint(2, 12)} {rng.choice(['apples', 'pears', 'red circles', 'chairs', 'candles'])}",
        lambda: f"taken in {rng.randint(1950, 2025)}", lambda: f"shot on iPhone {rng.randint(8, 16)} Pro",
        lambda: f"Canon EOS R{rng.randint(3, 8)}, {rng.choice([35, 50, 85])}mm f/{rng.choice(['1.8', '2.8', '4'])}, "
                f"1/{rng.choice([125, 250, 1000])}s, ISO {rng.choice([100, 400, 3200])}",
        lambda: f"{rng.choice([1920, 3000, 4096, 6000])}x{rng.choice([1080, 2000, 2160, 4000])} px",
        lambda: f"{rng.choice([1920, 3840])} x {rng.choice([1080, 2160])} wallpaper",
        lambda: f"version {rng.randint(1, 20)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
        lambda: f"Chrome {rng.randint(90, 130)}.0.{rng.randint(1000, 6999)}.{rng.randint(10, 200)}",
        lambda: f"${rng.randint(1, 3)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
        lambda: f"€{rng.randint(5, 999)},{rng.randint(10, 99)} incl. VAT", lambda: f"save {rng.randint(5, 70)}%",
        lambda: f"SKU {_digits(rng, 13)}", lambda: f"ISBN 978-{rng.randint(0, 9)}-{_digits(rng, 3)}-{_digits(rng, 5)}-"
                                                   f"{rng.randint(0, 9)}",
        lambda: f"Order #{_digits(rng, 3)}-{_digits(rng, 7)}-{_digits(rng, 7)}", lambda: f"image ID {_digits(rng, 9)}",
        lambda: f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.{rng.randint(1990, 2025)}",
        lambda: f"{rng.randint(1990, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        lambda: f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(1990, 2025)}",
        lambda: f"open {rng.randint(7, 11)}:00-{rng.randint(17, 22)}:30", lambda: f"{rng.randint(1990, 2005)}-"
                                                                                f"{rng.randint(2006, 2025)}",
        lambda: f"Top {rng.randint(5, 50)} Beaches In Europe {rng.randint(2015, 2025)}",
        lambda: f"Room {rng.randint(1, 999)}, Floor {rng.randint(1, 30)}", lambda: f"Route {rng.randint(1, 99)}",
        lambda: f"population {rng.randint(1, 9)} {_digits(rng, 3)} {_digits(rng, 3)}",
        lambda: f"score {rng.randint(0, 5)}-{rng.randint(0, 5)}", lambda: f"{rng.randint(2, 6)} lane road",
        lambda: f"{rng.randint(2, 12)} place settings", lambda: f"Spring {rng.randint(2015, 2025)} collection",
        lambda: f"{rng.uniform(0, 90):.4f}° N, {rng.uniform(0, 180):.4f}° W",
        lambda: f"https://en.wikipedia.org/wiki/{rng.choice(['Cat', 'Eiffel_Tower', 'Ramen', 'Lighthouse'])}",
        lambda: f"https://images.example-cdn.com/photos/{_digits(rng, 6)}/large.jpg",
        lambda: f"www.{rng.choice(['etsy', 'ikea', 'zara'])}.com/products/{rng.choice(['oak-chair', 'red-dress'])}",
        lambda: f"https://www.youtube.com/watch?v={''.join(rng.choices(string.ascii_letters, k=11))}",
        lambda: f"https://www.reddit.com/r/{rng.choice(['aww', 'EarthPorn', 'food'])}/comments/{_digits(rng, 6)}/",
        lambda: f"https://www.instagram.com/p/{''.join(rng.choices(string.ascii_letters + string.digits, k=11))}/",
        lambda: f"https://www.pinterest.com/pin/{_digits(rng, 12)}/", lambda: "cdn.shopify.com/s/files/1/products/"
                                                                              "shirt@2x.jpg",
        lambda: f"https://www.nytimes.com/{rng.randint(2015, 2025)}/{rng.randint(1, 12):02d}/travel/beaches.html",
        lambda: f"{rng.uniform(-80, 80):.4f}, {rng.uniform(-170, 170):.4f}", lambda: "Model: SM-G991B",
        lambda: f"HP 15-dy{_digits(rng, 4)}nr", lambda: f"DSC_{_digits(rng, 4)}.JPG",
        lambda: f"IMG-{rng.randint(2015, 2025)}{rng.randint(1, 12):02d}{rng.randint(10, 28)}-WA{_digits(rng, 4)}.jpg",
        lambda: f"photo {rng.randint(10**9, 10**10 - 1)}", lambda: f"John {rng.randint(1, 21)}:{rng.randint(1, 40)}",
        lambda: f"#{rng.getrandbits(24):06X}", lambda: "Boeing 747-400 and Airbus A380-800",
        lambda: f"{rng.randint(1, 9)}.{_digits(rng, 3)}.{_digits(rng, 3)},{_digits(rng, 2)} €",
        lambda: f"{rng.randint(-20, 5)}°C to {rng.randint(6, 35)}°C",
        lambda: f"timestamp {rng.randint(10**9, 2 * 10**9)}",
        lambda: f"{rng.randint(100, 999)}-{rng.randint(100, 999)} final score",
        lambda: f"Beverly Hills {rng.choice(['90210', '90211'])}", lambda: f"flickr photo {_digits(rng, 11)}",
        lambda: rng.choice(["https://twitter.com/search?q=cats", "https://www.facebook.com/groups/123456",
                            "https://www.instagram.com/accounts/login/", "https://vimeo.com/channels/staffpicks",
                            "https://www.twitch.tv/directory", "https://www.facebook.com/business",
                            "https://github.com/topics/python", "https://www.linkedin.com/company/acme",
                            "https://medium.com/tag/travel", "https://www.youtube.com/results?search_query=cats",
                            "https://twitter.com/i/web/status/123", "https://www.tiktok.com/discover/cats",
                            "https://soundcloud.com/charts/top", "https://www.reddit.com/search/?q=cats"]),
    ]
    caption = base
    for _ in range(rng.choice([0, 1, 1, 2])):
        caption += rng.choice([", ", " - ", " | ", ". "]) + rng.choice(extras)()
    return caption.lower() if rng.random() < 0.15 else caption


# --- planted PII: each generator returns (text, format) -----------------------------------------------
def email(rng):
    f, last, d = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    local = rng.choice([f"{f}.{last}", f"{f[0]}{last}", f"{f}_{last}{rng.randint(1, 99)}", f"{f}+photos", f])
    tld_dot = d.replace(".", " [dot] ")
    return rng.choice([(f"{local}@{d}", "plain"), (f"{local.capitalize()}@{d.upper()}", "plain"),
                       (f"{local} [at] {tld_dot}", "obfuscated"), (f"{local}(at){d}", "obfuscated"),
                       (f"{local} at {d.replace('.', ' dot ')}", "obfuscated")])


def _valid_phone(rng, region, kind):
    ex = phonenumbers.example_number_for_type(region, kind)
    nn = str(ex.national_number)
    for _ in range(200):
        num = phonenumbers.parse(f"+{ex.country_code}{nn[:3]}{_digits(rng, len(nn) - 3)}")
        if phonenumbers.is_valid_number(num):
            return num
    return ex


PHONE_PLANS = ["US", "GB", "DE", "FR", "IN", "AU", "NL", "IT", "JP"]   # national formats limner.data.pii knows
OTHER_PLANS = ["ES", "BR", "MX", "PL", "SE", "KR"]


def phone(rng):
    region = rng.choice(PHONE_PLANS + OTHER_PLANS)
    num = _valid_phone(rng, region, rng.choice([phonenumbers.PhoneNumberType.FIXED_LINE,
                                                phonenumbers.PhoneNumberType.MOBILE]))
    intl = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    national = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)
    r = rng.random()
    if r < 0.35:
        return intl, "international"
    if r < 0.45:
        return rng.choice([phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164),
                           "00" + intl[1:]]), "international"
    if region == "US":
        n = str(num.national_number)
        return rng.choice([national, f"{n[:3]}-{n[3:6]}-{n[6:]}", f"{n[:3]}.{n[3:6]}.{n[6:]}",
                           f"1-{n[:3]}-{n[3:6]}-{n[6:]}", f"+1 ({n[:3]}) {n[3:6]}-{n[6:]}"]), "national"
    return national, "national" if region in PHONE_PLANS else "national, other plan"


def _luhn_complete(prefix, length, rng):
    body = prefix + _digits(rng, length - len(prefix) - 1)
    doubled = [int(c) * (1 + (i % 2 == 0)) for i, c in enumerate(reversed(body))]   # the check digit goes last
    return body + str(-sum(d - 9 * (d > 9) for d in doubled) % 10)


def credit_card(rng):
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                                 ("6011", 16), ("3530", 16), ("36", 14), ("62", 16), ("4", 19)])
    n = _luhn_complete(prefix, length, rng)
    groups = {15: (4, 6, 5), 14: (4, 6, 4), 19: (4, 4, 4, 4, 3)}.get(length, (4, 4, 4, 4))
    parts, i = [], 0
    for g in groups:
        parts.append(n[i:i + g])
        i += g
    sep = rng.choice([" ", "-", ""])
    return sep.join(parts), {" ": "spaced", "-": "dashed", "": "contiguous"}[sep]


def ip_address(rng):
    r = rng.random()
    if r < 0.5:
        return f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "IPv4"
    if r < 0.6:
        return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}", "IPv4"
    addr = ipaddress.IPv6Address(rng.getrandbits(128) & ~(0xFFFFFFFF << 32 if rng.random() < 0.5 else 0))
    return rng.choice([addr.compressed, addr.exploded, f"fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}%eth0",
                       f"::ffff:{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 99)}",
                       f"2001:db8::{rng.getrandbits(16):x}"]), "IPv6"


def url_personal(rng):
    user = rng.choice([f"{rng.choice(FIRST)}.{rng.choice(LAST)}", f"{rng.choice(FIRST)}{rng.choice(LAST)}",
                       f"{rng.choice(FIRST)}_{rng.randint(1, 999)}"])
    pre = rng.choice(["https://", "https://www.", "http://", "www.", ""])
    handle = "".join(c for c in user if c.isalnum())   # host names have no dots or underscores
    site = rng.choice(["example.org", "photoclub.net", "news.example.com", "uni-bonn.de", "forum.example.io"])
    r = rng.random()
    if r < 0.45:
        return pre + rng.choice([f"instagram.com/{user}", f"twitter.com/{user}", f"x.com/{user}",
                                 f"tiktok.com/@{user}", f"linkedin.com/in/{user.replace('.', '-')}",
                                 f"facebook.com/{user}", f"facebook.com/profile.php?id=1000{_digits(rng, 11)}",
                                 f"github.com/{handle}", f"youtube.com/@{user}",
                                 f"pinterest.com/{user}/", f"reddit.com/user/{user}", f"medium.com/@{user}",
                                 f"flickr.com/photos/{user}/{_digits(rng, 10)}", f"twitch.tv/{user}",
                                 f"soundcloud.com/{user}", f"behance.net/{user}"]), "social profile"
    if r < 0.5:
        return pre + rng.choice([f"vimeo.com/{user}", f"linktr.ee/{user}", f"about.me/{user}",
                                 f"ko-fi.com/{user}"]), "link-in-bio site"
    if r < 0.55:   # chosen after the lists in limner.data.pii were written, to measure what they miss
        return pre + rng.choice([f"artstation.com/{user}", f"dev.to/{user}", f"codepen.io/{user}",
                                 f"vsco.co/{user}", f"mixcloud.com/{user}", f"{handle}.bandcamp.com",
                                 f"unsplash.com/@{user}", f"goodreads.com/user/show/{_digits(rng, 6)}"]), \
            "profile on a site not listed (held out)"
    if r < 0.75:
        return (pre or "https://") + rng.choice([f"{site}/users/{user}", f"{site}/~{user}/", f"{site}/u/{user}",
                                                 f"{site}/author/{user}/", f"{site}/members/{user}",
                                                 f"{site}/profile/{user}", f"{handle}.github.io",
                                                 f"{handle}.tumblr.com/post/{_digits(rng, 9)}"]), \
            "user path"
    if r < 0.85:
        return f"mailto:{user}@{rng.choice(DOMAINS)}", "mailto"
    mail = f"{user}@{rng.choice(DOMAINS)}"
    return "https://" + rng.choice([f"{site}/contact?email={mail.replace('@', '%40')}",
                                    f"{site}/track?order=1&email={mail}", f"{site}/callback?phone=4155552671",
                                    f"{site}/profile?user_id={_digits(rng, 6)}"]), "personal query"


STREETS = ["Baker", "Main", "Oak", "Maple", "Elm", "High", "Church", "Pennsylvania", "Sunset", "Park", "Lincoln",
           "Washington", "Victoria", "Abbey", "Mill"]
CITIES = [("Springfield", "IL", "62704"), ("Austin", "TX", "78701"), ("New York", "NY", "10001"),
          ("Portland", "OR", "97205"), ("Boston", "MA", "02108"), ("Washington", "DC", "20500")]
UK = [("London", "NW1 6XE"), ("Manchester", "M1 1AE"), ("Leeds", "LS1 4DY"), ("Bristol", "BS1 5TR")]


def street_address(rng):
    num, street = rng.randint(1, 9999), rng.choice(STREETS)
    kind = rng.choice(["Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Blvd", "Court", "Way",
                       "Place", "Terrace"])
    city, state, zip_ = rng.choice(CITIES)
    r = rng.random()
    if r < 0.3:
        unit = rng.choice(["", "", f", Apt {rng.randint(1, 40)}{rng.choice('AB')}", f" Suite {rng.randint(100, 999)}"])
        direction = rng.choice(["", "", " NW", " SE"])
        return f"{num} {street} {kind}{direction}{unit}, {city}, {state} {zip_}", "US"
    if r < 0.4:
        return f"{num} {street} {kind}", "US, street only"
    if r < 0.5:
        c, pc = rng.choice(UK)
        return rng.choice([f"{rng.randint(1, 300)}{rng.choice(['', 'B'])} {street} {kind}, {c} {pc}",
                           f"Flat {rng.randint(1, 9)}, {rng.randint(1, 300)} {street} Road, {c} {pc}"]), "UK"
    if r < 0.6:
        return (f"{rng.randint(1, 200)} {rng.choice(['rue', 'avenue', 'boulevard'])} "
                f"{rng.choice(['de la Paix', 'Victor Hugo', 'des Lilas', 'du Commerce'])}, "
                f"{rng.randint(10, 95)}{_digits(rng, 3)} {rng.choice(['Paris', 'Lyon', 'Nantes'])}"), "FR"
    if r < 0.7:
        return (f"{rng.choice(['Via', 'Calle', 'Corso', 'Avenida'])} {rng.choice(['Roma', 'Mayor', 'Garibaldi'])} "
                f"{rng.randint(1, 200)}, {_digits(rng, 5)} {rng.choice(['Roma', 'Madrid', 'Milano'])}"), "IT/ES"
    if r < 0.8:
        return (f"{rng.choice(['Haupt', 'Garten', 'Linden', 'Keizers', 'Bahnhof'])}"
                f"{rng.choice(['straße', 'strasse', 'weg', 'platz', 'gracht', 'allee'])} {rng.randint(1, 150)}"
                f"{rng.choice(['', 'a'])}, {rng.randint(10, 99)}{_digits(rng, 3)} "
                f"{rng.choice(['Berlin', 'München', 'Hamburg'])}"), "DE/NL"
    if r < 0.9:
        return rng.choice([f"PO Box {rng.randint(1, 99999)}, {city}, {state} {zip_}",
                           f"P.O. Box {rng.randint(1, 9999)}", f"Postfach {rng.randint(100, 9999)}"]), "PO box"
    return f"{rng.randint(1, 300)}{rng.choice(['', 'b'])} {street.lower()} {kind.lower()}, {city.lower()} {zip_}", \
        "lower case"


def _iban(rng):
    country, bban = rng.choice([("DE", _digits(rng, 18)), ("GB", "WEST" + _digits(rng, 14)),
                                ("NL", "ABNA" + _digits(rng, 10)), ("FR", _digits(rng, 23)), ("ES", _digits(rng, 20)),
                                ("IT", "X" + _digits(rng, 22))])
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    iban = f"{country}{check:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.7 else iban


# Aadhaar and Steuer-ID numbers are completed with limner.data.pii's own checksums; Presidio's recognizers,
# which validate both independently, cross-check them.
def _verhoeff_complete(body):
    return next(body + d for d in string.digits if pii._verhoeff(body + d))


def _steuer_id(rng):
    while True:
        d = rng.sample(string.digits, 9)
        if d[0] == "0":
            continue
        d.insert(rng.randint(1, 9), rng.choice(d))
        for c in string.digits:
            if pii._steuer_id("".join(d) + c):
                n = "".join(d) + c
                return f"{n[:2]} {n[2:5]} {n[5:8]} {n[8:]}" if rng.random() < 0.5 else n


def national_id(rng):
    r = rng.random()
    if r < 0.2:
        area = rng.choice([a for a in range(1, 900) if a != 666])
        sep = rng.choice(["-", " "])
        return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}", "US SSN"
    if r < 0.35:
        first, second = rng.choice("ABCEGHJKLMNPRSTWXYZ"), rng.choice("ABCEGHJKLMNPRSTWXYZ")
        if first + second in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}:
            first = "A"
        d = _digits(rng, 6)
        return rng.choice([f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {rng.choice('ABCD')}",
                           f"{first}{second}{d}{rng.choice('ABCD')}"]), "UK NINO"
    if r < 0.55:
        return _iban(rng), "IBAN"
    if r < 0.7:
        n = _verhoeff_complete(str(rng.randint(2, 9)) + _digits(rng, 10))
        return rng.choice([f"{n[:4]} {n[4:8]} {n[8:]}", n]), "Aadhaar"
    if r < 0.85:
        letters = "".join(rng.choices(string.ascii_uppercase, k=3))
        return f"{letters}P{rng.choice(string.ascii_uppercase)}{_digits(rng, 4)}{rng.choice(string.ascii_uppercase)}", \
            "India PAN"
    return _steuer_id(rng), "DE Steuer-ID"


PLANTERS = {"email": email, "phone": phone, "credit_card": credit_card, "ip_address": ip_address,
            "url_personal": url_personal, "street_address": street_address, "national_id": national_id}
LEADS = {"email": ["For prints email", "Contact:", "questions?", "mail me at", "Photographer:"],
         "phone": ["Call", "Tel.", "Bookings", "WhatsApp", "ph:", "text me on"],
         "credit_card": ["paid with card", "Card:", "card number", "cc"],
         "ip_address": ["uploaded from", "server", "camera at", "host"],
         "url_personal": ["follow me", "more at", "via", "credit:", "portfolio"],
         "street_address": ["Visit us at", "located at", "shop:", "delivered to", "our studio,"],
         "national_id": ["ID", "SSN / tax no.", "number", "IBAN / ID:", "ref."]}


def corpus(n: int, rng: random.Random) -> list[tuple[str, list[tuple[str, str, int, int]]]]:
    """(caption, [(kind, format, start, end)]): half benign only, half with one or two planted items."""
    out = []
    for i in range(n):
        text, spans = benign(rng), []
        if i % 2:
            for kind in rng.sample(sorted(PLANTERS), rng.choice([1, 1, 2])):
                value, fmt = PLANTERS[kind](rng)
                text += f"{rng.choice(['. ', ' - ', ' | ', ', '])}{rng.choice(LEADS[kind])} "
                spans.append((kind, fmt, len(text), len(text) + len(value)))
                text += value + rng.choice(["", ".", " today", " for details", "!", " (DM for rates)"])
        out.append((text, spans))
    return out


def presidio():
    """Presidio's pattern recognizers, and a find() over them that mimics AnalyzerEngine without NLP."""
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer, DeTaxIdRecognizer, EmailRecognizer, IbanRecognizer, InAadhaarRecognizer,
        InPanRecognizer, IpRecognizer, PhoneRecognizer, UkNinoRecognizer, UrlRecognizer, UsSsnRecognizer)
    recognizers = [(EmailRecognizer(), "email"), (PhoneRecognizer(), "phone"),
                   (CreditCardRecognizer(), "credit_card"), (IpRecognizer(), "ip_address"),
                   (UrlRecognizer(), "url_personal")] + \
        [(r(), "national_id") for r in (UsSsnRecognizer, UkNinoRecognizer, IbanRecognizer, InAadhaarRecognizer,
                                        InPanRecognizer, DeTaxIdRecognizer)]

    def find(text):
        found = [(kind, r.start, r.end) for rec, kind in recognizers
                 for r in rec.analyze(text, rec.supported_entities, None) if r.score > 0]
        return resolve(found)
    return find


def resolve(found):
    """Longest first, as limner.data.pii does, so both tools are scored on non-overlapping findings."""
    chosen = []
    for kind, s, e in sorted(found, key=lambda f: (f[1] - f[2], f[1])):
        if all(e <= cs or s >= ce for _, cs, ce in chosen):
            chosen.append((kind, s, e))
    return chosen


def score(data, results):
    by_kind = defaultdict(lambda: {"planted": 0, "found": 0, "flagged": 0, "correct": 0})
    by_format = defaultdict(lambda: [0, 0])
    leaks = benign_flagged = n_benign = 0
    for (text, spans), found in zip(data, results):
        cover = defaultdict(set)      # kind -> covered character offsets
        for kind, s, e in found:
            cover[kind].update(range(s, e))
        anything = set().union(*cover.values())
        for kind, fmt, s, e in spans:
            hit = len(cover[kind] & set(range(s, e))) >= 0.8 * (e - s)
            by_kind[kind]["planted"] += 1
            by_kind[kind]["found"] += hit
            by_format[kind, fmt][0] += 1
            by_format[kind, fmt][1] += hit
            leaks += len(anything & set(range(s, e))) < 0.8 * (e - s)
        for kind, s, e in found:
            planted = set().union(*(range(ps, pe) for k, _, ps, pe in spans if k == kind))
            by_kind[kind]["flagged"] += 1
            by_kind[kind]["correct"] += len(planted & set(range(s, e))) >= 0.5 * (e - s)
        if not spans:
            n_benign += 1
            benign_flagged += bool(found)
    return by_kind, by_format, leaks, benign_flagged / n_benign


def timed(finders, data, repeats=2):
    """Each finder's findings and µs per caption. The finders take turns caption by caption so that they
    see the same machine load, and a caption's time is the best of `repeats` runs."""
    results, times = [[] for _ in finders], [[] for _ in finders]
    for text, _ in data:
        for find, res, ts in zip(finders, results, times):
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                found = find(text)
                best = min(best, time.perf_counter() - t)
            res.append(found)
            ts.append(best * 1e6)
    return results, times


def fmt(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = corpus(args.captions, random.Random(args.seed))
    ours = Scrubber()
    t = time.perf_counter()
    theirs = presidio()
    load_s = time.perf_counter() - t
    (r_ours, r_theirs), (t_ours, t_theirs) = timed(
        [lambda text: [(f.kind, f.start, f.end) for f in ours.find(text)], theirs], data)
    s_ours, s_theirs = score(data, r_ours), score(data, r_theirs)

    def rp(stats, kind, supported=True):
        k = stats[0][kind]
        return (k["found"] / k["planted"] if supported and k["planted"] else None,
                k["correct"] / k["flagged"] if k["flagged"] else None)

    print("| kind | planted | ours recall | ours precision | Presidio recall | Presidio precision |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in KINDS[:-1]:
        (ro, po), (rt, pt) = rp(s_ours, kind), rp(s_theirs, kind, kind != "street_address")
        print(f"| {kind} | {s_ours[0][kind]['planted']} | {fmt(ro)} | {fmt(po)} | {fmt(rt)} | {fmt(pt)} |")
    tot = [{k: sum(v[k] for v in s[0].values()) for k in ("planted", "found", "flagged", "correct")}
           for s in (s_ours, s_theirs)]
    print(f"| **all** | {tot[0]['planted']} | **{fmt(tot[0]['found'] / tot[0]['planted'])}** | "
          f"**{fmt(tot[0]['correct'] / tot[0]['flagged'])}** | {fmt(tot[1]['found'] / tot[1]['planted'])} | "
          f"{fmt(tot[1]['correct'] / tot[1]['flagged'])} |")
    print(f"\nPlanted items left (any kind) under 80% covered: ours {s_ours[2]}, Presidio {s_theirs[2]} of "
          f"{tot[0]['planted']}. Benign captions with any finding: ours {100 * s_ours[3]:.2f}%, "
          f"Presidio {100 * s_theirs[3]:.2f}%.\n")
    print("| kind, format | planted | ours recall | Presidio recall |\n|---|---:|---:|---:|")
    for (kind, f), (n, hit) in sorted(s_ours[1].items()):
        theirs = "—" if kind == "street_address" else fmt(s_theirs[1][kind, f][1] / n)
        print(f"| {kind}, {f} | {n} | {fmt(hit / n)} | {theirs} |")
    benign_ = [i for i, (_, spans) in enumerate(data) if not spans]
    plain = [i for i in benign_ if not re.search(r"[\d@:/]", data[i][0])]   # what the pre-check alone rejects
    print("\n| µs per caption | all: mean | median | p99 | benign: mean | benign, no digit, @, : or /: mean |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, times in (("limner.data.pii", t_ours), ("Presidio pattern recognizers", t_theirs)):
        print(f"| {name} | {statistics.fmean(times):.1f} | {statistics.median(times):.1f} | "
              f"{statistics.quantiles(times, n=100)[98]:.1f} | {statistics.fmean(times[i] for i in benign_):.1f} | "
              f"{statistics.fmean(times[i] for i in plain):.1f} |")
    print(f"\n{len(data)} captions (seed {args.seed}): {len(benign_)} benign, {len(plain)} of them with no digit, '@', "
          f"':' or '/'. Presidio imported and set up in {load_s:.1f} s. Times: best of 2 runs per caption, the two "
          f"tools alternating; CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
