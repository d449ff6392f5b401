"""Paired differences per manifest draw from `ltscale compare --format csv` (group-by γ, model, noise, draw)."""
import csv
import statistics as st
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
metric = sys.argv[2] if len(sys.argv) > 2 else "top1"
v = defaultdict(dict)  # (γ, noise) -> {(model, draw): value}
for r in rows:
    v[(r["manifest.imbalance"], r["manifest.noise"])][(r["model"], r["manifest.seed"])] = 100 * float(r[f"{metric}_mean"])
def ms(xs):
    return f"{st.mean(xs):+.1f} ± {st.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:+.1f}"
pairs = [("simsiam + la_sl", "scratch + la_sl"), ("simsiam + la", "scratch + la"),
         ("simsiam + ce", "scratch + ce"), ("scratch + la", "scratch + ce"),
         ("scratch + la_sl", "scratch + la"), ("scratch + sl", "scratch + ce"),
         ("simsiam + la_sl", "simsiam + la"), ("simsiam + sl", "simsiam + ce")]
print(f"metric {metric}; paired difference (points) per draw, mean ± sample std over draws [wins/draws]")
print("| γ | noise | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " | best two-stage − best scratch |")
print("|---" * (len(pairs) + 3) + "|")
for (g, n), d in sorted(v.items(), key=lambda kv: (int(kv[0][0].split(':')[1]), kv[0][1])):
    draws = sorted({s for _, s in d})
    cells = []
    for a, b in pairs:
        xs = [d[(a, s)] - d[(b, s)] for s in draws if (a, s) in d and (b, s) in d]
        cells.append(f"{ms(xs)} [{sum(x > 0 for x in xs)}/{len(xs)}]" if xs else "")
    models = {m for m, _ in d}
    def mean_of(m):
        xs = [d[(m, s)] for s in draws if (m, s) in d]
        return st.mean(xs) if len(xs) == len(draws) else float("-inf")
    bs = max((m for m in models if m.startswith("simsiam")), key=mean_of)
    bc = max((m for m in models if m.startswith("scratch")), key=mean_of)
    xs = [d[(bs, s)] - d[(bc, s)] for s in draws if (bs, s) in d and (bc, s) in d]
    cells.append(f"{bs.split(' + ')[1]} − {bc.split(' + ')[1]}: {ms(xs)} [{sum(x > 0 for x in xs)}/{len(xs)}]")
    print(f"| {g.split(':')[1]} | {n.split(':')[1]} | " + " | ".join(cells) + " |")
