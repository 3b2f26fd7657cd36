//! Integration tests: the real server over real TCP on port 0.

mod attempts;
mod behaviour;
mod certs;
mod cli;
mod client_tls;
mod contract;
mod control;
mod deploy;
mod differential;
mod docs;
mod fuzz;
mod gateway;
mod hardening;
mod observability;
mod packaging;
mod protocol;
mod reliability;
mod scenario;
mod shapes;
mod structure;
mod support;
mod tls;
