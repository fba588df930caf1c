//! The one integration-test binary: every suite is a module here, so the shared
//! support (simulators, fixtures) compiles and links once.

#[path = "../support/mod.rs"]
mod support;

mod agent;
mod agent_upgrade;
mod artifacts;
mod cli;
mod crash;
mod doctor;
mod edge;
mod edge_flow;
mod files;
mod newcomer;
mod operations;
mod players;
mod properties;
mod provisioning;
mod proxmox;
mod queue;
mod security;
mod servers;
mod shipping;
mod tls;
mod ui;
mod version_change;
mod worlds;
