//! The requests of [`HttpBackend`]: [`download`](HttpBackend::download), resumed after a broken
//! transfer with `Range: bytes=N-` (appending on a 206 that starts at N, starting over
//! otherwise), the size of a file for listings (HEAD, or GET when HEAD is refused), and small
//! text documents read into memory (`get_text`). Each retries transient failures itself.

use std::path::Path;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use tracing::{debug, warn};

use super::retry::{Failure, gave_up, request_failure, status_failure};
use super::sink::{Expected, FileSink, Written};
use super::{HttpBackend, HttpTarget};
use crate::error::{Error, ErrorKind, Result};

/// The largest ENA report or other text document read into memory.
const MAX_TEXT_BYTES: usize = 64 << 20;

impl HttpBackend {
    /// Downloads `target` to the local file `path` (through a temporary name), retrying and
    /// resuming; `expected` is checked before the file gets its name (`with_md5` computes the
    /// MD5 on the way).
    pub(crate) async fn download(
        &self,
        target: &HttpTarget,
        path: &Path,
        expected: Expected,
    ) -> Result<Written> {
        let mut sink = FileSink::create(
            path.to_path_buf(),
            expected.md5.is_some(),
            &self.progress,
            expected.size,
        )
        .await?;
        let total = match self.fill(target, &mut sink).await {
            Ok(total) => total,
            Err(error) => {
                sink.abort().await;
                return Err(error);
            }
        };
        let mut expected = expected;
        if expected.source.is_empty() {
            expected.source = target.shown().to_owned();
        }
        if expected.size.is_none() {
            expected.size = total;
        }
        let written = sink.commit(expected).await?;
        debug!(url = %target.shown(), bytes = written.size, "downloaded");
        Ok(written)
    }

    /// Tries until `sink` holds all of `target`; returns the size the server announced.
    async fn fill(&self, target: &HttpTarget, sink: &mut FileSink) -> Result<Option<u64>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        let mut furthest = 0;
        let mut total: Option<u64> = None;
        loop {
            let failure = match self.download_once(target, sink, &mut total).await {
                Ok(()) => return Ok(total),
                Err(failure) => failure,
            };
            if !failure.transient {
                return Err(failure.error);
            }
            if sink.written() > furthest {
                furthest = sink.written();
            } else {
                failures += 1;
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            let delay = retry
                .delay(failures.max(1))
                .max(failure.retry_after.unwrap_or_default().min(retry.max_delay));
            warn!(
                url = %target.shown(),
                failures,
                bytes = sink.written(),
                error = %failure.error.report(),
                "http download failed; trying again"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: asks for what `sink` lacks and appends it.
    async fn download_once(
        &self,
        target: &HttpTarget,
        sink: &mut FileSink,
        total: &mut Option<u64>,
    ) -> std::result::Result<(), Failure> {
        let shown = target.shown();
        let Some(mut response) = self.request_remainder(target, sink, total).await? else {
            return Ok(());
        };
        if let Some(size) = *total {
            sink.announce(size);
        }
        receive_body(shown, &mut response, sink, *total).await?;
        check_received_size(shown, sink, *total)
    }

    /// Asks for what `sink` lacks (from byte `sink.written()` on) and checks the answer: `sink`
    /// is restarted when the server cannot resume there, and `total` takes the size the server
    /// announces. `Ok(None)` when everything had arrived already.
    async fn request_remainder(
        &self,
        target: &HttpTarget,
        sink: &mut FileSink,
        total: &mut Option<u64>,
    ) -> std::result::Result<Option<reqwest::Response>, Failure> {
        let shown = target.shown();
        let offset = sink.written();
        let mut request = self
            .request(reqwest::Method::GET, target)
            .map_err(Failure::fatal)?;
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|error| request_failure(shown, error))?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = content_range(&response);
                match range {
                    Some(ContentRange::Bytes { start, total: size }) if start == offset => {
                        if size.is_some() {
                            *total = size;
                        }
                    }
                    _ => {
                        // Not the part asked for: start again from zero.
                        sink.restart().await.map_err(Failure::fatal)?;
                        return Err(Failure::transient(Error::new(
                            ErrorKind::Io,
                            format!(
                                "`{shown}`: the server sent another part than bytes {offset}- when asked to resume"
                            ),
                        )));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                if let Some(ContentRange::Unsatisfied { total: size }) = content_range(&response)
                    && size == offset
                {
                    // Everything had arrived already.
                    *total = Some(size);
                    return Ok(None);
                }
                sink.restart().await.map_err(Failure::fatal)?;
                return Err(Failure::transient(Error::new(
                    ErrorKind::Io,
                    format!("`{shown}`: the server refused to resume at byte {offset}"),
                )));
            }
            status if status.is_success() => {
                if offset > 0 {
                    debug!(url = %shown, offset, "the server ignored the range: downloading again from zero");
                    sink.restart().await.map_err(Failure::fatal)?;
                }
                *total = header_length(&response);
            }
            status => return Err(status_failure(shown, &response, status)),
        }
        Ok(Some(response))
    }

    /// The size of `target` (HEAD, or GET without reading the body when HEAD is refused), with
    /// retries.
    pub(super) async fn remote_size(&self, target: &HttpTarget) -> Result<Option<u64>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        let mut method = reqwest::Method::HEAD;
        loop {
            let failure = match self.size_once(target, method.clone()).await {
                Ok(Some(size)) => return Ok(size),
                Ok(None) => {
                    method = reqwest::Method::GET;
                    continue;
                }
                Err(failure) => failure,
            };
            failures += 1;
            if !failure.transient {
                return Err(failure.error);
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            tokio::time::sleep(retry.delay(failures)).await;
        }
    }

    /// `Ok(None)`: the server refuses HEAD, ask with GET.
    async fn size_once(
        &self,
        target: &HttpTarget,
        method: reqwest::Method,
    ) -> std::result::Result<Option<Option<u64>>, Failure> {
        let is_head = method == reqwest::Method::HEAD;
        let response = self
            .request(method, target)
            .map_err(Failure::fatal)?
            .send()
            .await
            .map_err(|error| request_failure(target.shown(), error))?;
        let status = response.status();
        if is_head
            && matches!(
                status,
                StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
            )
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_failure(target.shown(), &response, status));
        }
        Ok(Some(header_length(&response)))
    }

    /// GETs `target` as text (at most 64 MiB), with retries: for small documents such as ENA's
    /// reports. `Ok(None)` when the server answers 204 No Content.
    pub(crate) async fn get_text(&self, target: &HttpTarget) -> Result<Option<String>> {
        let retry = self.inner.retry;
        let mut failures = 0;
        loop {
            let failure = match self.get_text_once(target).await {
                Ok(text) => return Ok(text),
                Err(failure) => failure,
            };
            failures += 1;
            if !failure.transient {
                return Err(failure.error);
            }
            if !retry.allows_another(failures) {
                return Err(gave_up(failures, failure.error));
            }
            warn!(url = %target.shown(), failures, error = %failure.error.report(), "http request failed; trying again");
            tokio::time::sleep(retry.delay(failures)).await;
        }
    }

    async fn get_text_once(
        &self,
        target: &HttpTarget,
    ) -> std::result::Result<Option<String>, Failure> {
        let shown = target.shown();
        let mut response = self
            .request(reqwest::Method::GET, target)
            .map_err(Failure::fatal)?
            .send()
            .await
            .map_err(|error| request_failure(shown, error))?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_failure(shown, &response, status));
        }
        let announced = header_length(&response);
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    body.extend_from_slice(&bytes);
                    if body.len() > MAX_TEXT_BYTES {
                        return Err(Failure::fatal(Error::new(
                            ErrorKind::InvalidData,
                            format!(
                                "`{shown}` is larger than {} MiB: not the document expected",
                                MAX_TEXT_BYTES >> 20
                            ),
                        )));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    return Err(Failure::transient(Error::with_source(
                        ErrorKind::Io,
                        format!("`{shown}`: the transfer broke"),
                        error.without_url(),
                    )));
                }
            }
        }
        if let Some(size) = announced
            && size != body.len() as u64
        {
            return Err(Failure::transient(Error::new(
                ErrorKind::Io,
                format!(
                    "`{shown}`: the server sent {} of {size} bytes, then closed the connection",
                    body.len()
                ),
            )));
        }
        String::from_utf8(body).map(Some).map_err(|error| {
            Failure::fatal(Error::with_source(
                ErrorKind::InvalidData,
                format!("`{shown}` is not utf-8 text"),
                error,
            ))
        })
    }
}

/// Appends the body of `response` to `sink`; a transfer that breaks is transient.
async fn receive_body(
    shown: &str,
    response: &mut reqwest::Response,
    sink: &mut FileSink,
    total: Option<u64>,
) -> std::result::Result<(), Failure> {
    loop {
        match response.chunk().await {
            Ok(Some(bytes)) => sink.write(bytes.to_vec()).await.map_err(Failure::fatal)?,
            Ok(None) => break,
            Err(error) => {
                let received = sink.written();
                let of = total.map(|size| format!(" of {size}")).unwrap_or_default();
                return Err(Failure::transient(Error::with_source(
                    ErrorKind::Io,
                    format!("`{shown}`: the transfer broke after {received}{of} bytes"),
                    error.without_url(),
                )));
            }
        }
    }
    Ok(())
}

/// Checks that `sink` holds the `total` the server announced: fewer bytes is a transfer cut
/// short (transient), more is a [`ErrorKind::Checksum`] error.
fn check_received_size(
    shown: &str,
    sink: &FileSink,
    total: Option<u64>,
) -> std::result::Result<(), Failure> {
    if let Some(size) = total {
        let received = sink.written();
        if received < size {
            return Err(Failure::transient(Error::new(
                ErrorKind::Io,
                format!(
                    "`{shown}`: the server sent {received} of {size} bytes, then closed the connection"
                ),
            )));
        }
        if received > size {
            return Err(Failure::fatal(Error::new(
                ErrorKind::Checksum,
                format!(
                    "`{shown}`: the server sent {received} bytes but announced {size}; download it again"
                ),
            )));
        }
    }
    Ok(())
}

/// `Content-Length`, read from the header itself (reqwest's `content_length` is a body hint).
fn header_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

enum ContentRange {
    /// `bytes START-END/TOTAL` (TOTAL may be `*`).
    Bytes { start: u64, total: Option<u64> },
    /// `bytes */TOTAL`, with a 416.
    Unsatisfied { total: u64 },
}

fn content_range(response: &reqwest::Response) -> Option<ContentRange> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = spec.split_once('/')?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.trim().parse().ok()?,
        });
    }
    let (start, _end) = range.split_once('-')?;
    Some(ContentRange::Bytes {
        start: start.trim().parse().ok()?,
        total: total.trim().parse().ok(),
    })
}
