"""`limner watermark embed | detect`: limner's invisible watermark on any image."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_watermark_embed(a) -> int:
    from PIL import Image

    from ..pipeline import save_png
    from ..safety import watermark as W

    src = Path(a.input)
    if not src.is_file():
        raise FileNotFoundError(f"no image at {src}")
    payload = int(a.payload, 16) if a.payload else W.payload_for("user", src.name)
    img = W.embed(Image.open(src), payload, key=W.KEY if a.key is None else a.key)
    out = Path(a.output)
    if out.suffix.lower() == ".png":
        print(save_png(img, out))
    else:  # lossy formats keep it too, at a cost: see docs/BENCHMARKS.md
        tmp = out.with_name(f".{out.name}.tmp")
        img.save(tmp, format=Image.registered_extensions().get(out.suffix.lower(), "PNG"), quality=95)
        tmp.replace(out)
        print(out)
    print(f"payload {payload:08x}", file=sys.stderr)
    return 0


def cmd_watermark_detect(a) -> int:
    from PIL import Image

    from ..safety import watermark as W

    found = 0
    for path in a.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no image at {path}")
        d = W.detect(Image.open(path), key=W.KEY if a.key is None else a.key)
        found += bool(d.detected)
        print(json.dumps({"image": path, **d.to_dict()}) if a.json else f"{path}: {d.describe()}")
    if not a.json:
        print(W.P_VALUE_MEANING)
    return 0 if found else 1


def add_parser(sub) -> None:
    wm = sub.add_parser("watermark", help="embed or detect limner's invisible watermark")
    wms = wm.add_subparsers(dest="watermark_verb", required=True)
    key = dict(type=lambda v: int(v, 0), help="watermark key, e.g. 0x1234 (default: limner's public key)")
    e = wms.add_parser("embed", help="write a watermarked copy of an image")
    e.add_argument("input")
    e.add_argument("output")
    e.add_argument("--payload", help="32-bit payload as hex (default: derived from the file name)")
    e.add_argument("--key", **key)
    e.set_defaults(fn=cmd_watermark_embed)
    d = wms.add_parser("detect", help="say whether images carry the watermark; exit 0 if any does")
    d.add_argument("images", nargs="+")
    d.add_argument("--json", action="store_true", help='one line per image: {"detected": true|false|null, "verdict", "p_value", "p_threshold", ...}')
    d.add_argument("--key", **key)
    d.set_defaults(fn=cmd_watermark_detect)
