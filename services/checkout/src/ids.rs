//! Ids derived from idempotency keys, so a retried create finds what its first attempt made.

/// `{prefix}-` followed by at most `max` bytes of `key`, cut back to a character boundary (the
/// request path passes hex digests; a library caller may pass any text, and slicing through a
/// character would panic).
pub(crate) fn from_key(prefix: &str, key: &str, max: usize) -> String {
    let mut end = key.len().min(max);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{prefix}-{}", &key[..end])
}

#[cfg(test)]
mod tests {
    use super::from_key;

    #[test]
    fn ids_take_a_bounded_prefix_of_the_key_without_splitting_a_character() {
        assert_eq!(from_key("cart", "0123456789abcdef", 4), "cart-0123");
        assert_eq!(from_key("cart", "ab", 24), "cart-ab");
        // 'é' is two bytes: a cut at 2 would fall inside it.
        assert_eq!(from_key("rf", "aé", 2), "rf-a");
    }
}
