//! Wire formats, with no knowledge of routes or connections: HTTP/1.1 message framing, field
//! lines and response heads (used by the HTTP/1.1 fast path and the raw upstream client alike),
//! and HTTP/2 frames, HPACK and Huffman (used by the proxy's own HTTP/2 server).

pub mod h1;
pub mod h2;
