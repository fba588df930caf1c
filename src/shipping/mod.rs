//! Getting zlh onto a homelab: the first-run banner, `zlh install` / `zlh uninstall`
//! (a system user, directories and a hardened systemd unit).

pub mod banner;
pub mod enroll;
pub mod install;
