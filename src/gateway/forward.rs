//! What the gateway passes on from its caller: the behaviour asked for
//! (`--forward-behaviour`: the behaviour header, and the behaviour pairs of the query added to
//! the upstream's), and always the attempt header (`--attempt-header`), so that the upstream
//! counts the gateway's retries of one request as attempts of one id.

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Uri};

use crate::behaviour::parse as behaviour;

/// The behaviour header's name, for the clients' requests.
static BEHAVIOUR: HeaderName = HeaderName::from_static(crate::behaviour::HEADER);

/// What the gateway passes on from its caller to every upstream, on every attempt.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    pub(super) header: Option<HeaderValue>,
    /// Only the behaviour pairs of the caller's query, as written.
    pub(super) query: Option<String>,
    /// The caller's attempt header, named and valued.
    pub(super) attempt: Option<(HeaderName, HeaderValue)>,
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
        Forward {
            header,
            query,
            attempt: None,
        }
    }

    /// Also passes on the caller's header `name` (the attempt header), when `request` has it.
    pub fn with_attempt<B>(mut self, name: &HeaderName, request: &Request<B>) -> Forward {
        self.attempt = request
            .headers()
            .get(name)
            .map(|value| (name.clone(), value.clone()));
        self
    }

    /// Whether nothing is passed on: the upstream gets the request as configured.
    pub(super) fn is_empty(&self) -> bool {
        self.header.is_none() && self.query.is_none() && self.attempt.is_none()
    }

    /// The headers to add to the upstream's request, in order: the behaviour header, then
    /// the attempt header.
    pub(super) fn headers(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let behaviour = self.header.as_ref().map(|value| (&BEHAVIOUR, value));
        let attempt = self.attempt.as_ref().map(|(name, value)| (name, value));
        behaviour.into_iter().chain(attempt)
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
