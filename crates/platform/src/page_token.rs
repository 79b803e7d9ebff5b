//! Opaque page tokens (AIP-158): the position to continue after, bound to the list it came from, so a
//! token from another list (or made up) is refused with `INVALID_PAGE_TOKEN` instead of quietly
//! starting somewhere else.

use commerce_api::commerce::common::v1::ErrorReason;
use tonic::Code;

use crate::ApiError;

/// A page token the list did not give out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the page token was not issued by this list")]
pub struct InvalidPageToken;

impl From<InvalidPageToken> for ApiError {
    fn from(error: InvalidPageToken) -> Self {
        ApiError::new(
            Code::InvalidArgument,
            ErrorReason::InvalidPageToken,
            error.to_string(),
        )
        .with_field_violation("page_token", "was not issued by this list")
    }
}

/// The token continuing list `scope` after `position`.
pub fn encode(scope: &str, position: &str) -> String {
    format!("{scope}\u{1f}{position}")
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The position a token of list `scope` continues after; `None` for the first page.
pub fn decode(scope: &str, token: &str) -> Result<Option<String>, InvalidPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|at| {
            token
                .get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect();
    let text = bytes.and_then(|bytes| String::from_utf8(bytes).ok());
    match text.as_deref().and_then(|text| text.split_once('\u{1f}')) {
        Some((from, position)) if from == scope && !position.is_empty() => {
            Ok(Some(position.to_owned()))
        }
        _ => Err(InvalidPageToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_continues_only_its_own_list() {
        let token = encode("entries:m-1", "m-1:0042");
        assert_eq!(
            decode("entries:m-1", &token).unwrap().as_deref(),
            Some("m-1:0042")
        );
        assert_eq!(decode("entries:m-1", "").unwrap(), None);
        for foreign in [
            encode("entries:m-2", "m-1:0042"),
            "not-a-token".into(),
            "abc".into(),
        ] {
            assert_eq!(decode("entries:m-1", &foreign), Err(InvalidPageToken));
        }
    }
}
