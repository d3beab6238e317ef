//! Instance life cycle through mdevctl (Debian's `mdevctl` package, which
//! the guest finds on the host's root file system): `mdevctl types` lists
//! the mtty parent's types with their available instances, `mdevctl start
//! -u UUID -p mtty --type mtty-2` creates a transient instance, `mdevctl
//! stop -u UUID` removes it, and `available_instances` follows. Same
//! behaviour on the C sample and ours.

use super::{fail, CaseResult, Ctx, Fail};
use crate::check_eq;
use crate::vfio::new_uuid;
use std::path::{Path, PathBuf};
use std::process::Command;

const PARENT: &str = "mtty";
const TYPE: &str = "mtty-2";

fn mdevctl(args: &[&str]) -> Result<String, Fail> {
    let out = Command::new("mdevctl")
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run mdevctl (package mdevctl): {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "`mdevctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn available(ctx: &Ctx) -> Result<u32, Fail> {
    available_of(ctx, TYPE)
}

fn available_of(ctx: &Ctx, mtty_type: &str) -> Result<u32, Fail> {
    let p = ctx.mtty_parent().join("mdev_supported_types").join(mtty_type).join("available_instances");
    let s = std::fs::read_to_string(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
    s.trim().parse().map_err(|_| fail(format!("{}: {s:?}", p.display())))
}

/// `Available instances: N` of `mtty_type` under `parent` in `mdevctl types`.
fn types_available(text: &str, parent: &str, mtty_type: &str) -> Option<u32> {
    let mut in_parent = false;
    let mut in_type = false;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        match indent {
            0 => {
                in_parent = t == parent;
                in_type = false;
            }
            2 => in_type = in_parent && t == mtty_type,
            _ if in_type => {
                if let Some(n) = t.strip_prefix("Available instances:") {
                    return n.trim().parse().ok();
                }
            }
            _ => {}
        }
    }
    None
}

/// Removes the instance through sysfs if mdevctl left it behind.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::fs::write(self.0.join("remove"), "1");
        }
    }
}

/// `types`, `start`, `list`, `stop`, with `available_instances` checked
/// through sysfs and through `mdevctl types` at each step.
pub fn start_stop(ctx: &Ctx) -> CaseResult {
    let types = mdevctl(&["types"])?;
    let before = available(ctx)?;
    check_eq!(types_available(&types, PARENT, TYPE), Some(before), "mdevctl types: {TYPE} under {PARENT}\n{types}");
    check_eq!(types_available(&types, PARENT, "mtty-1"), Some(available_of(ctx, "mtty-1")?), "mdevctl types: mtty-1");

    let uuid = new_uuid();
    let dev = Path::new("/sys/bus/mdev/devices").join(&uuid);
    let _cleanup = Cleanup(dev.clone());
    mdevctl(&["start", "-u", &uuid, "-p", PARENT, "--type", TYPE])?;
    check_eq!(dev.exists(), true, "{} after mdevctl start", dev.display());
    check_eq!(available(ctx)?, before - 1, "available_instances after start");
    let types = mdevctl(&["types"])?;
    check_eq!(types_available(&types, PARENT, TYPE), Some(before - 1), "mdevctl types after start");
    let list = mdevctl(&["list"])?;
    check_eq!(list.contains(&uuid), true, "mdevctl list shows {uuid}:\n{list}");
    let ty = std::fs::read_link(dev.join("mdev_type")).map_err(|e| fail(format!("mdev_type link: {e}")))?;
    check_eq!(ty.file_name().and_then(|n| n.to_str()), Some(TYPE), "the instance's type");

    // A second start of the same UUID is refused and changes nothing.
    let again = Command::new("mdevctl").args(["start", "-u", &uuid, "-p", PARENT, "--type", TYPE]).output();
    check_eq!(again.map(|o| o.status.success()).ok(), Some(false), "starting a running UUID again");
    check_eq!(available(ctx)?, before - 1, "available_instances after the refused start");

    mdevctl(&["stop", "-u", &uuid])?;
    check_eq!(dev.exists(), false, "{} after mdevctl stop", dev.display());
    check_eq!(available(ctx)?, before, "available_instances after stop");
    let list = mdevctl(&["list"])?;
    check_eq!(list.contains(&uuid), false, "mdevctl list after stop:\n{list}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::types_available;

    #[test]
    fn parses_mdevctl_types() {
        let text = "mtty\n  mtty-1\n    Available instances: 24\n    Device API: vfio-pci\n    Name: Single port serial\n  mtty-2\n    Available instances: 12\n    Device API: vfio-pci\nother\n  mtty-2\n    Available instances: 3\n";
        assert_eq!(types_available(text, "mtty", "mtty-1"), Some(24));
        assert_eq!(types_available(text, "mtty", "mtty-2"), Some(12));
        assert_eq!(types_available(text, "other", "mtty-2"), Some(3));
        assert_eq!(types_available(text, "mtty", "mtty-3"), None);
    }
}
