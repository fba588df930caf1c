//! The outside security review (issue 12): one row per finding, each replaying its
//! repro against the real binary and asserting the fixed behaviour. Findings are
//! grouped by the part of zlh they touch; each group is a module under
//! `tests/security/` with its own table, so the list can grow.

#[path = "security/data.rs"]
mod data;
#[path = "security/fuzz.rs"]
mod fuzz;
#[path = "security/input.rs"]
mod input;
mod support;
#[path = "security/web.rs"]
mod web;
