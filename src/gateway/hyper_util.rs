//! Upstream calls through hyper-util's pooled client (`--client hyper-util`, the default),
//! and its errors sorted into the gateway's [`Kind`]s.

use std::fmt::Write as _;

use ::hyper_util::client::legacy::Client;
use ::hyper_util::client::legacy::connect::Connect;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Uri};

use super::Forward;
use super::error::{Kind, UpstreamError, tls_kind};
use super::lean::Response as Reply;

/// One request through hyper-util's pooled client, its body read whole: refused at once when
/// its declared length is over `max_body`, else the moment it passes it.
pub(super) async fn call<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Empty<Bytes>>,
    uri: &Uri,
    host: &HeaderValue,
    forward: &Forward,
    max_body: usize,
) -> Result<Reply, UpstreamError> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    request.headers_mut().insert(HOST, host.clone());
    for (name, value) in forward.headers() {
        request.headers_mut().insert(name, value.clone());
    }
    let response = client
        .request(request)
        .await
        .map_err(|err| error_of(&err, err.is_connect()))?;
    let (parts, body) = response.into_parts();
    let too_large = || UpstreamError::too_large(max_body);
    // hyper reports a `content-length` as the body's exact size.
    if hyper::body::Body::size_hint(&body).lower() > max_body as u64 {
        return Err(too_large());
    }
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<LengthLimitError>() {
                too_large()
            } else {
                error_of(&*err, false)
            }
        })?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        content_type: parts.headers.get(CONTENT_TYPE).cloned(),
        body,
    })
}

/// Sorts a client error into a kind: no connection, a malformed answer, or a connection
/// that ended before the whole answer.
fn error_of(err: &(dyn std::error::Error + 'static), connect: bool) -> UpstreamError {
    let mut cause = String::new();
    let mut kind = if connect { Kind::Connect } else { Kind::Closed };
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            if hyper.is_parse() || hyper.is_parse_status() {
                kind = Kind::Malformed;
            }
        }
        // hyper reports a body it cannot decode (a bad chunk size line, say) as an I/O
        // error of kind invalid input or data; rustls's errors are of kind invalid data too,
        // and are a failed TLS session (see `UpstreamError::broken`).
        let io = err.downcast_ref::<std::io::Error>();
        if let Some(tls) = io.and_then(tls_kind) {
            kind = tls;
        } else if io.is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            )
        }) && !connect
        {
            kind = Kind::Malformed;
        }
        // The client's own wrapper says only "client error (Kind)": skip it.
        if err
            .downcast_ref::<::hyper_util::client::legacy::Error>()
            .is_none()
        {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            let _ = write!(cause, "{err}");
        }
        next = err.source();
    }
    UpstreamError { kind, cause }
}

/// A connector whose whole connect (TCP, then the TLS handshake) is held to a limit: the TCP
/// connect has its own timeout, the handshake none, and hyper-util finishes a connect that
/// lost a race for a pooled connection in the background, where no call's deadline reaches
/// it. An upstream that takes TCP connections and then stalls the handshake would keep each
/// such socket for ever.
#[derive(Debug, Clone)]
pub(super) struct Timed<C> {
    pub(super) inner: C,
    pub(super) limit: std::time::Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connect = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connect).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("connect and TLS handshake took over {limit:?}").into()),
            }
        })
    }
}
