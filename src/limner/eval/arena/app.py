"""`limner arena serve`: the side-by-side rating web app (FastAPI) over a `Store`.

Raters log in with an invite token (the link `limner arena invite` prints, or `Authorization: Bearer`
for scripted raters). They see only what `Store._item` gives: the prompt (not for visual appeal), two
images by opaque URL with sides shuffled, the question. Images are re-encoded without their PNG text
chunks, which name the model. Nothing a rater can reach returns model names or anyone's votes; the
admin page and the CSV exports need an admin token.
"""
from __future__ import annotations

import csv
import io
from functools import lru_cache
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from sqlalchemy import select

from .store import COUNT_FIELDS, VOTE_FIELDS, ArenaError, Image, Store

COOKIE = "limner_arena"


class Login(BaseModel):
    token: str


class Answer(BaseModel):
    id: str
    choice: str | None = None
    count: int | None = None


def _page(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEEP = {b"IHDR", b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"IDAT", b"IEND"}


def anonymous_image(path: str) -> bytes:
    """The image's bytes with nothing that could name its model: a PNG keeps only its pixel chunks
    (no tEXt/iTXt/zTXt parameters, no eXIf, no C2PA caBX), the same pixels; anything else is re-encoded."""
    data = open(path, "rb").read()
    if data.startswith(PNG_SIGNATURE):
        out, i = [PNG_SIGNATURE], len(PNG_SIGNATURE)
        while i + 8 <= len(data):
            n = int.from_bytes(data[i:i + 4], "big")
            if data[i + 4:i + 8] in PNG_KEEP:
                out.append(data[i:i + 12 + n])
            i += 12 + n
        return b"".join(out)
    from PIL import Image as PILImage

    buf = io.BytesIO()
    with PILImage.open(io.BytesIO(data)) as im:
        im.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def create_app(store: Store) -> FastAPI:
    app = FastAPI(title="limner arena", docs_url=None, redoc_url=None)

    @app.exception_handler(ArenaError)
    def _arena_error(_, e: ArenaError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def rater(request: Request) -> int:
        return store.rater(token_of(request))[0]

    def admin(request: Request) -> int:
        rid, is_admin = store.rater(token_of(request))
        if not is_admin:
            raise ArenaError("the admin page needs an admin token (`limner arena invite --admin`)", 403)
        return rid

    def logged_in(token: str, resp: Response, samesite: str) -> Response:
        store.rater(token)   # refuses unknown tokens
        resp.set_cookie(COOKIE, token, httponly=True, samesite=samesite, max_age=90 * 86400)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def page():
        return _page("rate.html")

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page():
        return _page("admin.html")

    @app.get("/login")
    def login_link(token: str):
        """The invite link: set the cookie, then go to the rating page (lax: the link comes from elsewhere)."""
        return logged_in(token, RedirectResponse("/", status_code=303), "lax")

    @app.post("/api/login")
    def login(body: Login):
        return logged_in(body.token.strip(), JSONResponse({"ok": True}), "strict")

    @app.post("/api/logout")
    def logout():
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/api/next")
    def next_item(rid: int = Depends(rater)):
        item = store.next_item(rid)
        return item if item is not None else {"finished": True}

    @app.post("/api/answer")
    def answer(body: Answer, rid: int = Depends(rater)):
        return store.answer(rid, body.id, body.choice, body.count)

    @lru_cache(maxsize=4096)
    def image_bytes(token: str) -> bytes:
        with store.session() as s:
            path = s.scalar(select(Image.path).where(Image.token == token))
        if path is None:
            raise ArenaError("no such image", 404)
        return anonymous_image(path)

    @app.get("/img/{token}")
    def image(token: str, rid: int = Depends(rater)):
        return Response(image_bytes(token), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/admin/progress")
    def progress(_: int = Depends(admin)):
        return store.progress()

    def csv_response(rows: list[dict], fields: list[str], name: str) -> Response:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/admin/votes.csv")
    def votes_csv(min_reliability: float | None = None, _: int = Depends(admin)):
        return csv_response(store.export(min_reliability)[0], VOTE_FIELDS, "votes.csv")

    @app.get("/api/admin/counts.csv")
    def counts_csv(min_reliability: float | None = None, _: int = Depends(admin)):
        return csv_response(store.export(min_reliability)[1], COUNT_FIELDS, "counts.csv")

    return app
