//! HTTP/1.1 (RFC 9112): body framing and chunked coding, field lines, response heads.

pub mod fields;
pub mod framing;
pub mod response;
