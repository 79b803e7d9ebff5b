//! A client that calls the running binary over Connect JSON or gRPC with typed messages, so a
//! scenario is written once and run over both.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage, SerializeOptions};

#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// Connect unary JSON over HTTP/1.1.
    ConnectJson,
    /// gRPC (tonic client).
    Grpc,
}

pub struct Client {
    pub protocol: Protocol,
    pub addr: String,
    pub token: String,
    pub tenant: String,
}

impl Client {
    /// Calls `path` (`/package.Service/Method`) with `request`; an error is its ErrorInfo reason.
    pub async fn call<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> Result<Resp, String>
    where
        Req: ReflectMessage + prost::Message + 'static,
        Resp: ReflectMessage + prost::Message + Default + 'static,
    {
        match self.protocol {
            Protocol::ConnectJson => self.connect_json(path, &request, key),
            Protocol::Grpc => self.grpc(path, request, key).await,
        }
    }

    fn connect_json<Req: ReflectMessage, Resp: ReflectMessage + Default>(
        &self,
        path: &str,
        request: &Req,
        key: Option<&str>,
    ) -> Result<Resp, String> {
        let body = request
            .transcode_to_dynamic()
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .unwrap()
            .to_string();
        let headers: Vec<(&str, &str)> = key
            .map(|key| ("Idempotency-Key", key))
            .into_iter()
            .collect();
        let (status, json) =
            super::connect_json(&self.addr, path, &body, Some(&self.token), &headers);
        if status != 200 {
            let info = json["details"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|detail| detail["type"] == "google.rpc.ErrorInfo")
                .map(|detail| {
                    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(detail["value"].as_str().unwrap().trim_end_matches('='))
                        .unwrap();
                    tonic_types::pb::ErrorInfo::decode(bytes.as_slice())
                        .unwrap()
                        .reason
                });
            return Err(info.unwrap_or_else(|| format!("HTTP {status}: {json}")));
        }
        let descriptor = Resp::default().descriptor();
        let message = DynamicMessage::deserialize(descriptor, json).unwrap();
        Ok(message.transcode_to().unwrap())
    }

    async fn grpc<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> Result<Resp, String>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
    {
        use tonic_types::StatusExt as _;
        // A server being restarted refuses connections: report it like an unavailable call.
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|error| format!("UNAVAILABLE: connect: {error}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|error| format!("UNAVAILABLE: not ready: {error}"))?;
        let mut request = tonic::Request::new(request);
        // A deadline, as real callers send: it also bounds how long an idempotency key stays
        // locked when the server dies mid-call.
        request.set_timeout(std::time::Duration::from_secs(10));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        grpc.unary(
            request,
            path.parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| {
            status
                .get_error_details()
                .error_info()
                .map_or_else(|| status.to_string(), |info| info.reason.clone())
        })
    }
}

/// Something that calls the platform's RPCs: one process ([`Client`]), or the processes of the
/// split topology ([`Routed`]).
pub trait Caller {
    fn call<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Resp, String>>
    where
        Req: ReflectMessage + prost::Message + 'static,
        Resp: ReflectMessage + prost::Message + Default + 'static;
}

impl Caller for Client {
    async fn call<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> Result<Resp, String>
    where
        Req: ReflectMessage + prost::Message + 'static,
        Resp: ReflectMessage + prost::Message + Default + 'static,
    {
        Client::call(self, path, request, key).await
    }
}

/// The split topology's processes: each call goes to the process serving its package.
pub struct Routed {
    pub checkout: Client,
    pub loyalty: Client,
    pub subscriptions: Client,
}

impl Caller for Routed {
    async fn call<Req, Resp>(
        &self,
        path: &str,
        request: Req,
        key: Option<&str>,
    ) -> Result<Resp, String>
    where
        Req: ReflectMessage + prost::Message + 'static,
        Resp: ReflectMessage + prost::Message + Default + 'static,
    {
        let client = if path.starts_with("/commerce.loyalty.") {
            &self.loyalty
        } else if path.starts_with("/commerce.subscriptions.") {
            &self.subscriptions
        } else {
            &self.checkout
        };
        client.call(path, request, key).await
    }
}
