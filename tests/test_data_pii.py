"""PII scrubbing of captions: every kind in realistic sentences, checksum and numbering validation, benign
captions left alone, overlap resolution, and names through a real (tiny, locally trained) NER model."""
import pytest
import torch

from limner.data import pii
from limner.data.pii import KINDS, Finding, PIIConfig, Scrubber


@pytest.fixture(scope="module")
def scrubber():
    return Scrubber()


FOUND = [
    # email
    ("Contact the photographer at jane.doe@example.com for prints", "email", "jane.doe@example.com"),
    ("Press enquiries: info+press@studio-lumen.co.uk.", "email", "info+press@studio-lumen.co.uk"),
    ("write to jane [at] example [dot] org for the full set", "email", "jane [at] example [dot] org"),
    ("questions? m.rossi(at)unimi.it", "email", "m.rossi(at)unimi.it"),
    ("reach bob at gmail dot com anytime", "email", "bob at gmail dot com"),
    # phone
    ("Call us on +44 20 7946 0958 to book", "phone", "+44 20 7946 0958"),
    ("Bookings: (415) 555-2671, Mon-Fri", "phone", "(415) 555-2671"),
    ("ring 020 7946 0958 24 hours a day", "phone", "020 7946 0958"),
    ("Tel. +49 30 1234567 / 030 12345678", "phone", "+49 30 1234567"),
    ("Tel. +49 30 1234567 / 030 12345678", "phone", "030 12345678"),
    ("appelez le 01 42 68 53 00", "phone", "01 42 68 53 00"),
    ("from abroad dial 0044 20 7946 0958", "phone", "0044 20 7946 0958"),
    ("whatsapp 98765 43210 for orders", "phone", "98765 43210"),
    ("toll free 1-800-555-0199.", "phone", "1-800-555-0199"),
    ("text me on 4155552671", "phone", "4155552671"),   # unformatted: only after a word like "call"
    ("+44 (0)20 7946 0958 reception", "phone", "+44 (0)20 7946 0958"),
    # credit card
    ("paid with 4111 1111 1111 1111 exp 12/26", "credit_card", "4111 1111 1111 1111"),
    ("card no. 5500-0000-0000-0004", "credit_card", "5500-0000-0000-0004"),
    ("amex 378282246310005 on file", "credit_card", "378282246310005"),
    # IP addresses
    ("uploaded from 192.168.1.20 at noon", "ip_address", "192.168.1.20"),
    ("DNS 8.8.8.8.", "ip_address", "8.8.8.8"),
    ("client 2001:db8::8a2e:370:7334 connected", "ip_address", "2001:db8::8a2e:370:7334"),
    ("link-local fe80::1ff:fe23:4567:890a%eth0", "ip_address", "fe80::1ff:fe23:4567:890a%eth0"),
    # URLs with a person in them
    ("more of my work at instagram.com/jane.doe", "url_personal", "instagram.com/jane.doe"),
    ("(https://www.facebook.com/profile.php?id=100004123456789)", "url_personal",
     "https://www.facebook.com/profile.php?id=100004123456789"),
    ("portfolio https://example.org/users/jsmith/photos", "url_personal", "https://example.org/users/jsmith/photos"),
    ("see http://www.cs.uni.edu/~jdoe/ for slides", "url_personal", "http://www.cs.uni.edu/~jdoe/"),
    ("click mailto:jane@example.com", "url_personal", "mailto:jane@example.com"),
    ("https://shop.example.com/track?email=jane%40gmail.com", "url_personal",
     "https://shop.example.com/track?email=jane%40gmail.com"),
    ("hire me: https://www.linkedin.com/in/jane-doe-123", "url_personal", "https://www.linkedin.com/in/jane-doe-123"),
    ("via https://www.youtube.com/@janedoe!", "url_personal", "https://www.youtube.com/@janedoe"),
    ("at https://example.com/order?phone=4155552671", "url_personal", "https://example.com/order?phone=4155552671"),
    # street addresses
    ("Visit us at 221B Baker Street, London NW1 6XE today", "street_address", "221B Baker Street, London NW1 6XE"),
    ("The White House, 1600 Pennsylvania Ave NW, Washington, DC 20500.", "street_address",
     "1600 Pennsylvania Ave NW, Washington, DC 20500"),
    ("send entries to PO Box 1234, Springfield, IL 62704", "street_address", "PO Box 1234, Springfield, IL 62704"),
    ("our studio, 350 5th Avenue, Suite 3300, New York, NY 10118", "street_address",
     "350 5th Avenue, Suite 3300, New York, NY 10118"),
    ("Laden in der Hauptstraße 5, 10115 Berlin", "street_address", "Hauptstraße 5, 10115 Berlin"),
    ("galerie au 12 rue de la Paix, 75002 Paris", "street_address", "12 rue de la Paix, 75002 Paris"),
    ("negozio in Via Roma 12, 00184 Roma", "street_address", "Via Roma 12, 00184 Roma"),
    ("canal house at Keizersgracht 123, 1015 CJ Amsterdam", "street_address", "Keizersgracht 123, 1015 CJ Amsterdam"),
    ("lived at 221b baker street", "street_address", "221b baker street"),
    ("Flat 2, 15 Abbey Road, London NW8 9AY", "street_address", "Flat 2, 15 Abbey Road, London NW8 9AY"),
    ("shipped to 12 main st, springfield 62704", "street_address", "12 main st, springfield 62704"),
    # national IDs
    ("SSN 123-45-6789 on the form", "national_id", "123-45-6789"),
    ("NI number AB 12 34 56 C", "national_id", "AB 12 34 56 C"),
    ("IBAN DE89 3704 0044 0532 0130 00 for donations", "national_id", "DE89 3704 0044 0532 0130 00"),
    ("pay to GB82 WEST 1234 5698 7654 32 FOR the print", "national_id", "GB82 WEST 1234 5698 7654 32"),
    ("Aadhaar 5533 7406 8124", "national_id", "5533 7406 8124"),
    ("PAN ABCPE1234F", "national_id", "ABCPE1234F"),
    ("Steuer-ID 65 929 970 489", "national_id", "65 929 970 489"),
]


@pytest.mark.parametrize("text,kind,expected", FOUND)
def test_each_kind_found_and_replaced(scrubber, text, kind, expected):
    out, findings = scrubber.scrub(text)
    assert (kind, expected) in [(f.kind, f.text) for f in findings]
    assert expected not in out and f"<{kind.upper()}>" in out
    for f in findings:
        assert text[f.start:f.end] == f.text


@pytest.mark.parametrize("text", [
    "paid with 4111 1111 1111 1112",          # fails Luhn
    "ref 1234 5678 9012 3456",                 # no network starts with 1
    "SSN 000-12-3456", "SSN 666-12-3456", "SSN 912-34-5678", "SSN 123-00-4567", "SSN 123-45-0000",
    "SSN 078-05-1120",                         # the Woolworth wallet card
    "NI QQ 12 34 56 C", "NI GB 12 34 56 A",     # prefixes never issued
    "IBAN DE89 3704 0044 0532 0130 01",        # mod-97 fails
    "Aadhaar 5533 7406 8125",                  # Verhoeff fails
    "Aadhaar 1533 7406 8124",                  # cannot start with 0 or 1
    "Steuer-ID 65 929 970 488",                # check digit
    "Steuer-ID 12 345 678 903",                # no repeated digit
    "call 123-456-7890",                       # no NANP area code starts with 1
    "host 256.1.1.1 and 10.0.0",               # not IPv4
    "C++ std::vector and 12:30:45 and MAC 00:1A:2B:3C:4D:5E",
    "sprite logo@2x.png",
    "photo 9968593273 and flickr photo 04009252639",   # unformatted digit runs with no word like "call"
    "SKU 4006381333931",                       # an EAN-13 (and Luhn-valid): 13-digit Visa is not claimed
    "https://www.pinterest.com/pin/719267519937/",   # a Verhoeff-valid 12 digits, but a URL path
])
def test_invalid_lookalikes_not_flagged(scrubber, text):
    assert scrubber.find(text) == []


BENIGN = [
    "three red circles and a blue square",
    "a photo taken in 2019", "4 apples and 12 pears", "iPhone 15 Pro Max 256GB", "model 3000x2000 px",
    "Python 3.11.4 release notes; Chrome 120.0.6099.109; node v18.17.1",
    "Price: $1,299.99 (was $1,599.00), save 20%; SKU 4006381333931",
    "Canon EOS 5D Mark IV, 24-105mm f/4L, 1/250s, ISO 400, shot 2019-05-12",
    "Stock photo ID 123456789, 4000 x 3000 pixels, 12.5 MB",
    "Screen resolution 1920x1080, 2560 x 1440 @ 144Hz, Windows 10 version 22H2",
    "Kids Playing In The Park, Summer 2021, 5 Stars",
    "ISBN 978-3-16-148410-0, 352 pages, 2nd edition 2015",
    "Score 3-1 after 90 minutes; 12 345 fans; population 8 336 817",
    "from 1990-2005 in 12.05.2019 at 14:30:00; timestamp 20190512143000",
    "a 2 lane road, 3 story court, 6 place settings, 4 course meal",
    "Photo via Instagram 2 weeks ago, posted via Royal Mail 2 days",
    "Bring 2 apples, Spring 2019 collection, Route 66 sign, Highway 61, Studio 54",
    "Room 101, Floor 3, Gate 22B, Flight BA 2490, Order #112-4567890-1234567",
    "22 05 2019, 05.12.2019, 12/05/2019, opening hours 10:00-18:00",
    "www.example.com/images/cat.jpg and https://en.wikipedia.org/wiki/Cat",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ https://www.reddit.com/r/aww/comments/abc",
    "https://www.instagram.com/p/CxYz123/ https://www.pinterest.com/pin/123456/ instagram.com",
    "sunset photo at flickr.com, shot at 5 a.m.",
    "https://www.instagram.com/accounts/login/ https://www.linkedin.com/company/acme https://vimeo.com/123456",
    "https://www.google.com/maps/place/Eiffel+Tower/@48.8583701,2.2944813,17z cdn.example.com/img/logo@2x.png",
]


@pytest.mark.parametrize("text", BENIGN)
def test_benign_captions_not_flagged(scrubber, text):
    assert scrubber.scrub(text) == (text, [])


def test_verhoeff_reference_vector():
    assert pii._verhoeff("2363") and not pii._verhoeff("2364")


def test_clean_captions_skip_every_detector(monkeypatch):
    """The cheap pre-check: a caption with no digit, '@', ':', '/' or obfuscation never reaches a detector."""
    calls = []
    monkeypatch.setattr(pii, "_DETECTORS", {k: (lambda t, k=k: calls.append(k) or iter(())) for k in pii._DETECTORS})
    s = Scrubber()
    s.find("golden retriever puppy playing in the grass at sunset")
    assert calls == []
    s.find("golden retriever, 2 years old")
    assert sorted(calls) == sorted(pii._DETECTORS)


def test_overlaps_resolved_longest_first(scrubber):
    # the email inside a mailto: or a query string is part of the URL finding, not a second one
    assert [(f.kind, f.text) for f in scrubber.find("mailto:jane@example.com")] == \
        [("url_personal", "mailto:jane@example.com")]
    # an IBAN's digit groups would also pass as other numbers; the IBAN is the one finding
    assert [f.kind for f in scrubber.find("DE89 3704 0044 0532 0130 00")] == ["national_id"]
    text = ("Jane (jane@example.com, +1 415-555-2671) lives at 742 Evergreen Terrace, Springfield; "
            "card 4111-1111-1111-1111, IP 203.0.113.7, instagram.com/jane.doe")
    findings = scrubber.find(text)
    assert [f.kind for f in findings] == ["email", "phone", "street_address", "credit_card", "ip_address",
                                          "url_personal"]
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))
    out, _ = scrubber.scrub(text)
    assert out == ("Jane (<EMAIL>, <PHONE>) lives at <STREET_ADDRESS>; card <CREDIT_CARD>, IP <IP_ADDRESS>, "
                   "<URL_PERSONAL>")


def test_config_kinds_and_replacement():
    text = "mail jane@example.com or call (415) 555-2671"
    only_email = Scrubber(PIIConfig(kinds=("email",), replacement="[{kind}]"))
    assert only_email.scrub(text)[0] == "mail [EMAIL] or call (415) 555-2671"
    assert Scrubber(PIIConfig(replacement="")).scrub(text)[0] == "mail  or call "
    assert "person" not in PIIConfig().kinds and set(PIIConfig().kinds) < set(KINDS)
    with pytest.raises(ValueError, match="unknown PII kinds"):
        Scrubber(PIIConfig(kinds=("email", "face")))
    with pytest.raises(ValueError, match="ner_model"):
        Scrubber(PIIConfig(kinds=KINDS))


def test_hub_name_needs_a_local_path():
    with pytest.raises(ValueError, match="local folder.*never downloads"):
        Scrubber(PIIConfig(ner_model="dslim/bert-base-NER"))


# Bracketed words are names; trained for a few dozen steps, the tiny model tags them (and only them).
NER_SENTENCES = ["photo of [alice smith] at the beach", "[bob jones] walking a dog in the park",
                 "a red car near the house", "portrait of [carol] with a cat", "[alice] and [bob] at a party",
                 "the beach at sunset with a dog", "[carol smith] in the park", "a cat near a red house"]


@pytest.fixture(scope="module")
def tiny_ner(tmp_path_factory):
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # a model this small runs many times slower on two threads of a busy CPU
    torch.manual_seed(0)
    data = []
    for s in NER_SENTENCES:
        words, labels, inside = [], [], False
        for w in s.split():
            begins, ends = w.startswith("["), w.endswith("]")
            words.append(w.strip("[]"))
            labels.append(1 if begins else 2 if inside else 0)
            inside = (inside or begins) and not ends
        data.append((words, labels))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws, _ in data for w in ws})
    labels = ["O", "B-PER", "I-PER"]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    model = BertForTokenClassification(BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)}))
    enc = tok([ws for ws, _ in data], is_split_into_words=True, padding=True, return_tensors="pt")
    targets = torch.full(enc["input_ids"].shape, -100)
    for i, (_, ls) in enumerate(data):
        for j, w in enumerate(enc.word_ids(i)):
            if w is not None:
                targets[i, j] = ls[w]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = model(**enc, labels=targets).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("tiny-ner")
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    yield str(path)
    torch.set_num_threads(threads)


def test_names_come_from_the_local_ner_model(tiny_ner):
    s = Scrubber(PIIConfig(ner_model=tiny_ner))
    text = "Portrait of Bob Jones at the beach, mail bob@example.com"
    out, findings = s.scrub(text)
    assert findings == [Finding("person", 12, 21, "Bob Jones"), Finding("email", 41, 56, "bob@example.com")]
    assert out == "Portrait of <PERSON> at the beach, mail <EMAIL>"
    assert s.find("a red car near the house") == []
    # the findings are what the pipeline says, spans and all
    assert [(e["start"], e["end"]) for e in s._ner("alice and carol in the park")] == \
        [(f.start, f.end) for f in s.find("alice and carol in the park")] == [(0, 5), (10, 15)]


def test_a_name_past_the_model_window_is_still_found(tiny_ner):
    # the tiny model reads 32 positions; a caption of ~60 tokens is read in overlapping windows, not cut
    s = Scrubber(PIIConfig(ner_model=tiny_ner))
    text = " ".join(["a red car near the house"] * 10) + " with bob jones"
    out, findings = s.scrub(text)
    assert [(f.kind, f.text) for f in findings] == [("person", "bob jones")]
    assert out.endswith("with <PERSON>") and "bob" not in out


def test_the_pipeline_config_names_the_ner_model(tiny_ner):
    from limner.data.pipeline import PipelineConfig, _Captions

    cfg = PipelineConfig.from_dict({"captions": {"pii": {"ner_model": tiny_ner}}})
    assert cfg.captions.pii == PIIConfig(ner_model=tiny_ner)
    [(text, kinds, unsafe)] = _Captions(cfg.captions).clean(["carol smith in the park, mail c@example.org"])
    assert (text, kinds, unsafe) == ("<PERSON> in the park, mail <EMAIL>", ["email", "person"], None)
    # off by default, and scrubbing as a whole can be turned off
    assert PipelineConfig().captions.pii.ner_model is None
    assert _Captions(PipelineConfig.from_dict({"captions": {"pii": None}}).captions).clean(["mail c@example.org"]) == \
        [("mail c@example.org", [], None)]
    with pytest.raises(ValueError, match=r"captions: pii: unknown keys \['ner'\]"):
        PipelineConfig.from_dict({"captions": {"pii": {"ner": tiny_ner}}})
