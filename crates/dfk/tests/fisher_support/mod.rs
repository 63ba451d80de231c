//! Scalar f64 reference of the Fisher vector and its backward pass (method.md §1 and §3),
//! written directly from the per-descriptor formulas (no matrix products, no shifting), to
//! check the GEMM implementation in `dfk::fisher`. Shared by the `fisher_*` tests.
#![allow(dead_code)]

use dfk::gmm::Gmm;

/// GMM parameters in the learning parameterisation: μ (K×D), s = log σ (K×D), logits a (K).
#[derive(Clone, Debug)]
pub struct Params {
    pub k: usize,
    pub d: usize,
    pub mu: Vec<f64>,
    pub s: Vec<f64>,
    pub a: Vec<f64>,
}

impl Params {
    /// The parameters of `gmm` (σ = √σ², a = log π).
    pub fn of(gmm: &Gmm) -> Self {
        Self {
            k: gmm.k(),
            d: gmm.d(),
            mu: gmm.means().iter().map(|&v| v as f64).collect(),
            s: gmm
                .variances()
                .iter()
                .map(|&v| 0.5 * (v as f64).ln())
                .collect(),
            a: gmm.weights().iter().map(|&v| (v as f64).ln()).collect(),
        }
    }

    pub fn priors(&self) -> Vec<f64> {
        let m = self.a.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = self.a.iter().map(|v| (v - m).exp()).collect();
        let t: f64 = e.iter().sum();
        e.iter().map(|v| v / t).collect()
    }
}

/// Post-processing settings of the reference.
#[derive(Clone, Copy, Debug)]
pub struct RefOptions {
    pub improved: bool,
    pub power: f64,
    pub l2: bool,
    pub eps: f64,
    pub threshold: f64,
}

impl RefOptions {
    pub fn of(o: &dfk::fisher::FisherOptions) -> Self {
        Self {
            improved: o.improved,
            power: o.power as f64,
            l2: o.l2,
            eps: o.sqrt_epsilon as f64,
            threshold: o.posterior_threshold as f64,
        }
    }
}

/// Everything the backward pass needs from the forward pass.
pub struct Forward {
    pub gamma: Vec<f64>, // N×K, after skipping (mask applied)
    pub raw_gamma: Vec<f64>,
    pub mask: Vec<bool>,
    pub phi_raw: Vec<f64>,
    pub p: Vec<f64>,
    pub norm: f64,
    pub phi: Vec<f64>,
}

/// Fisher vector of `x` (N×D) by the definition, in f64.
pub fn forward(x: &[f64], th: &Params, o: &RefOptions) -> Forward {
    let (k, d) = (th.k, th.d);
    let n = x.len() / d;
    let pi = th.priors();
    let mut raw_gamma = vec![0.0; n * k];
    for i in 0..n {
        let l: Vec<f64> = (0..k)
            .map(|c| {
                let mut l = pi[c].ln();
                for j in 0..d {
                    let z = (x[i * d + j] - th.mu[c * d + j]) / th.s[c * d + j].exp();
                    l -= th.s[c * d + j] + 0.5 * z * z;
                }
                l
            })
            .collect();
        let m = l.iter().cloned().fold(f64::MIN, f64::max);
        let t: f64 = l.iter().map(|v| (v - m).exp()).sum();
        for c in 0..k {
            raw_gamma[i * k + c] = (l[c] - m).exp() / t;
        }
    }
    let mask: Vec<bool> = (0..n * k)
        .map(|ic| raw_gamma[ic] >= o.threshold && pi[ic % k] >= 1e-6)
        .collect();
    let gamma: Vec<f64> = (0..n * k)
        .map(|ic| if mask[ic] { raw_gamma[ic] } else { 0.0 })
        .collect();
    let kd = k * d;
    let mut phi_raw = vec![0.0; 2 * kd];
    for c in 0..k {
        let cu = 1.0 / (n as f64 * pi[c].sqrt());
        let cv = cu / 2f64.sqrt();
        for j in 0..d {
            let (mut su, mut sv) = (0.0, 0.0);
            for i in 0..n {
                let g = gamma[i * k + c];
                let z = (x[i * d + j] - th.mu[c * d + j]) / th.s[c * d + j].exp();
                su += g * z;
                sv += g * (z * z - 1.0);
            }
            phi_raw[c * d + j] = cu * su;
            phi_raw[kd + c * d + j] = cv * sv;
        }
    }
    let p: Vec<f64> = phi_raw
        .iter()
        .map(|&f| {
            if o.improved {
                ((f.abs() + o.eps).powf(o.power) - o.eps.powf(o.power)).copysign(f)
            } else {
                f
            }
        })
        .collect();
    let norm = if o.l2 {
        p.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12)
    } else {
        1.0
    };
    let phi = p.iter().map(|v| v / norm).collect();
    Forward {
        gamma,
        raw_gamma,
        mask,
        phi_raw,
        p,
        norm,
        phi,
    }
}

/// Gradient of ⟨g, φ(x)⟩ by the per-descriptor formulas of method.md §3 (with the skip mask):
/// returns (∂μ, ∂s, ∂a).
pub fn backward(
    x: &[f64],
    th: &Params,
    o: &RefOptions,
    g: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (k, d) = (th.k, th.d);
    let n = x.len() / d;
    let kd = k * d;
    let f = forward(x, th, o);
    let pi = th.priors();
    let dot: f64 = f.phi.iter().zip(g).map(|(a, b)| a * b).sum();
    let gp: Vec<f64> = (0..2 * kd)
        .map(|j| {
            if o.l2 {
                (g[j] - f.phi[j] * dot) / f.norm
            } else {
                g[j]
            }
        })
        .collect();
    let gphi: Vec<f64> = (0..2 * kd)
        .map(|j| {
            if o.improved {
                let t = f.phi_raw[j].abs() + o.eps;
                if t > 0.0 {
                    gp[j] * o.power * t.powf(o.power - 1.0)
                } else {
                    0.0
                }
            } else {
                gp[j]
            }
        })
        .collect();
    let c: Vec<f64> = pi.iter().map(|p| 1.0 / (n as f64 * p.sqrt())).collect();
    let cp: Vec<f64> = c.iter().map(|v| v / 2f64.sqrt()).collect();
    let z =
        |i: usize, cc: usize, j: usize| (x[i * d + j] - th.mu[cc * d + j]) / th.s[cc * d + j].exp();
    let mut dmu = vec![0.0; kd];
    let mut ds = vec![0.0; kd];
    let mut e = vec![0.0; k];
    for i in 0..n {
        let a: Vec<f64> = (0..k)
            .map(|cc| {
                if !f.mask[i * k + cc] {
                    return 0.0;
                }
                (0..d)
                    .map(|j| {
                        let zz = z(i, cc, j);
                        c[cc] * gphi[cc * d + j] * zz
                            + cp[cc] * gphi[kd + cc * d + j] * (zz * zz - 1.0)
                    })
                    .sum()
            })
            .collect();
        let s: f64 = (0..k).map(|cc| f.gamma[i * k + cc] * a[cc]).sum();
        for cc in 0..k {
            let gr = f.raw_gamma[i * k + cc];
            let gm = f.gamma[i * k + cc];
            let b = gr * (a[cc] - s);
            e[cc] += b;
            for j in 0..d {
                let zz = z(i, cc, j);
                let sg = th.s[cc * d + j].exp();
                let (gu, gv) = (gphi[cc * d + j], gphi[kd + cc * d + j]);
                let dz = gm * (c[cc] * gu + 2.0 * cp[cc] * gv * zz);
                dmu[cc * d + j] += (b * zz - dz) / sg;
                ds[cc * d + j] += b * (zz * zz - 1.0) - dz * zz;
            }
        }
    }
    for (cc, ec) in e.iter_mut().enumerate() {
        for j in 0..d {
            let i = cc * d + j;
            *ec -= 0.5 * (gphi[i] * f.phi_raw[i] + gphi[kd + i] * f.phi_raw[kd + i]);
        }
    }
    let es: f64 = e.iter().sum();
    let da = (0..k).map(|cc| e[cc] - pi[cc] * es).collect();
    (dmu, ds, da)
}

/// Deterministic pseudo-random numbers (splitmix64), uniform in [0, 1).
pub struct Rng(pub u64);

impl Rng {
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A random GMM (means spread `spread`, σ in [0.5, 1.2]·`scale`) and `n` descriptors drawn
/// from it, as f32.
pub fn random_case(
    rng: &mut Rng,
    k: usize,
    d: usize,
    n: usize,
    spread: f64,
    scale: f64,
) -> (Gmm, Vec<f32>) {
    let means: Vec<f32> = (0..k * d).map(|_| (spread * rng.normal()) as f32).collect();
    let vars: Vec<f32> = (0..k * d)
        .map(|_| (scale * (0.5 + 0.7 * rng.uniform())).powi(2) as f32)
        .collect();
    let w: Vec<f32> = (0..k).map(|_| (0.3 + rng.uniform()) as f32).collect();
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = (rng.uniform() * k as f64) as usize % k;
        for j in 0..d {
            x.push((means[c * d + j] as f64 + vars[c * d + j].sqrt() as f64 * rng.normal()) as f32);
        }
    }
    (Gmm::new(k, d, means, vars, w).unwrap(), x)
}

pub fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// max |a − b| and that divided by max(max|b|, tiny).
pub fn errors(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let abs = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max).max(1e-300);
    (abs, abs / scale)
}
