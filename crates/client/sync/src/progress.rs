//! The progress bar. It goes to stderr, and only when stderr is a terminal, so scripts piping stdout (e.g.
//! JSON summaries) or redirecting stderr to a log never receive terminal control sequences.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

const TEMPLATE: &str = "{spinner} {wide_msg} {bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta}";

/// A byte-counting bar of `total` bytes, or a hidden one (all calls become no-ops).
pub(crate) fn bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template(TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> ");
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_valid_and_disabled_bars_are_hidden() {
        assert!(ProgressStyle::with_template(TEMPLATE).is_ok());
        assert!(bar(false, 10).is_hidden());
    }
}
