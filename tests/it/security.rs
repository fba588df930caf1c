//! The outside security review (issue 12): one row per finding, each replaying its
//! repro against the real binary and asserting the fixed behaviour. Findings are
//! grouped by the part of zlh they touch; each group is a module under
//! `tests/it/security/` with its own table, so the list can grow.

mod data;
mod fuzz;
mod input;
mod web;
