//! The layer in front of a hand-written gRPC service (no tonic): it needs nothing but HTTP and the
//! descriptors. Covers what tonic services cannot show: trailers on a successful unary call.

use std::convert::Infallible;

use bytes::Bytes;
use connect::{BoxBody, BoxError, ConnectConfig, ConnectLayer};
use futures_util::stream;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full, StreamBody};
use prost_reflect::DescriptorPool;
use tower_layer::Layer as _;
use tower_service::Service as _;

/// A descriptor pool with one unary method `/test.v1.Svc/Call` taking and returning an empty message.
fn pool() -> DescriptorPool {
    use prost_types::{
        DescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
        ServiceDescriptorProto,
    };
    let file = FileDescriptorProto {
        name: Some("test.proto".into()),
        package: Some("test.v1".into()),
        syntax: Some("proto3".into()),
        message_type: vec![DescriptorProto {
            name: Some("Empty".into()),
            ..Default::default()
        }],
        service: vec![ServiceDescriptorProto {
            name: Some("Svc".into()),
            method: vec![MethodDescriptorProto {
                name: Some("Call".into()),
                input_type: Some(".test.v1.Empty".into()),
                output_type: Some(".test.v1.Empty".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: vec![file] }).unwrap()
}

/// A gRPC "server": one empty message, then trailers with a status and custom metadata.
async fn grpc_service(request: Request<BoxBody>) -> Result<Response<BoxBody>, Infallible> {
    assert_eq!(request.headers()["content-type"], "application/grpc");
    assert_eq!(request.headers()["x-caller"], "kept");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = vec![
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(StreamBody::new(stream::iter(frames)).boxed_unsync());
    response
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    response
        .headers_mut()
        .insert("x-header", "h".parse().unwrap());
    Ok(response)
}

#[tokio::test]
async fn unary_trailers_become_trailer_prefixed_headers() {
    let mut service =
        ConnectLayer::new(ConnectConfig::new(&pool())).layer(tower::service_fn(grpc_service));
    let request = Request::post("/test.v1.Svc/Call")
        .header("content-type", "application/json")
        .header("x-caller", "kept")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = service.call(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-header"], "h");
    assert_eq!(response.headers()["trailer-x-checksum"], "abc123");
    assert!(
        !response.headers().contains_key("trailer-grpc-status"),
        "protocol trailers are not metadata"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"{}");
}
