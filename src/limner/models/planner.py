"""The layout planner: reads a prompt's frozen text states and proposes its objects, each a label and a box,
one token at a time (as LayoutGPT and LLM-grounded diffusion plan layouts with an LLM, but a small decoder
learned from captioned images with boxes). The grounded denoiser then draws each object in its box.

A layout is a sequence of objects, five tokens each: label, width, height, x-centre, y-centre (coordinates are
fractions of the canvas side, in `bins` bins). Objects come in a canonical order (in training: the order the
caption names them, then by label, x, y)
and the end token in a label slot closes the layout. Size comes before place so that decoding can keep every
box inside the canvas and apart from the boxes already placed; labels are decoded greedily (a count is a
count), places are sampled from each seed's own generator (so seeds give different arrangements).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

SLOTS = ("label", "w", "h", "x", "y")
Layout = list[tuple[str, tuple[float, float, float, float]]]  # (label, (x0, y0, x1, y1)) per object


@dataclass
class PlannerConfig:
    labels: list[str] = field(default_factory=list)  # the object vocabulary, e.g. "small red circle"
    text_dim: int = 384
    width: int = 192
    depth: int = 4
    heads: int = 4
    text_depth: int = 1   # self-attention layers over the text states before the decoder reads them
    bins: int = 64
    max_objects: int = 8
    gap: float = 0.02     # decoding keeps boxes this far apart (Shapes World's spec) and inside the canvas
    # ... and this far apart where the bins that allows keep `apart_mass` of the probability of those `gap` allows
    # (0: no more than `gap`). Boxes drawn close can touch and read as one: on 300 fresh validation scenes of 3-8
    # objects, drawn right 0.607 -> 0.637 at apart_mass 0.5 (10 scenes better, 1 worse; benchmarks/plan_drawing.py)
    # and 0.660 at 0.3, plans as right. A flat 0.05 gap loses plans (a crowded cell pushes boxes out of it).
    apart: float = 0.05
    apart_mass: float = 0.3
    object_query: bool = True  # a box's positions also carry its object's label (planners saved before: False)
    text_positions: int = 0    # learned position embeddings for this many text tokens (0: none, as saved before)

    def to_dict(self) -> dict:
        return asdict(self)


class Planner(nn.Module):
    def __init__(self, cfg: PlannerConfig):
        super().__init__()
        if not cfg.labels:
            raise ValueError("a planner needs its label vocabulary (PlannerConfig.labels)")
        self.cfg = cfg
        d, n_labels = cfg.width, len(cfg.labels)
        self.eos = n_labels                       # the end token, in label slots
        self.text_in = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        layer = lambda: dict(d_model=d, nhead=cfg.heads, dim_feedforward=4 * d, dropout=0.0, batch_first=True,
                             norm_first=True, activation="gelu")
        self.text_layers = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer()), cfg.text_depth,
                                                 enable_nested_tensor=False)
        self.bos = nn.Parameter(torch.zeros(d))
        self.label_emb = nn.Embedding(n_labels + 1, d)
        self.coord_emb = nn.Embedding(4 * cfg.bins, d)            # one table per coordinate slot
        self.slot_emb = nn.Embedding(len(SLOTS), d)               # the slot of the token being predicted
        self.object_emb = nn.Embedding(cfg.max_objects + 1, d)
        if cfg.object_query:
            self.current_emb = nn.Embedding(n_labels + 1, d)      # the label of the object whose box is predicted
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer()), cfg.depth)
        self.norm = nn.LayerNorm(d)
        self.label_head = nn.Linear(d, n_labels + 1)
        self.coord_head = nn.Linear(d, 4 * cfg.bins)
        if cfg.text_positions:
            # The text layers and the cross-attention see the text as a set: without positions, "a circle left of
            # a square" and "a square left of a circle" differ only by what MiniLM's states happen to keep of
            # word order, and relations stayed at chance (measured: 0.5 after 800 relation-only steps).
            self.text_pos = nn.Embedding(cfg.text_positions, d)

    @property
    def length(self) -> int:
        return len(SLOTS) * self.cfg.max_objects + 1

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) tokens -> (B, T + 1, d) decoder inputs: BOS, then each token in its slot's table, each position
        told which slot and which object it predicts."""
        b, t = tokens.shape
        pos = torch.arange(t, device=tokens.device)
        slot = pos % len(SLOTS)
        coord = (slot - 1).clamp(min=0) * self.cfg.bins + tokens.clamp(0, self.cfg.bins - 1)
        label = tokens.clamp(0, self.eos)
        x = torch.where((slot == 0)[None, :, None], self.label_emb(label), self.coord_emb(coord))
        x = torch.cat([self.bos.expand(b, 1, -1), x], 1)
        target = torch.arange(t + 1, device=tokens.device)
        x = x + self.slot_emb(target % len(SLOTS)) + self.object_emb((target // len(SLOTS)).clamp(max=self.cfg.max_objects))
        # a box's positions carry its object's label, so that reading the text for "where is the small red
        # circle" is one cross-attention step rather than a search back through the layout first
        if t and self.cfg.object_query:
            in_box = (target % len(SLOTS) > 0)[None, :, None]
            current = tokens[:, (target // len(SLOTS) * len(SLOTS)).clamp(max=t - 1)].clamp(0, self.eos)
            x = x + torch.where(in_box, self.current_emb(current), torch.zeros_like(x))
        return x

    def read(self, states, mask):
        """The text as the decoder reads it (computed once per prompt batch when decoding)."""
        x = self.text_in(states)
        if self.cfg.text_positions:
            if x.shape[1] > self.cfg.text_positions:
                raise ValueError(f"a prompt of {x.shape[1]} tokens; this planner reads at most {self.cfg.text_positions}")
            x = x + self.text_pos(torch.arange(x.shape[1], device=x.device))
        return self.text_layers(x, src_key_padding_mask=~mask)

    def forward(self, tokens, states, mask, memory=None):
        """Logits for every position: (label logits (B, T+1, labels+1), coordinate logits (B, T+1, 4, bins)).
        `tokens` (B, T) are the layout so far; `states`/`mask` the text (mask True where a token is real)."""
        memory = self.read(states, mask) if memory is None else memory
        x = self.embed_tokens(tokens)
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device, dtype=torch.bool)
        h = self.norm(self.decoder(x, memory, tgt_mask=causal, memory_key_padding_mask=~mask))
        return self.label_head(h), self.coord_head(h).unflatten(-1, (4, self.cfg.bins))

    def loss(self, tokens, states, mask, coarse: tuple[int, ...] = ()):
        """Cross-entropy of every real token given the ones before it (-1 pads the end of a layout)."""
        return layout_loss(self(tokens[:, :-1], states, mask), tokens, coarse)

    # ------------------------------------------------------------------------------------------- layouts

    def tokens_of(self, layout: Layout, first: list[float] | None = None) -> list[int]:
        """A layout as training tokens (EOS, then -1 padding to `length`). Objects in canonical order: by
        `first` (one key per object, e.g. where the caption names it; lower first), then label, x, y."""
        index = {name: i for i, name in enumerate(self.cfg.labels)}
        q = lambda v: min(self.cfg.bins - 1, max(0, int(v * self.cfg.bins)))
        first = first or [0.0] * len(layout)
        objs = sorted(((f, index[name], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
                       for f, (name, (x0, y0, x1, y1)) in zip(first, layout)))
        out = []
        for _, lab, x, y, w, h in objs[: self.cfg.max_objects]:
            out += [lab, q(w), q(h), q(x), q(y)]
        if len(objs) < self.cfg.max_objects:
            out.append(self.eos)
        return out + [-1] * (self.length - len(out))

    @torch.no_grad()
    def plan(self, states, mask, seeds: list[int], temperature: float = 1.0) -> list[Layout]:
        """One layout per prompt, labels greedy, sizes greedy, places sampled from `torch.Generator(seed)`."""
        cfg, b = self.cfg, states.shape[0]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        tokens = torch.zeros(b, 0, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        boxes: list[list[tuple]] = [[] for _ in range(b)]
        centres = (torch.arange(cfg.bins) + 0.5) / cfg.bins
        memory = self.read(states, mask)
        for t in range(self.length - 1):
            slot = t % len(SLOTS)
            label_logits, coord_logits = self(tokens, states, mask, memory)
            if slot == 0:
                logits = label_logits[:, -1].clone()
                if t == 0:
                    logits[:, self.eos] = -float("inf")   # a prompt asks for at least one object
                nxt = logits.argmax(-1)
                done |= nxt == self.eos
            else:
                logits = coord_logits[:, -1, slot - 1]
                if slot in (1, 2):      # sizes: the most likely
                    nxt = logits.argmax(-1)
                else:
                    nxt = torch.stack([self._place(logits[i], slot, tokens[i], boxes[i], centres, gens[i], temperature)
                                       for i in range(b)])
            nxt = torch.where(done & (slot != 0), torch.zeros_like(nxt), nxt)
            tokens = torch.cat([tokens, nxt[:, None]], 1)
            if slot == 4:
                for i in range(b):
                    if not done[i]:
                        w, h, x, y = (centres[int(v)].item() for v in tokens[i, -4:])
                        boxes[i].append((x - w / 2, y - h / 2, x + w / 2, y + h / 2))
            if done.all():
                break
        layouts = []
        for i in range(b):
            row, out = tokens[i].tolist(), []
            for j in range(0, len(row) - 4, len(SLOTS)):
                if row[j] == self.eos:
                    break
                out.append((cfg.labels[row[j]], boxes[i][len(out)]))
            layouts.append(out)
        return layouts

    def _place(self, logits, slot, so_far, placed, centres, gen, temperature):
        """Sample x (slot 3) or y (slot 4) among the bins that keep the box inside the canvas and `gap` from the
        boxes already placed (for x: bins with at least one such y). Unconstrained if no bin qualifies."""
        cfg = self.cfg
        w, h = centres[int(so_far[-2 if slot == 3 else -3])], centres[int(so_far[-1 if slot == 3 else -2])]
        xs = centres if slot == 3 else centres[int(so_far[-1])].expand(1)
        ys = centres
        allowed = self._allowed(xs, ys, w, h, placed, cfg.gap, slot)
        logits = logits / max(temperature, 1e-6)
        if cfg.apart > cfg.gap and allowed.any():
            # boxes `apart` from the others where that keeps at least `apart_mass` of the probability (as sampled)
            # of the bins `gap` allows: objects drawn close can touch and read as one
            wide = self._allowed(xs, ys, w, h, placed, cfg.apart, slot)
            p = logits.softmax(-1)
            if p[wide].sum() >= cfg.apart_mass * p[allowed].sum():
                allowed = wide
        if allowed.any():
            logits = logits.masked_fill(~allowed, -float("inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=gen)[0]


    @staticmethod
    def _allowed(xs, ys, w, h, placed, min_gap, slot):
        """The x bins (slot 3: those with at least one such y) or y bins (slot 4) whose box stays inside the canvas
        and `min_gap` from every box in `placed`."""
        x0, x1 = xs[:, None] - w / 2, xs[:, None] + w / 2          # (X, 1)
        y0, y1 = ys[None, :] - h / 2, ys[None, :] + h / 2          # (1, Y)
        ok = (x0 >= 0) & (x1 <= 1) & (y0 >= 0) & (y1 <= 1)
        for bx0, by0, bx1, by1 in placed:
            dx = torch.clamp(torch.maximum(bx0 - x1, x0 - bx1), min=0)
            dy = torch.clamp(torch.maximum(by0 - y1, y0 - by1), min=0)
            gap = torch.where((dx > 0) & (dy > 0), torch.sqrt(dx**2 + dy**2), torch.maximum(dx, dy))
            ok &= gap >= min_gap
        return ok.any(1) if slot == 3 else ok[0]


def layout_loss(logits, tokens, coarse: tuple[int, ...] = ()):
    """`Planner.forward`'s logits on `tokens[:, :-1]` against `tokens` (a function of the outputs, so a
    DDP-wrapped planner, whose forward must be the call, trains the same way).

    `coarse`: also score each coordinate at these coarser resolutions (the bins' probabilities summed into
    2, 4, ... equal spans). A place word fixes a coordinate only to a span (half a canvas, a third), so the
    fine bins alone give a weak, noisy signal; the coarse terms reward putting the mass in the right span,
    which is what "to the left of" and "in the upper right" ask."""
    label_logits, coord_logits = logits
    slot = torch.arange(tokens.shape[1], device=tokens.device) % len(SLOTS)
    is_label = (slot == 0)[None].expand_as(tokens) & (tokens >= 0)
    is_coord = (slot > 0)[None].expand_as(tokens) & (tokens >= 0)
    loss = F.cross_entropy(label_logits[is_label], tokens[is_label])
    if is_coord.any():
        which = (slot - 1).clamp(min=0)[None].expand_as(tokens)[is_coord]
        picked = coord_logits[is_coord][torch.arange(int(is_coord.sum()), device=tokens.device), which]
        target = tokens[is_coord]
        loss = loss + F.cross_entropy(picked, target)
        bins = picked.shape[-1]
        for k in coarse:
            if bins % k:
                raise ValueError(f"coarse resolution {k} does not divide {bins} bins")
            spans = picked.unflatten(-1, (k, bins // k)).logsumexp(-1)
            loss = loss + F.cross_entropy(spans, target // (bins // k)) / len(coarse)
    return loss


class TextPlanner:
    """The planner as a pipeline calls it: prompts and seeds -> one layout per prompt (encoded by the same
    frozen text encoder the planner was trained on)."""

    def __init__(self, planner: Planner, encoder, temperature: float = 1.0):
        self.planner, self.encoder, self.temperature = planner, encoder, temperature

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[Layout]:
        from ..text.encoder import pad

        unique = list(dict.fromkeys(prompts))
        encoded = dict(zip(unique, self.encoder.encode(unique)))
        # one prompt at a time: batched matmuls differ from single ones in the last bits, which can flip an
        # argmax or a sampled bin, and a seed must draw the same layout whatever else shares its batch
        layouts = []
        for prompt, seed in zip(prompts, seeds):
            states, mask = pad([encoded[prompt]])
            layouts += self.planner.plan(states, mask, [seed], self.temperature)
        return layouts
