//! Deep Fisher Kernel learning: the GMM of the Fisher vectors trained jointly with the SVMs by
//! gradient descent on the SVM objective (Sydorov, Sakurada, Lampert, CVPR 2014).

mod line_search;
mod theta;

pub use line_search::{Accepted, LineSearch, Outcome};
pub use theta::{Displacement, Floors, ParamGroups, Theta};
