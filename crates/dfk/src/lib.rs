//! # dfk — Fisher vectors with a jointly learned GMM
//!
//! The numerical core of the Deep Fisher Kernels method (Sydorov, Sakurada, Lampert, CVPR 2014):
//! a diagonal-covariance GMM fitted by EM, the improved Fisher vector with VLFeat's values and
//! layout, its backward pass with respect to the GMM parameters, an L1-loss linear SVM solved in
//! the dual, the alternating trainer that learns the GMM against the SVM objective, and the
//! image front end (dense SIFT, PCA) and evaluation metrics around them.
//!
//! Not in this crate: argument parsing, progress bars and reports (see the `dfk-cli` crate).
//!
//! Conventions: descriptors are `f32`, row-major `N × D` slices; GMM parameters are `K × D`
//! row-major; long sums accumulate in `f64`. Parallel functions run on the current rayon pool,
//! so the caller decides the thread count with `rayon::ThreadPool::install`.

pub mod dataset;
pub mod deep;
pub mod error;
pub mod fisher;
pub mod gmm;
pub mod kernels;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod pca;
pub mod pipeline;
pub mod pyramid;
pub mod sift;
pub mod stats;
pub mod svm;

pub use error::{Error, Result};
