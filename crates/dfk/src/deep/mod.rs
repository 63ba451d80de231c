//! Deep Fisher Kernel learning: the GMM of the Fisher vectors trained jointly with the SVMs by
//! gradient descent on the SVM objective (Sydorov, Sakurada, Lampert, CVPR 2014).

mod data;
mod history;
mod line_search;
mod params;
mod theta;
mod trainer;

pub use data::ImageSet;
pub use history::{DeepHistory, IterationRecord};
pub use line_search::{Accepted, LineSearch, Outcome, Trial};
pub use params::{DeepParams, GmmMode};
pub use theta::{Displacement, Floors, ParamGroups, Theta};
pub use trainer::{
    objective_and_gradient, resume_initial_gmms, train_deep, Checkpoint, DeepData, DeepModel,
};
