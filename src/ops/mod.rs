//! Operating the service: the metrics it records and serves, and the health check its container
//! image runs.

pub mod exposition;
pub mod healthcheck;
pub mod metrics;
mod process;
