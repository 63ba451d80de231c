"""Real-descriptor workload for bench/run.sh: dense SIFT -> PCA-64 (L2) descriptors of
Fashion-MNIST images (written by `dfk extract ... --out-dir`), and a GMM fitted on them by
`dfk gmm fit` (the model a user would encode with), in the layout of make_workload.py.

Usage: python3 make_real_workload.py DESCRIPTORS.npy OUTDIR ROWS N_FIT K DFK THREADS
Writes OUTDIR/x.npy, x.f32 (the first ROWS descriptors), gmm_{means,variances,weights}.{npy,f32}
(K components fitted on the first N_FIT descriptors, 30 EM iterations, seed 0) and dims.txt.
The fit is not a timing measurement and runs under nice -n 19.
"""
import os
import subprocess
import sys

import numpy as np


def main():
    src, out = sys.argv[1], sys.argv[2]
    rows, n_fit, k = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    dfk, threads = sys.argv[6], sys.argv[7]
    x = np.load(src, mmap_mode="r")
    if x.shape[0] < max(rows, n_fit):
        sys.exit(f"{src} has {x.shape[0]} descriptors, the workload needs {max(rows, n_fit)}")
    os.makedirs(out, exist_ok=True)
    fit = os.path.join(out, "x_fit.npy")
    np.save(fit, np.ascontiguousarray(x[:n_fit], dtype=np.float32))
    model = os.path.join(out, "gmm.dfk")
    run = lambda *a: subprocess.run(["nice", "-n", "19", dfk, "--quiet", "--threads", threads, *a], check=True)
    run("gmm", "fit", "--descriptors", fit, "--k", str(k), "--max-iter", "30", "--tol", "1e-4", "--out", model)
    run("gmm", "export", model, "--out-dir", os.path.join(out, "fitted"))
    os.remove(fit)
    arrays = {"x": np.ascontiguousarray(x[:rows], dtype=np.float32)}
    for name in ("means", "variances", "weights"):
        arrays["gmm_" + name] = np.load(os.path.join(out, "fitted", name + ".npy")).astype(np.float32)
    for name, a in arrays.items():
        np.save(os.path.join(out, name + ".npy"), a)
        a.astype("<f4").tofile(os.path.join(out, name + ".f32"))
    with open(os.path.join(out, "dims.txt"), "w") as f:
        f.write(f"{rows} {x.shape[1]} {k}\n")


if __name__ == "__main__":
    main()
