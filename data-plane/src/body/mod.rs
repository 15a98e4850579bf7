//! Request bodies between the client's connection and the upstream's: the channel an HTTP/2
//! stream's DATA frames arrive through, and the client body with its limits.

pub mod client;
pub mod compress;
pub mod h2;
