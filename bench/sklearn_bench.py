"""Times scikit-learn's GaussianMixture(covariance_type="diag") EM on a bench/ workload.

One EM iteration = scikit-learn's own E-step + M-step (`_e_step`, `_m_step`, exactly what
`fit` runs per iteration) on a model set up from the workload's GMM by a one-iteration fit
(weights_init/means_init/precisions_init); the median of M timed iterations. Thread count: set
OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting Python; threadpoolctl limits it again here.

Usage: python3 sklearn_bench.py DIR N M THREADS   (prints one JSON line)
"""
import json
import os
import statistics
import sys
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits


def setup(x, means, variances, weights):
    gm = GaussianMixture(
        n_components=means.shape[0],
        covariance_type="diag",
        tol=0.0,
        reg_covar=1e-10,
        max_iter=1,
        init_params="random_from_data",
        weights_init=weights,
        means_init=means,
        precisions_init=1.0 / variances,
        random_state=0,
    )
    gm.fit(x)
    return gm


def iteration_times(gm, x, m):
    times = []
    ll = None
    for _ in range(m):
        t = time.perf_counter()
        log_prob_norm, log_resp = gm._e_step(x)
        gm._m_step(x, log_resp)
        times.append(time.perf_counter() - t)
        ll = float(log_prob_norm) if ll is None else ll
    return times, ll


def main():
    d, n, m, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    x = np.load(os.path.join(d, "x.npy"))[:n].astype(np.float64)
    means = np.load(os.path.join(d, "gmm_means.npy")).astype(np.float64)
    variances = np.load(os.path.join(d, "gmm_variances.npy")).astype(np.float64)
    weights = np.load(os.path.join(d, "gmm_weights.npy")).astype(np.float64)
    weights /= weights.sum()
    warnings.simplefilter("ignore", ConvergenceWarning)
    with threadpool_limits(limits=threads):
        gm = setup(x, means, variances, weights)
        times, ll = iteration_times(gm, x, m)
    print(json.dumps({
        "impl": "sklearn", "stage": "em", "k": means.shape[0], "d": x.shape[1],
        "descriptors": n, "seconds": statistics.median(times), "times_s": times,
        "loglik_avg": ll, "threads": threads,
    }))


if __name__ == "__main__":
    main()
