//! RemoteCluster status: [`compute`] says what a remote's status should be (pure); [`writer`] writes
//! it when it changed.

pub mod compute;
pub mod writer;

pub use compute::compute;
pub use writer::{FIELD_MANAGER, StatusWriter};
