"""The prompt filter: one check that every entry point (CLI, Python pipeline, HTTP server) calls.

A prompt is normalised (Unicode NFKC, homoglyphs, transliteration, leetspeak, spaced and dotted
letters), then checked by three layers configured in a policy file (policy.yaml beside this one):

- lexical: each category's term list, on whole words (terms in other alphabets after transliteration, CJK
  terms as substrings of the original text), and `near` rules (a harm verb next to a person: "shoot the teacher");
- combinations: categories made by two signals together (a sexual word + a minor -> `minors`);
- semantic: cosine similarity, in the frozen text encoder's space, of the prompt to each category's
  description and examples minus its similarity to benign examples, so that a paraphrase with none
  of the listed words is still caught. A fast screen goes first (screen.py: a static token table
  distilled from the encoder, ~0.3 ms): it allows the prompts that score far below every threshold
  without running the encoder, and sends the rest on; it never refuses by itself. Next the encoder's
  graph with int8 weights (~3x faster) allows what scores far enough below every threshold to cover
  its error, and the fp32 encoder decides the rest. The encoder runs through ONNX Runtime
  (text/onnx_runtime.py; the same weights, checked against PyTorch at load), or in PyTorch (with no
  int8 stage) where onnxruntime is missing or the export fails.

    from limner.safety import check_prompt, enforce
    check_prompt("three red circles and a blue square")   # Verdict(allowed=True, ...)
    enforce(prompt)   # before generating: raises PromptBlocked (a ValueError) naming the category

Over 500 lines on purpose: normalisation, the three layers and the cascade share one policy and one verdict type,
and each layer is a few small functions; split, a reader would chase the policy across modules.
"""
from __future__ import annotations

import functools
import json
import re
import threading
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

from anyascii import anyascii

DEFAULT_POLICY = Path(__file__).with_name("policy.yaml")
EMBEDDING_RECIPE = 1   # bump when SemanticLayer.embed changes what it computes: cached example embeddings are then ignored


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str | None = None   # the category that blocked; None when allowed
    score: float = 0.0            # 1.0 for a listed word, else the semantic score (allowed: the highest)
    layer: str | None = None      # "lexical", "combination" or "semantic"; allowed: "screen" or "int8" when
                                  # the fast screen or the int8 encoder cleared it (score: its highest), else None
    matched: str | None = None    # the words or the example that decided it (for tuning, not users)

    def to_dict(self) -> dict:
        return asdict(self)


class PromptBlocked(ValueError):
    """A prompt refused by the content policy. The HTTP API maps it to OpenAI's error shape."""

    code = "content_policy_violation"

    def __init__(self, verdict: Verdict, description: str = ""):
        self.verdict, self.category, self.score = verdict, verdict.category, verdict.score
        self.reason = description or verdict.category
        super().__init__(
            f"prompt blocked by the content policy (category: {self.category}): it asks for "
            f"{self.reason}. No image was made. Rephrase the prompt without that content; if this "
            f"is a mistake, the policy's allow list and thresholds can be tuned (see `limner safety check`).")

    def __reduce__(self):   # picklable, for servers that run generation in worker processes
        return type(self), (self.verdict, self.reason)

    def openai_error(self) -> dict:
        """The body of OpenAI's images API error for a refused prompt (sent with HTTP 400)."""
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": "prompt",
                          "code": self.code}}


# ----------------------------------------------------------------------------- normalisation

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064"
                                   "\ufeff\u00ad\u180e\u034f\u115f\u1160\u3164"), None)
LEET = str.maketrans("0134578@$!|+", "oieastbasilt")
LEET_ONE_AS_L = str.maketrans("1", "l")
# A run of letters, digits and leet symbols; ! | + only count inside a word ("k!ll", not "wow!").
WORD = re.compile(r"[a-z0-9@$]+(?:[!|+][a-z0-9@$]+)*")
# Numbers and numbers with units are not leetspeak: "3 red circles", "1024px", "4k", "1920s", "12yo".
NUMBER = re.compile(r"\d+(?:[.,]\d+)?(?:px|k|mm|cm|m|km|kg|g|d|s|x|th|st|nd|rd|fps|in|ft|gb|mb|hz|mp|p|am|pm"
                    r"|bit|yo|yrs?)?")
# Three or more single characters with the same separator between them: "n u d e", "n.u.d.e", "n-u-d-e"
# (the same one, so that "n-u-d-e w_o_m_a_n" stays two words).
SPACED = re.compile(r"(?<![a-z0-9])[a-z0-9@$](?P<sep>[^\w\s]\s?|\s|_)(?:[a-z0-9@$](?P=sep))+[a-z0-9@$](?![a-z0-9])")
SEPARATOR = re.compile(r"[^a-z0-9@$]")
INNER_PUNCT = re.compile(r"(?<=[a-z])[.\-_*'`~^·•:/\\](?=[a-z])")
# The marks that never join two parts of a real word: deleted in the canonical reading too, so that the semantic
# layer reads "woma*n" and "ga.ng" as words (hyphens and apostrophes stay: "t-shirt", "o'clock").
INNER_MARK = re.compile(r"(?<=[a-z])[._*`~^·•](?=[a-z])")
# Spaced ASCII letters against an accented letter: "c o c a ína", "kü r t l e r i" (whoever spaces the letters
# of "cocaína" or "kürtleri" on an ASCII keyboard leaves the accented ones as they were): one word again.
SPACED_BEFORE_ACCENT = re.compile(r"(?<![a-z0-9])((?:[a-z] ){2,}[a-z]) (?=[^\W\d_a-z])")
SPACED_AFTER_ACCENT = re.compile(r"(?<=[^\W\d_a-z]) ((?:[a-z] ){2,}[a-z])(?![a-z0-9])")
REPEATS = re.compile(r"([a-z])\1{3,}")   # "nuuuuude" -> "nuuude"; term regexes accept any repeats


@functools.cache
def _homoglyphs() -> dict[int, str]:
    """Lookalike characters (Cyrillic а, Greek ο, math 𝐧 ...) -> the ASCII letter they imitate."""
    import confusable_homoglyphs

    table: dict[int, str] = {}
    data = json.loads((Path(confusable_homoglyphs.__file__).parent / "confusables.json").read_text())
    for ch, glyphs in data.items():
        if len(ch) == 1 and not ch.isascii():
            ascii_glyph = next((g["c"] for g in glyphs if len(g["c"]) == 1 and g["c"].isascii()
                                and g["c"].isalnum()), None)
            if ascii_glyph:
                table[ord(ch)] = ascii_glyph.lower()
    # lower-case Cyrillic and Greek letters the table maps to small capitals, not to ASCII
    table.update({ord(k): v for k, v in zip("мткпнвьгτκιυνηѡԝɑʏ", "mtknhbbrtkiuvnwway")})
    return table


def _fold_token(token: str) -> str:
    """Fold lookalikes in a token that mixes scripts ("nаked" with a Cyrillic а), or that is all
    lookalikes; leave real words of other scripts to transliteration ("голый" -> "golyy")."""
    table = _homoglyphs()
    foreign = [c for c in token if not c.isascii() and c.isalpha()]
    if not foreign:
        return token
    if any(c.isascii() and c.isalpha() for c in token) or all(ord(c) in table for c in foreign):
        return token.translate(table)
    return token


def _deleet(word: str, one: str) -> str:
    """Leetspeak back to letters, only in words that mix letters with digits or symbols ("n4k3d")."""
    if NUMBER.fullmatch(word) or not re.search(r"[a-z]", word) or not re.search(r"[0-9@$!|+]", word):
        return word
    return word.translate(LEET_ONE_AS_L if one == "l" else {}).translate(LEET)


def _collapse(match: re.Match, keep_article: bool) -> str:
    letters = SEPARATOR.sub("", match.group())
    if sum(c.isalpha() for c in letters) <= sum(c.isdigit() for c in letters):   # "3 x 4 m" is a size
        return match.group()
    if keep_article and letters[0] in "ai" and match.group()[1:2].isspace():
        return letters[0] + " " + letters[1:]       # "a n u d e" -> "a nude"
    return letters


def _prepared(text: str) -> str:
    """NFKC, zero-width characters removed, spaced letters beside an accented one joined, case folded."""
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).lower()
    if not text.isascii():   # before case folding, which turns ß into ss
        join = lambda m: m.group(1).replace(" ", "")
        text = SPACED_AFTER_ACCENT.sub(join, SPACED_BEFORE_ACCENT.sub(join, text))
    return text.casefold()


def _undo_tricks(text: str, alt: bool = False) -> str:
    """Spaced letters collapsed, leetspeak read as letters, marks inside words dropped, long repeats shortened."""
    t = SPACED.sub(lambda m: _collapse(m, keep_article=alt), text)
    t = WORD.sub(lambda m: _deleet(m.group(), one="l" if alt else "i"), t)
    t = (INNER_PUNCT if alt else INNER_MARK).sub("", t)
    return REPEATS.sub(r"\1\1\1", t)


def _views(text: str) -> tuple[str, ...]:
    """The canonical reading and alternatives: 1 read as l, the article before spaced letters kept
    apart, and punctuation inside words deleted ("nu.de" -> "nude"); and, where lookalike folding changed
    it, the plain transliteration (a Russian word of lookalike letters, "секс", is "seks", not "cekc")."""
    text = _prepared(text)
    folded = anyascii(re.sub(r"\S+", lambda m: _fold_token(m.group()), text)).lower()
    out = [_undo_tricks(folded, alt) for alt in (False, True)]
    plain = anyascii(text).lower()
    if plain != folded:
        out.append(plain)
    return tuple(out)


def own_script_reading(text: str) -> str:
    """What a multilingual encoder reads (`semantic.transliterate: false`): the tricks undone as in `normalise`,
    lookalikes folded only inside words that mix them with Latin letters, and every script kept ("голая", not
    "golaia": transliterated, a multilingual encoder would no longer know the word)."""
    table = _homoglyphs()
    mixed = lambda m: m.group().translate(table) if re.search(r"[a-z]", m.group()) else m.group()
    return _undo_tricks(re.sub(r"\S+", mixed, _prepared(text)))


# Han, kana and Hangul: written without spaces, so their terms are matched as substrings of the original text
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f]")


def _native(text: str) -> str:
    """The text in its own script for the CJK terms: NFKC, case folded, without zero-width characters,
    spaces or punctuation (so that "枪 杀" or "枪.杀" still reads "枪杀")."""
    text = unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).casefold()
    return re.sub(r"[\W_]+", "", text) if CJK.search(text) else ""


def normalise(text: str) -> str:
    """The canonical reading of a prompt: what the filter matches and embeds.

    >>> normalise("A n4k3d w0man, ｎｕｄｅ, n.u.d.e, nаked (Cyrillic а), 3 red circles")
    'a naked woman, nude, nude, naked (cyrillic a), 3 red circles'
    """
    return _views(text)[0]


# ----------------------------------------------------------------------------- lexical layer


def _term_atoms(term: str) -> list[str]:
    """One policy term as a list of regex atoms: words joined by optional separators, a run of k
    equal letters matching k or more ("kill" -> "killll", but "teen" never "ten"), * for any letters."""
    atoms: list[str] = []
    for word in re.split(r"[^a-z0-9*]+", term.strip().lower()):
        if word:
            if atoms:
                atoms.append(r"[\W_]*")
            for m in re.finditer(r"([a-z0-9])\1*|\*", word):
                run = m.group()
                atoms.append("[a-z]*" if run == "*" else run[0] + ("+" if len(run) == 1 else f"{{{len(run)},}}"))
    return atoms


def _trie(seqs: list[list[str]]) -> str:
    """Alternatives sharing prefixes merged into one nested regex: Python's re tries alternatives one
    by one, so a flat list of 200 terms is ~10x slower than the same terms as a trie."""
    root: dict = {}
    for seq in seqs:
        node = root
        for atom in seq:
            node = node.setdefault(atom, {})
        node[None] = {}

    def emit(node: dict) -> str:
        alts = [atom + emit(child) for atom, child in node.items() if atom is not None]
        if not alts:
            return ""
        if len(alts) == 1 and None not in node:   # atoms are self-contained, so they concatenate
            return alts[0]
        return f"(?:{'|'.join(alts)})" + ("?" if None in node else "")

    return emit(root)


def _terms_body(terms: list[str]) -> str:
    """The alternatives of a term list (not CJK) as one regex body, without the word boundaries."""
    terms = [str(t).strip() for t in terms if str(t).strip() and not CJK.search(str(t))]
    raw = [t[3:] for t in terms if t.startswith("re:")]
    # a term in another alphabet is matched in the form the prompt takes after transliteration ("голая" -> "golaia")
    words = _trie([_term_atoms(anyascii(t).lower()) for t in terms if not t.startswith("re:")])
    return "|".join(filter(None, [words, *raw]))


def compile_terms(terms: list[str]) -> re.Pattern | None:
    """A policy term list as one regex matched on whole words; terms starting "re:" are raw regexes.
    CJK terms are left out: `compile_native` matches them."""
    body = _terms_body(terms)
    return re.compile(r"(?<![a-z0-9])(?:" + body + r")(?![a-z0-9])") if body else None


def _native_body(terms: list[str]) -> str:
    terms = [str(t).strip() for t in terms if CJK.search(str(t))]
    return "|".join(t[3:] if t.startswith("re:") else re.escape(unicodedata.normalize("NFKC", t).casefold())
                    for t in terms)


def compile_native(terms: list[str]) -> re.Pattern | None:
    """The CJK terms of a list, matched as substrings of `_native(prompt)` (no word boundaries in CJK)."""
    body = _native_body(terms)
    return re.compile(body) if body else None


@dataclass(frozen=True)
class Terms:
    """A term list compiled: the transliterated terms on whole words, the CJK ones on the native text."""
    latin: re.Pattern | None
    native: re.Pattern | None

    @classmethod
    def compile(cls, terms: list[str]) -> "Terms":
        return cls(compile_terms(terms), compile_native(terms))

    def find(self, views: tuple[str, ...], native: str) -> str | None:
        for v in views:
            m = self.latin.search(v) if self.latin else None
            if m:
                return m.group()
        m = self.native.search(native) if self.native and native else None
        return m.group() if m else None


def compile_near(rule: dict, lexicons: dict[str, list[str]]) -> Terms:
    """A `near` rule as one pattern: a word of `verbs` and one of `targets` at most `within` words apart
    (only words of `fillers` between them, when the rule names a fillers lexicon), verb first, or in either
    order with `order: any` (German, Russian, Turkish and Japanese put the object first)."""
    verbs, targets = lexicons[rule["verbs"]], lexicons[rule["targets"]]
    within = int(rule.get("within", 3))
    gap_word = f"(?:{_terms_body(lexicons[rule['fillers']])})" if rule.get("fillers") else "[a-z0-9']+"
    gap = rf"(?:[\W_]+{gap_word}(?![a-z0-9])){{0,{within}}}[\W_]+"
    v, t = _terms_body(verbs), _terms_body(targets)
    pairs = [(v, t)] + ([(t, v)] if rule.get("order", "forward") == "any" else [])
    latin = "|".join(rf"(?<![a-z0-9])(?:{a})(?![a-z0-9]){gap}(?:{b})(?![a-z0-9])" for a, b in pairs) if v and t else ""
    nv, nt = _native_body(verbs), _native_body(targets)
    native_pairs = [(nv, nt)] + ([(nt, nv)] if rule.get("order", "forward") == "any" else [])
    native = "|".join(f"(?:{a}).{{0,{2 * within}}}(?:{b})" for a, b in native_pairs) if nv and nt else ""
    return Terms(re.compile(latin) if latin else None, re.compile(native) if native else None)


# ----------------------------------------------------------------------------- policy


def _merge(base: dict, over: dict) -> dict:
    """A user policy file over the default: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_policy(path: str | Path | None = None) -> dict:
    import yaml

    # libyaml's safe loader where PyYAML was built with it: the same data, ~15x faster than pure Python
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    policy = yaml.load(DEFAULT_POLICY.read_text(), Loader=loader)
    if path is not None and Path(path).resolve() != DEFAULT_POLICY.resolve():
        if not Path(path).is_file():
            raise FileNotFoundError(f"policy file {path} not found")
        policy = _merge(policy, yaml.load(Path(path).read_text(), Loader=loader) or {})
    unknown = set(policy["enabled"]) - set(policy["categories"])
    if unknown:
        raise ValueError(f"policy {path}: enabled names unknown categories {sorted(unknown)}")
    return policy


# ----------------------------------------------------------------------------- semantic layer


class SemanticLayer:
    """Mean-pooled, L2-normalised sentence embeddings from limner's frozen text encoder, compared
    with the policy's examples (embedded once per policy and encoder, and cached: `example_embeddings`)."""

    def __init__(self, policy: dict, cascade: bool = True):
        import torch

        from ..text.encoder import TextEncoder
        from .screen import Screen, load_table

        cfg = policy["semantic"]
        self.encoder = TextEncoder(cfg.get("encoder", "minilm"), max_length=cfg.get("max_tokens", 64))
        # the same encoder through ONNX Runtime (text/onnx_runtime.py: ~2x faster on one core), else PyTorch
        self.runtime = cfg.get("runtime", "onnx")
        if self.runtime not in ("onnx", "torch"):
            raise ValueError(f"policy: semantic.runtime must be 'onnx' or 'torch', not {self.runtime!r}")
        self.onnx = None
        self.threads = cfg.get("onnx_threads", 1)
        if self.runtime == "onnx":
            from ..text.onnx_runtime import load_onnx

            self.onnx = load_onnx(self.encoder.tokenizer, self.encoder.model, threads=self.threads)
            if self.onnx is None:
                self.runtime = "torch"
        # the same graph with int8 weights between the screen and the encoder (`int8`, loaded when first
        # needed): ~3x faster, scores within ~0.05 of the fp32 ones; it allows what scores more than its
        # band below every threshold
        int8_cfg = cfg.get("int8") or {}
        self.int8_band = float(int8_cfg.get("band", 0.05))
        self.use_int8 = cascade and int8_cfg.get("enabled", True)
        self.min_similarity = cfg.get("min_similarity", 0.0)
        self.top_k = cfg.get("top_k", 1)
        self.categories = [c for c in policy["enabled"] if policy["categories"][c].get("examples")]
        specs = [policy["categories"][c] for c in self.categories]
        self.examples = [[spec["description"], *spec["examples"]] for spec in specs]   # per category
        benign = [*policy.get("benign_examples", []), *policy.get("allow", [])]
        *self.example_emb, self.benign_emb = self.example_embeddings([*self.examples, benign])
        self.thresholds = torch.tensor([spec["threshold"] for spec in specs])
        self.screen: Screen | None = None   # the fast screen in front of the encoder (screen.py)
        screen_cfg = cfg.get("screen") or {}
        if cascade and screen_cfg.get("enabled", True) and self.categories:
            table = load_table(self.encoder.tokenizer, self.encoder.model)
            limits = (self.thresholds - screen_cfg.get("band", 0.12)).tolist()
            self.screen = Screen(table, self.encoder.tokenizer, [e.numpy() for e in self.example_emb],
                                 self.benign_emb.numpy(), limits, self.top_k, self.encoder.max_length,
                                 fit_texts=[t for texts in self.examples for t in texts] + benign)

    @functools.cached_property
    def int8(self):
        """The int8 graph (text/onnx_runtime.load_int8), or None: no ONNX runtime, turned off, or failed.
        Loaded (and quantised, once per graph) at first use: a prompt the screen clears never needs it."""
        if not self.use_int8 or self.onnx is None:
            return None
        from ..text.onnx_runtime import load_int8

        return load_int8(self.onnx, threads=self.threads)

    def example_embeddings(self, groups: list[list[str]]) -> list:
        """`embed` of each group of texts, cached under limner.cache_root()/prompt_filter/, keyed by the texts,
        the token limit and what computes them (the checked ONNX graph's fingerprint, or the PyTorch
        encoder's identity and torch version): embedding the policy's ~300 texts is ~1.5 s of every start."""
        import numpy as np
        import torch

        from ..common.cache import cache_root
        from ..common.files import atomic_path, digest
        from ..text.encoder import identity

        if self.onnx is not None:
            computed_by = ("onnx", self.onnx.fingerprint)
        else:
            computed_by = ("torch", identity(self.encoder.tokenizer, self.encoder.model), torch.__version__)
        key = digest(EMBEDDING_RECIPE, *computed_by, self.encoder.max_length, json.dumps(groups), size=24)
        path = cache_root() / "prompt_filter" / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                return [torch.from_numpy(z[str(i)]) for i in range(len(groups))]
        except (OSError, ValueError, KeyError):   # not cached yet (or a damaged file): computed now
            pass
        out = [self.embed(texts) for texts in groups]
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **{str(i): e.numpy() for i, e in enumerate(out)})
        except OSError:   # a read-only cache: computed again next time
            pass
        return out

    def embed(self, texts: list[str], runner=None):
        """Unit sentence embeddings, through `runner` (an ONNX graph: the int8 one) if given."""
        import torch

        runner = runner or self.onnx
        with torch.inference_mode():
            batch = self.encoder.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                           max_length=self.encoder.max_length)
            if runner is not None:
                states = torch.from_numpy(runner(batch["input_ids"].numpy(), batch["attention_mask"].numpy()))
            else:
                states = self.encoder.model(input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)

    def _top_mean(self, sim):
        """Mean of each row's top_k similarities: one close example alone is weak evidence."""
        return sim.topk(min(self.top_k, sim.shape[1]), dim=1).values.mean(1)

    def _embed_sentences(self, texts: list[str], batch_size: int, runner=None):
        """Long prompts are split into sentences, so that one bad sentence in a long description is
        not averaged away; returns the embeddings and the text each sentence came from."""
        import torch

        from .screen import sentences

        chunks, owner = [], []
        for i, text in enumerate(texts):
            parts = sentences(text)
            chunks += parts
            owner += [i] * len(parts)
        order = sorted(range(len(chunks)), key=lambda j: len(chunks[j]))  # similar lengths: less padding
        emb = torch.empty(len(chunks), self.benign_emb.shape[1])
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            emb[idx] = self.embed([chunks[j] for j in idx], runner)
        return emb, torch.tensor(owner)

    def scores(self, texts: list[str], batch_size: int = 64, runner=None) -> list[tuple]:
        """Per text, for the K categories: (scores (K,), best similarities (K,), closest examples).
        score = mean similarity to the category's top_k examples - the same to the benign examples,
        taken on the text's most suspicious sentence. `runner`: see `embed` (the examples stay fp32)."""
        import torch

        emb, owner = self._embed_sentences(texts, batch_size, runner)
        sims = [emb @ e.T for e in self.example_emb]                                # K x (sentences, n_k)
        margin = torch.stack([self._top_mean(s) for s in sims], 1) - self._top_mean(emb @ self.benign_emb.T)[:, None]
        best = torch.stack([s.max(1).values for s in sims], 1)
        closest = torch.stack([s.argmax(1) for s in sims], 1)
        out = []
        for i in range(len(texts)):
            rows = (owner == i).nonzero().squeeze(1)
            r = rows[margin[rows].max(1).values.argmax()]
            out.append((margin[r], best[r], [ex[int(j)] for ex, j in zip(self.examples, closest[r])]))
        return out


# ----------------------------------------------------------------------------- the filter


class PromptFilter:
    """`semantic=False`: the word lists and combinations only. `cascade=False`: no fast screen and no int8
    stage, every prompt the lists let pass runs through the encoder (the reference the cascade is measured
    against)."""

    def __init__(self, policy: dict, semantic: bool = True, cascade: bool = True):
        self.policy = policy
        self.enabled = list(policy["enabled"])
        cats = policy["categories"]
        self.descriptions = {c: cats[c].get("description", c) for c in cats}
        # every category's terms are matched (a disabled one can still feed a combination)
        self.terms = {c: Terms.compile(cats[c].get("terms", [])) for c in cats}
        lexicons = policy.get("lexicons", {})
        self.lexicons = {k: Terms.compile(v) for k, v in lexicons.items()}
        # requests to harm a person ("shoot the teacher"): a verb near a target, per category
        near = policy.get("near") or {}
        unknown = {name for rules in near.values() for rule in rules
                   for name in (rule.get("verbs"), rule.get("targets"), rule.get("fillers"), rule.get("unless"))
                   if name and name not in lexicons}
        if unknown or any(not (rule.get("verbs") and rule.get("targets")) for rules in near.values() for rule in rules):
            raise ValueError(f"policy: each `near` rule needs `verbs` and `targets`, naming lexicons defined under "
                             f"`lexicons`; unknown: {sorted(unknown)}")
        self.near = {c: [(compile_near(rule, lexicons), rule.get("unless")) for rule in rules] for c, rules in near.items()}
        self.combinations = {c: rule for c, rule in policy.get("combinations", {}).items() if c in self.enabled}
        self.allow = compile_terms(policy.get("allow", []))
        self.use_semantic = semantic and policy.get("semantic", {}).get("enabled", True)
        # MiniLM (the default) knows English only: it reads the transliterated prompt. A multilingual encoder
        # (`semantic.encoder: /path/to/paraphrase-multilingual-MiniLM-L12-v2`) reads every script as written.
        self.transliterate = bool(policy.get("semantic", {}).get("transliterate", True))
        self.use_cascade = cascade
        self._semantic: SemanticLayer | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, Verdict] = {}

    @classmethod
    def from_policy(cls, path: str | Path | None = None, semantic: bool = True, cascade: bool = True) -> "PromptFilter":
        return cls(load_policy(path), semantic=semantic, cascade=cascade)

    @property
    def semantic(self) -> SemanticLayer:
        with self._lock:   # loaded on first use: lexical-only callers never pay for the encoder
            if self._semantic is None:
                self._semantic = SemanticLayer(self.policy, cascade=self.use_cascade)
        return self._semantic

    # -- layers

    def _strip_allowed(self, text: str) -> str:
        return self.allow.sub(" ", text) if self.allow else text

    def _lexical(self, views: tuple[str, ...], semantic: dict[str, float] | None = None, native: str = "") -> Verdict | None:
        """Term lists, `near` rules, then combinations. `semantic` maps the categories the semantic layer fired
        on to their scores: they count as signals in combinations (a paraphrased sexual request naming a child).
        `native`: the prompt's CJK reading (`_native`), for the CJK terms."""
        semantic = semantic or {}
        views = tuple(dict.fromkeys(self._strip_allowed(v) for v in views))   # usually one
        hits = {c: terms.find(views, native) for c, terms in self.terms.items()}
        words = {k: terms.find(views, native) for k, terms in self.lexicons.items()}
        for c, rules in self.near.items():
            hits[c] = hits.get(c) or next((m for rule, unless in rules if not (unless and words[unless])
                                           for m in [rule.find(views, native)] if m), None)

        def signal(name):
            return hits.get(name) or words.get(name) or (f"semantic:{name}" if name in semantic else None)

        for c in self.enabled:
            rule = self.combinations.get(c)
            found = [next(filter(None, map(signal, group)), None) for group in rule] if rule else [None]
            if all(found):
                used = [semantic[f[len("semantic:"):]] for f in found if f.startswith("semantic:")]
                return Verdict(False, c, max(used) if used else 1.0, "semantic" if used else "combination",
                               " + ".join(found))
            if hits[c]:
                return Verdict(False, c, 1.0, "lexical", hits[c])
        return None

    def _decide(self, views: tuple[str, ...], scores: tuple, native: str = "") -> Verdict:
        margin, best, closest = scores
        layer = self.semantic
        fired = {c: round(float(margin[k]), 4) for k, c in enumerate(layer.categories)
                 if margin[k] >= layer.thresholds[k] and best[k] >= layer.min_similarity}
        if not fired:
            return Verdict(True, None, round(float(margin.max()), 4))
        combination = self._lexical(views, fired, native)
        if combination is not None:
            return combination
        # the category it is surest of (furthest above its threshold), not the policy order: similarity
        # to one category's examples spills over to its neighbours ("teenager" -> minors)
        k = max((layer.categories.index(c) for c in fired), key=lambda k: margin[k] - layer.thresholds[k])
        return Verdict(False, layer.categories[k], fired[layer.categories[k]], "semantic", closest[k])

    # -- public API

    def check(self, prompt: str) -> Verdict:
        return self.check_many([prompt])[0]

    def check_many(self, prompts: list[str]) -> list[Verdict]:
        """Verdicts for many prompts. Those the lists let pass go to the semantic layer: its fast screen
        clears the ones far below every threshold, the encoder runs batched on the rest."""
        views = [_views(p) for p in prompts]
        natives = [_native(p) for p in prompts]
        verdicts: list[Verdict | None] = [self._lexical(v, native=n) for v, n in zip(views, natives)]
        if not self.use_semantic:
            return [v or Verdict(True) for v in verdicts]
        # what the encoder reads, also the memo's key: the canonical (transliterated) reading for an English
        # encoder, the prompt in its own script for a multilingual one (`semantic.transliterate: false`)
        keys = [v[0] for v in views] if self.transliterate else [own_script_reading(p) for p in prompts]
        todo = [i for i, v in enumerate(verdicts) if v is None and keys[i] not in self._cache]
        if todo:
            layer = self.semantic
            texts = [self._strip_allowed(keys[i]) for i in todo]
            cleared = layer.screen.clears(texts) if layer.screen is not None else [None] * len(todo)
            if len(self._cache) > 10_000:   # a bounded memo: servers see the same prompts again
                self._cache.clear()
            for i, score in zip(todo, cleared):
                if score is not None:
                    self._cache[keys[i]] = Verdict(True, None, round(score, 4), "screen")
            rest = [j for j, score in enumerate(cleared) if score is None]
            if rest and layer.int8 is not None:   # the int8 encoder clears most of what the screen left
                kept = []
                for j, (margin, _, _) in zip(rest, layer.scores([texts[j] for j in rest], runner=layer.int8)):
                    if bool((margin < layer.thresholds - layer.int8_band).all()):
                        self._cache[keys[todo[j]]] = Verdict(True, None, round(float(margin.max()), 4), "int8")
                    else:
                        kept.append(j)
                rest = kept
            for j, s in zip(rest, layer.scores([texts[j] for j in rest]) if rest else []):
                self._cache[keys[todo[j]]] = self._decide(views[todo[j]], s, natives[todo[j]])
        return [v or self._cache[keys[i]] for i, v in enumerate(verdicts)]

    def clear_cache(self) -> None:
        self._cache.clear()

    def enforce(self, prompt: str) -> Verdict:
        """The verdict if allowed; else raise PromptBlocked naming the category."""
        verdict = self.check(prompt)
        if not verdict.allowed:
            raise PromptBlocked(verdict, self.descriptions.get(verdict.category, ""))
        return verdict


# ----------------------------------------------------------------------------- the one check

_filters: dict[str, PromptFilter] = {}
_filters_lock = threading.Lock()


def default_filter(policy: str | Path | None = None) -> PromptFilter:
    """One cached filter per policy file, shared by every caller in the process."""
    key = str(Path(policy).resolve()) if policy else ""
    with _filters_lock:
        if key not in _filters:
            _filters[key] = PromptFilter.from_policy(policy)
        return _filters[key]


def check_prompt(prompt: str, policy: str | Path | None = None) -> Verdict:
    return default_filter(policy).check(prompt)


def enforce(prompt: str, policy: str | Path | None = None) -> Verdict:
    """The check every entry point calls before generating: raises PromptBlocked if refused."""
    return default_filter(policy).enforce(prompt)
