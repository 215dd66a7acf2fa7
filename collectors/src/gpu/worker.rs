//! One thread per GPU, owned by the collector, that makes every NVML call for
//! that GPU.
//!
//! Why threads of its own when the scheduler already runs `collect` on a
//! blocking thread under a timeout: the scheduler's timeout covers the whole
//! collector. A driver call that hangs on one GPU (a GPU falling off the bus
//! can do that) would hold the collector, and with it every GPU's series,
//! until it returned. Here a collection hands each GPU's worker a request and
//! waits for all of them until one deadline (`device_timeout`, below the
//! collector's own timeout); a GPU that misses it is reported `timeout` while
//! the others report normally. A worker still busy is never sent a second
//! request, so a hung call costs one parked thread, not one per interval. The
//! late answer, when it comes, is dropped but for its XID events, which are
//! counted.
//!
//! NVML's start-up (loading the library, `nvmlInit`, counting GPUs) is not
//! per GPU: it runs when the collector is built, which the scheduler does on a
//! blocking thread under the collector's timeout, and a start-up that hangs
//! leaves the collector timed out and isolated like any other.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::thread;
use std::time::Instant;

use super::backend::{Backend, ReadError, Reading};

/// A worker's answer: the reading it filled and how the read went.
#[derive(Debug)]
pub struct Reply {
    /// Boxed so a reply moves cheaply through channels and enums; the box is
    /// reused from one request to the next.
    pub reading: Box<Reading>,
    pub result: Result<(), ReadError>,
}

/// What became of a request by the deadline.
#[derive(Debug)]
pub enum Outcome {
    Answered(Reply),
    /// Still working on this request or an earlier one.
    Overdue,
    /// The thread is gone (it could not start, or the backend panicked); a
    /// new one is started for the next collection.
    Gone,
}

#[derive(Debug)]
pub struct Worker {
    index: u32,
    backend: Arc<dyn Backend>,
    channel: Option<(Sender<Box<Reading>>, Receiver<Reply>)>,
    /// A request is out and unanswered.
    pending: bool,
    /// The buffer of the last answer, for the next request.
    spare: Option<Box<Reading>>,
}

impl Worker {
    pub fn new(index: u32, backend: Arc<dyn Backend>) -> Self {
        Self {
            index,
            backend,
            channel: None,
            pending: false,
            spare: None,
        }
    }

    /// Asks for a reading, unless the previous request is still unanswered.
    /// `late` receives the XID events of an answer that came after its deadline.
    pub fn request(&mut self, late: &mut Vec<u64>) {
        if self.pending {
            match self.channel.as_ref().map(|(_, replies)| replies.try_recv()) {
                Some(Ok(reply)) => {
                    late.extend_from_slice(&reply.reading.xids);
                    self.spare = Some(reply.reading);
                    self.pending = false;
                }
                Some(Err(TryRecvError::Empty)) => return,
                Some(Err(TryRecvError::Disconnected)) | None => {
                    self.channel = None;
                    self.pending = false;
                }
            }
        }
        if self.channel.is_none() {
            self.channel = self.spawn();
        }
        let mut reading = self.spare.take().unwrap_or_default();
        reading.clear();
        if let Some((requests, _)) = &self.channel {
            match requests.send(reading) {
                Ok(()) => self.pending = true,
                Err(_) => self.channel = None,
            }
        }
    }

    /// Waits for the answer until `deadline`.
    pub fn outcome(&mut self, deadline: Instant) -> Outcome {
        let Some((_, replies)) = &self.channel else {
            return Outcome::Gone;
        };
        if !self.pending {
            return Outcome::Gone;
        }
        match replies.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(reply) => {
                self.pending = false;
                Outcome::Answered(reply)
            }
            Err(RecvTimeoutError::Timeout) => Outcome::Overdue,
            Err(RecvTimeoutError::Disconnected) => {
                self.channel = None;
                self.pending = false;
                Outcome::Gone
            }
        }
    }

    /// Gives an answered reading's buffer back for the next request.
    pub fn recycle(&mut self, reading: Box<Reading>) {
        self.spare = Some(reading);
    }

    fn spawn(&self) -> Option<(Sender<Box<Reading>>, Receiver<Reply>)> {
        let (request_tx, request_rx) = mpsc::channel::<Box<Reading>>();
        let (reply_tx, reply_rx) = mpsc::channel();
        let backend = Arc::clone(&self.backend);
        let index = self.index;
        let spawned = thread::Builder::new()
            .name(format!("hostwatch-gpu{index}"))
            .spawn(move || {
                backend.serve(index, &mut |reader| {
                    // Ends when the collector drops its sender, or stops
                    // listening for answers.
                    while let Ok(mut reading) = request_rx.recv() {
                        let result = reader.read(&mut reading);
                        if reply_tx.send(Reply { reading, result }).is_err() {
                            return;
                        }
                    }
                });
            });
        match spawned {
            Ok(_) => Some((request_tx, reply_rx)),
            Err(error) => {
                tracing::warn!(gpu = index, %error, "cannot start the GPU's worker thread");
                None
            }
        }
    }
}
