//! QEMU run inside the test VM, for the cases that put a real VMM in front
//! of the modules (`mtty.qemu.*`, `qemu.*`): the inner guest's command line,
//! its console read line by line as it happens, and a QMP client.
//!
//! The inner guest is the tiny kernel and busybox initramfs that xtask
//! builds (`images/inner-guest.config`, `images/inner-guest-init.sh`) and
//! passes in `VFIO_RS_INNER_KERNEL` and `VFIO_RS_INNER_INITRD`; the init
//! script's `vfio_rs.case=` argument picks what it does, and every line it
//! reports starts with `INNER-`.

use crate::suites::{fail, Fail};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The inner kernel and initramfs, or a skip when the runner gave none.
pub fn inner_guest_files() -> Result<(String, String), Fail> {
    match (std::env::var("VFIO_RS_INNER_KERNEL"), std::env::var("VFIO_RS_INNER_INITRD")) {
        (Ok(k), Ok(i)) => Ok((k, i)),
        _ => Err(Fail::Skip("no inner guest kernel (VFIO_RS_INNER_KERNEL unset: run through cargo xtask test)".into())),
    }
}

/// QEMU under TCG with one CPU, `mem_mib` of RAM, the serial console on
/// stdout and the inner guest booting straight into its init with
/// `init_args` (`vfio_rs.case=...` and the case's parameters) on the kernel
/// command line. Devices are added by the caller.
pub fn command(mem_mib: u32, init_args: &str) -> Result<Command, Fail> {
    let (kernel, initrd) = inner_guest_files()?;
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "pc", "-accel", "tcg,tb-size=64", "-m", &mem_mib.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio", "-monitor", "none"])
        .args(["-kernel", &kernel, "-initrd", &initrd])
        .args(["-append", &format!("console=ttyS0 panic=-1 loglevel=4 8250.nr_uarts=8 {init_args}")]);
    Ok(qemu)
}

/// A running QEMU whose stdout (the inner console) and stderr (prefixed
/// `qemu: `) arrive as lines.
pub struct InnerQemu {
    child: Child,
    rx: mpsc::Receiver<String>,
    pumps: Vec<std::thread::JoinHandle<()>>,
    /// Every line so far, in arrival order.
    pub lines: Vec<String>,
    /// When QEMU was started.
    pub started: Instant,
    /// When the inner init printed `INNER-BOOTED`.
    pub booted: Option<Instant>,
    ended: bool,
}

impl InnerQemu {
    pub fn spawn(mut qemu: Command) -> Result<InnerQemu, Fail> {
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start qemu-system-x86_64: {e}")))?;
        let (tx, rx) = mpsc::channel::<String>();
        let mut pumps = Vec::new();
        let out = child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let err = child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for (stream, prefix) in [(out, ""), (err, "qemu: ")] {
            let Some(stream) = stream else { continue };
            let tx = tx.clone();
            pumps.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(format!("{prefix}{}", line.trim_end_matches('\r'))).is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(InnerQemu { child, rx, pumps, lines: Vec::new(), started: Instant::now(), booted: None, ended: false })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What QEMU's file descriptors point to (`/proc/PID/fd`).
    pub fn open_files(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else { return Vec::new() };
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).map(|p| p.to_string_lossy().into_owned()).collect()
    }

    /// Reads lines until one satisfies `pred` (returned), QEMU's output ends
    /// or `deadline` passes (both `None`).
    pub fn wait_for(&mut self, deadline: Instant, pred: impl Fn(&str) -> bool) -> Option<String> {
        while !self.ended && Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if line.starts_with("INNER-BOOTED") {
                        self.booted = Some(Instant::now());
                    }
                    let hit = pred(&line);
                    self.lines.push(line);
                    if hit {
                        return self.lines.last().cloned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.ended = true,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        None
    }

    /// Whether the guest has printed a line starting with `prefix`, among
    /// the lines read so far (an earlier wait may have read past it) or,
    /// waiting until `deadline`, among the next ones; false if a line with
    /// `FAIL` comes first, or none by then.
    pub fn reached(&mut self, deadline: Instant, prefix: &str) -> bool {
        for l in &self.lines {
            if l.contains("FAIL") {
                return false;
            }
            if l.starts_with(prefix) {
                return true;
            }
        }
        self.wait_for(deadline, |l| l.starts_with(prefix) || l.contains("FAIL")).is_some_and(|l| !l.contains("FAIL"))
    }

    /// The inner guest's verdict: waits for `INNER-RESULT` until `deadline`.
    pub fn result(&mut self, deadline: Instant) -> Option<bool> {
        self.wait_for(deadline, |l| l.starts_with("INNER-RESULT "))
            .map(|l| l.trim_start_matches("INNER-RESULT ").trim() == "pass")
    }

    /// Waits up to `grace` for QEMU to exit by itself (the inner init
    /// reboots, and `-no-reboot` turns that into an exit), then kills it;
    /// collects the rest of its output.
    pub fn finish(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            self.wait_for(Instant::now() + Duration::from_millis(200), |_| false);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.wait_for(Instant::now() + Duration::from_secs(5), |_| false);
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
    }

    /// Prints what the case's diagnostics need: the inner lines, QEMU's own
    /// messages and the timing.
    pub fn print(&self, who: &str) {
        for l in self.lines.iter().filter(|l| l.starts_with("INNER-") || l.starts_with("qemu: ") || l.contains("8250")) {
            println!("{who}: {l}");
        }
        println!(
            "{who}: booted after {}, ran {:.1} s",
            self.booted.map_or("never".to_owned(), |b| format!("{:.1} s", (b - self.started).as_secs_f64())),
            self.started.elapsed().as_secs_f64()
        );
    }

    /// QEMU's reports of a failed DMA map (`vfio_dma_map(...) = -errno` in
    /// QEMU 7, `vfio_container_dma_map(...) = -errno` from 8 on).
    pub fn dma_map_errors(&self) -> Vec<&String> {
        self.lines.iter().filter(|l| l.contains("dma_map(") && l.contains(") = -")).collect()
    }
}

impl Drop for InnerQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A QMP connection (QEMU's JSON control protocol) on a unix socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (retrying until QEMU listens, up to `wait`) and leaves
    /// capability negotiation.
    pub fn connect(path: &Path, wait: Duration) -> Result<Qmp, Fail> {
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(fail(format!("QMP {}: {e}", path.display()))),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| fail(format!("QMP: {e}")))?;
        let writer = stream.try_clone().map_err(|e| fail(format!("QMP: {e}")))?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(fail(format!("QMP greeting expected, got {greeting}")));
        }
        qmp.execute("qmp_capabilities", Value::Null)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, Fail> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| fail(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(fail("QMP: QEMU closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| fail(format!("QMP: bad JSON {line:?}: {e}")))
    }

    /// Runs one command; returns its `return` value, or fails with QEMU's
    /// error. Events that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, Fail> {
        let mut msg = serde_json::json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        writeln!(self.writer, "{msg}").map_err(|e| fail(format!("QMP write: {e}")))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(fail(format!("QMP {command}: {e}")));
            }
        }
    }
}
