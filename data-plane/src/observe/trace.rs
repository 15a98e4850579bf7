//! W3C Trace Context (traceparent): the proxy continues the client's trace, or starts one,
//! and tells the upstream its own span as the parent. `tracestate` passes through untouched.

use http::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace a forwarded request belongs to, and the proxy's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The proxy's span: the parent the upstream sees.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a valid traceparent.
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
}

/// Lower-case hex into `out` (twice as long as `bytes`), without the formatting machinery
/// (this runs for every request).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
}

/// The length of a version 00 traceparent value.
const TRACEPARENT_LEN: usize = 55;

/// Hex digits are ASCII: the conversion cannot fail.
fn ascii(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

fn hex_bytes<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        // Upper case is invalid in traceparent.
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// (trace id, parent span id, flags) of a valid traceparent value.
pub fn parse(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    // version "-" trace-id "-" parent-id "-" flags; later versions may append "-" fields.
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let version = hex_bytes::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_bytes::<16>(&value[3..35])?;
    let parent = hex_bytes::<8>(&value[36..52])?;
    let flags = hex_bytes::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

impl TraceContext {
    /// Continues the request's trace (a new trace when it has no valid traceparent) and sets
    /// the traceparent the upstream will see. `sample_root`: whether a new trace is sampled.
    pub fn propagate(headers: &mut HeaderMap, sample_root: bool) -> TraceContext {
        let ctx = TraceContext::continue_from(
            headers.get(&TRACEPARENT).map(|v| v.as_bytes()),
            sample_root,
        );
        if let Ok(v) = HeaderValue::from_bytes(&ctx.value()) {
            headers.insert(&TRACEPARENT, v);
        }
        ctx
    }

    /// The proxy's span in the trace of a request with this traceparent (a new trace when it
    /// has none or an invalid one). A continued trace keeps the client's sampled flag (parent
    /// based sampling, as OpenTelemetry's default); a new one is sampled when `sample_root`.
    pub fn continue_from(traceparent: Option<&[u8]>, sample_root: bool) -> TraceContext {
        let inherited = traceparent.and_then(parse);
        let mut span_id: [u8; 8] = rand::random();
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        match inherited {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                flags: flags & 0x01,
            },
            None => {
                let mut trace_id: [u8; 16] = rand::random();
                if trace_id == [0; 16] {
                    trace_id[15] = 1;
                }
                TraceContext {
                    trace_id,
                    span_id,
                    parent_span_id: None,
                    flags: u8::from(sample_root),
                }
            }
        }
    }

    /// The traceparent value naming the proxy's span as parent.
    pub fn header(&self) -> String {
        ascii(self.value().to_vec())
    }

    /// The traceparent value, as bytes.
    fn value(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [0u8; TRACEPARENT_LEN];
        out[..3].copy_from_slice(b"00-");
        hex_into(&mut out[3..35], &self.trace_id);
        out[35] = b'-';
        hex_into(&mut out[36..52], &self.span_id);
        out[52] = b'-';
        hex_into(&mut out[53..], &[self.flags]);
        out
    }

    /// Appends the traceparent value to a head being written.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value());
    }

    /// Whether the trace is sampled (recorded and exported).
    #[inline]
    pub fn sampled(&self) -> bool {
        self.flags & 0x01 != 0
    }

    pub fn trace_id_hex(&self) -> String {
        let mut hex = [0u8; 32];
        hex_into(&mut hex, &self.trace_id);
        ascii(hex.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example_and_refuses_bad_ones() {
        let (trace, parent, flags) = parse(VALID.as_bytes()).unwrap();
        assert_eq!(trace[0], 0x4b);
        assert_eq!(parent[7], 0xb7);
        assert_eq!(flags, 1);
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(
            parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some(),
            "a later version may add fields"
        );
    }

    #[test]
    fn continues_a_trace_with_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static(VALID));
        let ctx = TraceContext::propagate(&mut h, false);
        let sent = h.get(&TRACEPARENT).unwrap().to_str().unwrap().to_owned();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(sent.ends_with("-01"));
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the proxy's own span is the parent"
        );
        assert_eq!(ctx.header(), sent);

        let mut fresh = HeaderMap::new();
        let ctx = TraceContext::propagate(&mut fresh, false);
        let (trace, _, flags) = parse(fresh.get(&TRACEPARENT).unwrap().as_bytes()).unwrap();
        assert_eq!((trace, flags), (ctx.trace_id, 0));
    }
}
