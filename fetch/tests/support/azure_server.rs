//! A contract fake of the Azure Blob Storage REST API, on 127.0.0.1:0, path-style
//! (`http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB`, as Azurite serves it).
//!
//! It is a fake, not an emulator, because none can be installed here: Azurite is an npm package
//! and the npm registry is out of reach, and neither PyPI, Debian nor crates.io ship an Azure
//! Blob emulator. It implements exactly what `azure://` uses, following Microsoft's REST
//! reference (service version 2023-11-03):
//!
//! - Put Blob (block blobs), Put Block, Put Block List (`Latest`, `Uncommitted`, `Committed`);
//! - Get Blob (with `Range` and `If-Match`), Get Blob Properties (HEAD);
//! - List Blobs (`EnumerationResults` with `prefix`, `delimiter` and `BlobPrefix`,
//!   `maxresults` and `NextMarker` pagination);
//! - Delete Blob, alone and inside a Blob Batch (`comp=batch`, `multipart/mixed`);
//! - user metadata as `x-ms-meta-*`;
//! - errors as Azure sends them: `<Error><Code>` XML and `x-ms-error-code`, 404
//!   `BlobNotFound` / `ContainerNotFound`, 403 `AuthenticationFailed`, 401
//!   `NoAuthenticationInformation`, 412 `ConditionNotMet`, 416 `InvalidRange`, 400
//!   `InvalidBlockList`.
//!
//! Every request, and every sub-request of a batch, must carry a SharedKey signature that the
//! fake checks: HMAC-SHA256 with the account key over the string-to-sign of "Authorize with
//! Shared Key" (verb, standard headers, canonicalized `x-ms-` headers, canonicalized resource).
//! A request signed with another key gets 403 `AuthenticationFailed`. Requests without an
//! `Authorization` header are served only for reads of containers made public. SAS tokens are
//! not checked (and so not accepted).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use super::http1::{self, Request, Response, decode, http_date, prefixed, xml_escape, xml_values};

#[derive(Debug, Clone)]
pub struct Blob {
    pub content: Vec<u8>,
    pub metadata: BTreeMap<String, String>,
    etag: String,
    last_modified: String,
}

#[derive(Debug, Default)]
struct Container {
    public: bool,
    blobs: BTreeMap<String, Blob>,
    /// Uncommitted blocks by (blob, block id).
    blocks: HashMap<(String, String), Vec<u8>>,
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    containers: BTreeMap<String, Container>,
    log: Vec<Logged>,
    etags: u64,
}

pub struct AzureServer {
    pub account: String,
    /// The account key, base64 (as the portal shows it).
    pub key: String,
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AzureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AzureServer {
    /// A fake for `account`, with a random-looking key of its own.
    pub async fn start(account: &str) -> AzureServer {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let key_bytes: Vec<u8> = (0..64u32)
            .map(|index| (seed.wrapping_mul(6364136223846793005).rotate_left(index) >> 7) as u8)
            .collect();
        let key = BASE64.encode(key_bytes);
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let (account_name, account_key) = (account.to_owned(), key.clone());
        let handler: http1::Handler = Arc::new(move |request| {
            let state = Arc::clone(&shared);
            let (account, key) = (account_name.clone(), account_key.clone());
            Box::pin(async move {
                let (method, target) = (request.method.clone(), request.target.clone());
                let range = request.header("range").map(str::to_owned);
                let response = handle(&state, &account, &key, request);
                state.lock().unwrap().log.push(Logged {
                    method,
                    target,
                    range,
                    status: response.status,
                });
                response
            })
        });
        let (address, task) = http1::start(handler).await;
        AzureServer {
            account: account.to_owned(),
            key,
            address,
            state,
            task,
        }
    }

    /// The account's blob endpoint, path-style: `http://127.0.0.1:PORT/ACCOUNT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/{}", self.address, self.account)
    }

    pub fn create_container(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .containers
            .entry(name.to_owned())
            .or_default();
    }

    /// Makes a container readable without credentials (public access level "container").
    pub fn make_public(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .containers
            .entry(name.to_owned())
            .or_default()
            .public = true;
    }

    pub fn blob(&self, container: &str, name: &str) -> Option<Blob> {
        let state = self.state.lock().unwrap();
        state.containers.get(container)?.blobs.get(name).cloned()
    }

    pub fn blob_names(&self, container: &str) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .containers
            .get(container)
            .map(|container| container.blobs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores a blob as another client would (metadata as given).
    pub fn insert(&self, container: &str, name: &str, content: &[u8], metadata: &[(&str, &str)]) {
        let mut state = self.state.lock().unwrap();
        let etag = next_etag(&mut state);
        state
            .containers
            .entry(container.to_owned())
            .or_default()
            .blobs
            .insert(
                name.to_owned(),
                Blob {
                    content: content.to_vec(),
                    metadata: metadata
                        .iter()
                        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                        .collect(),
                    etag,
                    last_modified: http_date(SystemTime::now()),
                },
            );
    }

    /// Flips one byte of a stored blob, keeping its metadata (bit rot, or a bad write).
    pub fn corrupt(&self, container: &str, name: &str, at: usize) {
        let mut state = self.state.lock().unwrap();
        let blob = state
            .containers
            .get_mut(container)
            .and_then(|container| container.blobs.get_mut(name))
            .expect("the blob to corrupt exists");
        blob.content[at] ^= 0xff;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

fn next_etag(state: &mut State) -> String {
    state.etags += 1;
    format!("\"0x8DC{:012X}\"", state.etags)
}

/// An Azure error: the XML body (not for HEAD) and `x-ms-error-code`.
fn error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{}\nRequestId:00000000-0000-0000-0000-000000000000\nTime:2026-01-01T00:00:00.0000000Z</Message></Error>",
        xml_escape(message)
    );
    Response::new(status)
        .header("x-ms-error-code", code)
        .header("Content-Type", "application/xml")
        .header("x-ms-version", "2023-11-03")
        .body(body)
}

/// The string-to-sign of "Authorize with Shared Key" for the Blob service (version 2009-09-19
/// and later; Content-Length empty when zero since 2015-02-21).
fn string_to_sign(
    method: &str,
    raw_path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    account: &str,
) -> String {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(header, _)| header == name)
            .map_or("", |(_, value)| value.as_str())
    };
    let content_length = match header("content-length") {
        "0" => "",
        length => length,
    };
    // With x-ms-date, the Date line is empty.
    let date = if headers.iter().any(|(name, _)| name == "x-ms-date") {
        ""
    } else {
        header("date")
    };
    let mut canonical_headers: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name.starts_with("x-ms-"))
        .map(|(name, value)| {
            let folded: Vec<&str> = value.split_whitespace().collect();
            (name.clone(), folded.join(" "))
        })
        .collect();
    canonical_headers.sort();
    let mut text = [
        method,
        header("content-encoding"),
        header("content-language"),
        content_length,
        header("content-md5"),
        header("content-type"),
        date,
        header("if-modified-since"),
        header("if-match"),
        header("if-none-match"),
        header("if-unmodified-since"),
        header("range"),
    ]
    .join("\n");
    text.push('\n');
    for (name, value) in canonical_headers {
        text.push_str(&format!("{name}:{value}\n"));
    }
    text.push_str(&format!("/{account}{raw_path}"));
    let mut parameters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in query {
        parameters
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.clone());
    }
    for (name, mut values) in parameters {
        values.sort();
        text.push_str(&format!("\n{name}:{}", values.join(",")));
    }
    text
}

/// `None` when the request is signed with the account key; the error to answer otherwise.
/// `anonymous_ok`: a request without `Authorization` is allowed.
fn check_signature(
    request: &Request,
    account: &str,
    key: &str,
    anonymous_ok: bool,
) -> Option<Response> {
    let headers = &request.headers;
    let Some(authorization) = headers
        .iter()
        .find(|(name, _)| name == "authorization")
        .map(|(_, value)| value.as_str())
    else {
        if anonymous_ok {
            return None;
        }
        return Some(
            error(
                401,
                "NoAuthenticationInformation",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            )
            .header("WWW-Authenticate", "Bearer"),
        );
    };
    let expected_prefix = format!("SharedKey {account}:");
    let signature = authorization.strip_prefix(&expected_prefix).unwrap_or("");
    let to_sign = string_to_sign(
        &request.method,
        request.raw_path(),
        &request.query(),
        headers,
        account,
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&BASE64.decode(key).unwrap()).unwrap();
    mac.update(to_sign.as_bytes());
    let computed = BASE64.encode(mac.finalize().into_bytes());
    if !signature.is_empty() && signature == computed {
        return None;
    }
    Some(error(
        403,
        "AuthenticationFailed",
        &format!(
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.\nAuthenticationErrorDetail: The MAC signature found in the HTTP request '{signature}' is not the same as any computed signature. Server used following string to sign: '{to_sign}'."
        ),
    ))
}

fn handle(state: &Mutex<State>, account: &str, key: &str, request: Request) -> Response {
    let raw_path = request.raw_path().to_owned();
    let mut segments = raw_path.trim_start_matches('/').splitn(3, '/');
    let (Some(path_account), container) = (segments.next(), segments.next()) else {
        return error(
            400,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        );
    };
    if path_account != account {
        return error(
            400,
            "InvalidUri",
            "The requested URI does not represent any resource on the server.",
        );
    }
    let container = decode(container.unwrap_or_default());
    let blob = segments.next().map(decode).unwrap_or_default();
    let comp = request.param("comp").unwrap_or_default();
    let reading = matches!(request.method.as_str(), "GET" | "HEAD");
    let public = state
        .lock()
        .unwrap()
        .containers
        .get(&container)
        .is_some_and(|container| container.public);
    if let Some(refused) = check_signature(&request, account, key, reading && public) {
        return if request.method == "HEAD" {
            Response::new(refused.status).header("x-ms-error-code", refused.headers[0].1.clone())
        } else {
            refused
        };
    }
    let mut state = state.lock().unwrap();
    let response = match (request.method.as_str(), comp.as_str(), blob.is_empty()) {
        ("GET", "list", true) if request.param("restype").as_deref() == Some("container") => {
            list_blobs(&state, account, &container, &request)
        }
        ("POST", "batch", true) if request.param("restype").as_deref() == Some("container") => {
            batch(&mut state, account, key, &container, &request)
        }
        ("PUT", "", false) => put_blob(&mut state, &container, &blob, &request),
        ("PUT", "block", false) => put_block(&mut state, &container, &blob, &request),
        ("PUT", "blocklist", false) => put_block_list(&mut state, &container, &blob, &request),
        ("GET" | "HEAD", "", false) => get_blob(&state, &container, &blob, &request),
        ("DELETE", "", false) => delete_blob(&mut state, &container, &blob),
        _ => error(
            400,
            "UnsupportedHttpVerb",
            "The resource doesn't support the specified HTTP verb (in this fake).",
        ),
    };
    if request.method == "HEAD" && response.status >= 300 {
        // HEAD answers carry no body: only the error code header.
        let code = response
            .headers
            .iter()
            .find(|(name, _)| name == "x-ms-error-code")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        return Response::new(response.status).header("x-ms-error-code", code);
    }
    response
}

fn container_not_found() -> Response {
    error(
        404,
        "ContainerNotFound",
        "The specified container does not exist.",
    )
}

fn blob_headers(response: Response, blob: &Blob) -> Response {
    let mut response = response
        .header("ETag", blob.etag.clone())
        .header("Last-Modified", blob.last_modified.clone())
        .header("x-ms-blob-type", "BlockBlob")
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream")
        .header("x-ms-version", "2023-11-03");
    for (name, value) in &blob.metadata {
        response = response.header(&format!("x-ms-meta-{name}"), value.clone());
    }
    response
}

fn store_blob(
    state: &mut State,
    container: &str,
    name: &str,
    content: Vec<u8>,
    request: &Request,
) -> Response {
    let etag = next_etag(state);
    let Some(container) = state.containers.get_mut(container) else {
        return container_not_found();
    };
    let blob = Blob {
        content,
        metadata: prefixed(&request.headers, "x-ms-meta-"),
        etag,
        last_modified: http_date(SystemTime::now()),
    };
    let response = Response::new(201)
        .header("ETag", blob.etag.clone())
        .header("Last-Modified", blob.last_modified.clone())
        .header("x-ms-request-server-encrypted", "true")
        .header("x-ms-version", "2023-11-03");
    container.blobs.insert(name.to_owned(), blob);
    response
}

fn put_blob(state: &mut State, container: &str, name: &str, request: &Request) -> Response {
    if request.header("x-ms-blob-type") != Some("BlockBlob") {
        return error(
            400,
            "MissingRequiredHeader",
            "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
        );
    }
    store_blob(state, container, name, request.body.clone(), request)
}

fn put_block(state: &mut State, container: &str, name: &str, request: &Request) -> Response {
    let Some(block_id) = request.param("blockid") else {
        return error(400, "InvalidQueryParameterValue", "blockid is required.");
    };
    let Some(container) = state.containers.get_mut(container) else {
        return container_not_found();
    };
    container
        .blocks
        .insert((name.to_owned(), block_id), request.body.clone());
    Response::new(201)
        .header("x-ms-request-server-encrypted", "true")
        .header("x-ms-version", "2023-11-03")
}

fn put_block_list(state: &mut State, container: &str, name: &str, request: &Request) -> Response {
    let xml = String::from_utf8_lossy(&request.body).into_owned();
    let Some(stored) = state.containers.get_mut(container) else {
        return container_not_found();
    };
    // In document order, whatever the element (Latest, Uncommitted, Committed).
    let mut ids = Vec::new();
    let mut rest = xml.as_str();
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let tag_end = after.find('>').unwrap_or(after.len());
        let tag = &after[..tag_end];
        if matches!(tag, "Latest" | "Uncommitted" | "Committed") {
            let body = &after[tag_end + 1..];
            let close = body.find('<').unwrap_or(body.len());
            ids.push(body[..close].trim().to_owned());
        }
        rest = &after[tag_end.min(after.len())..];
    }
    let mut content = Vec::new();
    for id in &ids {
        match stored.blocks.get(&(name.to_owned(), id.clone())) {
            Some(block) => content.extend_from_slice(block),
            None => {
                return error(
                    400,
                    "InvalidBlockList",
                    "The specified block list is invalid.",
                );
            }
        }
    }
    stored.blocks.retain(|(blob, _), _| blob != name);
    store_blob(state, container, name, content, request)
}

fn get_blob(state: &State, container: &str, name: &str, request: &Request) -> Response {
    let Some(stored) = state.containers.get(container) else {
        return container_not_found();
    };
    let Some(blob) = stored.blobs.get(name) else {
        return error(404, "BlobNotFound", "The specified blob does not exist.");
    };
    if let Some(condition) = request.header("if-match")
        && condition != "*"
        && !condition.split(',').any(|etag| etag.trim() == blob.etag)
    {
        return error(
            412,
            "ConditionNotMet",
            "The condition specified using HTTP conditional header(s) is not met.",
        );
    }
    let size = blob.content.len();
    let range = request
        .header("x-ms-range")
        .or_else(|| request.header("range"))
        .and_then(|range| range.strip_prefix("bytes="));
    let Some(range) = range else {
        let response = blob_headers(Response::new(200), blob);
        return if request.method == "HEAD" {
            response.header("Content-Length", size.to_string())
        } else {
            response.body(blob.content.clone())
        };
    };
    let (start, end) = range.split_once('-').unwrap_or((range, ""));
    let start: usize = start.parse().unwrap_or(0);
    if start >= size {
        return error(
            416,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
        )
        .header("Content-Range", format!("bytes */{size}"));
    }
    let end = end
        .parse::<usize>()
        .map_or(size - 1, |end| end.min(size - 1));
    blob_headers(Response::new(206), blob)
        .header("Content-Range", format!("bytes {start}-{end}/{size}"))
        .body(blob.content[start..=end].to_vec())
}

fn delete_blob(state: &mut State, container: &str, name: &str) -> Response {
    let Some(stored) = state.containers.get_mut(container) else {
        return container_not_found();
    };
    if stored.blobs.remove(name).is_none() {
        return error(404, "BlobNotFound", "The specified blob does not exist.");
    }
    Response::new(202)
        .header("x-ms-delete-type-permanent", "true")
        .header("x-ms-version", "2023-11-03")
}

fn list_blobs(state: &State, account: &str, container: &str, request: &Request) -> Response {
    let Some(stored) = state.containers.get(container) else {
        return container_not_found();
    };
    let prefix = request.param("prefix").unwrap_or_default();
    let delimiter = request.param("delimiter").filter(|value| !value.is_empty());
    let marker = request.param("marker").unwrap_or_default();
    let max_results: usize = request
        .param("maxresults")
        .and_then(|value| value.parse().ok())
        .unwrap_or(5000)
        .clamp(1, 5000);
    // Blobs and prefixes, in name order; a prefix stands for every blob under it.
    let mut items: Vec<(String, Option<&Blob>)> = Vec::new();
    let mut seen_prefixes = HashSet::new();
    for (name, blob) in stored.blobs.range(prefix.clone()..) {
        if !name.starts_with(&prefix) {
            break;
        }
        let rest = &name[prefix.len()..];
        match delimiter.as_deref().and_then(|delimiter| {
            rest.find(delimiter)
                .map(|at| format!("{prefix}{}", &rest[..at + delimiter.len()]))
        }) {
            Some(sub) => {
                if seen_prefixes.insert(sub.clone()) {
                    items.push((sub, None));
                }
            }
            None => items.push((name.clone(), Some(blob))),
        }
    }
    let start = items
        .iter()
        .position(|(name, _)| marker.is_empty() || name.as_str() >= marker.as_str())
        .unwrap_or(items.len());
    let page = &items[start..items.len().min(start + max_results)];
    let next_marker = items
        .get(start + max_results)
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"http://127.0.0.1/{account}/\" ContainerName=\"{}\">",
        xml_escape(container)
    );
    xml.push_str(&format!("<Prefix>{}</Prefix>", xml_escape(&prefix)));
    if !marker.is_empty() {
        xml.push_str(&format!("<Marker>{}</Marker>", xml_escape(&marker)));
    }
    xml.push_str(&format!("<MaxResults>{max_results}</MaxResults>"));
    if let Some(delimiter) = &delimiter {
        xml.push_str(&format!("<Delimiter>{}</Delimiter>", xml_escape(delimiter)));
    }
    xml.push_str("<Blobs>");
    for (name, blob) in page {
        match blob {
            Some(blob) => xml.push_str(&format!(
                "<Blob><Name>{}</Name><Properties><Last-Modified>{}</Last-Modified><Etag>{}</Etag><Content-Length>{}</Content-Length><Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType></Properties></Blob>",
                xml_escape(name),
                blob.last_modified,
                blob.etag,
                blob.content.len()
            )),
            None => xml.push_str(&format!(
                "<BlobPrefix><Name>{}</Name></BlobPrefix>",
                xml_escape(name)
            )),
        }
    }
    xml.push_str("</Blobs>");
    if next_marker.is_empty() {
        xml.push_str("<NextMarker />");
    } else {
        xml.push_str(&format!(
            "<NextMarker>{}</NextMarker>",
            xml_escape(&next_marker)
        ));
    }
    xml.push_str("</EnumerationResults>");
    Response::new(200)
        .header("Content-Type", "application/xml")
        .header("x-ms-version", "2023-11-03")
        .body(xml)
}

/// Blob Batch with Delete Blob sub-requests, each checked and answered on its own.
fn batch(
    state: &mut State,
    account: &str,
    key: &str,
    container: &str,
    request: &Request,
) -> Response {
    if !state.containers.contains_key(container) {
        return container_not_found();
    }
    let Some(boundary) = request
        .header("content-type")
        .and_then(|value| value.split("boundary=").nth(1))
        .map(|boundary| boundary.trim_matches('"').to_owned())
    else {
        return error(
            400,
            "InvalidInput",
            "The batch request has no multipart boundary.",
        );
    };
    let body = String::from_utf8_lossy(&request.body).into_owned();
    let marker = format!("--{boundary}");
    let answer_boundary = "batchresponse_herdfake";
    let mut answer = String::new();
    for part in body.split(&marker).skip(1) {
        if part.starts_with("--") {
            break;
        }
        // Part headers, a blank line, then the sub-request.
        let Some((part_headers, sub_request)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let content_id = part_headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-id")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        let mut lines = sub_request.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut words = request_line.split(' ');
        let method = words.next().unwrap_or_default();
        let target = words.next().unwrap_or_default();
        let headers: Vec<(String, String)> = lines
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            })
            .collect();
        let sub = Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers,
            body: Vec::new(),
        };
        let raw_path = sub.raw_path().to_owned();
        let status_line = match check_signature(&sub, account, key, false) {
            Some(refused) => format!(
                "HTTP/1.1 {} Refused\r\nx-ms-error-code: {}\r\n",
                refused.status, refused.headers[0].1
            ),
            None => {
                let name = raw_path
                    .trim_start_matches('/')
                    .splitn(3, '/')
                    .nth(2)
                    .map(decode)
                    .unwrap_or_default();
                let deleted = method == "DELETE"
                    && state
                        .containers
                        .get_mut(container)
                        .is_some_and(|stored| stored.blobs.remove(&name).is_some());
                if deleted {
                    "HTTP/1.1 202 Accepted\r\nx-ms-delete-type-permanent: true\r\n".to_owned()
                } else {
                    "HTTP/1.1 404 The specified blob does not exist.\r\nx-ms-error-code: BlobNotFound\r\n"
                        .to_owned()
                }
            }
        };
        answer.push_str(&format!(
            "--{answer_boundary}\r\nContent-Type: application/http\r\nContent-ID: {content_id}\r\n\r\n{status_line}x-ms-version: 2023-11-03\r\n\r\n"
        ));
    }
    answer.push_str(&format!("--{answer_boundary}--\r\n"));
    Response::new(202)
        .header(
            "Content-Type",
            format!("multipart/mixed; boundary={answer_boundary}"),
        )
        .header("x-ms-version", "2023-11-03")
        .body(answer)
}

#[test]
fn the_string_to_sign_follows_the_documented_example() {
    // The shape of Microsoft's example: verb, standard headers, x-ms headers, resource with
    // sorted, lower-cased parameters.
    let headers = vec![
        ("x-ms-version".to_owned(), "2023-11-03".to_owned()),
        (
            "x-ms-date".to_owned(),
            "Fri, 26 Jun 2015 23:39:12 GMT".to_owned(),
        ),
        ("content-length".to_owned(), "0".to_owned()),
    ];
    let query = vec![
        ("restype".to_owned(), "container".to_owned()),
        ("comp".to_owned(), "list".to_owned()),
    ];
    assert_eq!(
        string_to_sign(
            "GET",
            "/myaccount/mycontainer",
            &query,
            &headers,
            "myaccount"
        ),
        "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-version:2023-11-03\n/myaccount/myaccount/mycontainer\ncomp:list\nrestype:container"
    );
    let _ = xml_values("<a>1</a>", "a");
}
