"""Prints the comparison tables of bench/run.sh from its JSON-lines results, and a verdict for
each performance target of the issue (ratios from the same run).

Usage: python3 summarise.py META.json RESULTS.jsonl [META_END.json]
Times: median over repetitions (seconds per run for encode and init, per iteration for EM),
range = min-max; speed-up = peer median / dfk median.
"""
import json
import statistics
import sys
from collections import defaultdict

med = statistics.median


def seconds(r):
    # dfk bench reports median_s (encode/em) or init_s; the peers report seconds.
    for key in ("seconds", "init_s", "median_s"):
        if key in r and r[key] is not None:
            return r[key]
    raise KeyError(r)


def fmt_range(ts):
    return f"{min(ts):.4f}–{max(ts):.4f}"


def main():
    meta = json.load(open(sys.argv[1]))
    end = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else {}
    rows = [json.loads(line) for line in open(sys.argv[2]) if line.strip()]
    timed = defaultdict(lambda: defaultdict(list))  # (workload, stage, k) -> impl -> records
    extra = {}
    sift = defaultdict(lambda: defaultdict(list))
    svm = defaultdict(lambda: defaultdict(list))  # workload -> (impl, threads) -> records
    init_final, backward, rss = {}, {}, []
    for r in rows:
        impl, wl, stage = r.get("impl", "dfk"), r.get("workload", "synthetic"), r["stage"]
        if stage == "sift":
            for variant in ("four_scales", "bin8"):
                sift[variant][impl].append(r[variant]["median_s"])
        elif stage == "svm":
            svm[wl][(impl, r.get("threads", 1))].append(r)
        elif stage == "init_final":
            init_final[impl] = r
        elif stage == "backward":
            backward[r["k"]] = r
        elif stage == "rss":
            rss.append(r)
        else:
            timed[(wl, stage, r["k"])][impl].append(r)
            if impl == "dfk":
                extra[(wl, stage, r["k"])] = {f: r[f] for f in ("posteriors_ge_1e-6", "simd", "peak_gflops") if f in r}
    ratio = {}  # (workload, stage, k, peer) -> peer median / dfk median

    print(f"Machine: {meta['machine']} ({meta['cpus']} CPUs), commit {meta.get('commit', '?')}, "
          f"{meta['date']}–{end.get('end', '?')}, load average at start {meta.get('load', '?')}, "
          f"at end {end.get('load_end', '?')}; threads {meta['threads']}, "
          f"{'full' if meta['full'] else 'scaled-down'} workloads: encode {meta['images']} images x "
          f"{meta['per_image']} descriptors, EM N = {meta['n_em']}, init N = {meta['n_init']}, D = 64, "
          f"SVM n = {meta.get('svm_n', '?')}; {meta['reps']} repetitions, the peers and dfk alternating.\n")
    print("| workload | stage | K | implementation | median s | range s | desc/s | dfk speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(timed, key=lambda k: (k[0] != "synthetic", k[0], k[1], -k[2])):
        wl, stage, k = key
        impls = timed[key]
        m = {i: med(seconds(r) for r in rs) for i, rs in impls.items()}
        n = next(iter(impls.values()))[0]["descriptors"]
        for impl in sorted(impls, key=lambda i: (i != "dfk", i)):
            ts = [seconds(r) for r in impls[impl]]
            q = m[impl] / m["dfk"] if "dfk" in m and impl != "dfk" else None
            if q is not None:
                ratio[(wl, stage, k, impl)] = q
            label = stage + (" (init only)" if stage == "init" else "")
            print(f"| {wl} | {label} | {k} | {impl} | {m[impl]:.4f} | {fmt_range(ts)} | "
                  f"{n / m[impl]:,.0f} | {'' if q is None else f'{q:.1f}x'} |")
    for variant, impls in sift.items():
        m = {i: med(ts) for i, ts in impls.items()}
        for impl, ts in sorted(impls.items(), key=lambda kv: (kv[0] != "dfk", kv[0])):
            q = m[impl] / m["dfk"] if "dfk" in m and impl != "dfk" else None
            if q is not None:
                ratio[("image", "sift", variant, impl)] = q
            print(f"| 640x480 image | sift {variant} (1 thread) | – | {impl} | {m[impl]:.4f} | {fmt_range(ts)} | "
                  f"{640 * 480 / m[impl]:,.0f} px/s | {'' if q is None else f'{q:.1f}x'} |")
    print()
    for key, e in sorted(extra.items()):
        print(f"- dfk {key[0]} {key[1]} K={key[2]}: " + ", ".join(
            f"{a} = {b:.4g}" if isinstance(b, float) else f"{a} = {b}" for a, b in e.items()))

    if init_final:
        print("\nInitialisation, then EM to convergence from it (relative LL change < 1e-5, at most "
              "100 iterations); average log-likelihood of the FINAL model on the same data "
              "(float64, bench/gmm_loglik.py):\n")
        print("| implementation | final average log-likelihood | notes |")
        print("|---|---|---|")
        for impl, r in sorted(init_final.items()):
            note = ""
            if impl == "dfk":
                note = f"{r.get('em_iterations')} EM iterations, whole fit {r.get('fit_seconds', 0):.2f} s"
            else:
                em = [x for x in timed[("synthetic", "init", r["k"])].get("vlfeat", []) if "em_seconds" in x]
                if em:
                    note = f"EM to convergence {em[0]['em_seconds']:.2f} s"
            print(f"| {impl} | {r['loglik_avg']:.4f} | {note} |")

    svm_ratio = {}
    if svm:
        print("\nLinear SVM (C = 5, bias 1; liblinear `-s 3 -e 0.01 -c 5 -B 1`, training time only; dfk: "
              "the first tolerance of its ladder whose primal objective is ≤ liblinear's, time of that "
              "solve; objectives are primal, summed over one-vs-rest classes):\n")
        print("| data | implementation | threads | tolerance | median s | range s | objective | liblinear s / dfk s |")
        print("|---|---|---|---|---|---|---|---|")
        for wl, groups in sorted(svm.items()):
            lib = groups.get(("liblinear", 1), [])
            lib_t = med(r["seconds"] for r in lib) if lib else None
            for (impl, th), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "liblinear", kv[0])):
                first = rs[0]
                desc = f"{wl}, {first['n']} x {first['dim']}, {first['classes']} classes"
                if impl == "dfk":
                    ok = [r for r in rs if r.get("seconds") is not None]
                    eps = sorted({r["reached_eps"] for r in ok})
                    if not ok:
                        print(f"| {desc} | dfk | {th} | not reached | | | | |")
                        svm_ratio[(wl, th)] = 0.0
                        continue
                    ts = [r["seconds"] for r in ok]
                    obj = med(r["reached_objective"] for r in ok)
                    q = lib_t / med(ts) if lib_t else None
                    svm_ratio[(wl, th)] = q
                    at01 = [x for r in rs for x in r["runs"] if x["eps"] == 0.01]
                    print(f"| {desc} | dfk | {th} | {','.join(map(str, eps))} | {med(ts):.3f} | {fmt_range(ts)} | "
                          f"{obj:.3f} (target {first['target_objective']:.3f}) | {q:.2f}x |")
                    if at01:
                        t01 = [x["median_s"] for x in at01]
                        print(f"| {desc} | dfk at liblinear's tolerance | {th} | 0.01 | {med(t01):.3f} | "
                              f"{fmt_range(t01)} | {med(x['objective'] for x in at01):.3f} | "
                              f"{lib_t / med(t01):.2f}x |")
                else:
                    ts = [r["seconds"] for r in rs]
                    print(f"| {desc} | {impl} | {th} | {first['eps']} | {med(ts):.3f} | {fmt_range(ts)} | "
                          f"{med(r['objective'] for r in rs):.3f} | |")

    if backward:
        print("\nFisher-vector backward pass against the forward pass (dfk bench --stage backward; "
              "'cached' reuses what the forward pass kept and recomputes the posteriors, "
              "'stored' also reads the posteriors that the forward pass stored (the trainer's path; "
              "that forward pass is timed as 'keeping'), 'uncached' recomputes everything):\n")
        print("| K | images | forward s | backward s (cached) | backward / forward | keeping forward s | "
              "backward s (stored) | stored / forward | stored posteriors MB | backward s (uncached) | "
              "uncached / forward |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for k, r in sorted(backward.items(), reverse=True):
            b = r.get("backward_cached_s", r.get("backward_s"))
            u = r.get("backward_uncached_s")
            uf = r.get("uncached_over_forward")
            fk, bs = r.get("forward_keeping_s"), r.get("backward_stored_s")
            sf, mb = r.get("backward_stored_over_forward"), r.get("stored_posterior_bytes")
            opt = lambda v, f: "" if v is None else format(v, f)
            print(f"| {k} | {r['descriptors'] // meta['per_image']} | {r['forward_s']:.4f} | {b:.4f} | "
                  f"{r['backward_over_forward']:.2f} | {opt(fk, '.4f')} | {opt(bs, '.4f')} | "
                  f"{opt(sf, '.2f')} | {opt(None if mb is None else mb / 2**20, '.1f')} | "
                  f"{opt(u, '.4f')} | {opt(uf, '.2f')} |")

    if rss:
        print("\nStreaming `dfk fisher` (batches of 64 images): peak RSS against the input size "
              "(/usr/bin/time -v):\n")
        print("| images | descriptors file MB | Fisher vectors MB | max RSS MB | seconds |")
        print("|---|---|---|---|---|")
        for r in sorted(rss, key=lambda r: r["images"]):
            print(f"| {r['images']} | {r['x_bytes'] / 1e6:,.0f} | {r['fv_bytes'] / 1e6:,.0f} | "
                  f"{r['max_rss_kb'] / 1024:.0f} | {r['seconds']:.2f} |")

    # Verdicts.
    print("\nTargets (ratios from this run):\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")

    def verdict(name, value, ok, shown):
        if value is None:
            print(f"| {name} | not measured | – |")
        else:
            print(f"| {name} | {shown} | {'met' if ok else '**not met**'} |")

    for wl in ("synthetic", "fmnist"):
        for k in (256, 64):
            q = ratio.get((wl, "encode", k, "vlfeat"))
            verdict(f"FV encode ≥ 8× VLFeat, {wl}, K = {k}", q, q is not None and q >= 8, f"{q:.1f}×" if q else "")
    for wl in ("synthetic", "fmnist"):
        for k in (256, 64):
            q = ratio.get((wl, "em", k, "vlfeat"))
            verdict(f"GMM EM ≥ 8× VLFeat, {wl}, K = {k}", q, q is not None and q >= 8, f"{q:.1f}×" if q else "")
    for wl in ("synthetic", "fmnist"):
        for k in (256, 64):
            q = ratio.get((wl, "em", k, "sklearn"))
            verdict(f"GMM EM ≥ 30× scikit-learn, {wl}, K = {k}", q, q is not None and q >= 30,
                    f"{q:.1f}×" if q else "")
    q = ratio.get(("synthetic", "init", 256, "vlfeat"))
    if q is not None and "dfk" in init_final and "vlfeat" in init_final:
        a, b = init_final["dfk"]["loglik_avg"], init_final["vlfeat"]["loglik_avg"]
        verdict("GMM init ≥ 5× VLFeat's k-means, equal or better final LL", q, q >= 5 and a >= b,
                f"{q:.1f}× faster; final LL {a:.4f} (dfk) vs {b:.4f} (VLFeat)")
    else:
        verdict("GMM init ≥ 5× VLFeat's k-means, equal or better final LL", None, False, "")
    for v in ("four_scales", "bin8"):
        q = ratio.get(("image", "sift", v, "vlfeat"))
        verdict(f"dense SIFT ≥ 2× VLFeat, {v}", q, q is not None and q >= 2, f"{q:.1f}×" if q else "")
    for (wl, th), q in sorted(svm_ratio.items()):
        verdict(f"SVM reaches liblinear's primal objective in ≤ its time, {wl}, dfk {th} thread(s)", q,
                q is not None and q >= 1, f"liblinear time / dfk time = {q:.2f}" if q else "not reached")
    for k, r in sorted(backward.items(), reverse=True):
        b = r["backward_over_forward"]
        verdict(f"DFK backward ≤ 1.5× forward, K = {k}", b, b <= 1.5, f"{b:.2f}×")
        sf = r.get("backward_stored_over_forward")
        if sf is not None:
            verdict(f"DFK backward from stored posteriors ≤ 1.5× forward, K = {k}", sf, sf <= 1.5,
                    f"{sf:.2f}× (its forward pass, storing them: {r['keeping_over_forward']:.2f}× the plain one)")
    if len(rss) >= 2:
        rs = sorted(rss, key=lambda r: r["images"])
        grow = rs[-1]["max_rss_kb"] / rs[1]["max_rss_kb"] if len(rs) > 2 else rs[-1]["max_rss_kb"] / rs[0]["max_rss_kb"]
        size = rs[-1]["x_bytes"] / rs[1 if len(rs) > 2 else 0]["x_bytes"]
        verdict("encoding from disk: peak RSS bounded by the batch, not the data set", grow, grow < 1.5,
                f"input ×{size:.0f} → peak RSS ×{grow:.2f} ({rs[-1]['max_rss_kb'] / 1024:.0f} MB at "
                f"{rs[-1]['x_bytes'] / 1e9:.2f} GB of descriptors)")


if __name__ == "__main__":
    main()
