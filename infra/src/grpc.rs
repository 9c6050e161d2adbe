//! The one gRPC server bring-up: mutual TLS ([`crate::tls::server`]),
//! `TCP_NODELAY` on every accepted connection, the standard health service
//! reporting each added service as serving, and reflection when the
//! operator turns it on ([`crate::cli::GrpcArgs`]).
//!
//! Every CA-signed client completes the handshake, but what it may call is
//! decided per RPC by its certificate's name ([`Callers`]): the user-facing
//! RPCs, which trust `x-user-id`, only from the gateways' certificates;
//! operator RPCs only from operators'; health and reflection from any.
//! A projector or notifier key in the wrong hands therefore cannot act as
//! a user, obtain a reset token or grant a role (security review H-2).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::ServerTlsConfig;

use crate::cli::{GrpcArgs, PkiArgs};

/// Who may call what: certificate names per class of RPC.
#[derive(Debug, Clone)]
pub struct Callers {
    gateway: Vec<String>,
    operator: Vec<String>,
    /// Full paths (`/package.Service/Method`) reserved to operators.
    operator_methods: Vec<String>,
}

/// Paths any CA-signed client may call.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

impl Callers {
    /// The names from the operator's settings.
    pub fn new(grpc: &GrpcArgs) -> Self {
        let clean = |v: &[String]| {
            v.iter()
                .map(|n| n.trim().to_ascii_lowercase())
                .filter(|n| !n.is_empty())
                .collect()
        };
        Self {
            gateway: clean(&grpc.grpc_gateway_names),
            operator: clean(&grpc.grpc_operator_names),
            operator_methods: Vec::new(),
        }
    }

    /// Whether a peer with certificate names `peer` may call `path`.
    pub fn allows(&self, path: &str, peer: &[String]) -> bool {
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return true;
        }
        let allowed = if self.operator_methods.iter().any(|m| m == path) {
            &self.operator
        } else {
            &self.gateway
        };
        peer.iter().any(|n| allowed.contains(n))
    }
}

/// The names a client certificate (DER) stands for: its DNS SANs except
/// `localhost`, and its subject's common names. Empty when it does not
/// parse (then it matches nothing).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let dns = dns.to_ascii_lowercase();
                if dns != "localhost" && !names.contains(&dns) {
                    names.push(dns);
                }
            }
        }
    }
    names
}

/// Certificate (DER) → its names.
type NamesByCertificate = HashMap<Vec<u8>, Arc<[String]>>;

/// The check as a tower layer in front of every route.
#[derive(Debug, Clone)]
struct Authorize<S> {
    inner: S,
    callers: Arc<Callers>,
    /// Names per certificate seen (a handful of peers; parsing per call
    /// would cost more than the lookup).
    names: Arc<Mutex<NamesByCertificate>>,
}

impl<S> Authorize<S> {
    fn peer_names<B>(&self, req: &Request<B>) -> Arc<[String]> {
        let Some(certs) = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
        else {
            return Arc::from(Vec::new());
        };
        let Some(leaf) = certs.first() else {
            return Arc::from(Vec::new());
        };
        let mut cache = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = cache.get(leaf.as_ref()) {
            return n.clone();
        }
        if cache.len() >= 1024 {
            cache.clear();
        }
        let names: Arc<[String]> = Arc::from(certificate_names(leaf.as_ref()));
        cache.insert(leaf.as_ref().to_vec(), names.clone());
        names
    }
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let names = self.peer_names(&req);
        let path = req.uri().path();
        if self.callers.allows(path, &names) {
            return Box::pin(self.inner.call(req));
        }
        tracing::warn!(
            event = "grpc.caller_refused",
            path,
            peer = ?names,
            "a client certificate called an RPC it may not call"
        );
        let status =
            tonic::Status::permission_denied(format!("certificate {names:?} may not call {path}"));
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}

#[derive(Debug, Clone)]
struct AuthorizeLayer(Arc<Callers>);

impl<S> tower::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            callers: self.0.clone(),
            names: Arc::default(),
        }
    }
}

/// A gRPC server being assembled: bound, not yet serving.
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    tls: ServerTlsConfig,
    reflection: Option<&'static [u8]>,
    callers: Callers,
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
        callers: Callers,
    ) -> Self {
        Self {
            listener,
            tls,
            reflection,
            callers,
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
            Callers::new(grpc),
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

    /// Reserves `methods` (full paths, `/package.Service/Method`) to the
    /// operator certificates; every other RPC is the gateways'.
    pub fn operator_methods(mut self, methods: &[&str]) -> Self {
        self.callers
            .operator_methods
            .extend(methods.iter().map(|m| (*m).to_owned()));
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
            .layer(AuthorizeLayer(Arc::new(self.callers)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}

#[cfg(all(test, feature = "pki"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn callers() -> Callers {
        let mut c = Callers::new(&GrpcArgs {
            grpc_reflection: false,
            grpc_gateway_names: vec!["gateway".into(), " Edge-Gateway ".into()],
            grpc_operator_names: vec!["operator".into()],
        });
        c.operator_methods.push("/p.S/Grant".into());
        c
    }

    #[test]
    fn rpcs_are_allowed_by_certificate_name() {
        let c = callers();
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(c.allows("/p.S/Send", &names(&["gateway"])));
        assert!(c.allows("/p.S/Send", &names(&["edge-gateway"])));
        assert!(!c.allows("/p.S/Send", &names(&["projector"])));
        assert!(!c.allows("/p.S/Send", &names(&["operator"])));
        assert!(!c.allows("/p.S/Send", &[]));
        assert!(c.allows("/p.S/Grant", &names(&["operator"])));
        assert!(!c.allows("/p.S/Grant", &names(&["gateway"])));
        assert!(c.allows("/grpc.health.v1.Health/Check", &[]));
        assert!(c.allows(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            &names(&["client"])
        ));
    }

    #[test]
    fn a_certificate_is_named_by_its_common_name_and_dns_sans() {
        let dir = std::env::temp_dir().join(format!("grpc-names-{}", std::process::id()));
        crate::pki::generate(&dir, &["gateway"]).unwrap();
        let pem = std::fs::read(dir.join("gateway.pem")).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        assert_eq!(certificate_names(&pem.contents), ["gateway"]);
        assert!(certificate_names(b"not a certificate").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
