//! The hub's commands other than `serve`, which run on an operator's machine with its kubeconfig:
//! `tether-hub status` and `tether-hub join`.

pub mod join;
pub mod status;
