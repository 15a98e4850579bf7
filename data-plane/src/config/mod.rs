//! Configuration from the controller: the discovery client (`xds`) streams snapshots; the
//! applier validates each into a new routing state (`crate::model`), publishes it with one swap
//! and opens or closes listeners to match (`listeners`, which hands sockets to whatever serves
//! them, without depending on it); `persisted` keeps the last applied configuration in
//! `--state-dir` and reads it back at start.

pub mod applier;
pub mod listeners;
pub mod persisted;
pub mod xds;
