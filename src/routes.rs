//! The URL space: which (method, path) gets which answer. This is the only module that knows
//! the paths; [`Routes::respond`] turns a request into a response without awaiting anything.

use std::cell::RefCell;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::avatar::{AvatarCache, Snapshot};
use crate::config::Config;
use crate::time;

/// The response body type of every route: the whole body is known up front.
pub type Body = Full<Bytes>;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");

/// The seed's 404 body.
const NOT_FOUND_BODY: &[u8] = b"Not found";
const METHOD_NOT_ALLOWED_BODY: &[u8] = br#"{"error":"method not allowed","allow":["GET","HEAD"]}"#;

/// One worker's routing table and response state. Not shared between threads: each worker
/// owns one, so the cache is refreshed without locks.
#[derive(Debug)]
pub struct Routes {
    path: String,
    avatars: RefCell<AvatarCache>,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        let location = HeaderValue::from_str(&config.path)
            .expect("config validation admits only visible ASCII paths");
        Routes {
            path: config.path.clone(),
            avatars: RefCell::new(AvatarCache::new(config.date_header, location)),
        }
    }

    /// The avatar path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` on the current millisecond's avatar response.
    fn with_avatars<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        f(self.avatars.borrow_mut().at(time::now()))
    }

    /// The current avatar response as wire bytes: the whole of it, or only the status line and
    /// headers for HEAD. Shares the cached buffer: no copy.
    pub fn avatar_bytes(&self, head_only: bool) -> Bytes {
        self.with_avatars(|snapshot| {
            if head_only {
                snapshot.head()
            } else {
                snapshot.wire.clone()
            }
        })
    }

    /// Answers one request.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        if request.uri().path() != self.path {
            return plain(StatusCode::NOT_FOUND, TEXT, NOT_FOUND_BODY);
        }
        match *request.method() {
            // hyper sends the headers (content-length included) but no body for HEAD.
            Method::GET | Method::HEAD => {
                let (body, headers) =
                    self.with_avatars(|snapshot| (snapshot.body.clone(), snapshot.headers.clone()));
                let mut response = Response::new(Full::new(body));
                // Cloning the prepared map costs less than inserting four headers (about 375
                // instructions a request under callgrind).
                *response.headers_mut() = headers;
                response
            }
            _ => {
                let mut response = plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    JSON,
                    METHOD_NOT_ALLOWED_BODY,
                );
                response.headers_mut().insert(ALLOW, GET_HEAD);
                response
            }
        }
    }
}

fn plain(status: StatusCode, content_type: HeaderValue, body: &'static [u8]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}
