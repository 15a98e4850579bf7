//! Field lines of HTTP/1.1 heads: reading Connection lists, writing fields.

/// Whether a field name is `lower` (ASCII case-insensitive).
pub fn is(name: &str, lower: &str) -> bool {
    name.eq_ignore_ascii_case(lower)
}

/// The values of a message's Connection fields, when they name other fields (`lists`);
/// otherwise none, without looking.
pub fn connection_values<'a>(fields: &[httparse::Header<'a>], lists: bool) -> Vec<&'a [u8]> {
    if !lists {
        return Vec::new();
    }
    fields
        .iter()
        .filter(|f| is(f.name, "connection"))
        .map(|f| f.value)
        .collect()
}

/// Whether a header is named in a Connection header's values (and so not forwarded).
pub fn listed(name: &str, connection: &[&[u8]]) -> bool {
    connection
        .iter()
        .flat_map(|v| tokens(v))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Appends one header field line to a head being written.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated elements of a field value.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}
