/* Times VLFeat 0.9.21 (Debian libvlfeat-dev) on the comparison workloads written by
 * make_workload.py. Build: cc -O2 -fopenmp vlfeat_bench.c -lvl -lm -o vlfeat_bench
 *
 *   vlfeat_bench encode DIR IMAGES PER_IMAGE REPS THREADS   vl_fisher_encode (improved), per image
 *   vlfeat_bench em     DIR N ITERS REPS THREADS             vl_gmm_em from the given GMM
 *   vlfeat_bench init   DIR N REPS THREADS MAXITER OUT       vl_gmm_init_with_kmeans (VLFeat's default
 *                                                            k-means), timed REPS times; after the first
 *                                                            (unless MAXITER is 0), EM to convergence (VLFeat's rule: relative
 *                                                            LL change < 1e-5, at most MAXITER
 *                                                            iterations), final model written to
 *                                                            OUT_{means,variances,weights}.f32
 *   vlfeat_bench sift   REPS                                 vl_dsift, flat window, step 4, on the
 *                                                            synthetic 640x480 image of `dfk bench
 *                                                            --stage sift`: bins 4/6/8/10 each after
 *                                                            smoothing with sigma = bin/6 (vl_phow), and
 *                                                            bin 8 alone without smoothing; one thread
 *
 * DIR holds x.f32 (rows x D, little-endian float32), gmm_means.f32, gmm_variances.f32 (K x D),
 * gmm_weights.f32 (K) and dims.txt ("rows D K"). Prints one JSON object per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vl/generic.h>
#include <vl/fisher.h>
#include <vl/gmm.h>
#include <vl/kmeans.h>
#include <vl/dsift.h>
#include <vl/imopv.h>
#include <math.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float *load(const char *dir, const char *name, size_t count) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
  float *buf = malloc(count * sizeof(float));
  if (!buf || fread(buf, sizeof(float), count, f) != count) {
    fprintf(stderr, "%s: expected %zu floats\n", path, count);
    exit(2);
  }
  fclose(f);
  return buf;
}

/* The same deterministic image as dfk's bench (smooth structure plus texture). */
static float *sift_image(int w, int h) {
  float *im = malloc(sizeof(float) * w * h);
  for (int i = 0; i < w * h; i++) {
    float x = (float)(i % w), y = (float)(i / w);
    float v = 0.5f + 0.25f * sinf(x * 0.031f) * cosf(y * 0.023f) +
              0.2f * (sinf(x * 0.71f + y * 1.37f) * cosf(x * 0.13f - y * 0.29f));
    im[i] = v < 0 ? 0 : (v > 1 ? 1 : v);
  }
  return im;
}

/* One image through a filter made once per bin size and reused, as when extracting a data set
 * of same-size images (dfk's bench likewise reuses its scratch and output buffers). */
static size_t dsift_once(VlDsiftFilter *f, const float *im, float *tmp, int w, int h, int bin,
                         int smooth) {
  const float *src = im;
  if (smooth) {
    double sigma = bin / 6.0;
    vl_imsmooth_f(tmp, w, im, w, h, w, sigma, sigma);
    src = tmp;
  }
  vl_dsift_process(f, src);
  return vl_dsift_get_keypoint_num(f);
}

static int sift_mode(int reps) {
  int w = 640, h = 480, bins[4] = {4, 6, 8, 10};
  float *im = sift_image(w, h), *tmp = malloc(sizeof(float) * w * h);
  VlDsiftFilter *filters[4];
  for (int b = 0; b < 4; b++) {
    filters[b] = vl_dsift_new_basic(w, h, 4, bins[b]);
    vl_dsift_set_flat_window(filters[b], 1);
  }
  vl_set_num_threads(1);
  for (int r = 0; r <= reps; r++) {
    double t = now();
    size_t n = 0;
    for (int b = 0; b < 4; b++) n += dsift_once(filters[b], im, tmp, w, h, bins[b], 1);
    double t4 = now() - t;
    t = now();
    size_t n8 = dsift_once(filters[2], im, tmp, w, h, 8, 0);
    double t8 = now() - t;
    if (r > 0)
      printf("{\"impl\":\"vlfeat\",\"stage\":\"sift\",\"four_scales\":{\"median_s\":%.6f,"
             "\"descriptors\":%zu},\"bin8\":{\"median_s\":%.6f,\"descriptors\":%zu}}\n",
             t4, n, t8, n8);
  }
  for (int b = 0; b < 4; b++) vl_dsift_delete(filters[b]);
  free(im);
  free(tmp);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "sift")) return sift_mode(atoi(argv[2]));
  if (argc < 3) { fprintf(stderr, "usage: see the header of vlfeat_bench.c\n"); return 2; }
  const char *mode = argv[1], *dir = argv[2];
  char path[4096];
  snprintf(path, sizeof path, "%s/dims.txt", dir);
  FILE *f = fopen(path, "r");
  size_t rows, D, K;
  if (!f || fscanf(f, "%zu %zu %zu", &rows, &D, &K) != 3) { fprintf(stderr, "bad %s\n", path); return 2; }
  fclose(f);
  float *x = load(dir, "x.f32", rows * D);
  float *means = load(dir, "gmm_means.f32", K * D);
  float *vars = load(dir, "gmm_variances.f32", K * D);
  float *weights = load(dir, "gmm_weights.f32", K);

  if (!strcmp(mode, "encode") && argc == 7) {
    size_t images = atoi(argv[3]), per = atoi(argv[4]), reps = atoi(argv[5]);
    vl_set_num_threads(atoi(argv[6]));
    if (images * per > rows) { fprintf(stderr, "not enough rows\n"); return 2; }
    float *enc = malloc(2 * K * D * sizeof(float));
    for (size_t r = 0; r <= reps; r++) {
      double t = now(), check = 0;
      for (size_t i = 0; i < images; i++) {
        vl_fisher_encode(enc, VL_TYPE_FLOAT, means, D, K, vars, weights, x + i * per * D, per,
                         VL_FISHER_FLAG_IMPROVED);
        check += enc[0];
      }
      t = now() - t;
      if (r > 0) /* the first run warms up */
        printf("{\"impl\":\"vlfeat\",\"stage\":\"encode\",\"k\":%zu,\"d\":%zu,\"descriptors\":%zu,"
               "\"seconds\":%.6f,\"threads\":%zu,\"check\":%g}\n",
               K, D, images * per, t, (size_t)vl_get_max_threads(), check);
    }
    free(enc);
  } else if (!strcmp(mode, "em") && argc == 7) {
    size_t n = atoi(argv[3]), iters = atoi(argv[4]), reps = atoi(argv[5]);
    vl_set_num_threads(atoi(argv[6]));
    if (n > rows) { fprintf(stderr, "not enough rows\n"); return 2; }
    for (size_t r = 0; r < reps; r++) {
      VlGMM *gmm = vl_gmm_new(VL_TYPE_FLOAT, D, K);
      vl_gmm_set_means(gmm, means);
      vl_gmm_set_covariances(gmm, vars);
      vl_gmm_set_priors(gmm, weights);
      vl_gmm_set_max_num_iterations(gmm, iters);
      double t = now();
      double ll = vl_gmm_em(gmm, x, n);
      t = now() - t;
      printf("{\"impl\":\"vlfeat\",\"stage\":\"em\",\"k\":%zu,\"d\":%zu,\"descriptors\":%zu,"
             "\"seconds\":%.6f,\"iterations\":%zu,\"loglik_total\":%.6f,\"threads\":%zu}\n",
             K, D, n, t / iters, iters, ll, (size_t)vl_get_max_threads());
      vl_gmm_delete(gmm);
    }
  } else if (!strcmp(mode, "init") && argc == 8) {
    size_t n = atoi(argv[3]), reps = atoi(argv[4]), maxiter = atoi(argv[6]);
    const char *out = argv[7];
    vl_set_num_threads(atoi(argv[5]));
    if (n > rows) { fprintf(stderr, "not enough rows\n"); return 2; }
    for (size_t r = 0; r < reps; r++) {
      VlGMM *gmm = vl_gmm_new(VL_TYPE_FLOAT, D, K);
      double t = now();
      vl_gmm_init_with_kmeans(gmm, x, n, NULL);
      t = now() - t;
      double em_s = 0, ll = 0;
      if (r == 0 && maxiter > 0) {
        vl_gmm_set_max_num_iterations(gmm, maxiter);
        em_s = now();
        /* The total log-likelihood of the model the last iteration started from. */
        ll = vl_gmm_em(gmm, x, n);
        em_s = now() - em_s;
        const char *names[3] = {"means", "variances", "weights"};
        const float *arrays[3] = {vl_gmm_get_means(gmm), vl_gmm_get_covariances(gmm),
                                  vl_gmm_get_priors(gmm)};
        size_t counts[3] = {K * D, K * D, K};
        for (int a = 0; a < 3; a++) {
          snprintf(path, sizeof path, "%s_%s.f32", out, names[a]);
          FILE *o = fopen(path, "wb");
          if (!o || fwrite(arrays[a], sizeof(float), counts[a], o) != counts[a] || fclose(o)) {
            fprintf(stderr, "cannot write %s\n", path);
            return 2;
          }
        }
        printf("{\"impl\":\"vlfeat\",\"stage\":\"init\",\"k\":%zu,\"d\":%zu,\"descriptors\":%zu,"
               "\"seconds\":%.6f,\"em_seconds\":%.6f,\"em_max_iterations\":%zu,"
               "\"loglik_avg_em\":%.6f,\"model\":\"%s\",\"threads\":%zu}\n",
               K, D, n, t, em_s, maxiter, ll / n, out, (size_t)vl_get_max_threads());
      } else {
        printf("{\"impl\":\"vlfeat\",\"stage\":\"init\",\"k\":%zu,\"d\":%zu,\"descriptors\":%zu,"
               "\"seconds\":%.6f,\"threads\":%zu}\n",
               K, D, n, t, (size_t)vl_get_max_threads());
      }
      vl_gmm_delete(gmm);
    }
  } else {
    fprintf(stderr, "unknown mode or wrong argument count: see vlfeat_bench.c\n");
    return 2;
  }
  free(x); free(means); free(vars); free(weights);
  return 0;
}
