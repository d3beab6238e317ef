//! The test cases. Each case runs in its own process against whichever
//! backend is loaded, and must give the same results on both.

pub mod bench_smoke;
pub mod iommufd_edu;
pub mod mdevctl;
pub mod mtty;
pub mod mtty_cdev;
pub mod mtty_dma;
pub mod mtty_ext;
pub mod mtty_qemu;
pub mod mtty_timeout;
pub mod qemu;
pub mod type1;
pub mod type1_faults;
pub mod type1_differential;
pub mod type1_history;
pub mod type1_multi;
pub mod type1_pfnmap;
pub mod type1_runs;
pub mod type1_stress;
pub mod type1_vaddr;
pub mod type1_iommu;

use crate::harness::Backend;
use crate::vfio::{Container, Errno, Group, Mdev};
use std::path::PathBuf;

/// What a case knows about its run.
pub struct Ctx {
    pub backend: Backend,
    /// The run's writable results directory (`--results`), when the runner
    /// passed one: where a case leaves what a later case or backend reads.
    pub results: Option<PathBuf>,
}

impl Ctx {
    /// The sysfs directory of the mtty parent device.
    pub fn mtty_parent(&self) -> PathBuf {
        PathBuf::from("/sys/class/mdev_bus/mtty")
    }

    /// Creates an mtty instance, puts its group in a new container and sets
    /// the type1v2 IOMMU: the usual start of a type1 case.
    pub fn container_with_mdev(&self, mdev_type: &str) -> Result<Setup, Fail> {
        let mdev = Mdev::create(&self.mtty_parent(), mdev_type)?;
        let group = Group::open(mdev.group()?).map_err(|e| fail(format!("open group: {e}")))?;
        let container = Container::open().map_err(|e| fail(format!("open /dev/vfio/vfio: {e}")))?;
        group.set_container(&container).map_err(|e| fail(format!("GROUP_SET_CONTAINER: {e}")))?;
        container
            .set_iommu(crate::uapi::VFIO_TYPE1v2_IOMMU)
            .map_err(|e| fail(format!("SET_IOMMU(TYPE1v2): {e}")))?;
        Ok(Setup { container, group, mdev })
    }
}

/// A container with one mdev group attached. Dropped in field order:
/// the container's fd, then the group's, then the instance.
pub struct Setup {
    pub container: Container,
    pub group: Group,
    pub mdev: Mdev,
}

/// Long-term pins held in the whole system (`nr_foll_pin_acquired` minus
/// `nr_foll_pin_released` in /proc/vmstat): a pin leaked anywhere shows.
/// The counters are per CPU and folded into the totals now and then: a
/// write to `vm/stat_refresh` folds them first (without it the difference
/// was seen at -17 and 0 a moment apart with nothing pinned).
pub fn pins_held() -> Result<i64, Fail> {
    std::fs::write("/proc/sys/vm/stat_refresh", "1").map_err(|e| fail(format!("/proc/sys/vm/stat_refresh: {e}")))?;
    let vmstat = std::fs::read_to_string("/proc/vmstat").map_err(|e| fail(format!("/proc/vmstat: {e}")))?;
    let get = |name: &str| -> Result<i64, Fail> {
        vmstat
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .ok_or_else(|| fail(format!("no {name} in /proc/vmstat")))
    };
    Ok(get("nr_foll_pin_acquired ")? - get("nr_foll_pin_released ")?)
}

/// Why a case did not pass.
#[derive(Debug)]
pub enum Fail {
    Fail(String),
    Skip(String),
}

pub fn fail(msg: impl Into<String>) -> Fail {
    Fail::Fail(msg.into())
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Fail(s)
    }
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Fail(format!("unexpected {e}"))
    }
}

pub type CaseResult = Result<(), Fail>;

/// A named case.
pub struct Case {
    pub name: &'static str,
    pub run: fn(&Ctx) -> CaseResult,
}

/// Fails the case unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::suites::fail(format!("{}:{}: {}", file!(), line!(), format!($($fmt)+))));
        }
    };
}

/// Fails the case unless both sides are equal, showing both.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr, $($fmt:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err($crate::suites::fail(format!(
                "{}:{}: {}: got {:?}, wanted {:?}", file!(), line!(), format!($($fmt)+), l, r
            )));
        }
    }};
}

/// Every case, in run order.
pub static ALL: &[Case] = &[
    Case { name: "type1.api_version", run: type1::api_version },
    Case { name: "type1.check_extension_without_iommu", run: type1::check_extension_without_iommu },
    Case { name: "type1.check_extension_with_mdev", run: type1::check_extension_with_mdev },
    Case { name: "type1.get_info", run: type1::get_info },
    Case { name: "type1.map_unmap_roundtrip", run: type1::map_unmap_roundtrip },
    Case { name: "type1.map_bad_input_errno", run: type1::map_bad_input_errno },
    Case { name: "type1.unmap_v2_no_bisect", run: type1::unmap_v2_no_bisect },
    Case { name: "type1.unmap_all", run: type1::unmap_all },
    Case { name: "type1.set_iommu_errors", run: type1::set_iommu_errors },
    Case { name: "type1.get_info_argsz_walk", run: type1::get_info_argsz_walk },
    Case { name: "type1.map_many_unmap_shuffled", run: type1::map_many_unmap_shuffled },
    Case { name: "type1.random_map_unmap_model", run: type1::random_map_unmap_model },
    Case { name: "type1.v1_semantics", run: type1::v1_semantics },
    Case { name: "type1.dma_entry_limit", run: type1::dma_entry_limit },
    Case { name: "type1.dirty_pages", run: type1::dirty_pages },
    Case { name: "type1.process_exit_with_mappings", run: type1::process_exit_with_mappings },
    Case { name: "type1.device_list_stress", run: type1_stress::device_list_stress },
    Case { name: "type1.two_processes", run: type1_multi::two_processes },
    Case { name: "type1.pin_unpin_vs_map_threads", run: type1_multi::pin_unpin_vs_map_threads },
    Case { name: "type1.fault_injection", run: type1_faults::fault_injection },
    Case { name: "type1.fault_injection_lifecycle", run: type1_faults::fault_injection_lifecycle },
    Case { name: "type1.history.get_info_into_a_short_buffer", run: type1_history::get_info_into_a_short_buffer },
    Case { name: "type1.history.irq_eventfds_released", run: type1_history::irq_eventfds_released },
    Case { name: "type1.history.rmmod_while_in_use", run: type1_history::rmmod_while_in_use },
    Case { name: "type1.history.dma_rw_dirty_with_offset", run: type1_history::dma_rw_dirty_with_offset },
    Case { name: "type1.history.top_of_iova_space", run: type1_history::top_of_iova_space },
    Case { name: "type1.differential", run: type1_differential::differential },
    Case { name: "mtty.types_and_instances", run: mtty::types_and_instances },
    Case { name: "mtty.device_info_and_regions", run: mtty::device_info_and_regions },
    Case { name: "mtty.uart_loopback", run: mtty::uart_loopback },
    Case { name: "mtty.uart_registers", run: mtty::uart_registers },
    Case { name: "mtty.fifo_behaviour", run: mtty::fifo_behaviour },
    Case { name: "mtty.interrupts_intx", run: mtty::interrupts_intx },
    Case { name: "mtty.interrupts_msi", run: mtty::interrupts_msi },
    Case { name: "mtty.interrupt_controls", run: mtty::interrupt_controls },
    Case { name: "mtty.bad_input_errno", run: mtty::bad_input_errno },
    Case { name: "mtty.reset", run: mtty::reset },
    Case { name: "mtty.remove_while_open", run: mtty::remove_while_open },
    Case { name: "mtty.migration_round_trip", run: mtty::migration_round_trip },
    Case { name: "mtty.migration_wrong_type", run: mtty::migration_wrong_type },
    Case { name: "mtty.migration_precopy", run: mtty::migration_precopy },
    Case { name: "mtty.migration_two_readers", run: mtty::migration_two_readers },
    Case { name: "mtty.config_space", run: mtty_ext::config_space },
    Case { name: "mtty.ext.type_description", run: mtty_ext::type_description },
    Case { name: "mtty.ext.level_intx_unmask", run: mtty_ext::level_intx_unmask },
    Case { name: "mtty.ext.level_ier_enable", run: mtty_ext::level_ier_enable },
    Case { name: "mtty.ext.full_fifo", run: mtty_ext::full_fifo },
    Case { name: "mtty.ext.reset_clears_state", run: mtty_ext::reset_clears_state },
    Case { name: "mtty.dma.loopback_and_pins", run: mtty_dma::loopback_and_pins },
    Case { name: "mtty.dma.unmap_while_running", run: mtty_dma::unmap_while_running },
    Case { name: "mtty.dma.reset_releases_pins", run: mtty_dma::reset_releases_pins },
    Case { name: "mtty.dma.close_releases_pins", run: mtty_dma::close_releases_pins },
    Case { name: "mtty.dma.unmap_reaches_second_device", run: mtty_dma::unmap_reaches_second_device },
    Case { name: "type1_iommu.edu_dma_and_fault_after_unmap", run: type1_iommu::edu_dma_and_fault_after_unmap },
    Case { name: "type1_iommu.get_info", run: type1_iommu::iommu_get_info },
    Case { name: "type1_iommu.check_extension", run: type1_iommu::iommu_check_extension },
    Case { name: "type1_iommu.large_small_pages", run: type1_iommu::large_small_pages },
    Case { name: "type1_iommu.large_thp", run: type1_iommu::large_thp },
    Case { name: "type1_iommu.large_hugetlb", run: type1_iommu::large_hugetlb },
    Case { name: "type1_iommu.second_group_sees_live_mappings", run: type1_iommu::second_group_sees_live_mappings },
    Case { name: "type1_iommu.mixed_mdev_and_pci", run: type1_iommu::mixed_mdev_and_pci },
    Case { name: "type1_iommu.disable_hugepages", run: type1_iommu::disable_hugepages },
    Case { name: "type1_iommu.update_vaddr", run: type1_vaddr::update_vaddr },
    Case { name: "type1_iommu.dirty_tracking_whole_mapping", run: type1_iommu::dirty_tracking_whole_mapping },
    Case { name: "type1_iommu.process_exit_with_pinned_mappings", run: type1_iommu::process_exit_with_pinned_mappings },
    Case { name: "type1_iommu.attach_refused_over_reserved_or_aperture", run: type1_iommu::attach_refused_over_reserved_or_aperture },
    Case { name: "type1_iommu.two_device_types_share_a_domain", run: type1_iommu::two_device_types_share_a_domain },
    Case { name: "type1_iommu.memlock_limit", run: type1_iommu::memlock_limit },
    Case { name: "type1_iommu.fault_injection", run: type1_faults::iommu_fault_injection },
    Case { name: "type1_iommu.history.map_killed_midway", run: type1_history::map_killed_midway },
    Case { name: "type1_iommu.history.locked_vm_race_with_mlock", run: type1_history::locked_vm_race_with_mlock },
    Case { name: "type1_iommu.history.group_leaves_while_mdev_pins", run: type1_history::group_leaves_while_mdev_pins },
    Case { name: "type1_iommu.history.hot_unplug_while_mapped", run: type1_history::hot_unplug_while_mapped },
    Case { name: "type1_iommu.history.zero_page_read_only_maps", run: type1_history::zero_page_read_only_maps },
    Case { name: "type1_iommu.history.vaddr_after_exec", run: type1_vaddr::vaddr_after_exec },
    Case { name: "type1_iommu.history.no_soft_lockup_pinning_a_gib", run: type1_history::no_soft_lockup_pinning_a_gib },
    Case { name: "type1_iommu.runs.huge_pages_return_their_pins", run: type1_runs::huge_pages_return_their_pins },
    Case { name: "type1_iommu.runs.mixed_runs_in_one_mapping", run: type1_runs::mixed_runs_in_one_mapping },
    Case { name: "type1_iommu.runs.scattered_pages_gathered", run: type1_runs::scattered_pages_gathered },
    Case { name: "type1_iommu.pfnmap.dma_through_bar", run: type1_pfnmap::dma_through_bar },
    Case { name: "type1_iommu.pfnmap.peer_to_peer", run: type1_pfnmap::peer_to_peer },
    Case { name: "type1_iommu.pfnmap.read_only_vma", run: type1_pfnmap::read_only_vma },
    Case { name: "type1_iommu.pfnmap.never_touched", run: type1_pfnmap::never_touched },
    Case { name: "type1_iommu.pfnmap.mmap_gone_while_mapped", run: type1_pfnmap::mmap_gone_while_mapped },
    Case { name: "type1_iommu.pfnmap.unmap_all_and_update_vaddr", run: type1_pfnmap::unmap_all_and_update_vaddr },
    Case { name: "type1_iommu.pfnmap.groups_join_after_mapping", run: type1_pfnmap::groups_join_after_mapping },
    Case { name: "type1_iommu.pfnmap.mixed_ram_and_bar", run: type1_pfnmap::mixed_ram_and_bar },
    Case { name: "type1_iommu.pfnmap.ram_where_bar_was", run: type1_pfnmap::ram_where_bar_was },
    Case { name: "type1_iommu.pfnmap.two_vmas", run: type1_pfnmap::two_vmas },
    Case { name: "type1_iommu.pfnmap.whole_bar_and_mixed_levels", run: type1_pfnmap::whole_bar_and_mixed_levels },
    Case { name: "type1_iommu.pfnmap.mdev_pin_and_dma_rw", run: type1_pfnmap::mdev_pin_and_dma_rw },
    Case { name: "mtty.ext.char_timeout_fires_below_trigger", run: mtty_timeout::fires_below_trigger },
    Case { name: "mtty.ext.char_timeout_waits_four_characters", run: mtty_timeout::waits_four_characters },
    Case { name: "mtty.ext.char_timeout_teardown_while_armed", run: mtty_timeout::teardown_while_armed },
    Case { name: "mtty.mdevctl.start_stop", run: mdevctl::start_stop },
    Case { name: "mtty.qemu.guest_8250", run: mtty_qemu::guest_8250 },
    Case { name: "mtty.qemu.guest_8250_iommufd", run: mtty_qemu::guest_8250_iommufd },
    Case { name: "qemu.vfio_pci_nic", run: qemu::vfio_pci_nic },
    Case { name: "qemu.migrate_mtty", run: qemu::migrate_mtty },
    Case { name: "mtty.dma.copy_64k", run: mtty_dma::copy_64k },
    Case { name: "mtty.dma.copy_lengths_and_boundaries", run: mtty_dma::copy_lengths_and_boundaries },
    Case { name: "mtty.dma.copy_faults", run: mtty_dma::copy_faults },
    Case { name: "mtty.dma.copy_bad_length", run: mtty_dma::copy_bad_length },
    Case { name: "mtty.dma.copy_waits_for_bus_master", run: mtty_dma::copy_waits_for_bus_master },
    Case { name: "mtty.dma.copy_survives_migration", run: mtty_dma::copy_survives_migration },
    Case { name: "mtty.cdev.uart_loopback", run: mtty_cdev::uart_loopback },
    Case { name: "mtty.cdev.dma_engine_on_iommufd", run: mtty_cdev::dma_engine_on_iommufd },
    Case { name: "mtty.cdev.interrupts", run: mtty_cdev::interrupts },
    Case { name: "mtty.cdev.reset", run: mtty_cdev::reset },
    Case { name: "mtty.cdev.migration", run: mtty_cdev::migration },
    Case { name: "mtty.cdev.unmap_from_second_device", run: mtty_cdev::unmap_from_second_device },
    Case { name: "mtty.cdev.close_while_pinned", run: mtty_cdev::close_while_pinned },
    Case { name: "mtty.cdev.both_paths", run: mtty_cdev::both_paths },
    Case { name: "iommufd.edu.dma_round_trip", run: iommufd_edu::dma_round_trip },
    Case { name: "iommufd.edu.then_type1", run: iommufd_edu::then_type1 },
    Case { name: "bench.workloads_run", run: bench_smoke::workloads_run },
];

/// Cases that need longer than the runner's default per-case timeout.
pub fn case_timeout(name: &str) -> Option<std::time::Duration> {
    match name {
        // QEMU boots a kernel under TCG inside this TCG guest.
        "mtty.qemu.guest_8250" | "mtty.qemu.guest_8250_iommufd" => Some(mtty_qemu::INNER_TIMEOUT + std::time::Duration::from_secs(60)),
        "qemu.vfio_pci_nic" | "qemu.migrate_mtty" => Some(qemu::INNER_TIMEOUT + std::time::Duration::from_secs(60)),
        // Fifteen workload processes, each with its warm-up pass.
        "bench.workloads_run" => Some(std::time::Duration::from_secs(600)),
        // C looks the 1 GiB BAR up 4 KiB at a time, under TCG.
        "type1_iommu.pfnmap.whole_bar_and_mixed_levels" => Some(std::time::Duration::from_secs(600)),
        _ => None,
    }
}
