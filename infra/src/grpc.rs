//! The one gRPC server bring-up: mutual TLS ([`crate::tls::server`]),
//! `TCP_NODELAY` on every accepted connection, the standard health service
//! reporting each added service as serving, and reflection when the
//! operator turns it on ([`crate::cli::GrpcArgs`]).
//!
//! The caller-identity check (which client certificate may call which
//! service) belongs here too, so that it is written once.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::ServerTlsConfig;

use crate::cli::{GrpcArgs, PkiArgs};

/// A gRPC server being assembled: bound, not yet serving.
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    tls: ServerTlsConfig,
    reflection: Option<&'static [u8]>,
    routes: Routes,
    names: Vec<&'static str>,
}

impl GrpcServer {
    /// A server on `listener` with `tls`; `reflection` is the encoded file
    /// descriptor set to serve reflection for, or `None` for no reflection.
    pub fn new(
        listener: TcpListener,
        tls: ServerTlsConfig,
        reflection: Option<&'static [u8]>,
    ) -> Self {
        Self {
            listener,
            tls,
            reflection,
            routes: Routes::default(),
            names: Vec::new(),
        }
    }

    /// Binds `listen` (port 0 picks one), with the server side of mutual
    /// TLS from the PKI directory under the certificate name `tls_name`,
    /// and reflection over `descriptors` if the operator turned it on.
    pub async fn bind(
        listen: SocketAddr,
        pki: &PkiArgs,
        tls_name: &str,
        grpc: &GrpcArgs,
        descriptors: &'static [u8],
    ) -> anyhow::Result<Self> {
        let tls = crate::tls::server(&pki.pki_dir, tls_name)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        Ok(Self::new(
            listener,
            tls,
            grpc.grpc_reflection.then_some(descriptors),
        ))
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Adds a service (reported serving by the health service).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serves until `shutdown` resolves, then lets calls in flight finish.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in &self.names {
            health_reporter
                .set_service_status(*name, tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut routes = self.routes.add_service(health_service);
        if let Some(descriptors) = self.reflection {
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(descriptors)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()?;
            routes = routes.add_service(reflection);
        }
        // Small request/response pairs: without TCP_NODELAY, Nagle and
        // delayed ACKs add ~40 ms to a call (`Server::tcp_nodelay` applies
        // only to listeners tonic binds itself, not to an incoming stream).
        let incoming = TcpListenerStream::new(self.listener).map(|conn| {
            if let Ok(stream) = &conn {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            }
            conn
        });
        tonic::transport::Server::builder()
            .tls_config(self.tls)?
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}
