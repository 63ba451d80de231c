//! One module per subcommand; each has clap `Args` and a `run` function.

pub mod bench;
pub mod deep;
pub mod demo;
pub mod encode;
pub mod eval;
pub mod extract;
pub mod fisher;
pub mod gmm;
pub mod info;
pub mod predict;
pub mod svm;
pub mod train;
