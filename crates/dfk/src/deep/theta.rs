//! The trainer's parameterisation of a diagonal GMM and the per-group descent direction.
//!
//! θ = (μ, s, a) with σ = exp(s) and π = softmax(a): every value of θ is a valid GMM, so the
//! optimiser needs no constraints beyond the floors σ² ≥ σ²_min and π ≥ π_min, applied by
//! [`Theta::project`] after each step. θ is kept in `f64`; the encoder sees its `f32` rounding.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gmm::Gmm;

/// GMM parameters (or a gradient / direction with the same shapes): means μ (`K × D`),
/// log standard deviations s = log σ (`K × D`) and weight logits a (`K`, π = softmax(a)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Theta {
    /// Number of components.
    pub k: usize,
    /// Descriptor dimension.
    pub d: usize,
    /// μ, `K × D` row-major.
    pub means: Vec<f64>,
    /// s = log σ, `K × D` row-major.
    pub log_std: Vec<f64>,
    /// a, `K` values with π = softmax(a).
    pub logits: Vec<f64>,
}

/// Which parameter groups the trainer moves (the others stay at their initial values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamGroups {
    /// Move the means μ.
    pub means: bool,
    /// Move the log standard deviations s.
    pub log_std: bool,
    /// Move the weight logits a.
    pub weights: bool,
}

impl Default for ParamGroups {
    /// All three groups: the numpy prototype found that moving the means alone gains nothing.
    fn default() -> Self {
        Self {
            means: true,
            log_std: true,
            weights: true,
        }
    }
}

/// Lower bounds kept by [`Theta::project`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Floors {
    /// Minimum log σ per entry (`K × D`), i.e. ½ log σ²_min.
    pub min_log_std: Vec<f64>,
    /// Minimum mixture weight π_min (absolute).
    pub min_weight: f64,
}

impl Floors {
    /// Floors relative to an initial GMM: σ²_kd ≥ `variance_floor` × (mean over components of
    /// the initial σ²_·d), so the bound follows each dimension's scale; π_k ≥ `min_weight`.
    pub fn relative_to(init: &Gmm, variance_floor: f64, min_weight: f64) -> Self {
        let (k, d) = (init.k(), init.d());
        let mut avg = vec![0f64; d];
        for c in 0..k {
            for (a, &v) in avg.iter_mut().zip(init.variance(c)) {
                *a += v as f64 / k as f64;
            }
        }
        let per_dim: Vec<f64> = avg
            .iter()
            .map(|&a| 0.5 * (variance_floor * a).max(1e-30).ln())
            .collect();
        let mut min_log_std = Vec::with_capacity(k * d);
        for _ in 0..k {
            min_log_std.extend_from_slice(&per_dim);
        }
        Self {
            min_log_std,
            min_weight,
        }
    }
}

impl Theta {
    /// All-zero values of the given shape.
    pub fn zeros(k: usize, d: usize) -> Self {
        Self {
            k,
            d,
            means: vec![0.0; k * d],
            log_std: vec![0.0; k * d],
            logits: vec![0.0; k],
        }
    }

    /// The parameters of `gmm`: s = ½ log σ², a = log π (weights of exactly zero become a very
    /// negative logit rather than −∞).
    pub fn from_gmm(gmm: &Gmm) -> Self {
        Self {
            k: gmm.k(),
            d: gmm.d(),
            means: gmm.means().iter().map(|&v| v as f64).collect(),
            log_std: gmm
                .variances()
                .iter()
                .map(|&v| 0.5 * (v as f64).ln())
                .collect(),
            logits: gmm
                .weights()
                .iter()
                .map(|&w| (w as f64).max(1e-30).ln())
                .collect(),
        }
    }

    /// Mixture weights π = softmax(a), by log-sum-exp.
    pub fn weights(&self) -> Vec<f64> {
        let m = self
            .logits
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = self.logits.iter().map(|&a| (a - m).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        self.means
            .iter()
            .chain(&self.log_std)
            .chain(&self.logits)
            .all(|v| v.is_finite())
    }

    /// The GMM with these parameters, rounded to `f32`. Fails with [`Error::NonFinite`] when a
    /// value (or σ², π after rounding) is not finite or σ² underflows to zero, so a model with
    /// NaN/Inf can never be built from θ.
    pub fn to_gmm(&self) -> Result<Gmm> {
        let non_finite = |what: &str, index: usize| Error::NonFinite {
            what: format!("learned GMM {what}"),
            index,
        };
        let means: Vec<f32> = self.means.iter().map(|&v| v as f32).collect();
        if let Some(i) = means.iter().position(|v| !v.is_finite()) {
            return Err(non_finite("means", i));
        }
        let variances: Vec<f32> = self
            .log_std
            .iter()
            .map(|&s| (2.0 * s).exp() as f32)
            .collect();
        if let Some(i) = variances.iter().position(|v| !v.is_finite() || *v <= 0.0) {
            return Err(non_finite("variances", i));
        }
        let weights: Vec<f32> = self.weights().into_iter().map(|w| w as f32).collect();
        if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
            return Err(non_finite("weights", i));
        }
        Gmm::new(self.k, self.d, means, variances, weights)
    }

    /// ⟨self, other⟩ over all three groups.
    pub fn dot(&self, other: &Theta) -> f64 {
        dot(&self.means, &other.means)
            + dot(&self.log_std, &other.log_std)
            + dot(&self.logits, &other.logits)
    }

    /// Euclidean norms of the (μ, s, a) groups.
    pub fn group_norms(&self) -> [f64; 3] {
        [
            dot(&self.means, &self.means).sqrt(),
            dot(&self.log_std, &self.log_std).sqrt(),
            dot(&self.logits, &self.logits).sqrt(),
        ]
    }

    /// θ + t·dir.
    pub fn step(&self, t: f64, dir: &Theta) -> Theta {
        let axpy = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + t * y).collect();
        Theta {
            k: self.k,
            d: self.d,
            means: axpy(&self.means, &dir.means),
            log_std: axpy(&self.log_std, &dir.log_std),
            logits: axpy(&self.logits, &dir.logits),
        }
    }

    /// Applies the floors: s ≥ s_min entrywise; then the weights below π_min are set to π_min
    /// and the others scaled down together to keep Σπ = 1, repeated while that scaling takes
    /// another below π_min (at most K rounds; K·π_min < 1 leaves one above), so that every
    /// π_k ≥ π_min exactly up to rounding. Logits are re-centred to max 0 (π is unchanged by
    /// that). A weight floor with K·π_min ≥ 1 cannot hold and leaves the weights as they are
    /// ([`crate::deep::train_deep`] refuses such a floor).
    pub fn project(&mut self, floors: &Floors) {
        for (s, &lo) in self.log_std.iter_mut().zip(&floors.min_log_std) {
            if *s < lo {
                *s = lo;
            }
        }
        let m = self
            .logits
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        if !m.is_finite() {
            return;
        }
        let floor = floors.min_weight;
        let mut w = self.weights();
        if floor > 0.0 && w.iter().any(|&v| v < floor) {
            let mut floored: Vec<bool> = w.iter().map(|&v| v < floor).collect();
            loop {
                let count = floored.iter().filter(|&&f| f).count();
                let free: f64 = w.iter().zip(&floored).filter(|p| !*p.1).map(|p| p.0).sum();
                let scale = (1.0 - count as f64 * floor) / free;
                if !(free > 0.0 && scale.is_finite()) {
                    break;
                }
                let mut more = false;
                for (v, f) in w.iter().zip(floored.iter_mut()) {
                    if !*f && v * scale < floor {
                        *f = true;
                        more = true;
                    }
                }
                if !more {
                    for (v, &f) in w.iter_mut().zip(&floored) {
                        *v = if f { floor } else { *v * scale };
                    }
                    break;
                }
            }
            let logs: Vec<f64> = w.iter().map(|v| v.ln()).collect();
            let top = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            for (a, l) in self.logits.iter_mut().zip(logs) {
                *a = l - top;
            }
            return;
        }
        for a in &mut self.logits {
            *a -= m;
        }
    }

    /// Per-group normalised steepest-descent direction for the gradient `grad` at `self`
    /// (method.md §5):
    /// d_μ = −σ⊙(σ⊙∇_μ)/rms(σ⊙∇_μ) (means move in units of σ), d_s = −∇_s/rms(∇_s),
    /// d_a = −∇_a/rms(∇_a). Groups switched off in `groups`, or with a zero gradient, get a zero
    /// direction. Every non-zero group has ⟨∇, d⟩ < 0, so the sum is a descent direction.
    pub fn descent_direction(&self, grad: &Theta, groups: ParamGroups) -> Theta {
        let mut dir = Theta::zeros(self.k, self.d);
        if groups.means {
            let sg: Vec<f64> = grad
                .means
                .iter()
                .zip(&self.log_std)
                .map(|(g, s)| s.exp() * g)
                .collect();
            let r = rms(&sg);
            if r > 0.0 {
                for ((o, v), s) in dir.means.iter_mut().zip(&sg).zip(&self.log_std) {
                    *o = -s.exp() * v / r;
                }
            }
        }
        let normalised = |out: &mut [f64], g: &[f64]| {
            let r = rms(g);
            if r > 0.0 {
                for (o, v) in out.iter_mut().zip(g) {
                    *o = -v / r;
                }
            }
        };
        if groups.log_std {
            normalised(&mut dir.log_std, &grad.log_std);
        }
        if groups.weights {
            normalised(&mut dir.logits, &grad.logits);
        }
        dir
    }

    /// Root-mean-square distance to `other` in units of `other`'s σ for the means
    /// (√mean((μ−μ₀)²/σ₀²)), the RMS change of log σ², and the largest change of a weight:
    /// how far the parameters moved, for the report.
    pub fn displacement(&self, other: &Theta) -> Displacement {
        let n = self.means.len().max(1) as f64;
        let mean_sq: f64 = self
            .means
            .iter()
            .zip(&other.means)
            .zip(&other.log_std)
            .map(|((a, b), s)| ((a - b) / s.exp()).powi(2))
            .sum();
        let logvar_sq: f64 = self
            .log_std
            .iter()
            .zip(&other.log_std)
            .map(|(a, b)| (2.0 * (a - b)).powi(2))
            .sum();
        let weight = self
            .weights()
            .iter()
            .zip(other.weights())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        Displacement {
            means_in_sigma: (mean_sq / n).sqrt(),
            log_variance_rms: (logvar_sq / n).sqrt(),
            weight_max_abs: weight,
        }
    }
}

/// How far learned parameters moved from the initial ones (see [`Theta::displacement`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Displacement {
    /// √mean_kd ((μ − μ₀)/σ₀)².
    pub means_in_sigma: f64,
    /// √mean_kd (log σ² − log σ₀²)².
    pub log_variance_rms: f64,
    /// max_k |π_k − π₀_k|.
    pub weight_max_abs: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rms(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        (dot(v, v) / v.len() as f64).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmm() -> Gmm {
        Gmm::new(
            2,
            2,
            vec![0.0, 1.0, -1.0, 0.5],
            vec![0.25, 4.0, 1.0, 0.5],
            vec![0.25, 0.75],
        )
        .unwrap()
    }

    #[test]
    fn round_trip_through_gmm() {
        let g = gmm();
        let back = Theta::from_gmm(&g).to_gmm().unwrap();
        for (a, b) in g.variances().iter().zip(back.variances()) {
            assert!((a - b).abs() <= 1e-6 * a);
        }
        for (a, b) in g.weights().iter().zip(back.weights()) {
            assert!((a - b).abs() <= 1e-6);
        }
        assert_eq!(g.means(), back.means());
    }

    #[test]
    fn non_finite_parameters_are_rejected() {
        let mut t = Theta::from_gmm(&gmm());
        t.log_std[1] = 400.0; // σ² = e^800 overflows f32
        assert!(matches!(t.to_gmm(), Err(Error::NonFinite { .. })));
        let mut t = Theta::from_gmm(&gmm());
        t.means[0] = f64::NAN;
        assert!(matches!(t.to_gmm(), Err(Error::NonFinite { .. })));
        let mut t = Theta::from_gmm(&gmm());
        t.log_std[0] = -400.0; // σ² underflows to zero
        assert!(matches!(t.to_gmm(), Err(Error::NonFinite { .. })));
    }

    #[test]
    fn direction_is_normalised_per_group_and_descends() {
        let theta = Theta::from_gmm(&gmm());
        let mut grad = Theta::zeros(2, 2);
        grad.means = vec![1e3, -2e3, 0.0, 5e2];
        grad.log_std = vec![1e-2, 0.0, -3e-2, 1e-2];
        grad.logits = vec![1e-5, -1e-5];
        let dir = theta.descent_direction(&grad, ParamGroups::default());
        // Each group has unit RMS after scaling (μ: in units of σ), whatever the raw magnitude.
        let sigma: Vec<f64> = theta.log_std.iter().map(|s| s.exp()).collect();
        let scaled: Vec<f64> = dir.means.iter().zip(&sigma).map(|(d, s)| d / s).collect();
        assert!((rms(&scaled) - 1.0).abs() < 1e-12);
        assert!((rms(&dir.log_std) - 1.0).abs() < 1e-12);
        assert!((rms(&dir.logits) - 1.0).abs() < 1e-12);
        assert!(grad.dot(&dir) < 0.0);
        // μ direction: −σ²∇ up to a positive factor.
        for ((d, s), g) in dir.means.iter().zip(&sigma).zip(&grad.means) {
            assert!(d * (-s * s * g) >= 0.0);
        }
        let only_means = theta.descent_direction(
            &grad,
            ParamGroups {
                means: true,
                log_std: false,
                weights: false,
            },
        );
        assert!(only_means.log_std.iter().all(|&v| v == 0.0));
        assert!(only_means.logits.iter().all(|&v| v == 0.0));
        let zero = theta.descent_direction(&Theta::zeros(2, 2), ParamGroups::default());
        assert!(zero.is_finite() && zero.dot(&zero) == 0.0);
    }

    #[test]
    fn projection_keeps_the_floors() {
        let g = gmm();
        let floors = Floors::relative_to(&g, 0.1, 0.05);
        let mut t = Theta::from_gmm(&g);
        t.log_std = vec![-10.0; 4];
        t.logits = vec![0.0, -20.0];
        t.project(&floors);
        let back = t.to_gmm().unwrap();
        // Floor of dimension 0: 0.1 × mean(0.25, 1.0); dimension 1: 0.1 × mean(4.0, 0.5).
        let expect = [0.0625f32, 0.225];
        for c in 0..2 {
            for (v, e) in back.variance(c).iter().zip(expect) {
                assert!((v - e).abs() < 1e-6);
            }
        }
        // π₁ = π_min exactly (up to rounding), the rest of the mass on π₀.
        assert!((t.weights()[1] - 0.05).abs() < 1e-12, "{:?}", t.weights());
        assert!((t.weights()[0] - 0.95).abs() < 1e-12);
    }

    /// Scaling the free weights down can take another below the floor: it is floored too, and
    /// the weights above the floor keep their ratios.
    #[test]
    fn projection_floors_weights_exactly_in_rounds() {
        let mut floors = Floors::relative_to(&gmm(), 0.1, 0.2);
        let mut t = Theta::zeros(4, 1);
        // π = 0.05, 0.21, 0.3, 0.44: the first is floored, which pushes the second below.
        let pi = [0.05f64, 0.21, 0.3, 0.44];
        t.logits = pi.iter().map(|p| p.ln()).collect();
        t.log_std = vec![0.0; 4];
        floors.min_log_std = vec![-30.0; 4];
        t.project(&floors);
        let w = t.weights();
        assert!(
            (w[0] - 0.2).abs() < 1e-12 && (w[1] - 0.2).abs() < 1e-12,
            "{w:?}"
        );
        assert!((w[2] / w[3] - 0.3 / 0.44).abs() < 1e-12, "{w:?}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(w.iter().all(|&v| v >= 0.2 - 1e-12), "{w:?}");
        assert_eq!(t.logits.iter().cloned().fold(f64::MIN, f64::max), 0.0);
    }

    #[test]
    fn displacement_measures_moves() {
        let a = Theta::from_gmm(&gmm());
        let mut b = a.clone();
        assert_eq!(b.displacement(&a), Displacement::default());
        b.means[0] += 0.5; // σ = 0.5 → one σ in one of four entries
        b.log_std[3] += 0.5; // log σ² changes by 1
        let m = b.displacement(&a);
        assert!((m.means_in_sigma - 0.5).abs() < 1e-12);
        assert!((m.log_variance_rms - 0.5).abs() < 1e-12);
    }
}
