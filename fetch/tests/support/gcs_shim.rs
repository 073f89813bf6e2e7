//! A thin proxy on 127.0.0.1:0 in front of the real fake-gcs-server (started by
//! `scripts/start-gcs.sh`), for the writes that fake-gcs-server does not implement in GCS's XML
//! API, which is what `object_store` (and so `gs://`) speaks:
//!
//! - a plain `PUT /BUCKET/OBJECT` upload (fake-gcs-server only takes XML PUTs of signed URLs, and
//!   answers them without an `ETag`): sent on as a JSON-API media upload
//!   (`POST /upload/storage/v1/b/BUCKET/o?uploadType=media&name=OBJECT`) with the same
//!   `x-goog-meta-*` headers, answered with the stored object's `ETag` and generation;
//! - XML multipart uploads (fsouza/fake-gcs-server#852): `POST ?uploads`, `PUT
//!   ?partNumber&uploadId`, `POST ?uploadId` (complete, in the order the client lists the
//!   parts) and `DELETE ?uploadId` (abort); the parts wait here, and the completed object is
//!   stored upstream by one media upload with the metadata given at the start.
//!
//! Everything else (GET, HEAD, ranges, listings with prefix and delimiter, DELETE, metadata
//! headers, 404s) goes to fake-gcs-server unchanged, and its answer comes back unchanged, but
//! for one deviation: fake-gcs-server lists a missing bucket with a 500 where GCS answers 404
//! `NoSuchBucket`, and the shim answers what GCS would.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use super::http1::{self, Request, Response, decode, prefixed, xml_escape, xml_values};

/// One request the shim received, and what it did with it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub target: String,
    pub range: Option<String>,
    /// "forwarded", "upload", "initiate", "part", "complete" or "abort".
    pub handling: &'static str,
    pub status: u16,
}

struct Upload {
    bucket: String,
    object: String,
    metadata: BTreeMap<String, String>,
    content_type: Option<String>,
    parts: HashMap<usize, Vec<u8>>,
}

#[derive(Default)]
struct State {
    uploads: HashMap<String, Upload>,
    next_upload: u64,
    log: Vec<Logged>,
}

pub struct GcsShim {
    address: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GcsShim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GcsShim {
    /// A shim in front of the fake-gcs-server at `upstream` (`http://127.0.0.1:4443`).
    pub async fn start(upstream: &str) -> GcsShim {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::new();
        let handler: http1::Handler = Arc::new(move |request| {
            let (state, upstream, client) = (Arc::clone(&shared), upstream.clone(), client.clone());
            Box::pin(async move {
                let (method, target) = (request.method.clone(), request.target.clone());
                let range = request.header("range").map(str::to_owned);
                let (handling, response) = handle(&state, &client, &upstream, request).await;
                state.lock().unwrap().log.push(Logged {
                    method,
                    target,
                    range,
                    handling,
                    status: response.status,
                });
                response
            })
        });
        let (address, task) = http1::start(handler).await;
        GcsShim {
            address,
            state,
            task,
        }
    }

    /// The base URL to give the backend.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().unwrap().uploads.len()
    }
}

fn xml_error(status: u16, code: &str, message: &str) -> Response {
    Response::new(status)
        .header("Content-Type", "application/xml")
        .body(format!(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{}</Message></Error>",
            xml_escape(message)
        ))
}

/// The value of `"field":"..."` in a flat JSON answer.
fn json_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let end = json[start..].find('"')?;
    Some(json[start..start + end].to_owned())
}

/// Stores `content` upstream with a JSON-API media upload; the XML API's answer.
async fn media_upload(
    client: &reqwest::Client,
    upstream: &str,
    (bucket, object): (&str, &str),
    content: Vec<u8>,
    metadata: &BTreeMap<String, String>,
    content_type: Option<&str>,
) -> (Response, Option<String>) {
    let url = format!(
        "{upstream}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
        utf8_percent_encode(bucket, NON_ALPHANUMERIC),
        utf8_percent_encode(object, NON_ALPHANUMERIC)
    );
    let mut request = client
        .post(url)
        .header(
            "content-type",
            content_type.unwrap_or("application/octet-stream"),
        )
        .body(content);
    for (key, value) in metadata {
        request = request.header(format!("x-goog-meta-{key}"), value);
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => return (xml_error(502, "BadGateway", &error.to_string()), None),
    };
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    if status == 404 {
        return (
            xml_error(404, "NoSuchBucket", "The specified bucket does not exist."),
            None,
        );
    }
    if status >= 300 {
        return (xml_error(status, "InternalError", &text), None);
    }
    let etag = json_field(&text, "etag").unwrap_or_default();
    let generation = json_field(&text, "generation").unwrap_or_default();
    (
        Response::new(200)
            .header("ETag", format!("\"{etag}\""))
            .header("x-goog-generation", generation),
        Some(etag),
    )
}

async fn bucket_exists(client: &reqwest::Client, upstream: &str, bucket: &str) -> bool {
    let url = format!(
        "{upstream}/storage/v1/b/{}",
        utf8_percent_encode(bucket, NON_ALPHANUMERIC)
    );
    matches!(client.get(url).send().await, Ok(answer) if answer.status().is_success())
}

async fn handle(
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
    request: Request,
) -> (&'static str, Response) {
    let path = request.raw_path().trim_start_matches('/').to_owned();
    let (bucket, object) = match path.split_once('/') {
        Some((bucket, object)) => (decode(bucket), decode(object)),
        None => (decode(&path), String::new()),
    };
    let method = request.method.as_str();
    if !object.is_empty() {
        if method == "PUT" && request.query().is_empty() {
            let metadata = prefixed(&request.headers, "x-goog-meta-");
            let (response, _) = media_upload(
                client,
                upstream,
                (&bucket, &object),
                request.body.clone(),
                &metadata,
                request.header("content-type"),
            )
            .await;
            return ("upload", response);
        }
        if method == "POST" && request.has_param("uploads") {
            if !bucket_exists(client, upstream, &bucket).await {
                return (
                    "initiate",
                    xml_error(404, "NoSuchBucket", "The specified bucket does not exist."),
                );
            }
            let mut state = state.lock().unwrap();
            state.next_upload += 1;
            let id = format!("herd-shim-upload-{}", state.next_upload);
            state.uploads.insert(
                id.clone(),
                Upload {
                    bucket: bucket.clone(),
                    object: object.clone(),
                    metadata: prefixed(&request.headers, "x-goog-meta-"),
                    content_type: request.header("content-type").map(str::to_owned),
                    parts: HashMap::new(),
                },
            );
            let body = format!(
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                xml_escape(&bucket),
                xml_escape(&object)
            );
            return ("initiate", Response::new(200).body(body));
        }
        if let Some(id) = request.param("uploadId") {
            return multipart(state, client, upstream, &request, &id).await;
        }
    }
    ("forwarded", forward(client, upstream, &request).await)
}

async fn multipart(
    state: &Mutex<State>,
    client: &reqwest::Client,
    upstream: &str,
    request: &Request,
    id: &str,
) -> (&'static str, Response) {
    let no_such_upload = || xml_error(404, "NoSuchUpload", "The requested upload was not found.");
    match request.method.as_str() {
        "PUT" => {
            let Some(number) = request
                .param("partNumber")
                .and_then(|number| number.parse::<usize>().ok())
            else {
                return (
                    "part",
                    xml_error(400, "InvalidArgument", "partNumber is required"),
                );
            };
            let mut state = state.lock().unwrap();
            let Some(upload) = state.uploads.get_mut(id) else {
                return ("part", no_such_upload());
            };
            upload.parts.insert(number, request.body.clone());
            (
                "part",
                Response::new(200).header("ETag", format!("\"{id}-part-{number}\"")),
            )
        }
        "DELETE" => {
            let removed = state.lock().unwrap().uploads.remove(id);
            match removed {
                Some(_) => ("abort", Response::new(204)),
                None => ("abort", no_such_upload()),
            }
        }
        "POST" => {
            let Some(upload) = state.lock().unwrap().uploads.remove(id) else {
                return ("complete", no_such_upload());
            };
            let listed = String::from_utf8_lossy(&request.body).into_owned();
            let mut content = Vec::new();
            for number in xml_values(&listed, "PartNumber") {
                let Some(part) = number
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .and_then(|number| upload.parts.get(&number))
                else {
                    return (
                        "complete",
                        xml_error(
                            400,
                            "InvalidPart",
                            "One or more of the specified parts could not be found.",
                        ),
                    );
                };
                content.extend_from_slice(part);
            }
            let (response, etag) = media_upload(
                client,
                upstream,
                (&upload.bucket, &upload.object),
                content,
                &upload.metadata,
                upload.content_type.as_deref(),
            )
            .await;
            let Some(etag) = etag else {
                return ("complete", response);
            };
            let body = format!(
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult><Bucket>{}</Bucket><Key>{}</Key><ETag>\"{etag}\"</ETag></CompleteMultipartUploadResult>",
                xml_escape(&upload.bucket),
                xml_escape(&upload.object)
            );
            ("complete", response.body(body))
        }
        _ => (
            "part",
            xml_error(400, "InvalidArgument", "unexpected method"),
        ),
    }
}

async fn forward(client: &reqwest::Client, upstream: &str, request: &Request) -> Response {
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
    let mut outgoing = client.request(method, format!("{upstream}{}", request.target));
    for (name, value) in &request.headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            outgoing = outgoing.header(name, value);
        }
    }
    if !request.body.is_empty() {
        outgoing = outgoing.body(request.body.clone());
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(error) => return xml_error(502, "BadGateway", &error.to_string()),
    };
    if answer.status().as_u16() == 500 {
        // fake-gcs-server answers a listing of a missing bucket with a 500 "no bucket named
        // ..."; GCS answers 404 NoSuchBucket.
        let text = answer.text().await.unwrap_or_default();
        if text.contains("no bucket named") {
            return xml_error(404, "NoSuchBucket", "The specified bucket does not exist.");
        }
        return xml_error(500, "InternalError", &text);
    }
    let mut response = Response::new(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "connection" | "transfer-encoding" | "date" | "content-length"
        ) {
            response = response.header(name.as_str(), value.to_str().unwrap_or_default());
        }
    }
    if request.method == "HEAD" {
        if let Some(length) = answer.headers().get("content-length") {
            response = response.header("Content-Length", length.to_str().unwrap_or("0"));
        }
        return response;
    }
    let body = answer.bytes().await.unwrap_or_default();
    response.body(body.to_vec())
}
