/* LD_PRELOAD shim that times liblinear's train() inside liblinear-train (Debian's
 * liblinear-tools links liblinear.so dynamically and ships no headers), so the harness times
 * training only, not the reading of the libsvm text file or the writing of the model.
 * Build: cc -O2 -shared -fPIC bench/liblinear_time.c -o liblinear_time.so -ldl
 * Prints "liblinear_train_seconds S" on stderr after each call to train(). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

struct model;
struct problem;
struct parameter;

struct model *train(const struct problem *prob, const struct parameter *param) {
  static struct model *(*real)(const struct problem *, const struct parameter *);
  if (!real) real = (struct model * (*)(const struct problem *, const struct parameter *))
                        dlsym(RTLD_NEXT, "train");
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  struct model *m = real(prob, param);
  clock_gettime(CLOCK_MONOTONIC, &b);
  fprintf(stderr, "liblinear_train_seconds %.6f\n",
          (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec));
  return m;
}
