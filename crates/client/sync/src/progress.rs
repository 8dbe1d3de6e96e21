//! The progress bar. It goes to stderr, and only when stderr is a terminal, so scripts piping stdout (e.g.
//! JSON summaries) or redirecting stderr to a log never receive terminal control sequences.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str = "{spinner} {wide_msg} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta}";
const SPINNER_TEMPLATE: &str = "{spinner} {wide_msg}";

/// A byte-counting bar of `total` bytes, or a hidden one (all calls become no-ops).
pub fn bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template(TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style)
}

/// A spinner showing `message` (updated by the caller), or a hidden one. It keeps turning on its own, so a
/// long wait (like scanning a big tree) visibly progresses.
pub fn spinner(enabled: bool, message: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(SPINNER_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_spinner());
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

/// Ends `bar` after a transfer: cleared when it went well, left on screen where it stopped when it failed.
pub fn end<T, E>(bar: &ProgressBar, result: &Result<T, E>) {
    if result.is_ok() {
        bar.finish_and_clear();
    } else {
        bar.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_valid_and_disabled_bars_are_hidden() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        assert!(ProgressStyle::with_template(SPINNER_TEMPLATE).is_ok());
        assert!(bar(false, 10).is_hidden());
        assert!(spinner(false, "scanning").is_hidden());
    }
}
