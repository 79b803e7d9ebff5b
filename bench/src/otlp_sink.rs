//! `otlp-sink`: a tiny OTLP/gRPC trace receiver for benchmarks and by-hand checks. It answers
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`, counts the spans it receives and
//! discards them — a collector that costs its sender as little as possible, so `bench/traces.sh`
//! measures the exporting process, not a real collector's pipeline.
//!
//!   otlp-sink [--listen 127.0.0.1:0] [--dump FILE]
//!
//! Prints `listening <addr>` once bound, then `spans <total> requests <total>` whenever the totals
//! changed (at most once a second), and the totals again when stopped (SIGTERM/SIGINT).
//! `--dump FILE` also writes every span as one JSON line (service, name, kind, ids, status,
//! attributes), for reading what a process exports (docs/observability.md, span catalogue).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::trace::v1::Span;

#[derive(Parser)]
#[command(about = "OTLP/gRPC trace sink: counts received spans and discards them")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Also write every span as a JSON line to this file.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    dump: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let spans: usize = request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(dump) = &self.dump {
            let mut out = dump
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for resource in &request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|resource| &resource.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| value_json(kv.value.as_ref()))
                    .unwrap_or_else(|| "null".into());
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        let _ = writeln!(out, "{}", span_json(&service, span));
                    }
                }
            }
            let _ = out.flush();
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn value_json(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => json_string(text),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        Some(other) => json_string(&format!("{other:?}")),
        None => "null".into(),
    }
}

fn attributes_json(attributes: &[KeyValue]) -> String {
    let fields: Vec<String> = attributes
        .iter()
        .map(|kv| format!("{}:{}", json_string(&kv.key), value_json(kv.value.as_ref())))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn span_json(service: &str, span: &Span) -> String {
    let kind = match span.kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    };
    let status = match span.status.as_ref().map(|status| status.code) {
        Some(1) => "ok",
        Some(2) => "error",
        _ => "unset",
    };
    format!(
        r#"{{"service":{service},"name":{},"kind":"{kind}","trace_id":"{}","span_id":"{}","parent_span_id":"{}","duration_ms":{:.3},"status":"{status}","attributes":{}}}"#,
        json_string(&span.name),
        hex(&span.trace_id),
        hex(&span.span_id),
        hex(&span.parent_span_id),
        span.end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano) as f64
            / 1e6,
        attributes_json(&span.attributes),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = Sink {
        dump: match &args.dump {
            Some(path) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(path)?,
            )))),
            None => None,
        },
        ..Sink::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening {}", listener.local_addr()?);
    let totals = {
        let sink = sink.clone();
        move || {
            format!(
                "spans {} requests {}",
                sink.spans.load(Ordering::Relaxed),
                sink.requests.load(Ordering::Relaxed)
            )
        }
    };
    let report = {
        let totals = totals.clone();
        async move {
            let mut last = String::new();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = totals();
                if now != last {
                    println!("{now}");
                    last = now;
                }
            }
        }
    };
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(sink.clone()).max_decoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        );
    tokio::select! {
        served = server => served?,
        () = report => {}
    }
    println!("{}", totals());
    Ok(())
}
