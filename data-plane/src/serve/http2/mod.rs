//! The proxy's own HTTP/2 server (RFC 9113), for h2c with prior knowledge and for TLS
//! connections that chose h2 by ALPN.
//!
//! Through hyper, every HTTP/2 request paid for the h2 crate's shared stream store (a lock,
//! a slab, wakers per stream), hyper's dispatcher, and a tokio task per stream. Here one task
//! runs the connection: it decodes frames straight from its read buffer, polls each request's
//! future and response body itself (a stream's waker queues the stream in the connection's
//! inbox), and writes every frame into one buffer that goes out in one write per turn. A
//! request without a body is first offered to the HTTP/1.1 fast path's planner (`fast`);
//! the others, and those it does not take, go through the same request path
//! (`serve::general::handle`) as HTTP/1.1.
//!
//! What it enforces, besides the protocol's own rules:
//! - at most [`MAX_CONCURRENT_STREAMS`] streams; more are refused (REFUSED_STREAM);
//! - header lists within the proxy's header limits (431), and a bound on a header block's
//!   encoded size, so CONTINUATION floods end the connection;
//! - bursts of streams reset by the client, refused or malformed (the HTTP/2 rapid reset
//!   attack) end the connection with ENHANCE_YOUR_CALM;
//! - no reading while a megabyte of output waits for the client, which bounds what floods
//!   of PING and SETTINGS (each answered) can queue;
//! - the idle timeout and graceful drain (GOAWAY, then in-flight streams finish).

mod conn;
mod fast;
mod flood;
mod guard;
mod receive;
mod request;
mod stream;

pub use crate::codec::h2::frame::PREFACE;
pub use conn::serve;

/// Streams a client may have open at once (announced in SETTINGS).
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
