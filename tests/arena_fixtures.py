"""Two toy "models" for arena tests: one draws exactly what a Shapes World prompt asks for, one draws
the wrong things. Real enough for the scorer (and a scripted rater) to tell them apart."""
from __future__ import annotations

import random
import socket
import subprocess
import sys
import time

from limner.eval.generate import generate_suite
from limner.eval.suites import shapes_suite
from limner.world.scene import Obj, Scene, place, render


class SceneBackend:
    """Renders, for each prompt, the Constraints' groups (`wrong`: every count off by one, other colour)."""

    def __init__(self, name: str, constraints: dict[str, dict], wrong: bool = False):
        self.name, self.constraints, self.wrong = name, constraints, wrong

    def identity(self) -> dict:
        return {"toy": self.name, "wrong": self.wrong}

    def generate(self, prompts, seeds, negative_prompt=None, steps=None, guidance=None, size=None):
        out = []
        for prompt, seed in zip(prompts, seeds):
            rng = random.Random(f"{prompt}-{seed}-{self.name}")
            objs = []
            for g in self.constraints[prompt]["groups"]:
                n = g["count"] % 8 + 1 if self.wrong else g["count"]
                colour = ("blue" if g["colour"] != "blue" else "red") if self.wrong else g["colour"]
                objs += [Obj(g["shape"], colour, "small", 0, 0) for _ in range(n)]
            objs = objs[:8]
            while not place(objs, rng, 0.04):
                pass
            out.append(render(Scene("ivory", objs), (size or (128, 128))[0]))
        return out


def make_generations(out_dir, models=("good", "bad"), suites=("shapes-counting", "shapes-detailed"), per_cell=1):
    """A `limner eval generate` folder: every prompt of the suites by every model, seed 0."""
    prompts = [p for s in suites for p in shapes_suite(s, per_cell)]
    cons = {p.text: p.constraints for p in prompts}
    backends = [SceneBackend(m, cons, wrong=m != "good") for m in models]
    return generate_suite(prompts, backends, out_dir, seeds=(0,), progress=False)


CLI = [sys.executable, "-m", "limner.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db) -> tuple[str, subprocess.Popen]:
    """`limner arena serve` in a subprocess on a free port, once it answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen(CLI + ["arena", "serve", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(url + "/", timeout=1)
            return url, proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("arena server did not start: " + proc.stdout.read())


def invite(db, url: str, *extra) -> list[str]:
    """Invite tokens (not links) from `limner arena invite`."""
    out = subprocess.run(CLI + ["arena", "invite", "--db", str(db), "--url", url, *extra],
                         check=True, capture_output=True, text=True).stdout
    return [link.split("token=")[1] for link in out.split()]
