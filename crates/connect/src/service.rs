//! The layer: recognises Connect requests, routes them to the unary or streaming translation, and
//! passes every other request (gRPC, gRPC-web, CORS preflight handled earlier) through untouched.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{FutureExt as _, TryFutureExt as _};
use http::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use tower_layer::Layer;
use tower_service::Service;

use crate::grpc::full;
use crate::{BoxBody, BoxError, Code, Codec, ConnectError, GetCaching, streaming, unary};

/// What the layer knows about one RPC.
#[derive(Clone, Debug)]
pub(crate) struct MethodInfo {
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// `idempotency_level = NO_SIDE_EFFECTS`: may be called with GET.
    pub no_side_effects: bool,
    pub streaming: bool,
    /// The caller may send more than one message (client and bidi streams).
    pub client_streaming: bool,
    /// How caches may keep GET answers; `None`: not at all.
    pub caching: Option<GetCaching>,
}

/// Configuration of the Connect layer.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    pub(crate) methods: HashMap<String, MethodInfo>,
    pub(crate) max_message_bytes: usize,
    pub(crate) compress_min_bytes: usize,
    /// Request headers every answer depends on, named in `Vary` of GET answers.
    pub(crate) vary: Vec<HeaderName>,
}

impl ConnectConfig {
    /// Serves every method of every service in `pool` (JSON needs the descriptors).
    pub fn new(pool: &DescriptorPool) -> Self {
        let mut methods = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let no_side_effects = method
                    .method_descriptor_proto()
                    .options
                    .as_ref()
                    .is_some_and(|options| {
                        options.idempotency_level()
                            == prost_types::method_options::IdempotencyLevel::NoSideEffects
                    });
                methods.insert(
                    format!("/{}/{}", service.full_name(), method.name()),
                    MethodInfo {
                        input: method.input(),
                        output: method.output(),
                        no_side_effects,
                        streaming: method.is_client_streaming() || method.is_server_streaming(),
                        client_streaming: method.is_client_streaming(),
                        caching: None,
                    },
                );
            }
        }
        ConnectConfig {
            methods,
            max_message_bytes: 4 * 1024 * 1024,
            compress_min_bytes: 1024,
            vary: Vec::new(),
        }
    }

    /// Lets caches keep GET answers of the method at `path` (`/package.Service/Method`) as
    /// `caching` says; without it they are `no-store`. Unknown paths are ignored.
    pub fn get_caching(mut self, path: &str, caching: GetCaching) -> Self {
        if let Some(method) = self.methods.get_mut(path) {
            method.caching = Some(caching);
        }
        self
    }

    /// Request headers every answer depends on besides the URL (a tenant header, `Authorization`),
    /// listed in `Vary` on GET answers together with `Accept-Encoding`.
    pub fn vary(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.vary.extend(headers);
        self
    }

    /// Largest request message accepted, compressed or inflated (default 4 MiB); larger →
    /// `resource_exhausted`. Responses are not limited (like connect-go's `ReadMaxBytes`).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Responses smaller than this are not compressed even when the caller accepts gzip (default 1 KiB).
    pub fn compress_min_bytes(mut self, bytes: usize) -> Self {
        self.compress_min_bytes = bytes;
        self
    }
}

/// The inner gRPC service, type-erased for one call: the Connect paths are plain async code over it.
pub(crate) type Upstream = Box<dyn FnOnce(Request<BoxBody>) -> UpstreamCall + Send>;
pub(crate) type UpstreamCall =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

fn box_body<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|err| -> BoxError { err.into() })
        .boxed_unsync()
}

/// Adds Connect to a gRPC service.
#[derive(Clone, Debug)]
pub struct ConnectLayer {
    config: Arc<ConnectConfig>,
}

impl ConnectLayer {
    /// A layer with `config`.
    pub fn new(config: ConnectConfig) -> Self {
        ConnectLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> Layer<S> for ConnectLayer {
    type Service = Connect<S>;
    fn layer(&self, inner: S) -> Connect<S> {
        Connect {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The Connect translation around a gRPC service `S`.
#[derive(Clone, Debug)]
pub struct Connect<S> {
    inner: S,
    config: Arc<ConnectConfig>,
}

/// Where a request goes.
enum Route {
    /// gRPC, gRPC-web or anything else that is not Connect.
    Passthrough,
    Unary(MethodInfo, Codec),
    Get(MethodInfo),
    Stream(MethodInfo, Codec),
    Reject(Response<BoxBody>),
}

fn route(config: &ConnectConfig, request: &Request<impl Sized>) -> Route {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("application/grpc") {
        return Route::Passthrough;
    }
    let path = request.uri().path();
    let method = config.methods.get(path);
    match *request.method() {
        Method::GET => match method {
            Some(info) if info.no_side_effects && !info.streaming => Route::Get(info.clone()),
            Some(_) => Route::Reject(plain_error(
                StatusCode::METHOD_NOT_ALLOWED,
                ConnectError::new(
                    Code::Unimplemented,
                    format!("{path} has side effects; call it with POST"),
                ),
                Some("POST"),
            )),
            None => Route::Reject(unknown_method(path)),
        },
        Method::POST => {
            let (info, unary_codec, stream_codec) = (
                method,
                Codec::from_unary_content_type(content_type),
                Codec::from_stream_content_type(content_type),
            );
            match (info, unary_codec, stream_codec) {
                (None, Some(_), _) | (None, _, Some(_)) => Route::Reject(unknown_method(path)),
                (Some(info), Some(codec), _) if !info.streaming => {
                    Route::Unary(info.clone(), codec)
                }
                (Some(info), _, Some(codec)) if info.streaming => {
                    Route::Stream(info.clone(), codec)
                }
                _ => Route::Reject(unsupported_media_type(content_type, method)),
            }
        }
        _ if method.is_some() => Route::Reject(plain_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ConnectError::new(
                Code::Unimplemented,
                format!("HTTP method {} is not allowed", request.method()),
            ),
            Some("GET, POST"),
        )),
        _ => Route::Passthrough,
    }
}

impl<S, B, ResBody> Service<Request<B>> for Connect<S>
where
    S: Service<Request<BoxBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Use the service that was polled ready, leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let route = route(&config, &request);
        let request: Request<BoxBody> = request.map(box_body);
        if let Route::Passthrough = route {
            return Box::pin(
                inner
                    .call(request)
                    .map_ok(|response| response.map(box_body)),
            );
        }
        // Combinators, not an async block, keep S::Future out of a generator (rustc cannot prove
        // such generators Send for generic futures).
        let upstream: Upstream = Box::new(move |request| {
            Box::pin(inner.call(request).map(|result| {
                result
                    .map(|response| response.map(box_body))
                    .map_err(Into::into)
            }))
        });
        match route {
            Route::Passthrough => unreachable!("handled above"),
            Route::Reject(response) => Box::pin(std::future::ready(Ok(response))),
            Route::Unary(method, codec) => Box::pin(async move {
                Ok(unary::serve_post(upstream, &config, request, &method, codec).await)
            }),
            Route::Get(method) => {
                Box::pin(
                    async move { Ok(unary::serve_get(upstream, &config, request, &method).await) },
                )
            }
            Route::Stream(method, codec) => Box::pin(async move {
                Ok(streaming::serve(upstream, config, request, method, codec).await)
            }),
        }
    }
}

/// A Connect JSON error with a chosen HTTP status (routing errors that have no Connect status).
fn plain_error(
    status: StatusCode,
    error: ConnectError,
    allow: Option<&'static str>,
) -> Response<BoxBody> {
    let mut response = Response::new(full(error.to_json().to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(allow) = allow {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn unknown_method(path: &str) -> Response<BoxBody> {
    plain_error(
        StatusCode::NOT_FOUND,
        ConnectError::new(Code::Unimplemented, format!("unknown method {path}")),
        None,
    )
}

fn unsupported_media_type(content_type: &str, method: Option<&MethodInfo>) -> Response<BoxBody> {
    let accepted = match method {
        Some(info) if info.streaming => "application/connect+proto, application/connect+json",
        _ => "application/proto, application/json",
    };
    let mut response = plain_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ConnectError::new(
            Code::Unimplemented,
            format!("unsupported content type {content_type:?}; this method accepts {accepted}"),
        ),
        None,
    );
    response
        .headers_mut()
        .insert("accept-post", HeaderValue::from_static(accepted));
    response
}
