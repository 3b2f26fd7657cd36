//! The URL space: which (method, path) gets which answer. This is the only module that knows
//! the paths; [`Routes::respond`] turns a request into a response without awaiting anything.

use std::cell::RefCell;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, DATE, HeaderName, HeaderValue, LOCATION};
use hyper::{Method, Request, Response, StatusCode};

use crate::avatar::AvatarCache;
use crate::config::Config;
use crate::time;

/// The response body type of every route: the whole body is known up front.
pub type Body = Full<Bytes>;

/// The seed's `engine` header, kept for callers that assert on it.
const ENGINE: HeaderName = HeaderName::from_static("engine");
const ENGINE_VALUE: HeaderValue = HeaderValue::from_static("Rust/Hype");
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
    path: &'static str,
    location: HeaderValue,
    avatars: RefCell<AvatarCache>,
}

impl Routes {
    pub fn new(config: &Config) -> Routes {
        // Leaked once per worker so the path and `location` value are `'static`: cloning a
        // static `HeaderValue` per response touches no reference count.
        let path: &'static str = Box::leak(config.path.clone().into_boxed_str());
        Routes {
            path,
            location: HeaderValue::from_static(path),
            avatars: RefCell::new(AvatarCache::new(config.date_header)),
        }
    }

    /// Answers one request.
    pub fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        if request.uri().path() != self.path {
            return plain(StatusCode::NOT_FOUND, TEXT, NOT_FOUND_BODY);
        }
        match *request.method() {
            // hyper sends the headers (content-length included) but no body for HEAD.
            Method::GET | Method::HEAD => self.avatars(),
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

    fn avatars(&self) -> Response<Body> {
        let snapshot = self.avatars.borrow_mut().at(time::now()).clone();
        let mut response = Response::new(Full::new(snapshot.body));
        // In the seed's order; hyper appends content-length from the body's exact size.
        let headers = response.headers_mut();
        headers.reserve(5);
        headers.insert(CONTENT_TYPE, JSON);
        headers.insert(ENGINE, ENGINE_VALUE);
        headers.insert(LOCATION, self.location.clone());
        headers.insert(DATE, snapshot.date);
        response
    }
}

fn plain(status: StatusCode, content_type: HeaderValue, body: &'static [u8]) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}
