"""Local search after best-of: re-noise the best candidate to t0 and re-denoise it (SDEdit-style), keep improvements.

    python benchmarks/search_refine.py 8 0 detailed,binding 12:0:1:0.5:5 8:2:4:0.5:5 8:4:4:0.4:3 6:3:4:0.6:5

Arguments: per-cell, first noise seed, suites, then configurations N1:rounds:variants:t0:steps (best of N1 at
10 Euler steps, then `rounds` rounds of `variants` re-noised copies of the best, denoised from t0 in `steps`
steps; a round stops early once the verifier finds the scene right). Prints each configuration's graded
accuracy and its cost in denoiser evaluations per image.
"""
import sys, time, torch
from collections import defaultdict
from limner.pipeline.core import Pipeline, CANDIDATE_STRIDE
from limner.safety.guard import SafetyConfig
from limner.text.encoder import pad
from limner.diffusion.sampling import guided, timesteps, euler
from limner.world.suites import build
from limner.world.scorer import detect, score, reward, Constraints
from limner.world.parse import parse_prompt
from limner.world.evaluate import HEADLINE

torch.set_num_threads(2)
PER_CELL, SEED = int(sys.argv[1]), int(sys.argv[2])
suites = sys.argv[3].split(",")
configs = [tuple(float(x) if "." in x else int(x) for x in c.split(":")) for c in sys.argv[4:]]  # N1:rounds:B:t0:m
pipe = Pipeline.from_pretrained("shapes-default", safety=SafetyConfig.off())
g = pipe.meta["defaults"]["guidance"]
res = defaultdict(lambda: defaultdict(list))
t0_ = time.time()
for suite in suites:
    for i, it in enumerate(build(suite, PER_CELL)):
        s = SEED + i
        cons, truth = parse_prompt(it["prompt"]), Constraints.from_dict(it["constraints"])
        def verify(a):  # (reward, whether the verifier finds the scene right)
            r = score(detect(a), cons)
            return reward(r, cons), r["correct"]
        st = pad(pipe.encoder.encode([it["prompt"], ""]))
        def V(n):
            return guided(pipe.denoiser, (st[0][:1].expand(n, -1, -1), st[1][:1].expand(n, -1)),
                          (st[0][1:].expand(n, -1, -1), st[1][1:].expand(n, -1)), g)
        Nmax = max(c[0] for c in configs)
        x = pipe.noise([s + k * CANDIDATE_STRIDE for k in range(Nmax)])
        z = euler(V(Nmax), x, timesteps(10))
        imgs = pipe.decode(z)
        vals = [verify(a) for a in imgs]
        for cfg in configs:
            N1, rounds, B, t0, m = cfg
            b = max(range(N1), key=lambda k: (vals[k][0], -k))
            best_z, best_v, best_img = z[b], vals[b], imgs[b]
            gen = torch.Generator().manual_seed(s + 7)
            for r in range(rounds):
                if best_v[1]:  # the verifier finds the scene right: stop
                    break
                noise = torch.randn((B, *best_z.shape), generator=gen)
                xt = (1 - t0) * best_z + t0 * noise
                zz = euler(V(B), xt, torch.linspace(t0, 0, m + 1))
                ii = pipe.decode(zz)
                for k in range(B):
                    vk = verify(ii[k])
                    if vk[0] > best_v[0]:
                        best_z, best_v, best_img = zz[k], vk, ii[k]
            res[cfg][suite].append(score(detect(best_img), truth)[HEADLINE[suite]])
    print(suite, f"{time.time()-t0_:.0f}s", flush=True)
for cfg in configs:
    N1, rounds, B, t0, m = cfg
    print(cfg, "cost<=", N1 * 10 + rounds * B * m, " ".join(f"{s} {sum(v)/len(v):.3f}" for s, v in res[cfg].items()))
