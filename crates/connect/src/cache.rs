//! HTTP caching of Connect GET answers (RFC 9111): what a cache in front may keep, for whom, and
//! revalidation. The service declares per method whether its answers may be cached
//! ([`GetCaching`]); everything else is decided here:
//!
//! - `Cache-Control`: `public, max-age=N` (shared) or `private, max-age=N` for methods that declare
//!   caching; `private, no-store` for any request with `Authorization` (an answer for one caller);
//!   `no-store` for everything else, errors included;
//! - `Vary`: every request header the answer depends on (configured, e.g. a tenant header and
//!   `Authorization`) and `Accept-Encoding` (the body may be gzip) — without it a cache would hand
//!   one tenant's answer to another;
//! - a strong `ETag` over the bytes sent, and `If-None-Match` answered `304 Not Modified` without a
//!   body when it matches (weak comparison, as RFC 9110 requires for `If-None-Match`).

use std::time::Duration;

use bytes::Bytes;
use http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderName,
    HeaderValue, IF_NONE_MATCH, VARY,
};
use http::{HeaderMap, Response, StatusCode};
use sha2::{Digest as _, Sha256};

/// How caches may keep a method's GET answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetCaching {
    /// How long an answer may be reused without asking again (`max-age`).
    pub max_age: Duration,
    /// Shared caches (proxies, CDNs) may keep it (`public`); otherwise only the caller's (`private`).
    pub shared: bool,
}

/// Adds the caching headers to a GET answer, or turns it into `304 Not Modified`.
pub(crate) fn apply(
    request: &HeaderMap,
    caching: Option<GetCaching>,
    vary: &[HeaderName],
    mut response: Response<Bytes>,
) -> Response<Bytes> {
    let names: Vec<&str> = vary
        .iter()
        .map(HeaderName::as_str)
        .chain(["accept-encoding"])
        .collect();
    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().append(VARY, value);
    }
    let control = match caching {
        _ if response.status() != StatusCode::OK => "no-store".to_owned(),
        _ if request.contains_key(AUTHORIZATION) => "private, no-store".to_owned(),
        Some(caching) => format!(
            "{}, max-age={}",
            if caching.shared { "public" } else { "private" },
            caching.max_age.as_secs()
        ),
        None => "no-store".to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&control) {
        response.headers_mut().insert(CACHE_CONTROL, value);
    }
    if response.status() != StatusCode::OK {
        return response;
    }
    let etag = strong_etag(response.body());
    let unchanged = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .any(|value| matches_etag(value.as_bytes(), &etag));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(ETAG, value);
    }
    if unchanged {
        let (mut parts, _) = response.into_parts();
        parts.status = StatusCode::NOT_MODIFIED;
        for header in [CONTENT_TYPE, CONTENT_ENCODING, CONTENT_LENGTH] {
            parts.headers.remove(header);
        }
        return Response::from_parts(parts, Bytes::new());
    }
    response
}

/// A strong validator: the first 128 bits of the body's SHA-256, quoted.
fn strong_etag(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("\"{hex}\"")
}

/// Whether an `If-None-Match` value (`*` or a list of entity tags) names `etag`.
fn matches_etag(if_none_match: &[u8], etag: &str) -> bool {
    let Ok(list) = std::str::from_utf8(if_none_match) else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &'static str) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from_static(body.as_bytes()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    const SHARED: Option<GetCaching> = Some(GetCaching {
        max_age: Duration::from_secs(60),
        shared: true,
    });

    fn header(response: &Response<Bytes>, name: HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn declared_answers_are_public_and_vary_on_what_they_depend_on() {
        let vary = [HeaderName::from_static("commerce-tenant")];
        let response = apply(&HeaderMap::new(), SHARED, &vary, ok("{}"));
        assert_eq!(header(&response, CACHE_CONTROL), "public, max-age=60");
        assert_eq!(header(&response, VARY), "commerce-tenant, accept-encoding");
        assert!(header(&response, ETAG).starts_with('"'));
    }

    #[test]
    fn authenticated_undeclared_and_failed_answers_are_not_stored() {
        let mut authenticated = HeaderMap::new();
        authenticated.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let response = apply(&authenticated, SHARED, &[], ok("{}"));
        assert_eq!(header(&response, CACHE_CONTROL), "private, no-store");
        let response = apply(&HeaderMap::new(), None, &[], ok("{}"));
        assert_eq!(header(&response, CACHE_CONTROL), "no-store");
        let mut failed = ok("{}");
        *failed.status_mut() = StatusCode::NOT_FOUND;
        let response = apply(&HeaderMap::new(), SHARED, &[], failed);
        assert_eq!(header(&response, CACHE_CONTROL), "no-store");
        assert!(response.headers().get(ETAG).is_none());
    }

    #[test]
    fn a_matching_if_none_match_is_answered_not_modified_without_a_body() {
        let etag = header(
            &apply(&HeaderMap::new(), SHARED, &[], ok("{\"a\":1}")),
            ETAG,
        )
        .to_owned();
        for sent in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"x\", {etag}"),
            "*".into(),
        ] {
            let mut request = HeaderMap::new();
            request.insert(IF_NONE_MATCH, HeaderValue::from_str(&sent).unwrap());
            let response = apply(&request, SHARED, &[], ok("{\"a\":1}"));
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{sent}");
            assert!(response.body().is_empty());
            assert_eq!(header(&response, ETAG), etag);
            assert_eq!(header(&response, CACHE_CONTROL), "public, max-age=60");
            assert!(response.headers().get(CONTENT_TYPE).is_none());
        }
        let mut changed = HeaderMap::new();
        changed.insert(IF_NONE_MATCH, HeaderValue::from_str(&etag).unwrap());
        let response = apply(&changed, SHARED, &[], ok("{\"a\":2}"));
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "a changed body is sent whole"
        );
        assert_ne!(header(&response, ETAG), etag);
    }
}
