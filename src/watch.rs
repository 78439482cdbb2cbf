//! `syncfs status --watch`: redraws a running mount's status every second, with
//! `indicatif` bars for the queue (file bytes sent of all known so far, rate, ETA) and
//! for each update in flight (estimated from the measured rate: the daemon knows when
//! an update was sent, not how much of it the link took so far).

use crate::control::{self, Status};
use crate::store::Store;
use anyhow::Result;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Redraws until interrupted (Ctrl-C).
pub fn run(dir: &Path) -> Result<()> {
    let (store, _) = Store::open(dir)?;
    let multi = MultiProgress::new();
    let text = multi.add(ProgressBar::new_spinner());
    text.set_style(ProgressStyle::with_template("{msg}")?);
    let queue = multi.add(ProgressBar::new(0));
    queue.set_style(ProgressStyle::with_template(
        "queue  [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    )?);
    let mut files: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let start = control::query(&store.control_socket()).map_or(0, |s| s.stats.raw_sent);
    loop {
        match control::query(&store.control_socket()) {
            Some(s) => {
                text.set_message(control::format(&s));
                draw_queue(&queue, &s, start);
                draw_files(&multi, &mut files, &s);
            }
            None => text.set_message(format!(
                "no daemon answers on {} (not mounted?)",
                store.control_socket().display()
            )),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The queue bar: file bytes sent since the watch began, of those plus what is queued.
fn draw_queue(bar: &ProgressBar, s: &Status, start: u64) {
    let done = s.stats.raw_sent.saturating_sub(start);
    bar.set_length(done + s.stats.queued_bytes);
    bar.set_position(done);
}

/// One bar per update in flight: its bytes written to the link, of its payload.
fn draw_files(multi: &MultiProgress, bars: &mut BTreeMap<String, ProgressBar>, s: &Status) {
    bars.retain(|path, bar| {
        let keep = s.stats.flights.iter().any(|f| &f.path == path);
        if !keep {
            bar.finish_and_clear();
        }
        keep
    });
    for f in &s.stats.flights {
        let bar = bars.entry(f.path.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(f.payload.max(1)));
            let style = ProgressStyle::with_template(
                "  {msg:30} [{bar:30}] {bytes}/{total_bytes} on the wire",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(f.path.clone());
            b
        });
        bar.set_length(f.payload.max(1));
        bar.set_position(f.sent);
    }
}
