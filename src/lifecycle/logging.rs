//! The stderr logger: one line per record, journald-aware.
//!
//! Under systemd (`JOURNAL_STREAM` names our stderr) lines carry the syslog
//! priority prefix of sd-daemon(3) (`<6>maskd::source: ...`) and no timestamp,
//! because the journal stamps and filters by priority itself. Anywhere else
//! lines read `2026-11-28T01:02:03.456Z INFO maskd::source: ...` (UTC).
//! The level can change at run time (reload). Leaves out files, rotation and
//! per-module filters: journald or the caller's redirection handles those.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How lines are written; chosen once at [`init`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `<N>target: message` for journald.
    Journal,
    /// `timestamp LEVEL target: message` for a terminal or a file.
    Plain,
}

struct StderrLogger {
    style: OnceLock<Style>,
}

static LOGGER: StderrLogger = StderrLogger {
    style: OnceLock::new(),
};

thread_local! {
    /// Reused line buffer: a record costs one write(2) and, after the first
    /// few lines, no allocation.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Installs the logger at `level` and returns the style it writes. Calling
/// it again (a test running the daemon twice in one process) only changes
/// the level.
pub fn init(level: LevelFilter) -> Style {
    let style = *LOGGER.style.get_or_init(detect_style);
    // Err means a logger is already installed: ours from an earlier call, or
    // the embedding program's, which then keeps receiving the records.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
    style
}

/// Changes the level at run time (on reload).
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Journal style iff `JOURNAL_STREAM` (`device:inode`) matches our stderr; a
/// user who redirects a service's stderr to a file gets plain lines.
fn detect_style() -> Style {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return Style::Plain;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return Style::Plain;
    };
    if journal_stream_matches(&value.to_string_lossy(), stat.st_dev, stat.st_ino) {
        Style::Journal
    } else {
        Style::Plain
    }
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.trim().splitn(2, ':');
    let parsed = (
        parts.next().and_then(|d| d.parse::<u64>().ok()),
        parts.next().and_then(|i| i.parse::<u64>().ok()),
    );
    parsed == (Some(dev), Some(ino))
}

/// sd-daemon(3) priorities: debug and trace both map to 7 (LOG_DEBUG).
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Appends one formatted line (with the trailing newline) to `out`.
pub fn format_line(
    out: &mut String,
    style: Style,
    now: SystemTime,
    level: Level,
    target: &str,
    args: &std::fmt::Arguments<'_>,
) {
    // Writing to a String cannot fail.
    let _ = match style {
        Style::Journal => write!(out, "<{}>{target}: {args}", syslog_priority(level)),
        Style::Plain => {
            write_timestamp(out, now);
            write!(out, " {level} {target}: {args}")
        }
    };
    out.push('\n');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC, without a date library.
fn write_timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let style = self.style.get().copied().unwrap_or(Style::Plain);
        let now = SystemTime::now();
        let write = |line: &mut String| {
            line.clear();
            format_line(
                line,
                style,
                now,
                record.level(),
                record.target(),
                record.args(),
            );
            // Nowhere left to report a failed write to stderr.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        };
        // A record formatted while formatting another (a Display impl that
        // logs) finds the buffer borrowed and uses a fresh one.
        let reused = LINE.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                write(&mut line);
                true
            }
            Err(_) => false,
        });
        if !matches!(reused, Ok(true)) {
            write(&mut String::new());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::test_util;
    use std::time::Duration;

    fn line(style: Style, now: SystemTime, level: Level) -> String {
        let mut out = String::new();
        format_line(
            &mut out,
            style,
            now,
            level,
            "maskd::source",
            &format_args!("pipeline up, {} fps", 30),
        );
        out
    }

    #[test]
    fn plain_lines_carry_a_utc_timestamp_and_level() {
        // 2026-11-28T01:02:03.456Z
        let now = UNIX_EPOCH + Duration::from_millis(1_795_827_723_456);
        assert_eq!(
            line(Style::Plain, now, Level::Info),
            "2026-11-28T01:02:03.456Z INFO maskd::source: pipeline up, 30 fps\n"
        );
        assert!(line(Style::Plain, now, Level::Warn).contains(" WARN maskd::source: "));
    }

    #[test]
    fn journal_lines_carry_syslog_priorities_and_no_timestamp() {
        let now = UNIX_EPOCH;
        let cases = [
            (Level::Error, "<3>"),
            (Level::Warn, "<4>"),
            (Level::Info, "<6>"),
            (Level::Debug, "<7>"),
            (Level::Trace, "<7>"),
        ];
        for (level, prefix) in cases {
            assert_eq!(
                line(Style::Journal, now, level),
                format!("{prefix}maskd::source: pipeline up, 30 fps\n")
            );
        }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches("8:1234\n", 8, 1234));
        assert!(!journal_stream_matches("8:1235", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[test]
    fn logger_writes_journal_lines_and_follows_level_changes() {
        let out = test_util::run("lifecycle::logging::tests::child_logger", |_| {});
        test_util::assert_passed(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("<6>maskd::source: first\n"), "{stderr}");
        assert!(
            stderr.contains("<7>maskd::source: debug shown\n"),
            "{stderr}"
        );
        assert!(!stderr.contains("debug hidden"), "{stderr}");
        assert!(!stderr.contains("warn hidden"), "{stderr}");
        assert!(
            stderr.contains("<4>maskd::source: warn shown\n"),
            "{stderr}"
        );
    }

    #[test]
    #[ignore = "runs in a child process (see logger_writes_journal_lines_and_follows_level_changes)"]
    fn child_logger() {
        if !test_util::in_child() {
            return;
        }
        // Pretend systemd connected our stderr to the journal.
        let stat = nix::sys::stat::fstat(std::io::stderr().as_fd()).unwrap();
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino));
        assert_eq!(init(LevelFilter::Debug), Style::Journal);
        log::info!(target: "maskd::source", "first");
        log::debug!(target: "maskd::source", "debug shown");
        set_level(LevelFilter::Info);
        log::debug!(target: "maskd::source", "debug hidden");
        log::warn!(target: "maskd::source", "warn shown");
        // A second init keeps the logger and only changes the level.
        assert_eq!(init(LevelFilter::Error), Style::Journal);
        log::warn!(target: "maskd::source", "warn hidden");
    }

    #[test]
    fn plain_style_when_journal_stream_is_foreign() {
        let out = test_util::run("lifecycle::logging::tests::child_plain", |cmd| {
            cmd.env("JOURNAL_STREAM", "1:1");
        });
        test_util::assert_passed(&out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr
            .lines()
            .find(|l| l.ends_with("maskd::daemon: plain"))
            .unwrap_or_default();
        assert!(line.contains("Z INFO maskd::daemon: plain"), "{stderr}");
    }

    #[test]
    #[ignore = "runs in a child process (see plain_style_when_journal_stream_is_foreign)"]
    fn child_plain() {
        if !test_util::in_child() {
            return;
        }
        assert_eq!(init(LevelFilter::Info), Style::Plain);
        log::info!(target: "maskd::daemon", "plain");
    }
}
