"""SVM stage of bench/run.sh: liblinear (Debian's liblinear-train, and scikit-learn's bundled
liblinear through LinearSVC) on the same data as dfk's solver, and their primal objectives.

  svm_bench.py prepare DIR          DIR/fv.f32 + labels.f32 + dims.txt (written by `dfk bench
                                    --stage svm --write-svm DIR`) or DIR/fv.npy + labels.npy ->
                                    DIR/fv.npy, DIR/labels.npy (int), DIR/train.libsvm
  svm_bench.py liblinear DIR C EPS BIAS SHIM
                                    liblinear-train -s 3 -e EPS -c C -B BIAS, training time from
                                    the LD_PRELOAD shim SHIM (bench/liblinear_time.c), primal
                                    objective computed here from the model file
  svm_bench.py sklearn DIR C EPS    LinearSVC(loss="hinge", dual=True, tol=EPS, C=C,
                                    intercept_scaling=1): liblinear solver 3 (L2R_L1LOSS_SVC_DUAL)
                                    with a regularised bias feature 1, i.e. -s 3 -B 1; fit time

Primal objective of one binary SVM (liblinear's, regularised bias w_b):
  1/2 (|w|^2 + w_b^2) + C sum_i max(0, 1 - y_i (<w, x_i> + w_b * bias));
with more than two classes (one-vs-rest in both liblinear and dfk) the sum over the classes.
Prints one JSON line per run.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def load(d):
    return np.load(os.path.join(d, "fv.npy")), np.load(os.path.join(d, "labels.npy"))


def prepare(d):
    if os.path.exists(os.path.join(d, "fv.f32")):
        n, dim = map(int, open(os.path.join(d, "dims.txt")).read().split())
        x = np.fromfile(os.path.join(d, "fv.f32"), "<f4").reshape(n, dim)
        y = np.fromfile(os.path.join(d, "labels.f32"), "<f4")
        np.save(os.path.join(d, "fv.npy"), x)
        np.save(os.path.join(d, "labels.npy"), (y > 0).astype(np.int64))
    x, y = load(d)
    out = os.path.join(d, "train.libsvm")
    if os.path.exists(out):
        return
    # %.9g reads back as the same float32; liblinear parses it as the nearest double.
    fmt = " ".join(f"{j + 1}:%.9g" for j in range(x.shape[1]))
    with open(out + ".tmp", "w") as f:
        for row, label in zip(x, y):
            f.write(f"{int(label)} " + fmt % tuple(row.tolist()) + "\n")
    os.replace(out + ".tmp", out)


def primal(x, y, classes, w, wb, bias, c):
    """Sum over the one-vs-rest tasks: class classes[t] against the rest, weights w[t], wb[t]."""
    total = 0.0
    x = x.astype(np.float64)
    for t, cls in enumerate(classes):
        yy = np.where(y == cls, 1.0, -1.0)
        f = x @ w[t] + wb[t] * bias
        total += 0.5 * (w[t] @ w[t] + wb[t] ** 2) + c * np.maximum(0.0, 1.0 - yy * f).sum()
    return float(total)


def read_model(path):
    head = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line == "w":
                break
            key, _, rest = line.partition(" ")
            head[key] = rest
        w = np.loadtxt(f, ndmin=2)
    labels = [int(v) for v in head["label"].split()]
    return labels, float(head["bias"]), w


def liblinear(d, c, eps, bias, shim):
    x, y = load(d)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model")
        env = dict(os.environ, LD_PRELOAD=os.path.abspath(shim))
        r = subprocess.run(
            ["liblinear-train", "-q", "-s", "3", "-e", str(eps), "-c", str(c), "-B", str(bias),
             os.path.join(d, "train.libsvm"), model],
            env=env, capture_output=True, text=True, check=True)
        secs = [float(l.split()[1]) for l in r.stderr.splitlines() if l.startswith("liblinear_train_seconds")]
        labels, b, w = read_model(model)
    if len(secs) != 1:
        sys.exit(f"liblinear shim reported {secs}: is liblinear-train dynamically linked?")
    # Rows: features then the bias weight; columns: one per one-vs-rest task.
    tasks = labels[:1] if len(labels) == 2 else labels
    ww, wb = w[:-1].T, w[-1]
    return {"impl": "liblinear", "stage": "svm", "n": len(y), "dim": x.shape[1],
            "classes": len(labels), "c": c, "eps": eps, "bias": b, "threads": 1,
            "seconds": secs[0], "objective": primal(x, y, tasks, ww, wb, b, c)}


def sklearn(d, c, eps):
    from sklearn.svm import LinearSVC
    x, y = load(d)
    m = LinearSVC(loss="hinge", dual=True, tol=eps, C=c, intercept_scaling=1.0, max_iter=1000)
    t = time.perf_counter()
    m.fit(x, y)
    secs = time.perf_counter() - t
    classes = list(m.classes_)
    tasks = classes[1:] if len(classes) == 2 else classes
    return {"impl": "sklearn", "stage": "svm", "n": len(y), "dim": x.shape[1],
            "classes": len(classes), "c": c, "eps": eps, "bias": 1.0, "threads": 1,
            "seconds": secs, "objective": primal(x, y, tasks, m.coef_.astype(np.float64),
                                                 m.intercept_.astype(np.float64), 1.0, c)}


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "prepare":
        prepare(d)
    elif cmd == "liblinear":
        print(json.dumps(liblinear(d, float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6])))
    elif cmd == "sklearn":
        print(json.dumps(sklearn(d, float(sys.argv[3]), float(sys.argv[4]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
