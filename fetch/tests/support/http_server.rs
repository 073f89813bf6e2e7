//! A small HTTP/1.1 server on 127.0.0.1 for the tests: serves files (honouring `Range`), can
//! cut a response in the middle, announce more bytes than it sends, answer any status, check
//! basic authentication, and serve ENA-format filereport TSVs. Every request is logged.
//! One request per connection (`Connection: close`). [`HttpServer::start_tls`] serves the same
//! over TLS with the certificate in `tests/fixtures/tls` (signed by a test CA, `ca.pem`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the server answers on a path.
#[derive(Debug, Clone)]
pub enum Route {
    /// A file; `Range: bytes=N-` (or `N-M`) gets a 206.
    File(Vec<u8>),
    /// The first GET announces the whole body but stops after `after` bytes and closes the
    /// connection; later requests are served like [`Route::File`], or with the whole body and
    /// a 200 whatever the range when `honour_range` is false.
    CutOnce {
        body: Vec<u8>,
        after: usize,
        honour_range: bool,
    },
    /// Always announces `announced` bytes, sends `body`, and closes.
    Short { body: Vec<u8>, announced: usize },
    /// An empty response with this status.
    Status(u16),
    /// `status` for the first `failures` requests, then the file.
    FailThenServe {
        status: u16,
        failures: usize,
        body: Vec<u8>,
    },
    /// The file for requests with these basic credentials, 401 otherwise.
    BasicAuth {
        user: String,
        password: String,
        body: Vec<u8>,
    },
    /// ENA's filereport: the TSV for the `accession=` of the query, or the header alone for an
    /// accession it does not have (what ENA answers).
    EnaReports(BTreeMap<String, String>),
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, (Route, usize)>,
    log: Vec<Logged>,
}

/// The header line of ENA's filereport with the fields herd asks for.
pub const ENA_HEADER: &str = "run_accession\tfastq_ftp\tfastq_md5\tfastq_bytes";

pub struct HttpServer {
    address: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start() -> HttpServer {
        HttpServer::launch(None).await
    }

    /// The same server over TLS: `https://127.0.0.1:PORT`, with a certificate for 127.0.0.1
    /// and localhost signed by the test CA [`tls_ca_path`].
    pub async fn start_tls() -> HttpServer {
        HttpServer::launch(Some(tls_acceptor())).await
    }

    async fn launch(tls: Option<TlsAcceptor>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        // A client that refuses the certificate ends here.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = serve(stream, state).await;
                            }
                        }
                        None => {
                            let _ = serve(stream, state).await;
                        }
                    }
                });
            }
        });
        HttpServer {
            address,
            scheme,
            state,
            task,
        }
    }

    /// `http://127.0.0.1:PORT{path}` (`https://` for [`start_tls`](Self::start_tls)).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.address)
    }

    /// `http://user:password@127.0.0.1:PORT{path}`.
    pub fn url_with_credentials(&self, user: &str, password: &str, path: &str) -> String {
        format!("{}://{user}:{password}@{}{path}", self.scheme, self.address)
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), (route, 0));
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// The requests whose path (without the query) is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|logged| logged.target.split('?').next() == Some(path))
            .collect()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
}

async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0; 4096];
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        let count = stream.read(&mut chunk).await.ok()?;
        if count == 0 || buffer.len() > 64 * 1024 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..count]);
    }
    let text = String::from_utf8_lossy(&buffer).into_owned();
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let mut headers = HashMap::new();
    for line in lines.take_while(|line| !line.is_empty()) {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    Some(Request {
        method,
        target,
        headers,
    })
}

/// What to send: status, extra headers, the body to send, and the length to announce.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    announced: usize,
}

impl Answer {
    fn new(status: u16, body: Vec<u8>) -> Answer {
        let announced = body.len();
        Answer {
            status,
            headers: Vec::new(),
            body,
            announced,
        }
    }
}

/// The file `body`, honouring `range` (`bytes=N-` or `bytes=N-M`).
fn file_answer(body: &[u8], range: Option<&str>) -> Answer {
    let Some(spec) = range.and_then(|range| range.strip_prefix("bytes=")) else {
        return Answer::new(200, body.to_vec());
    };
    let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = start.parse().unwrap_or(0);
    if start >= body.len() {
        let mut answer = Answer::new(416, Vec::new());
        answer
            .headers
            .push(("Content-Range".into(), format!("bytes */{}", body.len())));
        return answer;
    }
    let end = end
        .parse::<usize>()
        .map_or(body.len() - 1, |end| end.min(body.len() - 1));
    let mut answer = Answer::new(206, body[start..=end].to_vec());
    answer.headers.push((
        "Content-Range".into(),
        format!("bytes {start}-{end}/{}", body.len()),
    ));
    answer
}

fn answer(route: &Route, hits: usize, request: &Request) -> Answer {
    let range = request.headers.get("range").map(String::as_str);
    match route {
        Route::File(body) => file_answer(body, range),
        Route::CutOnce {
            body,
            after,
            honour_range,
        } => {
            if hits == 0 {
                let mut answer = Answer::new(200, body[..*after].to_vec());
                answer.announced = body.len();
                answer
            } else if *honour_range {
                file_answer(body, range)
            } else {
                Answer::new(200, body.clone())
            }
        }
        Route::Short { body, announced } => {
            let mut answer = Answer::new(200, body.clone());
            answer.announced = *announced;
            answer
        }
        Route::Status(status) => Answer::new(*status, Vec::new()),
        Route::FailThenServe {
            status,
            failures,
            body,
        } => {
            if hits < *failures {
                Answer::new(*status, Vec::new())
            } else {
                file_answer(body, range)
            }
        }
        Route::BasicAuth {
            user,
            password,
            body,
        } => {
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            );
            if request.headers.get("authorization") == Some(&expected) {
                file_answer(body, range)
            } else {
                let mut answer = Answer::new(401, Vec::new());
                answer
                    .headers
                    .push(("WWW-Authenticate".into(), "Basic realm=\"test\"".into()));
                answer
            }
        }
        Route::EnaReports(reports) => {
            let query = request
                .target
                .split_once('?')
                .map_or("", |(_, query)| query);
            let accession = query
                .split('&')
                .find_map(|pair| pair.strip_prefix("accession="))
                .unwrap_or_default();
            let body = match reports.get(accession) {
                Some(report) => report.clone(),
                None => format!("{ENA_HEADER}\n"),
            };
            Answer::new(200, body.into_bytes())
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    }
}

async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let Some(request) = read_request(&mut stream).await else {
        return Ok(());
    };
    let path = request
        .target
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let answer = {
        let mut state = state.lock().unwrap();
        let answer = match state.routes.get_mut(&path) {
            Some((route, hits)) => {
                let answer = answer(route, *hits, &request);
                *hits += 1;
                answer
            }
            None => Answer::new(404, Vec::new()),
        };
        state.log.push(Logged {
            method: request.method.clone(),
            target: request.target.clone(),
            range: request.headers.get("range").cloned(),
            authorization: request.headers.get("authorization").cloned(),
            status: answer.status,
        });
        answer
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.announced
    );
    if answer.status < 300 {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if request.method != "HEAD" {
        stream.write_all(&answer.body).await?;
    }
    stream.flush().await?;
    stream.shutdown().await
}

/// The test CA's certificate (PEM): what a client must trust to reach [`HttpServer::start_tls`].
pub fn tls_ca_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem")
}

fn tls_acceptor() -> TlsAcceptor {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let certificates = CertificateDer::pem_file_iter(fixtures.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixtures.join("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}
