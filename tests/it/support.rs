//! Shared test helpers: a server on port 0 in this process (stopped when its guard drops), the
//! binary as a child process, and a small raw HTTP/1.1 client that sees exactly what went over
//! the wire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use microservice2::ops::exposition::Registry;
use microservice2::{Config, Server};
use tokio::sync::oneshot;

/// How long any single read in a test may block before the test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A server running on its own threads; dropping it shuts it down and waits for it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when the configuration asked for one.
    pub admin: Option<SocketAddr>,
    /// The server's metrics, read without a connection (and after it has stopped).
    pub metrics: Registry,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the real server in-process on 127.0.0.1, port 0, with two workers unless the
/// configuration says otherwise.
pub fn spawn(config: Config) -> TestServer {
    // Some tests hold thousands of connections, both ends in this process: lift the soft
    // open-files limit to the hard one where a machine starts lower.
    static RAISE_FD_LIMIT: std::sync::Once = std::sync::Once::new();
    RAISE_FD_LIMIT.call_once(|| {
        let _ = rlimit::increase_nofile_limit(u64::MAX);
    });
    let config = Config {
        host: microservice2::config::Host {
            name: "127.0.0.1".into(),
            ip: [127, 0, 0, 1].into(),
        },
        port: 0,
        // An admin port given in a test is always port 0.
        admin_port: config.admin_port.map(|_| 0),
        workers: config.workers.or(std::num::NonZeroUsize::new(2)),
        ..config
    };
    let server = Server::bind(config).expect("bind on port 0");
    let addr = server.local_addr();
    let admin = server.admin_addr();
    let metrics = server.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        runtime
            .block_on(server.serve(async {
                let _ = stopped.await;
            }))
            .expect("server runs");
    });
    TestServer {
        addr,
        admin,
        metrics,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// A configuration parsed from flags, exactly as the binary parses them, with no environment.
pub fn config(args: &[&str]) -> Config {
    let argv = std::iter::once("microservice2").chain(args.iter().copied());
    match Config::from_args_env(argv, &microservice2::config::env::NoEnv) {
        Ok(config) => config,
        Err(err) => panic!("bad test flags {args:?}: {err}"),
    }
}

pub fn spawn_default() -> TestServer {
    spawn(Config::default())
}

impl TestServer {
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Sends one request on a fresh connection and returns the response.
    pub fn request(&self, raw: &str) -> RawResponse {
        let mut client = self.connect();
        client.send(raw.as_bytes());
        client.read_response(raw.starts_with("HEAD "))
    }

    pub fn get(&self, path: &str) -> RawResponse {
        self.request(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
    }

    /// Stops the server and waits until its workers have drained.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// The sum of the samples of metric `name` whose labels include `labels`, read straight
    /// from the registry: no connection is made, so none is counted.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.metrics.render(0), name, labels)
    }

    /// One metric sample as `GET /metrics` answers it now, over a connection of its own:
    /// unlike [`TestServer::metric`], it includes the gauge of requests in flight.
    pub fn scraped(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sample(&self.get("/metrics").body_text(), name, labels)
    }

    /// Stops the server (as [`TestServer::stop`]) and returns its final metrics text.
    pub fn stop_and_render(mut self) -> String {
        self.shutdown();
        self.metrics.render(0)
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header (name, value) pairs in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Asserts the seed's headers, in the seed's order, for a 3,696-byte avatar answer from
    /// the path `location`.
    pub fn assert_seed_headers(&self, location: &str) {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "engine",
                "location",
                "date",
                "content-length"
            ]
        );
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.header("engine"), Some("Rust/Hype"));
        assert_eq!(self.header("location"), Some(location));
        assert_eq!(self.header("content-length"), Some("3696"));
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking raw HTTP/1.1 client on one connection: a TCP socket, or anything else that
/// reads and writes (a TLS session over one).
pub struct Client<S = TcpStream> {
    reader: BufReader<S>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(connect_tcp(addr))
    }
}

/// A socket to `addr` with the clients' read timeout and no Nagle delay.
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the test server");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

impl<S: Read + Write> Client<S> {
    pub fn over(stream: S) -> Client<S> {
        Client {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&mut self) -> &mut S {
        self.reader.get_mut()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .expect("write request");
    }

    /// Reads one response; `head` says whether it answers a HEAD request (no body follows).
    pub fn read_response(&mut self, head: bool) -> RawResponse {
        self.try_read_response(head)
            .expect("a complete response before the connection closed")
    }

    /// Reads one response, or `None` when the server closed the connection first.
    pub fn try_read_response(&mut self, head: bool) -> Option<RawResponse> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read header");
            let trimmed = line.trim_end_matches(['\r', '\n']);
            if trimmed.is_empty() {
                break;
            }
            let (name, value) = trimmed.split_once(':').expect("header has a colon");
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        // A HEAD answer, a 204 and a 304 have no body (RFC 9110 6.4.1).
        if !head && !matches!(status, 204 | 304) {
            let length: usize = response
                .header("content-length")
                .expect("responses carry content-length")
                .parse()
                .expect("numeric content-length");
            response.body.resize(length, 0);
            self.reader
                .read_exact(&mut response.body)
                .expect("read body");
        }
        Some(response)
    }

    /// True when the server has closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

/// Waits until the server closes `client`, up to `limit`; returns how long that took.
pub fn closed_within(client: &mut Client, limit: Duration) -> Duration {
    let start = Instant::now();
    client
        .stream()
        .set_read_timeout(Some(limit))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match client.stream().read(&mut byte) {
        Ok(0) => start.elapsed(),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => start.elapsed(),
        other => panic!("expected a close within {limit:?}, got {other:?}"),
    }
}

/// The sum of the samples of `name` in exposition `text` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("valid exposition text");
    crate::observability::value(&scrape, name, labels)
}

/// The fuzz targets' proptest settings: 48 cases in `cargo test`, `PROPTEST_CASES` for more
/// (`bench/fuzz`).
pub fn fuzz_config() -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok());
    proptest::test_runner::Config {
        cases: cases.unwrap_or(48),
        ..proptest::test_runner::Config::default()
    }
}

/// Polls `condition` every 10 ms until it holds; fails the test naming `what` if it still
/// does not after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for async tests on a current-thread runtime: between looks it yields to
/// the runtime's other tasks instead of blocking them.
pub async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One metric sample as the `/metrics` at `addr` answers it now, for async tests.
pub async fn scraped_at(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let answer = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("scrape /metrics");
    let answer = String::from_utf8_lossy(&answer);
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head, then a body");
    sample(body, name, labels)
}

/// TCP state `ESTABLISHED`, as `/proc/net/tcp` writes it.
pub const TCP_ESTABLISHED: u8 = 0x01;

/// One IPv4 TCP socket of this network namespace, as `/proc/net/tcp` shows it.
#[derive(Debug, Clone, Copy)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    /// Bytes written and not yet acknowledged by the peer (`tx_queue`).
    pub unacked: u64,
    /// Bytes received and not yet read by the socket's owner (`rx_queue`).
    pub unread: u64,
}

/// Every IPv4 TCP socket of this network namespace, every process's (the tests' servers and
/// clients all use 127.0.0.1).
pub fn tcp_sockets() -> Vec<TcpSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let address = |text: &str| {
        let (ip, port) = text.split_once(':').expect("ADDRESS:PORT");
        // The address is the network-order word printed as a native integer.
        let ip = u32::from_str_radix(ip, 16)
            .expect("hex address")
            .to_ne_bytes();
        let port = u16::from_str_radix(port, 16).expect("hex port");
        SocketAddr::from((ip, port))
    };
    table
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (unacked, unread) = fields[4].split_once(':').expect("TX:RX");
            TcpSocket {
                local: address(fields[1]),
                remote: address(fields[2]),
                state: u8::from_str_radix(fields[3], 16).expect("hex state"),
                unacked: u64::from_str_radix(unacked, 16).expect("hex tx_queue"),
                unread: u64::from_str_radix(unread, 16).expect("hex rx_queue"),
            }
        })
        .collect()
}

/// Whether the peer of `stream` has taken everything written to it: nothing waits here
/// unacknowledged and nothing sits unread at the other end, so a server has accepted the
/// connection and read the bytes (a connection still in the accept queue holds them unread).
pub fn read_by_peer(stream: &TcpStream) -> bool {
    let here = stream.local_addr().expect("local address");
    let there = stream.peer_addr().expect("peer address");
    let sockets = tcp_sockets();
    let ours = sockets
        .iter()
        .find(|s| s.local == here && s.remote == there);
    let theirs = sockets
        .iter()
        .find(|s| s.local == there && s.remote == here);
    matches!((ours, theirs), (Some(ours), Some(theirs)) if ours.unacked == 0 && theirs.unread == 0)
}

/// Whether the server at `server` has closed its end of the connection from `client` (a
/// client's local address): its socket is gone from the table.
pub fn closed_by_server(server: SocketAddr, client: SocketAddr) -> bool {
    !tcp_sockets()
        .iter()
        .any(|socket| socket.local == server && socket.remote == client)
}

/// One metric sample scraped over `client`'s keep-alive connection: polled this way, the
/// scrape opens and closes no connection of its own.
pub fn scrape_on<S: Read + Write>(
    client: &mut Client<S>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    sample(&client.read_response(false).body_text(), name, labels)
}

/// Whether a new connection to `addr` is refused: the listener has closed.
pub fn refuses_connections(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).is_err()
}

/// The built binary, started with `args` and no `M1_*`/`M2_*` variables inherited.
pub fn binary(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microservice2"));
    command.args(args);
    hermetic(&mut command);
    command
}

/// Removes from what `command` inherits every `M1_*` and `M2_*` variable, and `RUST_LOG`, but
/// those the test set on it on purpose: the caller's environment never reaches a child.
pub fn hermetic(command: &mut Command) -> &mut Command {
    let set: Vec<std::ffi::OsString> = command.get_envs().map(|(key, _)| key.to_owned()).collect();
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        let ours = name.starts_with("M1_") || name.starts_with("M2_") || name == "RUST_LOG";
        if ours && !set.contains(&key) {
            command.env_remove(&key);
        }
    }
    command
}

/// `microservice2 gateway` on 127.0.0.1 port 0, one worker, with `extra` flags, not started.
pub fn gateway_command(extra: &[&str]) -> Command {
    let mut args = vec![
        "gateway",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    binary(&args)
}

/// Runs the binary with `args` and `env`, asserting it exits 2 with one line on stderr that
/// names `needle`, and nothing on stdout.
pub fn exits_2_naming(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let output = binary(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{args:?} {env:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?} {env:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.stdout.is_empty());
}

/// A child server process; killed on drop if still running.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ChildServer {
    /// Starts the binary on 127.0.0.1 port 0 and waits for its `Listening on` line.
    pub fn start(extra: &[&str]) -> ChildServer {
        ChildServer::start_with(extra, Stdio::inherit())
    }

    /// Like [`ChildServer::start`], with stderr piped for the test to read after exit.
    pub fn start_capturing_logs(extra: &[&str]) -> ChildServer {
        ChildServer::start_with(extra, Stdio::piped())
    }

    /// Everything the process wrote to stderr; call after it has exited.
    pub fn logs(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut text).expect("read stderr");
        }
        text
    }

    fn start_with(extra: &[&str], stderr: Stdio) -> ChildServer {
        let mut args = vec!["--host", "127.0.0.1", "--port", "0", "--workers", "1"];
        args.extend_from_slice(extra);
        ChildServer::start_command(binary(&args), stderr)
    }

    /// Runs the binary under `ulimit -n files` (through bash), with stderr piped.
    pub fn start_with_open_files_limit(files: u32, extra: &[&str]) -> ChildServer {
        let mut script = format!(
            "ulimit -n {files} && exec '{}' --host 127.0.0.1 --port 0 --workers 1",
            env!("CARGO_BIN_EXE_microservice2")
        );
        for arg in extra {
            script.push_str(&format!(" '{arg}'"));
        }
        let mut command = Command::new("bash");
        command.arg("-c").arg(script);
        ChildServer::start_command(command, Stdio::piped())
    }

    pub fn start_command(mut command: Command, stderr: Stdio) -> ChildServer {
        let mut child = hermetic(&mut command)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the Listening line");
        let line = line.trim_end();
        let port = line
            .strip_prefix("Listening on http://127.0.0.1:")
            .or_else(|| line.strip_prefix("Listening on https://127.0.0.1:"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse::<u16>()
            .expect("a port number");
        ChildServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Starts `microservice2 gateway` on 127.0.0.1 port 0, one worker, with `extra` flags.
    pub fn gateway(extra: &[&str]) -> ChildServer {
        ChildServer::gateway_with(extra, Stdio::inherit())
    }

    /// [`ChildServer::gateway`] with its stderr sent to `stderr`.
    pub fn gateway_with(extra: &[&str], stderr: Stdio) -> ChildServer {
        ChildServer::start_command(gateway_command(extra), stderr)
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server is running");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// One metric sample, scraped now over a connection of its own.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        scrape_on(&mut Client::connect(self.addr), name, labels)
    }

    /// utime + stime of the process so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the process is running");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .expect("stat has a command name")
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 =
            fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
        ticks / 100.0
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit and returns its exit code.
    /// Looks at least once, so `wait_exit(Duration::ZERO)` says whether it has exited now.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reads the piped stderr on a thread of its own from now on, so that a test can wait
    /// for a line while the process runs (instead of [`ChildServer::logs`] after it exits).
    pub fn tail_logs(&mut self) -> LogTail {
        let stderr = self.child.stderr.take().expect("stderr piped");
        let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut stderr = BufReader::new(stderr);
            let mut line = String::new();
            while stderr.read_line(&mut line).is_ok_and(|read| read > 0) {
                sink.lock().expect("log text").push_str(&line);
                line.clear();
            }
        });
        LogTail {
            text,
            reader: Some(reader),
        }
    }
}

/// What a child server has written to stderr so far (see [`ChildServer::tail_logs`]).
pub struct LogTail {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl LogTail {
    pub fn contains(&self, needle: &str) -> bool {
        self.text.lock().expect("log text").contains(needle)
    }

    /// Everything the process wrote; call after it has exited (waits for stderr to close).
    pub fn finish(mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader");
        }
        std::mem::take(&mut *self.text.lock().expect("log text"))
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i128
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian), written independently of the
/// server's own conversion so the two check each other.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let mut days = 0;
    for y in 1970..year {
        days += if is_leap(y) { 366 } else { 365 };
    }
    const CUMULATIVE: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    days += CUMULATIVE[(month - 1) as usize];
    if month > 2 && is_leap(year) {
        days += 1;
    }
    days + day - 1
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn num(text: &str) -> i64 {
    text.parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS.fffZ` or `YYYY-MM-DDTHH:MM:SS.fffffffff+00:00` into nanoseconds
/// since the epoch, asserting the exact shape.
pub fn parse_iso(text: &str) -> i128 {
    let bytes = text.as_bytes();
    assert!(
        bytes.len() == 24 || bytes.len() == 35,
        "unexpected length: {text:?}"
    );
    assert_eq!(&bytes[4..5], b"-");
    assert_eq!(&bytes[7..8], b"-");
    assert_eq!(&bytes[10..11], b"T");
    assert_eq!(&bytes[19..20], b".");
    let fraction = if bytes.len() == 24 {
        assert_eq!(&text[23..], "Z");
        num(&text[20..23]) * 1_000_000
    } else {
        assert_eq!(&text[29..], "+00:00");
        num(&text[20..29])
    };
    let days = days_from_civil(num(&text[0..4]), num(&text[5..7]), num(&text[8..10]));
    let secs =
        days * 86_400 + num(&text[11..13]) * 3600 + num(&text[14..16]) * 60 + num(&text[17..19]);
    secs as i128 * 1_000_000_000 + fraction as i128
}

/// Parses an IMF-fixdate (`Sat, 28 Nov 2026 19:04:11 GMT`) into nanoseconds since the epoch.
pub fn parse_imf(text: &str) -> i128 {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    assert_eq!(text.len(), 29, "{text:?}");
    assert_eq!(&text[3..5], ", ");
    assert_eq!(&text[25..], " GMT");
    let month = MONTHS
        .iter()
        .position(|m| *m == &text[8..11])
        .expect("month name") as i64
        + 1;
    let days = days_from_civil(num(&text[12..16]), month, num(&text[5..7]));
    assert_eq!(
        &text[0..3],
        WEEKDAYS[(days % 7) as usize],
        "weekday of {text:?}"
    );
    let secs =
        days * 86_400 + num(&text[17..19]) * 3600 + num(&text[20..22]) * 60 + num(&text[23..25]);
    secs as i128 * 1_000_000_000
}

/// A runtime for tests that drive many connections at once from async clients.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// Sends `request` (which should ask for `Connection: close`) on a new connection and reads
/// until the server closes it.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response)
}

/// `bytes` (answers as they came off the wire, or a body) with what changes from one
/// millisecond to the next masked: every `date` header's value and every avatar list's first
/// `createdAt`, so two servers' answers can be compared byte for byte.
pub fn masked(bytes: &[u8]) -> Vec<u8> {
    const DATE: &[u8] = b"\r\ndate: ";
    const CREATED_AT: &[u8] = b"[{ \"createdAt\": \"";
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(found) = find(&out[at..], DATE) {
        let start = at + found + DATE.len();
        let end = find(&out[start..], b"\r\n").map_or(out.len(), |len| start + len);
        out[start..end].fill(b'#');
        at = end;
    }
    let mut at = 0;
    while let Some(found) = find(&out[at..], CREATED_AT) {
        let start = at + found + CREATED_AT.len();
        let end = (start + 24).min(out.len());
        out[start..end].fill(b'#');
        at = end;
    }
    out
}

/// A response read off the wire as wire text again (status code, headers in order, body),
/// through [`masked`]: for comparing two answers whole, dates and `createdAt` aside.
pub fn masked_response(response: &RawResponse) -> Vec<u8> {
    let mut wire = format!("HTTP/1.1 {}\r\n", response.status);
    for (name, value) in &response.headers {
        wire.push_str(&format!("{name}: {value}\r\n"));
    }
    wire.push_str("\r\n");
    let mut wire = wire.into_bytes();
    wire.extend_from_slice(&response.body);
    masked(&wire)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// An address where nothing listens, held for as long as the value lives: its socket is
/// bound but never listens, so connections to it are refused and no other socket (another
/// test's server binding port 0) can take the port meanwhile. A port bound and let go at
/// once could be handed to a server started by a test running beside this one: a gateway
/// then found its "down" upstream answering 200 (a CI failure).
pub struct ClosedPort {
    _socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .expect("address");
        Self {
            _socket: socket,
            addr,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}
