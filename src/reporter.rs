//! Draws the stages' progress with indicatif, on stderr, only when a person is watching.
//!
//! A bar appears only once a step has run for two seconds, so quick builds stay quiet and
//! logs from CI (stderr not a terminal) carry no control codes.
//!
//! `APPLIANCE_PROGRESS_AFTER_MS` overrides the two seconds. It exists so that the test suite can
//! check the bars on a terminal (a pseudo-terminal from `script`) with a small model, instead of
//! trusting them to a manual look.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use appliance::progress::BuildLog;
use appliance::progress::{Progress, ProgressTask};

const SHOW_AFTER: Duration = Duration::from_secs(2);

fn show_after() -> Duration {
    std::env::var("APPLIANCE_PROGRESS_AFTER_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(SHOW_AFTER, Duration::from_millis)
}

pub struct Reporter {
    pub bars: bool,
    pub quiet: bool,
}

impl Progress for Reporter {
    fn task(&self, label: &str, total_bytes: u64) -> Box<dyn ProgressTask + '_> {
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden());
        let style = ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_string());
        Box::new(Task {
            bar,
            enabled: self.bars && !self.quiet,
            show_after: show_after(),
            started: Instant::now(),
            shown: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl BuildLog for Reporter {
    fn step(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }
}

static BARS: std::sync::LazyLock<MultiProgress> = std::sync::LazyLock::new(MultiProgress::new);

struct Task {
    bar: ProgressBar,
    enabled: bool,
    show_after: Duration,
    started: Instant,
    shown: std::sync::atomic::AtomicBool,
}

impl ProgressTask for Task {
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
        use std::sync::atomic::Ordering::Relaxed;
        if self.enabled
            && !self.shown.load(Relaxed)
            && self.started.elapsed() >= self.show_after
            && !self.shown.swap(true, Relaxed)
        {
            // One shared stderr area: parallel downloads draw one line each (file bars and
            // the total), instead of overwriting each other.
            BARS.add(self.bar.clone());
            // Draw now: a step may have no further advance to trigger the first frame.
            self.bar.tick();
        }
    }

    fn finish(&self) {
        if self.shown.load(std::sync::atomic::Ordering::Relaxed) {
            self.bar.finish_and_clear();
        }
    }
}
