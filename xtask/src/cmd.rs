//! Running external programs with errors that say what to do next.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Prints a step header, so a long run reads as a list of steps.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Prints an indented detail line under the current step.
pub fn note(msg: &str) {
    eprintln!("    {msg}");
}

/// Describes a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdio and fails if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let desc = describe(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{desc}` (is it installed? `cargo xtask setup` installs what the project needs)"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails with its stderr if it does not exit 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start `{desc}`"))?;
    if !out.status.success() {
        bail!(
            "`{desc}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Returns the first line `cmd` prints, or `None` if it cannot run or fails.
pub fn probe_version(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// Runs a long build step, writing its full output to `log` and showing a
/// progress line every 30 seconds: how many objects were built and the last
/// one, so a 10-minute kernel build does not look hung.
pub fn run_with_progress(mut cmd: Command, log: &Path, what: &str) -> Result<()> {
    let desc = describe(&cmd);
    let mut logfile = std::fs::File::create(log)
        .with_context(|| format!("cannot create log {}", log.display()))?;
    // Both streams go to one pipe, so the log keeps their order.
    let (reader, writer) = std::io::pipe().context("pipe")?;
    let writer2 = writer.try_clone().context("pipe")?;
    let mut child = cmd
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .with_context(|| format!("could not start `{desc}`"))?;
    // The command keeps copies of the pipe's write end: drop it, or the
    // reader below never sees end-of-file.
    drop(cmd);
    let start = Instant::now();
    let mut last_report = Instant::now();
    let mut built = 0usize;
    let mut last_line = String::new();
    let mut tail: std::collections::VecDeque<String> = Default::default();
    for line in BufReader::new(reader).lines() {
        let line = line.unwrap_or_default();
        use std::io::Write;
        let _ = writeln!(logfile, "{line}");
        let t = line.trim_start();
        if ["CC ", "RUSTC ", "LD ", "AS ", "AR ", "BINDGEN "].iter().any(|p| t.starts_with(p)) {
            built += 1;
            last_line = t.to_owned();
        }
        tail.push_back(line);
        if tail.len() > 30 {
            tail.pop_front();
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            note(&format!(
                "{what}: {} s, {built} steps, now {last_line}",
                start.elapsed().as_secs()
            ));
            last_report = Instant::now();
        }
    }
    let status = child.wait()?;
    if !status.success() {
        for l in &tail {
            eprintln!("    | {l}");
        }
        bail!(
            "{what} failed ({status}); full log: {}\n  the command was: {desc}",
            log.display()
        );
    }
    note(&format!("{what}: done in {} s", start.elapsed().as_secs()));
    Ok(())
}
