//! Regular-expression matches, compiled the same way on both sides so that a pattern the
//! controller accepts is one every proxy accepts.

use regex::{Regex, RegexBuilder};

/// Upper bound on a compiled pattern: route tables come from users, and one pathological
/// pattern must not cost every proxy megabytes.
const COMPILED_SIZE_LIMIT: usize = 256 * 1024;

/// Compiles `pattern` so that it must match the whole input (RE2 semantics, as Envoy and the
/// Gateway API's RegularExpression matches use: no look-around, linear time).
pub fn full_match(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(COMPILED_SIZE_LIMIT)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_whole_input_only() {
        let re = full_match("/v[0-9]+/.*").unwrap();
        assert!(re.is_match("/v2/users"));
        assert!(!re.is_match("/api/v2/users"), "anchored at the start");
        let re = full_match("abc|def").unwrap();
        assert!(re.is_match("def"));
        assert!(
            !re.is_match("abcdef"),
            "alternation stays inside the anchors"
        );
    }

    #[test]
    fn invalid_and_oversized_patterns_are_refused() {
        assert!(full_match("(unclosed").is_err());
        assert!(full_match("(?=lookahead)").is_err());
        assert!(
            full_match("[a-z]{1000}{1000}").is_err(),
            "too large once compiled"
        );
    }
}
