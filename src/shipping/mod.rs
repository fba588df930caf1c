//! Getting zlh onto a homelab: the first-run banner.

pub mod banner;
