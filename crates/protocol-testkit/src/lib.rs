//! Test-only: a gRPC service that exercises the protocol layer (gRPC, gRPC-web, Connect) without
//! any commerce logic — echo with metadata, typed errors with details, deadlines, and server,
//! client and bidi streams.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt as _};

/// Generated code of `protocol.test.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("protocol.test.v1");
}

/// The encoded descriptor set of the test service (for reflection and Connect JSON).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("protocol_test_descriptor");

use pb::echo_service_server::{EchoService, EchoServiceServer};
use pb::*;

/// Something a test runs inside `Charge` before it answers, given the request's extensions
/// (e.g. to write what a concurrent call would have committed meanwhile).
pub type ChargeHook = Arc<
    dyn Fn(tonic::Extensions) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// The test service. Clones share the count of `Charge` executions.
#[derive(Default, Clone)]
pub struct Echo {
    charges: Arc<AtomicU64>,
    charge_hook: Option<ChargeHook>,
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo")
            .field("charges", &self.charges)
            .finish_non_exhaustive()
    }
}

impl Echo {
    /// The service ready to register on a server.
    pub fn server() -> EchoServiceServer<Echo> {
        EchoServiceServer::new(Echo::default())
    }

    /// This instance ready to register (keep a clone to read [`Echo::charges`]).
    pub fn into_server(self) -> EchoServiceServer<Echo> {
        EchoServiceServer::new(self)
    }

    /// Runs `hook` inside every `Charge`, after counting it and before it answers.
    pub fn with_charge_hook(mut self, hook: ChargeHook) -> Self {
        self.charge_hook = Some(hook);
        self
    }

    /// How many times `Charge` has executed.
    pub fn charges(&self) -> u64 {
        self.charges.load(Ordering::SeqCst)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let echo_header = request.metadata().get("x-echo").cloned();
        let message = request.into_inner();
        let mut response = Response::new(EchoResponse {
            text: message.text,
            big_number: message.big_number,
            mood: message.mood,
            payload: message.payload,
            at: message.at,
        });
        if let Some(value) = echo_header {
            response.metadata_mut().insert("x-echo", value);
        }
        Ok(response)
    }

    async fn echo_legacy(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.echo(request).await
    }

    async fn fail(&self, request: Request<FailRequest>) -> Result<Response<FailResponse>, Status> {
        let message = request.into_inner();
        let mut details = ErrorDetails::with_error_info(
            "TEST_FAILURE",
            "protocol.test",
            [("case".to_owned(), "fail".to_owned())],
        );
        details.add_bad_request_violation("code", "requested failure");
        Err(Status::with_error_details(
            Code::from_i32(message.code),
            message.message,
            details,
        ))
    }

    async fn sleep(
        &self,
        request: Request<SleepRequest>,
    ) -> Result<Response<SleepResponse>, Status> {
        let millis = request.into_inner().millis.max(0);
        tokio::time::sleep(Duration::from_millis(millis as u64)).await;
        Ok(Response::new(SleepResponse {
            slept_millis: millis,
        }))
    }

    type CountStream = BoxStream<CountResponse>;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<Self::CountStream>, Status> {
        let CountRequest {
            up_to,
            interval_millis,
            fail_at,
        } = request.into_inner();
        let interval = Duration::from_millis(interval_millis.max(0) as u64);
        let numbers = tokio_stream::iter(1..=up_to).then(move |number| async move {
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if number == fail_at {
                Err(Status::aborted(format!("failed at {number}")))
            } else {
                Ok(CountResponse { number })
            }
        });
        // Stop after the first error, as a real server stream would.
        let mut failed = false;
        let numbers = numbers.take_while(move |item| {
            let keep = !failed;
            failed |= item.is_err();
            std::future::ready(keep)
        });
        Ok(Response::new(Box::pin(numbers)))
    }

    async fn sum(
        &self,
        request: Request<Streaming<SumRequest>>,
    ) -> Result<Response<SumResponse>, Status> {
        let mut stream = request.into_inner();
        let (mut total, mut count) = (0i64, 0i32);
        while let Some(item) = stream.next().await {
            total += item?.value;
            count += 1;
        }
        Ok(Response::new(SumResponse { total, count }))
    }

    async fn charge(
        &self,
        request: Request<ChargeRequest>,
    ) -> Result<Response<ChargeResponse>, Status> {
        let (_, extensions, message) = request.into_parts();
        let executions = self.charges.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(hook) = &self.charge_hook {
            hook(extensions).await;
        }
        if message.delay_millis > 0 {
            tokio::time::sleep(Duration::from_millis(message.delay_millis as u64)).await;
        }
        if message.fail_code != 0 {
            return Err(Status::new(
                Code::from_i32(message.fail_code),
                format!("charge failed (execution {executions})"),
            ));
        }
        Ok(Response::new(ChargeResponse {
            charge_id: uuid::Uuid::now_v7().to_string(),
            amount: message.amount,
            executions,
        }))
    }

    type ChatStream = BoxStream<ChatResponse>;

    async fn chat(
        &self,
        request: Request<Streaming<ChatRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let replies = request
            .into_inner()
            .map(|item| item.map(|message| ChatResponse { text: message.text }));
        Ok(Response::new(Box::pin(replies)))
    }
}
