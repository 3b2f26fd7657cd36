//! Micro-benchmarks of producing one response: `cargo bench`.
//!
//! - `avatar_bytes`: what the fast path does per request (clock read, cache check, a shared
//!   `Bytes` of the pre-rendered response). Target: under 100 ns.
//! - `record`: what metrics add per fast-path batch (a clock read and two counter bumps).
//! - `hyper_response`: what the hyper path builds per request (`Response` with a cloned map).
//! - `render`: re-rendering the template and both timestamps, done once per millisecond.
//! - `classify`: recognising a typical wrk request as a fast-path avatar GET.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hyper::header::HeaderValue;
use microservice2::avatar;
use microservice2::config::Config;
use microservice2::ops::metrics::{MethodLabel, Route};
use microservice2::routes::{FaultSignal, Routes, Shared};
use microservice2::time::DateHeader;

fn benches(c: &mut Criterion) {
    let routes = std::rc::Rc::new(Routes::new(&Config::default(), &Shared::new(1), 0));
    let faults = std::rc::Rc::new(FaultSignal::default());
    c.bench_function("avatar_bytes", |b| {
        b.iter(|| black_box(routes.avatar_bytes(black_box(false), std::time::Instant::now())))
    });
    c.bench_function("record", |b| {
        b.iter(|| {
            let elapsed = black_box(std::time::Instant::now()).elapsed();
            routes.record(Route::Avatar, MethodLabel::Get, 200, elapsed, 1);
        })
    });
    let request = || {
        hyper::Request::get("/v1/avatar")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a valid request")
    };
    c.bench_function("hyper_response", |b| {
        b.iter_batched(
            request,
            |request| black_box(routes.call(request, &faults, false, None)),
            criterion::BatchSize::SmallInput,
        )
    });
    let location = HeaderValue::from_static("/v1/avatar");
    let mut instant = Duration::new(1_798_761_599, 0);
    c.bench_function("render", |b| {
        b.iter(|| {
            instant += Duration::from_millis(1);
            black_box(avatar::render(
                DateHeader::Rfc3339,
                &location,
                black_box(instant),
            ))
        })
    });
    let wrk_request = b"GET /v1/avatar HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n\r\n";
    c.bench_function("classify", |b| {
        b.iter(|| {
            black_box(microservice2::routes::classify(
                black_box(wrk_request),
                "/v1/avatar",
            ))
        })
    });
}

criterion_group!(response, benches);
criterion_main!(response);
