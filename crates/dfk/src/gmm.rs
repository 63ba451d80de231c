//! Diagonal-covariance Gaussian mixture model: the parameter struct shared by every stage, and
//! (below) fitting by EM.
//!
//! Layout: `means` and `variances` are `K × D` row-major (component `k` at `[k*D..(k+1)*D]`),
//! `weights` has `K` entries summing to one — VLFeat's layout.

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, Error, Result};

/// A diagonal-covariance GMM with `k` components in `d` dimensions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gmm {
    k: usize,
    d: usize,
    means: Vec<f32>,
    variances: Vec<f32>,
    weights: Vec<f32>,
}

impl Gmm {
    /// Builds a GMM after checking shapes, finiteness, positive variances and non-negative
    /// weights. Weights are renormalised to sum to one (they must have a positive sum).
    pub fn new(
        k: usize,
        d: usize,
        means: Vec<f32>,
        variances: Vec<f32>,
        mut weights: Vec<f32>,
    ) -> Result<Self> {
        if k == 0 {
            return Err(Error::param("k", k, "at least 1 component"));
        }
        if d == 0 {
            return Err(Error::param("d", d, "at least 1 dimension"));
        }
        if means.len() != k * d {
            return Err(Error::dim("GMM means (K*D values)", k * d, means.len()));
        }
        if variances.len() != k * d {
            return Err(Error::dim(
                "GMM variances (K*D values)",
                k * d,
                variances.len(),
            ));
        }
        if weights.len() != k {
            return Err(Error::dim("GMM weights (K values)", k, weights.len()));
        }
        check_finite("GMM means", &means)?;
        check_finite("GMM variances", &variances)?;
        check_finite("GMM weights", &weights)?;
        if let Some(i) = variances.iter().position(|&v| v <= 0.0) {
            return Err(Error::Invalid(format!(
                "GMM variance at index {i} (component {}, dimension {}) is {}: variances must be positive",
                i / d,
                i % d,
                variances[i]
            )));
        }
        if let Some(i) = weights.iter().position(|&w| w < 0.0) {
            return Err(Error::Invalid(format!(
                "GMM weight of component {i} is {}: weights must be non-negative",
                weights[i]
            )));
        }
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        if total <= 0.0 {
            return Err(Error::Invalid("GMM weights sum to zero".into()));
        }
        for w in &mut weights {
            *w = (*w as f64 / total) as f32;
        }
        Ok(Self {
            k,
            d,
            means,
            variances,
            weights,
        })
    }

    /// Number of components.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Dimension of the descriptors.
    pub fn d(&self) -> usize {
        self.d
    }
    /// Means, `K × D` row-major.
    pub fn means(&self) -> &[f32] {
        &self.means
    }
    /// Diagonal variances σ², `K × D` row-major.
    pub fn variances(&self) -> &[f32] {
        &self.variances
    }
    /// Mixture weights π, `K` values summing to one.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }
    /// Mean of component `k`.
    pub fn mean(&self, k: usize) -> &[f32] {
        &self.means[k * self.d..(k + 1) * self.d]
    }
    /// Variances of component `k`.
    pub fn variance(&self, k: usize) -> &[f32] {
        &self.variances[k * self.d..(k + 1) * self.d]
    }
    /// Length of the Fisher vector this GMM produces: `2 K D`.
    pub fn fisher_len(&self) -> usize {
        2 * self.k * self.d
    }
}
