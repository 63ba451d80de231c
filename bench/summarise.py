"""Prints the comparison table of bench/run.sh from its JSON-lines results.

Usage: python3 summarise.py META.json RESULTS.jsonl
For each (stage, K): per implementation the median time (seconds per run for encode and init,
per iteration for EM), its range over repetitions, descriptors/s, and dfk's speed-up over it.
"""
import json
import statistics
import sys
from collections import defaultdict


def seconds(r):
    # dfk reports median_s (encode/em) or init_s; the peers report seconds.
    for key in ("seconds", "init_s", "median_s"):
        if key in r:
            return r[key]
    raise KeyError(r)


def main():
    meta = json.load(open(sys.argv[1]))
    rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    groups = defaultdict(lambda: defaultdict(list))
    extra = defaultdict(dict)
    sift = defaultdict(lambda: defaultdict(list))
    for r in rows:
        impl = r.get("impl", "dfk")
        if r["stage"] == "sift":
            for variant in ("four_scales", "bin8"):
                sift[variant][impl].append(r[variant]["median_s"])
            continue
        key = (r["stage"] if impl != "dfk" or r["stage"] != "stats" else "encode", r["k"])
        groups[key][impl].append(r)
        if impl == "dfk":
            for f in ("posteriors_ge_1e-6", "nonzero_posteriors", "simd", "peak_gflops"):
                if f in r:
                    extra[key][f] = r[f]
    print(f"Machine: {meta['machine']} ({meta['cpus']} CPUs), {meta['date']}, threads {meta['threads']}, "
          f"{'full' if meta['full'] else 'scaled-down'} workloads: encode {meta['images']} images x "
          f"{meta['per_image']} descriptors, EM N = {meta['n_em']}, init N = {meta['n_init']}, D = 64, "
          f"{meta['reps']} repetitions (scikit-learn: 1).\n")
    print("| stage | K | implementation | median s | range s | desc/s | dfk speed-up |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(groups, key=lambda k: (k[0], -k[1])):
        stage, k = key
        impls = groups[key]
        med = {i: statistics.median(seconds(r) for r in rs) for i, rs in impls.items()}
        n = next(iter(impls.values()))[0]["descriptors"]
        for impl in sorted(impls, key=lambda i: (i != "dfk", i)):
            ts = [seconds(r) for r in impls[impl]]
            ratio = med[impl] / med["dfk"] if "dfk" in med and impl != "dfk" else None
            print(f"| {stage} | {k} | {impl} | {med[impl]:.4f} | {min(ts):.4f}–{max(ts):.4f} | "
                  f"{n / med[impl]:,.0f} | {'' if ratio is None else f'{ratio:.1f}x'} |")
        if stage == "init":
            for impl, rs in impls.items():
                lls = [r.get("loglik_avg", r.get("loglik_init", r.get("loglik_after_1_iter"))) for r in rs]
                print(f"|  |  | {impl}: average log-likelihood of the initial model | "
                      f"{statistics.median(lls):.4f} | | | |")
    for variant, impls in sift.items():
        med = {i: statistics.median(ts) for i, ts in impls.items()}
        for impl, ts in sorted(impls.items(), key=lambda kv: (kv[0] != "dfk", kv[0])):
            ratio = med[impl] / med["dfk"] if "dfk" in med and impl != "dfk" else None
            print(f"| sift {variant} (1 thread) | – | {impl} | {med[impl]:.4f} | {min(ts):.4f}–{max(ts):.4f} | "
                  f"{640 * 480 / med[impl]:,.0f} px/s | {'' if ratio is None else f'{ratio:.1f}x'} |")
    print()
    for key, e in sorted(extra.items()):
        print(f"- dfk {key[0]} K={key[1]}: " + ", ".join(f"{a} = {b:.4g}" if isinstance(b, float) else f"{a} = {b}" for a, b in e.items()))


if __name__ == "__main__":
    main()
