//! An OTLP collector of our own for trace tests: a tonic TraceService server on
//! `opentelemetry-proto`'s generated code that keeps every span it receives.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// What the collector received: every span, with its resource's `service.name`.
#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(text) => Some(text.clone()),
        Value::IntValue(number) => Some(number.to_string()),
        Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

pub fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Received {
    /// Starts the collector on a free port; its endpoint URL.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    /// The spans of trace `trace_id` (hex) once `done` says they are all there (at most 20 s).
    pub async fn trace(&self, trace_id: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let started = Instant::now();
        loop {
            let spans: Vec<Span> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, span)| hex(&span.trace_id) == trace_id)
                .map(|(_, span)| span.clone())
                .collect();
            if done(&spans) || started.elapsed() > Duration::from_secs(20) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The spans of trace `trace_id` with the service that sent each, once `done` says they
    /// are all there (at most 30 s).
    pub async fn trace_by_service(
        &self,
        trace_id: &str,
        done: impl Fn(&[(String, Span)]) -> bool,
    ) -> Vec<(String, Span)> {
        let started = Instant::now();
        loop {
            let spans: Vec<(String, Span)> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, span)| hex(&span.trace_id) == trace_id)
                .cloned()
                .collect();
            if done(&spans) || started.elapsed() > Duration::from_secs(30) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn services(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }
}

pub fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}
