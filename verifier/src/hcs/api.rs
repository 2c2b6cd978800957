//! The seam between the runner and the Host Compute Service: one method of [`HcsApi`] per HCS
//! call the runner makes, the error every call returns ([`HcsError`], HRESULT + HCS result
//! message), the HRESULTs the runner knows by name, and [`classify`], which decides whose fault
//! an error is.
//!
//! Cross-platform and free of FFI. Implemented by `windows::RealHcs` (computecore.dll /
//! computestorage.dll through the `windows` crate, Windows only) and by `double::HcsDouble`
//! (the test double). The runner calls only this trait; nothing here calls the runner.

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// HRESULTs the runner names in messages and decides on (winerror.h; hcsshim
/// `internal/hcs/errors.go`). HCS reports its own errors in two forms: the HRESULT form
/// `0x8037xxxx` (winerror.h `HCS_E_*`, what computecore.dll returns) and the NTSTATUS-style form
/// `0xC037xxxx` (what vmcompute.dll and docker/containerd messages show, e.g. the well-known
/// "0xc0370101"). [`name`] and [`classify`] treat both forms alike.
pub mod hresult {
    /// `HCS_E_TERMINATED_DURING_START`: the compute system stopped while it was starting.
    pub const HCS_E_TERMINATED_DURING_START: u32 = 0x8037_0100;
    /// `HCS_E_IMAGE_MISMATCH`: "The operating system of the container does not match the
    /// operating system of the host". Shown as `0xc0370101` by docker and hcsshim. This is the
    /// Windows compatibility rule refusing the image, not a crash: the job is `incompatible`.
    pub const HCS_E_IMAGE_MISMATCH: u32 = 0x8037_0101;
    /// The NTSTATUS-style spelling of [`HCS_E_IMAGE_MISMATCH`], as users see it.
    pub const STATUS_IMAGE_MISMATCH: u32 = 0xC037_0101;
    /// `HCS_E_HYPERV_NOT_INSTALLED`: Hyper-V isolation asked for on a host without Hyper-V.
    pub const HCS_E_HYPERV_NOT_INSTALLED: u32 = 0x8037_0102;
    /// `HCS_E_INVALID_STATE`: the system is not in a state for the requested operation.
    pub const HCS_E_INVALID_STATE: u32 = 0x8037_0105;
    /// `HCS_E_UNEXPECTED_EXIT`: "The virtual machine or container exited unexpectedly".
    pub const HCS_E_UNEXPECTED_EXIT: u32 = 0x8037_0106;
    /// `HCS_E_TERMINATED`: "The virtual machine or container was forcefully exited".
    pub const HCS_E_TERMINATED: u32 = 0x8037_0107;
    /// `HCS_E_CONNECT_FAILED`: connecting to the guest failed.
    pub const HCS_E_CONNECT_FAILED: u32 = 0x8037_0108;
    /// `HCS_E_CONNECTION_TIMEOUT`: the guest did not answer in time.
    pub const HCS_E_CONNECTION_TIMEOUT: u32 = 0x8037_0109;
    /// `HCS_E_CONNECTION_CLOSED`: the connection to the guest was closed.
    pub const HCS_E_CONNECTION_CLOSED: u32 = 0x8037_010A;
    /// `HCS_E_INVALID_JSON`: HCS could not read a document we sent (our bug).
    pub const HCS_E_INVALID_JSON: u32 = 0x8037_010D;
    /// `HCS_E_SYSTEM_NOT_FOUND`: no compute system with that id.
    pub const HCS_E_SYSTEM_NOT_FOUND: u32 = 0x8037_010E;
    /// `HCS_E_SYSTEM_ALREADY_EXISTS`: a compute system with that id exists.
    pub const HCS_E_SYSTEM_ALREADY_EXISTS: u32 = 0x8037_010F;
    /// `HCS_E_SYSTEM_ALREADY_STOPPED`: terminate of a stopped system (harmless in cleanup).
    pub const HCS_E_SYSTEM_ALREADY_STOPPED: u32 = 0x8037_0110;
    /// `HCS_E_INVALID_LAYER`: a layer of the image is not a valid Windows layer.
    pub const HCS_E_INVALID_LAYER: u32 = 0x8037_0112;
    /// `HCS_E_SERVICE_NOT_AVAILABLE`: vmcompute is not running.
    pub const HCS_E_SERVICE_NOT_AVAILABLE: u32 = 0x8037_0114;
    /// `HCS_E_OPERATION_TIMEOUT`: an HCS operation timed out.
    pub const HCS_E_OPERATION_TIMEOUT: u32 = 0x8037_0118;
    /// `HCS_E_ACCESS_DENIED`.
    pub const HCS_E_ACCESS_DENIED: u32 = 0x8037_011B;
    /// `HCS_E_GUEST_CRITICAL_ERROR`: the guest OS hit a critical error.
    pub const HCS_E_GUEST_CRITICAL_ERROR: u32 = 0x8037_011C;
    /// `HCS_E_SERVICE_DISCONNECT`: the connection to vmcompute was lost.
    pub const HCS_E_SERVICE_DISCONNECT: u32 = 0x8037_011E;
    /// `HCS_E_PROCESS_ALREADY_STOPPED`.
    pub const HCS_E_PROCESS_ALREADY_STOPPED: u32 = 0x8037_011F;
    /// `HRESULT_FROM_WIN32(ERROR_FILE_NOT_FOUND)`: at process creation, the command is not in
    /// the image.
    pub const E_FILE_NOT_FOUND: u32 = 0x8007_0002;
    /// `HRESULT_FROM_WIN32(ERROR_PATH_NOT_FOUND)`.
    pub const E_PATH_NOT_FOUND: u32 = 0x8007_0003;
    /// `E_ACCESSDENIED`.
    pub const E_ACCESSDENIED: u32 = 0x8007_0005;
    /// `HRESULT_FROM_WIN32(ERROR_INVALID_DATA)`: HCS rejected a request as invalid.
    pub const E_INVALID_DATA: u32 = 0x8007_000D;
    /// `HRESULT_FROM_WIN32(ERROR_DISK_FULL)`.
    pub const E_DISK_FULL: u32 = 0x8007_0070;
    /// `HRESULT_FROM_WIN32(WAIT_TIMEOUT)`.
    pub const E_WAIT_TIMEOUT: u32 = 0x8007_0102;
    /// `HRESULT_FROM_WIN32(ERROR_NOT_FOUND)`: e.g. detach of a filter that is not attached.
    pub const E_NOT_FOUND: u32 = 0x8007_0490;
    /// `HRESULT_FROM_WIN32(ERROR_TIMEOUT)`.
    pub const E_TIMEOUT: u32 = 0x8007_05B4;
    /// `E_INVALIDARG`.
    pub const E_INVALIDARG: u32 = 0x8007_0057;
    /// `E_FAIL`.
    pub const E_FAIL: u32 = 0x8000_4005;
    /// `HRESULT_FROM_WIN32(ERROR_NOT_READY)`: on Windows Server 2019 the sandbox volume is
    /// sometimes not there yet (hcsshim `internal/layers/wcow_mount.go` retries it).
    pub const E_NOT_READY: u32 = 0x8007_0015;
    /// `HRESULT_FROM_WIN32(ERROR_DEVICE_NOT_CONNECTED)`: the same RS5 flake under load.
    pub const E_DEVICE_NOT_CONNECTED: u32 = 0x8007_048F;
    /// `HRESULT_FROM_WIN32(ERROR_PROC_NOT_FOUND)`: the DLL of this host build does not export
    /// the function (e.g. `HcsWaitForProcessExit` on 17763).
    pub const E_PROC_NOT_FOUND: u32 = 0x8007_007F;
    /// `HRESULT_FROM_WIN32(ERROR_OPERATION_ABORTED)`: a cancelled operation.
    pub const E_OPERATION_ABORTED: u32 = 0x8007_03E3;
}

/// The name of a known HRESULT (either HCS form), e.g. `HCS_E_IMAGE_MISMATCH` for
/// `0xc0370101`.
pub fn name(hr: u32) -> Option<&'static str> {
    use hresult::*;
    Some(match hcs_form(hr) {
        HCS_E_TERMINATED_DURING_START => "HCS_E_TERMINATED_DURING_START",
        HCS_E_IMAGE_MISMATCH => "HCS_E_IMAGE_MISMATCH",
        HCS_E_HYPERV_NOT_INSTALLED => "HCS_E_HYPERV_NOT_INSTALLED",
        HCS_E_INVALID_STATE => "HCS_E_INVALID_STATE",
        HCS_E_UNEXPECTED_EXIT => "HCS_E_UNEXPECTED_EXIT",
        HCS_E_TERMINATED => "HCS_E_TERMINATED",
        HCS_E_CONNECT_FAILED => "HCS_E_CONNECT_FAILED",
        HCS_E_CONNECTION_TIMEOUT => "HCS_E_CONNECTION_TIMEOUT",
        HCS_E_CONNECTION_CLOSED => "HCS_E_CONNECTION_CLOSED",
        HCS_E_INVALID_JSON => "HCS_E_INVALID_JSON",
        HCS_E_SYSTEM_NOT_FOUND => "HCS_E_SYSTEM_NOT_FOUND",
        HCS_E_SYSTEM_ALREADY_EXISTS => "HCS_E_SYSTEM_ALREADY_EXISTS",
        HCS_E_SYSTEM_ALREADY_STOPPED => "HCS_E_SYSTEM_ALREADY_STOPPED",
        HCS_E_INVALID_LAYER => "HCS_E_INVALID_LAYER",
        HCS_E_SERVICE_NOT_AVAILABLE => "HCS_E_SERVICE_NOT_AVAILABLE",
        HCS_E_OPERATION_TIMEOUT => "HCS_E_OPERATION_TIMEOUT",
        HCS_E_ACCESS_DENIED => "HCS_E_ACCESS_DENIED",
        HCS_E_GUEST_CRITICAL_ERROR => "HCS_E_GUEST_CRITICAL_ERROR",
        HCS_E_SERVICE_DISCONNECT => "HCS_E_SERVICE_DISCONNECT",
        HCS_E_PROCESS_ALREADY_STOPPED => "HCS_E_PROCESS_ALREADY_STOPPED",
        E_FILE_NOT_FOUND => "ERROR_FILE_NOT_FOUND",
        E_PATH_NOT_FOUND => "ERROR_PATH_NOT_FOUND",
        E_ACCESSDENIED => "E_ACCESSDENIED",
        E_INVALID_DATA => "ERROR_INVALID_DATA",
        E_DISK_FULL => "ERROR_DISK_FULL",
        E_WAIT_TIMEOUT => "WAIT_TIMEOUT",
        E_NOT_FOUND => "ERROR_NOT_FOUND",
        E_TIMEOUT => "ERROR_TIMEOUT",
        E_INVALIDARG => "E_INVALIDARG",
        E_FAIL => "E_FAIL",
        E_NOT_READY => "ERROR_NOT_READY",
        E_DEVICE_NOT_CONNECTED => "ERROR_DEVICE_NOT_CONNECTED",
        E_PROC_NOT_FOUND => "ERROR_PROC_NOT_FOUND",
        E_OPERATION_ABORTED => "ERROR_OPERATION_ABORTED",
        _ => return None,
    })
}

/// Maps the NTSTATUS-style HCS spelling `0xC037xxxx` to the HRESULT form `0x8037xxxx`; other
/// values are returned unchanged.
pub fn hcs_form(hr: u32) -> u32 {
    if hr & 0xFFFF_0000 == 0xC037_0000 {
        0x8037_0000 | (hr & 0xFFFF)
    } else {
        hr
    }
}

/// True for the HRESULTs a wait returns when its timeout passed.
pub fn is_timeout(hr: u32) -> bool {
    matches!(
        hcs_form(hr),
        hresult::E_WAIT_TIMEOUT | hresult::E_TIMEOUT | hresult::HCS_E_OPERATION_TIMEOUT
    )
}

/// True for the Windows Server 2019 flakes of mounting a sandbox volume that hcsshim retries
/// (`ERROR_NOT_READY`, `ERROR_DEVICE_NOT_CONNECTED`; `internal/layers/wcow_mount.go`).
pub fn is_retryable_mount(hr: u32) -> bool {
    matches!(hr, hresult::E_NOT_READY | hresult::E_DEVICE_NOT_CONNECTED)
}

/// True for errors that mean "already gone": harmless during cleanup.
pub fn is_already_gone(hr: u32) -> bool {
    matches!(
        hcs_form(hr),
        hresult::HCS_E_SYSTEM_ALREADY_STOPPED
            | hresult::HCS_E_SYSTEM_NOT_FOUND
            | hresult::HCS_E_PROCESS_ALREADY_STOPPED
            | hresult::E_NOT_FOUND
            | hresult::E_FILE_NOT_FOUND
            | hresult::E_PATH_NOT_FOUND
    )
}

/// The HCS calls, named as computecore.dll / computestorage.dll export them. Used in error
/// messages, in the double's call log and by [`classify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `HcsImportLayer` (computestorage).
    ImportLayer,
    /// `HcsSetupBaseOSLayer` (computestorage), with the VHDX it needs.
    SetupBaseOsLayer,
    /// `HcsInitializeWritableLayer` (computestorage).
    InitializeWritableLayer,
    /// A formatted, VM-accessible scratch VHDX (`CreateVirtualDisk` + `HcsFormatWritableLayerVhd`
    /// + `HcsGrantVmGroupAccess`).
    CreateScratchVhd,
    /// The process-isolated container's sandbox: `CreateVirtualDisk` +
    /// `HcsFormatWritableLayerVhd` + `AttachVirtualDisk` (no drive letter) +
    /// `HcsGetLayerVhdMountPath`, giving its `\\?\Volume{GUID}\` path.
    MountSandboxVhd,
    /// `DetachVirtualDisk` of the sandbox (and deleting it).
    DetachSandboxVhd,
    /// The utility VM's scratch: a copy of `UtilityVM\SystemTemplate.vhdx` +
    /// `HcsGrantVmAccess(vm id, copy)` (hcsshim `internal/wcow/scratch.go`).
    CreateUvmScratch,
    /// `HcsAttachLayerStorageFilter` (computestorage).
    AttachLayerStorageFilter,
    /// `HcsDetachLayerStorageFilter` (computestorage).
    DetachLayerStorageFilter,
    /// `HcsDestroyLayer` (computestorage).
    DestroyLayer,
    /// `HcsCreateComputeSystem` (computecore).
    CreateComputeSystem,
    /// `HcsStartComputeSystem` (computecore).
    StartComputeSystem,
    /// `HcsModifyComputeSystem` (computecore): a `ModifySettingRequest`, here the guest
    /// requests that prepare a hosted container's storage.
    ModifyComputeSystem,
    /// `HcsTerminateComputeSystem` (computecore).
    TerminateComputeSystem,
    /// `HcsCloseComputeSystem` (computecore).
    CloseComputeSystem,
    /// `HcsCreateProcess` (computecore).
    CreateProcess,
    /// `HcsWaitForProcessExit` + exit code from the process status (computecore).
    WaitForProcessExit,
    /// `HcsGetProcessProperties` (computecore): the process status, for hosts without
    /// `HcsWaitForProcessExit` (17763).
    GetProcessProperties,
    /// `HcsCloseProcess` (computecore).
    CloseProcess,
}

impl Op {
    /// The exported function's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::ImportLayer => "HcsImportLayer",
            Op::SetupBaseOsLayer => "HcsSetupBaseOSLayer",
            Op::InitializeWritableLayer => "HcsInitializeWritableLayer",
            Op::CreateScratchVhd => "CreateScratchVhd",
            Op::MountSandboxVhd => "MountSandboxVhd",
            Op::DetachSandboxVhd => "DetachSandboxVhd",
            Op::CreateUvmScratch => "CreateUvmScratch",
            Op::AttachLayerStorageFilter => "HcsAttachLayerStorageFilter",
            Op::DetachLayerStorageFilter => "HcsDetachLayerStorageFilter",
            Op::DestroyLayer => "HcsDestroyLayer",
            Op::CreateComputeSystem => "HcsCreateComputeSystem",
            Op::StartComputeSystem => "HcsStartComputeSystem",
            Op::ModifyComputeSystem => "HcsModifyComputeSystem",
            Op::TerminateComputeSystem => "HcsTerminateComputeSystem",
            Op::CloseComputeSystem => "HcsCloseComputeSystem",
            Op::CreateProcess => "HcsCreateProcess",
            Op::WaitForProcessExit => "HcsWaitForProcessExit",
            Op::GetProcessProperties => "HcsGetProcessProperties",
            Op::CloseProcess => "HcsCloseProcess",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed HCS call: which call, its HRESULT, and the message HCS gave (the `ErrorMessage` of
/// the result document, or the system message for the HRESULT). hcsshim's `HcsError{Op, Err,
/// Events}`, as plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcsError {
    /// The call.
    pub op: Op,
    /// The HRESULT, as returned (either HCS form).
    pub hresult: u32,
    /// The message (may be empty).
    pub message: String,
}

impl HcsError {
    /// An error of `op` with `hresult` and `message`.
    pub fn new(op: Op, hresult: u32, message: impl Into<String>) -> Self {
        Self {
            op,
            hresult,
            message: message.into(),
        }
    }

    /// Whose fault it is ([`classify`]).
    pub fn fault(&self) -> Fault {
        classify(self.op, self.hresult)
    }
}

impl fmt::Display for HcsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: HCS error {:#010x}", self.op, self.hresult)?;
        if let Some(n) = name(self.hresult) {
            write!(f, " ({n})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for HcsError {}

/// `Result` of an HCS call.
pub type Result<T, E = HcsError> = std::result::Result<T, E>;

/// The message of an HCS result document (`{"Error":…,"ErrorMessage":"…","ErrorEvents":[{"Message":…}]}`,
/// hcsshim `hcsResult`): the `ErrorMessage` followed by each event's `Message`, or `None` when
/// the document has neither.
pub fn result_message(doc: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = v["ErrorMessage"].as_str().filter(|m| !m.is_empty()) {
        parts.push(m.trim().to_owned());
    }
    for ev in v["ErrorEvents"].as_array().into_iter().flatten() {
        if let Some(m) = ev["Message"].as_str().filter(|m| !m.is_empty()) {
            parts.push(format!("[{}]", m.trim()));
        }
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The exit code in a process status document (`{"ProcessId":…,"Exited":true,"ExitCode":…}`,
/// schema2 `ProcessStatus`). HCS reports it as a `uint32`; NTSTATUS-style codes such as
/// `0xC0000005` stay positive.
pub fn exit_code_from(doc: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    v["ExitCode"].as_i64()
}

/// The status in a process status document (schema2 `ProcessStatus`): `Exited`, `ExitCode`
/// and `LastWaitResult` (a non-zero `LastWaitResult` means HCS could not wait for the process:
/// the exit code is not to be trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessStatus {
    /// The process has exited.
    pub exited: bool,
    /// Its exit code, when reported.
    pub exit_code: Option<i64>,
    /// `LastWaitResult` (0 when absent).
    pub last_wait_result: i64,
}

/// Parses a process status document; `None` when it is not JSON.
pub fn process_status(doc: &str) -> Option<ProcessStatus> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    Some(ProcessStatus {
        exited: v["Exited"].as_bool().unwrap_or(false),
        exit_code: v["ExitCode"].as_i64(),
        last_wait_result: v["LastWaitResult"].as_i64().unwrap_or(0),
    })
}

/// Whose fault an error is, which decides the job state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The host or HCS misbehaved: `error`, the job is retried.
    Infrastructure,
    /// The image is broken: `failed`.
    Image,
    /// The Windows compatibility rules refuse this image on this host with this isolation:
    /// `incompatible` (../shared/docs/WINDOWS.md §3.4: "Record 0xc0370101 as expected
    /// incompatibility").
    Incompatible,
}

/// Decides whose fault a failed call is. Conservative: anything not known to be the image's
/// doing is infrastructure, because an infrastructure verdict is retried and a wrong `failed`
/// verdict would blame a good image.
///
/// * `HCS_E_IMAGE_MISMATCH` (`0xc0370101` / `0x80370101`), wherever it comes from: incompatible.
/// * Import and setup of layers never blame the image: the runner writes the import source
///   itself, so `ERROR_INVALID_DATA` or `HCS_E_INVALID_LAYER` there is the runner's or the
///   host's problem (issue 19). A malformed layer tar is caught while unpacking, before HCS.
/// * While starting the system: the guest OS of the image died while booting
///   (`HCS_E_UNEXPECTED_EXIT`, `HCS_E_TERMINATED_DURING_START`, `HCS_E_GUEST_CRITICAL_ERROR`).
/// * While creating the process: the command is not in the image (`ERROR_FILE_NOT_FOUND`,
///   `ERROR_PATH_NOT_FOUND`).
pub fn classify(op: Op, hr: u32) -> Fault {
    use hresult::*;
    let hr = hcs_form(hr);
    if hr == HCS_E_IMAGE_MISMATCH {
        return Fault::Incompatible;
    }
    let image = match op {
        Op::StartComputeSystem => matches!(
            hr,
            HCS_E_UNEXPECTED_EXIT | HCS_E_TERMINATED_DURING_START | HCS_E_GUEST_CRITICAL_ERROR
        ),
        Op::CreateProcess => matches!(hr, E_FILE_NOT_FOUND | E_PATH_NOT_FOUND),
        _ => false,
    };
    if image {
        Fault::Image
    } else {
        Fault::Infrastructure
    }
}

/// A compute system opened by [`HcsApi::create_compute_system`]. An opaque number; the
/// implementation maps it to its handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemHandle(pub u64);

/// A process opened by [`HcsApi::create_process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessHandle(pub u64);

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessExit {
    /// Its exit code.
    pub exit_code: i64,
    /// Its stdout and stderr, interleaved as read (at most the last 64 KiB).
    pub output: Vec<u8>,
}

/// The HCS calls the runner makes. Each method is a blocking call (the runner runs them on
/// tokio's blocking pool, under a watchdog). Documents are passed as JSON text, exactly what
/// HCS receives; paths are host paths.
pub trait HcsApi: Send + Sync + 'static {
    /// Runner name reported with results (`hcs`, `hcs-double`).
    fn runner_name(&self) -> &'static str {
        "hcs"
    }

    /// True for a test double.
    fn simulated(&self) -> bool {
        false
    }

    /// Whether this host's HCS exports the functions `op` needs. Functions newer than
    /// Windows Server 2019 are looked up at run time, so one binary runs on every build; the
    /// runner falls back when this is false (e.g. no `HcsWaitForProcessExit` on 17763: it
    /// polls [`HcsApi::get_process_exit`]).
    fn has(&self, op: Op) -> bool {
        let _ = op;
        true
    }

    /// `HcsImportLayer(layer, source, layer_data)`: imports the unpacked layer in `source` (the
    /// legacy layout: `Files/`, `Hives/`, `tombstones.txt`) into the new layer folder `layer`.
    /// `layer_data` lists the parent layers, topmost first.
    fn import_layer(&self, layer: &Path, source: &Path, layer_data: &str) -> Result<()>;

    /// Prepares the base layer folder `layer` (its `Files/` already written) as a base OS
    /// layer, creating the VHDX `vhd` it needs: `options` is `OsLayerOptions` with `Type`
    /// `Container` (process isolation; the VHDX is formatted with `HcsFormatWritableLayerVhd`
    /// and closed, then `HcsSetupBaseOSLayer(layer, NULL, options)`) or `Vm` (the utility VM's
    /// folder; the VHDX stays attached during `HcsSetupBaseOSLayer(layer, vhd, options)`).
    /// hcsshim `computestorage/helpers.go` `SetupContainerBaseLayer` / `SetupUtilityVMBaseLayer`.
    fn setup_base_os_layer(&self, layer: &Path, vhd: &Path, options: &str) -> Result<()>;

    /// `HcsInitializeWritableLayer(writable, layer_data, options)`: makes `writable` the
    /// container's scratch layer over the layers in `layer_data`.
    fn initialize_writable_layer(
        &self,
        writable: &Path,
        layer_data: &str,
        options: &str,
    ) -> Result<()>;

    /// Creates a formatted VHDX of `size_gb` at `vhd` that VMs may open (utility VM scratch and
    /// the Hyper-V container scratch).
    fn create_scratch_vhd(&self, vhd: &Path, size_gb: u64) -> Result<()>;

    /// Creates the sandbox VHDX `vhd` of `size_gb`, formats it as a writable layer, attaches it
    /// without a drive letter and returns its volume path `\\?\Volume{GUID}\`
    /// (`HcsGetLayerVhdMountPath`). It stays attached until [`HcsApi::detach_sandbox_vhd`] (or
    /// until this process dies).
    fn mount_sandbox_vhd(&self, vhd: &Path, size_gb: u64) -> Result<String>;

    /// Detaches the sandbox VHDX `vhd` mounted by [`HcsApi::mount_sandbox_vhd`] and deletes it.
    fn detach_sandbox_vhd(&self, vhd: &Path) -> Result<()>;

    /// Copies the prepared `template` (`<layer>\UtilityVM\SystemTemplate.vhdx`) to `scratch` and
    /// grants the VM `vm_id` access to the copy (`HcsGrantVmAccess`): the utility VM's scratch.
    fn create_uvm_scratch(&self, template: &Path, scratch: &Path, vm_id: &str) -> Result<()>;

    /// `HcsAttachLayerStorageFilter(writable, layer_data)`: mounts the union of the layers at
    /// `writable` (process isolation: the sandbox volume).
    fn attach_layer_storage_filter(&self, writable: &Path, layer_data: &str) -> Result<()>;

    /// `HcsDetachLayerStorageFilter(writable)`.
    fn detach_layer_storage_filter(&self, writable: &Path) -> Result<()>;

    /// `HcsDestroyLayer(layer)`: deletes a layer folder (read-only or writable) and what HCS
    /// attached to it.
    fn destroy_layer(&self, layer: &Path) -> Result<()>;

    /// `HcsCreateComputeSystem(id, document)` and wait for the operation.
    fn create_compute_system(&self, id: &str, document: &str) -> Result<SystemHandle>;

    /// `HcsStartComputeSystem` and wait for the operation.
    fn start_compute_system(&self, system: SystemHandle) -> Result<()>;

    /// `HcsModifyComputeSystem(system, request)` and wait for the operation.
    fn modify_compute_system(&self, system: SystemHandle, request: &str) -> Result<()>;

    /// `HcsTerminateComputeSystem` and wait for the operation.
    fn terminate_compute_system(&self, system: SystemHandle) -> Result<()>;

    /// `HcsCloseComputeSystem`: releases the handle (cannot fail). With
    /// `ShouldTerminateOnLastHandleClosed`, the system dies with its last handle.
    fn close_compute_system(&self, system: SystemHandle);

    /// `HcsCreateProcess(system, parameters)` and wait for the operation; stdout and stderr
    /// start being collected.
    fn create_process(&self, system: SystemHandle, parameters: &str) -> Result<ProcessHandle>;

    /// `HcsWaitForProcessExit` for at most `timeout`: `Ok(None)` when it is still running
    /// then, else its exit code and output.
    fn wait_for_process_exit(
        &self,
        process: ProcessHandle,
        timeout: Duration,
    ) -> Result<Option<ProcessExit>>;

    /// `HcsGetProcessProperties`: `Ok(None)` while the process runs, else its exit code and
    /// output (the fallback for hosts without `HcsWaitForProcessExit`).
    fn get_process_exit(&self, process: ProcessHandle) -> Result<Option<ProcessExit>>;

    /// `HcsCloseProcess` (cannot fail).
    fn close_process(&self, process: ProcessHandle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_hcs_forms_have_one_name() {
        assert_eq!(name(0xc037_0101), Some("HCS_E_IMAGE_MISMATCH"));
        assert_eq!(name(0x8037_0101), Some("HCS_E_IMAGE_MISMATCH"));
        assert_eq!(name(0x8037_0107), Some("HCS_E_TERMINATED"));
        assert_eq!(name(0x8007_0490), Some("ERROR_NOT_FOUND"));
        assert_eq!(name(0x1234_5678), None);
    }

    #[test]
    fn classify_blames_only_known_image_faults() {
        use hresult::*;
        assert_eq!(
            classify(Op::CreateComputeSystem, STATUS_IMAGE_MISMATCH),
            Fault::Incompatible
        );
        assert_eq!(
            classify(Op::StartComputeSystem, HCS_E_IMAGE_MISMATCH),
            Fault::Incompatible
        );
        assert_eq!(
            classify(Op::StartComputeSystem, HCS_E_UNEXPECTED_EXIT),
            Fault::Image
        );
        assert_eq!(
            classify(Op::CreateComputeSystem, HCS_E_UNEXPECTED_EXIT),
            Fault::Infrastructure
        );
        assert_eq!(classify(Op::CreateProcess, E_FILE_NOT_FOUND), Fault::Image);
        assert_eq!(
            classify(Op::ImportLayer, HCS_E_INVALID_LAYER),
            Fault::Infrastructure
        );
        assert_eq!(
            classify(Op::ImportLayer, E_INVALID_DATA),
            Fault::Infrastructure
        );
        assert_eq!(
            classify(Op::CreateComputeSystem, HCS_E_HYPERV_NOT_INSTALLED),
            Fault::Infrastructure
        );
        assert_eq!(
            classify(Op::StartComputeSystem, HCS_E_CONNECTION_TIMEOUT),
            Fault::Infrastructure
        );
        assert_eq!(
            classify(Op::CreateComputeSystem, HCS_E_TERMINATED),
            Fault::Infrastructure
        );
    }

    #[test]
    fn error_message_names_the_call_and_the_hresult() {
        let e = HcsError::new(
            Op::CreateComputeSystem,
            0xc037_0101,
            "The operating system of the container does not match",
        );
        assert_eq!(
            e.to_string(),
            "HcsCreateComputeSystem: HCS error 0xc0370101 (HCS_E_IMAGE_MISMATCH): \
             The operating system of the container does not match"
        );
        assert!(is_timeout(hresult::E_WAIT_TIMEOUT));
        assert_eq!(
            result_message(
                r#"{"Error":-2143878911,"ErrorMessage":"The operating system does not match. ","ErrorEvents":[{"Message":"build 17763 on 20348"}]}"#
            )
            .as_deref(),
            Some("The operating system does not match. [build 17763 on 20348]")
        );
        assert_eq!(result_message("{}"), None);
        assert_eq!(result_message(""), None);
        assert_eq!(
            exit_code_from(r#"{"ProcessId":4,"Exited":true,"ExitCode":3221225477}"#),
            Some(3_221_225_477)
        );
        assert_eq!(exit_code_from(r#"{"Exited":false}"#), None);
        assert_eq!(
            process_status(r#"{"Exited":true,"ExitCode":1,"LastWaitResult":-2147023673}"#),
            Some(ProcessStatus {
                exited: true,
                exit_code: Some(1),
                last_wait_result: -2_147_023_673
            })
        );
        assert!(is_already_gone(0xc037_0110));
    }
}
