//! The game's console output: a ring buffer of recent lines, a broadcast of live
//! lines, and a size-rotated log file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::broadcast;

/// Lines kept in memory for `/console/stream` and crash reports.
const RING_LINES: usize = 1000;
/// The log file rotates past this size; `ROTATE_KEEP` old files are kept.
const ROTATE_BYTES: u64 = 5 * 1024 * 1024;
const ROTATE_KEEP: usize = 3;

pub struct Console {
    ring: Mutex<VecDeque<String>>,
    live: broadcast::Sender<String>,
    log: Mutex<LogFile>,
}

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        if self.size > ROTATE_BYTES {
            self.file = None;
            for i in (1..ROTATE_KEEP).rev() {
                let from = self.path.with_extension(format!("log.{i}"));
                let to = self.path.with_extension(format!("log.{}", i + 1));
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    // Fewer rotated files than kept so far.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(from = %from.display(), error = %e, "rotating the console log")
                    }
                }
            }
            std::fs::rename(&self.path, self.path.with_extension("log.1"))?;
            return self.write_line(line);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
            self.size += line.len() as u64 + 1;
        }
        Ok(())
    }
}

impl Console {
    pub fn new(log_path: PathBuf) -> Console {
        let (live, _) = broadcast::channel(1024);
        Console {
            ring: Mutex::new(VecDeque::with_capacity(RING_LINES)),
            live,
            log: Mutex::new(LogFile {
                path: log_path,
                file: None,
                size: 0,
            }),
        }
    }

    /// Records one line of output (or an agent note about the game).
    pub fn push(&self, line: String) {
        if let Ok(mut log) = self.log.lock()
            && let Err(e) = log.write_line(&line)
        {
            tracing::warn!(error = %e, path = %log.path.display(), "writing the console log");
        }
        // Broadcast under the ring's lock so a subscriber sees each line exactly once.
        if let Ok(mut ring) = self.ring.lock() {
            if ring.len() == RING_LINES {
                ring.pop_front();
            }
            ring.push_back(line.clone());
            // No live watcher is not an error: the ring keeps the line.
            let _ = self.live.send(line);
        }
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.ring
            .lock()
            .map(|r| r.iter().skip(r.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// Recent lines and a receiver for the live ones, taken together so none is lost
    /// or repeated between the two.
    pub fn subscribe(&self, recent: usize) -> (Vec<String>, broadcast::Receiver<String>) {
        match self.ring.lock() {
            Ok(r) => {
                let rx = self.live.subscribe();
                let lines = r
                    .iter()
                    .skip(r.len().saturating_sub(recent))
                    .cloned()
                    .collect();
                (lines, rx)
            }
            Err(_) => (Vec::new(), self.live.subscribe()),
        }
    }
}
