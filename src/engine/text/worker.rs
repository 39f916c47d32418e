//! The text encoder's worker thread, so that encoding a new prompt (tens of ms) never
//! stalls frames.
//!
//! One thread owns the [`TextEncoder`]; requests and results travel over bounded
//! channels. The requester never blocks: `try_submit` hands a request back when the queue
//! is full (the registry keeps it for later). The worker blocks on a full result queue
//! until the frame loop drains it. Dropping the worker closes both channels and joins the
//! thread (at most one encoding in flight).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::contracts::PromptId;
use crate::engine::text::encoder::TextEncoder;
use crate::engine::text::Tokens;

/// Requests (and results) buffered between the registry and the worker.
pub const QUEUE_DEPTH: usize = 4;

/// One prompt to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: PromptId,
    pub tokens: Tokens,
}

/// The embedding of one prompt, or why it could not be made.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: PromptId,
    pub result: Result<Vec<f32>, String>,
}

#[derive(Debug)]
pub struct EncoderWorker {
    /// To the worker; `None` only while dropping.
    requests: Option<SyncSender<Request>>,
    /// From the worker; `None` only while dropping.
    results: Option<Receiver<Response>>,
    thread: Option<JoinHandle<()>>,
}

impl EncoderWorker {
    /// Starts the thread `maskd-text`, which owns `encoder` from now on.
    pub fn spawn(mut encoder: TextEncoder) -> std::io::Result<EncoderWorker> {
        let (req_tx, req_rx) = mpsc::sync_channel::<Request>(QUEUE_DEPTH);
        let (res_tx, res_rx) = mpsc::sync_channel::<Response>(QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("maskd-text".into())
            .spawn(move || {
                for req in req_rx {
                    let result = encoder.encode(&req.tokens).map_err(|e| format!("{e:#}"));
                    if res_tx.send(Response { id: req.id, result }).is_err() {
                        break;
                    }
                }
            })?;
        Ok(EncoderWorker {
            requests: Some(req_tx),
            results: Some(res_rx),
            thread: Some(thread),
        })
    }

    /// Queues a request without blocking; gives it back if the queue is full, or fails
    /// if the worker is gone (it panicked).
    pub fn try_submit(&self, req: Request) -> Result<Option<Request>, WorkerGone> {
        match self.requests.as_ref().map(|tx| tx.try_send(req)) {
            Some(Ok(())) => Ok(None),
            Some(Err(TrySendError::Full(req))) => Ok(Some(req)),
            _ => Err(WorkerGone),
        }
    }

    /// A finished result, if any, without blocking.
    pub fn try_recv(&self) -> Option<Response> {
        self.results.as_ref()?.try_recv().ok()
    }

    /// Waits up to `timeout` for a result.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Response>, WorkerGone> {
        match self.results.as_ref().map(|rx| rx.recv_timeout(timeout)) {
            Some(Ok(r)) => Ok(Some(r)),
            Some(Err(RecvTimeoutError::Timeout)) => Ok(None),
            _ => Err(WorkerGone),
        }
    }
}

impl Drop for EncoderWorker {
    fn drop(&mut self) {
        // Close both ends first: the worker may be blocked sending a result.
        self.requests.take();
        self.results.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("text encoder thread panicked");
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the text encoder thread has stopped")]
pub struct WorkerGone;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::manifest::Manifest;
    use std::path::Path;

    fn encoder() -> TextEncoder {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture/fixture.toml");
        let m = Manifest::load(&path).unwrap();
        TextEncoder::load(&m, &crate::engine::text::Tokenizer::load(&m.text).unwrap()).unwrap()
    }

    #[test]
    fn encodes_in_background_and_reports_errors() {
        let w = EncoderWorker::spawn(encoder()).unwrap();
        assert_eq!(
            w.try_submit(Request {
                id: 7,
                tokens: Tokens::unpadded(vec![2, 40, 3], 0)
            })
            .unwrap(),
            None
        );
        assert_eq!(
            w.try_submit(Request {
                id: 8,
                tokens: Tokens::unpadded(vec![], 0)
            })
            .unwrap(),
            None
        );
        let a = w.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(a.id, 7);
        assert_eq!(a.result.unwrap().len(), 16);
        let b = w.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(b.id, 8);
        assert!(b.result.unwrap_err().contains("no tokens"));
    }

    #[test]
    fn full_queue_hands_the_request_back_and_drop_does_not_hang() {
        let w = EncoderWorker::spawn(encoder()).unwrap();
        // Never drained: the worker blocks on the result queue, the request queue fills.
        let mut given_back = None;
        for id in 0..(4 * QUEUE_DEPTH as u32) {
            if let Some(r) = w
                .try_submit(Request {
                    id,
                    tokens: Tokens::unpadded(vec![2, 3], 0),
                })
                .unwrap()
            {
                given_back = Some(r.id);
                break;
            }
        }
        assert!(given_back.is_some(), "a bounded queue must fill");
        drop(w);
    }
}
