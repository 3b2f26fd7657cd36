//! The behaviour a caller asked for that the gateway passes on (`--forward-behaviour`): the
//! behaviour header, and the behaviour pairs of the query added to the upstream's.

use hyper::header::HeaderValue;
use hyper::{Request, Uri};

use crate::behaviour::parse as behaviour;

/// The behaviour a caller asked for that the gateway passes on (`--forward-behaviour`).
#[derive(Debug, Clone, Default)]
pub struct Forward {
    pub(super) header: Option<HeaderValue>,
    /// Only the behaviour pairs of the caller's query, as written.
    pub(super) query: Option<String>,
}

impl Forward {
    /// The behaviour header and behaviour query pairs of `request`.
    pub fn of<B>(request: &Request<B>) -> Forward {
        let header = request.headers().get(crate::behaviour::HEADER).cloned();
        let query = request.uri().query().and_then(|query| {
            let pairs: Vec<&str> = query
                .split('&')
                .filter(|pair| {
                    let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
                    behaviour::KEYS.contains(&key)
                })
                .collect();
            (!pairs.is_empty()).then(|| pairs.join("&"))
        });
        Forward { header, query }
    }

    /// The URI to call: the upstream's, with the forwarded pairs added to its query.
    pub(super) fn uri(&self, upstream: &Uri) -> Uri {
        let Some(query) = &self.query else {
            return upstream.clone();
        };
        let path = upstream.path();
        let path_and_query = match upstream.query() {
            Some(own) => format!("{path}?{own}&{query}"),
            None => format!("{path}?{query}"),
        };
        let mut parts = upstream.clone().into_parts();
        // Built from a valid path and query pairs taken from a valid request target.
        parts.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| upstream.clone())
    }
}
