"""`limner upscale IMAGE --factor 2|4|8`: enlarge any image with a model folder's learned upsampler."""
from __future__ import annotations

from pathlib import Path


def default_output(image: Path, factor: int) -> Path:
    return image.with_name(f"{image.stem}-{factor}x.png")


def check(a) -> tuple[int, int]:
    """Refuse a bad factor, a missing or unreadable file, or an output too large, before any model loads;
    returns the image's (width, height)."""
    from PIL import Image, UnidentifiedImageError

    from ..pipeline.upscale import check_request

    if a.factor not in (2, 4, 8):
        raise ValueError(f"--factor must be 2, 4 or 8, not {a.factor}")
    src = Path(a.image)
    if not src.is_file():
        raise FileNotFoundError(f"no image at {src}")
    try:
        with Image.open(src) as im:
            size = im.size
            im.verify()  # reads the whole file: a truncated or corrupt one fails here, not half-way through
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {src} as an image ({e}): give a PNG, JPEG, WebP, BMP, TIFF or GIF file") from None
    check_request(*size, a.factor)
    return size


def cmd_upscale(a) -> int:
    check(a)
    from PIL import Image, ImageOps

    from ..models import folder
    from ..pipeline import save_png
    from ..pipeline.upscale import Upscaler

    upscaler = Upscaler.from_folder(a.model)
    if upscaler is None:
        raise ValueError(f"{a.model} has no upsampler/ folder: train one (limner train configs/upsampler-default.yaml) "
                         "and pass its exported folder with --model")
    src = Path(a.image)
    with Image.open(src) as im:
        img = ImageOps.exif_transpose(im)  # the way viewers show it
        img.load()
    out_img = upscaler(img, a.factor, seed=a.seed, show=True)
    name = folder.model_name(a.model, folder.resolve(a.model), folder.read_meta(folder.resolve(a.model)))
    params = {"upscale": a.factor, "source": src.name, "seed": a.seed, "model": name}
    if not a.no_watermark:
        out_img = mark(out_img, name, params)
    out_img.info["parameters"] = params
    out = Path(a.output) if a.output else default_output(src, a.factor)
    if out.suffix.lower() in ("", ".png"):
        save_png(out_img, out)
    else:
        save_other(out_img, out)
    print(out)
    return 0


def mark(img, model: str, params: dict):
    """limner's invisible watermark on the colour (alpha kept aside; a grey image stays grey)."""
    from ..safety import watermark as W
    from ..safety.guard import request_id

    if min(img.size) < W.K:
        return img
    payload = W.payload_for(model, request_id(params))
    marked = W.embed(img, payload)
    params["watermark"] = f"limner:{payload:08x}"
    if img.mode in ("L", "LA"):
        marked = marked.convert("L")
    if "A" in img.getbands():
        marked.putalpha(img.getchannel("A"))
    return marked


def save_other(img, out: Path) -> None:
    """A non-PNG file by its extension, atomically (JPEG has no alpha: it is dropped)."""
    from PIL import Image

    from ..common.files import atomic_path

    fmt = Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension {out.suffix!r}: use .png, .jpg, .webp, ...")
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    with atomic_path(out) as tmp:
        img.save(tmp, format=fmt, quality=95)


def add_parser(sub) -> None:
    u = sub.add_parser("upscale", help="enlarge an image 2, 4 or 8 times with a model's learned upsampler")
    u.add_argument("image", help="any image file: RGB, RGBA (alpha enlarged with Lanczos), grey; any size")
    u.add_argument("--factor", type=int, default=4, help="2, 4 or 8 [4]")
    u.add_argument("--output", "-o", default=None, help="where to write it [IMAGE-<factor>x.png beside IMAGE]")
    u.add_argument("--model", default="shapes-default", help="a shipped name or a model folder with an upsampler/")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--no-watermark", action="store_true", help="skip the invisible watermark (local use only)")
    u.set_defaults(fn=cmd_upscale)
