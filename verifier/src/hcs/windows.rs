//! `RealHcs`: the [`HcsApi`] over the documented HCS DLLs, computecore.dll (compute systems,
//! processes, operations) and computestorage.dll (layers), through the `windows` crate 0.61
//! (`Win32_System_HostComputeSystem`), plus virtdisk.dll for the VHDX files and the registry
//! for the host's version. Windows only, and the only module with `unsafe`.
//!
//! Plumbing only: every decision is in the cross-platform runner. Each asynchronous HCS call
//! gets its own operation (`HcsCreateOperation` without callback) and is waited with
//! `HcsWaitForOperationResult`; the result document's `ErrorMessage` becomes the error message.
//! Strings HCS returns are freed with `LocalFree`.
//!
//! Not verified by running: this machine kind has no Windows host. It is type-checked for
//! `x86_64-pc-windows-gnu` (tests/windows-check.sh); functional tests need a Windows Server
//! host with the Containers feature (and Hyper-V for Hyper-V isolation). See docs/HCS.md.
#![expect(
    unsafe_code,
    reason = "FFI to computecore.dll, computestorage.dll, virtdisk.dll and advapi32.dll"
)]

use super::api::{
    self, hresult, HcsApi, HcsError, Op, ProcessExit, ProcessHandle, Result, SystemHandle,
};
use berth_oci::platform::Platform;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use windows::core::{HSTRING, PCWSTR, PWSTR};
use windows::Win32::Foundation::{CloseHandle, LocalFree, HANDLE, HLOCAL, LUID};
use windows::Win32::Security::{
    AdjustTokenPrivileges, LookupPrivilegeValueW, LUID_AND_ATTRIBUTES, SE_PRIVILEGE_ENABLED,
    TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows::Win32::Storage::FileSystem::ReadFile;
use windows::Win32::Storage::Vhd::{
    AttachVirtualDisk, CreateVirtualDisk, DetachVirtualDisk,
    ATTACH_VIRTUAL_DISK_FLAG_NO_DRIVE_LETTER, ATTACH_VIRTUAL_DISK_PARAMETERS,
    ATTACH_VIRTUAL_DISK_VERSION_2, CREATE_VIRTUAL_DISK_FLAG_NONE, CREATE_VIRTUAL_DISK_PARAMETERS,
    CREATE_VIRTUAL_DISK_PARAMETERS_0_1, CREATE_VIRTUAL_DISK_VERSION_2,
    DETACH_VIRTUAL_DISK_FLAG_NONE, VIRTUAL_DISK_ACCESS_NONE, VIRTUAL_STORAGE_TYPE,
    VIRTUAL_STORAGE_TYPE_DEVICE_VHDX, VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
};
use windows::Win32::System::HostComputeSystem::{
    HcsAttachLayerStorageFilter, HcsCloseComputeSystem, HcsCloseOperation, HcsCloseProcess,
    HcsCreateComputeSystem, HcsCreateOperation, HcsCreateProcess, HcsDestroyLayer,
    HcsDetachLayerStorageFilter, HcsFormatWritableLayerVhd, HcsGetProcessProperties,
    HcsGrantVmGroupAccess, HcsImportLayer, HcsInitializeWritableLayer, HcsSetupBaseOSLayer,
    HcsStartComputeSystem, HcsTerminateComputeSystem, HcsWaitForOperationResult,
    HcsWaitForOperationResultAndProcessInfo, HcsWaitForProcessExit, HCS_OPERATION, HCS_PROCESS,
    HCS_PROCESS_INFORMATION, HCS_SYSTEM,
};
use windows::Win32::System::Registry::{
    RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RRF_RT_REG_SZ,
};
use windows::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken, INFINITE};

/// Output kept per process (the runner keeps the last 8 KiB of it).
const MAX_OUTPUT: usize = 64 * 1024;
/// Size of the base-layer VHDX files (`blank-base.vhdx`, `SystemTemplateBase.vhdx`), in GB.
const BASE_VHD_SIZE_GB: u64 = 20;
/// VHDX block size (hcsshim `defaultVHDXBlockSizeInMB`).
const VHDX_BLOCK_BYTES: u32 = 1 << 20;
/// How long to wait for the output pipes to drain after the process exited.
const DRAIN: Duration = Duration::from_secs(5);

fn wide(p: &Path) -> HSTRING {
    HSTRING::from(p.as_os_str())
}

fn hs(s: &str) -> HSTRING {
    HSTRING::from(s)
}

fn hr_of(e: &windows::core::Error) -> u32 {
    e.code().0 as u32
}

/// An error from a failed call, with the result document's message when there is one.
fn err(op: Op, e: &windows::core::Error, doc: &str) -> HcsError {
    let message = api::result_message(doc).unwrap_or_else(|| e.message());
    HcsError::new(op, hr_of(e), message)
}

/// Copies a string HCS allocated and frees it.
fn take(p: PWSTR) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: HCS returns a NUL-terminated UTF-16 string allocated with LocalAlloc; it is read
    // once here and freed right after, never touched again.
    let s = unsafe { p.to_string() }.unwrap_or_default();
    // SAFETY: as above; LocalFree takes ownership of that allocation.
    let _ = unsafe { LocalFree(Some(HLOCAL(p.0.cast()))) };
    s
}

/// An HCS operation, closed on drop.
struct Operation(HCS_OPERATION);

impl Operation {
    fn new(op: Op) -> Result<Self> {
        // SAFETY: no context and no callback: the operation is waited synchronously.
        let h = unsafe { HcsCreateOperation(None, None) };
        if h.is_invalid() {
            return Err(HcsError::new(
                op,
                hresult::E_FAIL,
                "HcsCreateOperation returned no handle",
            ));
        }
        Ok(Self(h))
    }

    /// Waits for the operation's result; its document on success.
    fn wait(&self, op: Op) -> Result<String> {
        let mut doc = PWSTR::null();
        // SAFETY: self.0 is a live operation; `doc` receives a LocalAlloc'd string or null.
        let r =
            unsafe { HcsWaitForOperationResult(self.0, INFINITE, Some(&mut doc as *mut PWSTR)) };
        let text = take(doc);
        r.map(|()| text.clone()).map_err(|e| err(op, &e, &text))
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        // SAFETY: the handle came from HcsCreateOperation and is closed exactly once.
        unsafe { HcsCloseOperation(self.0) }
    }
}

/// A raw handle as a number, so the maps are `Send`.
type Raw = usize;

fn system(raw: Raw) -> HCS_SYSTEM {
    HCS_SYSTEM(raw as *mut c_void)
}

fn process(raw: Raw) -> HCS_PROCESS {
    HCS_PROCESS(raw as *mut c_void)
}

struct ProcessEntry {
    raw: Raw,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

/// The real Host Compute Service. Handles are kept in maps keyed by the opaque numbers the
/// runner sees.
pub struct RealHcs {
    systems: Mutex<HashMap<u64, Raw>>,
    processes: Mutex<HashMap<u64, ProcessEntry>>,
    next: AtomicU64,
}

impl std::fmt::Debug for RealHcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealHcs").finish_non_exhaustive()
    }
}

impl Default for RealHcs {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RealHcs {
    /// Connects nothing yet (HCS calls open what they need); enables the backup and restore
    /// privileges that layer import needs (hcsshim runs `ImportLayer` under
    /// `SeBackupPrivilege`/`SeRestorePrivilege`). A failure there is logged: the import calls
    /// will then fail with access denied, an infrastructure error.
    pub fn new() -> Self {
        for p in ["SeBackupPrivilege", "SeRestorePrivilege"] {
            if let Err(e) = enable_privilege(p) {
                tracing::warn!(privilege = p, error = %e, "cannot enable privilege");
            }
        }
        Self {
            systems: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn system(&self, op: Op, h: SystemHandle) -> Result<HCS_SYSTEM> {
        lock(&self.systems)
            .get(&h.0)
            .map(|r| system(*r))
            .ok_or_else(|| {
                HcsError::new(
                    op,
                    hresult::E_INVALIDARG,
                    format!("unknown system #{}", h.0),
                )
            })
    }

    /// Runs an asynchronous system call with its own operation and waits for it.
    fn system_op(
        &self,
        op: Op,
        h: SystemHandle,
        f: impl FnOnce(HCS_SYSTEM, HCS_OPERATION) -> windows::core::Result<()>,
    ) -> Result<()> {
        let sys = self.system(op, h)?;
        let operation = Operation::new(op)?;
        f(sys, operation.0).map_err(|e| err(op, &e, ""))?;
        operation.wait(op).map(|_| ())
    }
}

fn enable_privilege(name: &str) -> windows::core::Result<()> {
    let mut token = HANDLE(std::ptr::null_mut());
    // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a real handle that is
    // closed below.
    unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
            &mut token,
        )?;
    }
    let mut luid = LUID::default();
    // SAFETY: `hs(name)` lives through the call; `luid` is a valid out pointer.
    let r = unsafe { LookupPrivilegeValueW(PCWSTR::null(), &hs(name), &mut luid) }.and_then(|()| {
        let tp = TOKEN_PRIVILEGES {
            PrivilegeCount: 1,
            Privileges: [LUID_AND_ATTRIBUTES {
                Luid: luid,
                Attributes: SE_PRIVILEGE_ENABLED,
            }],
        };
        // SAFETY: `token` is open with TOKEN_ADJUST_PRIVILEGES; `tp` outlives the call.
        unsafe { AdjustTokenPrivileges(token, false, Some(&tp), 0, None, None) }
    });
    // SAFETY: closes the token opened above, once.
    let _ = unsafe { CloseHandle(token) };
    r
}

/// Creates a dynamic VHDX of `size_gb` at `path`; returns its open handle.
fn create_vhdx(op: Op, path: &Path, size_gb: u64) -> Result<HANDLE> {
    let storage = VIRTUAL_STORAGE_TYPE {
        DeviceId: VIRTUAL_STORAGE_TYPE_DEVICE_VHDX,
        VendorId: VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
    };
    let mut params = CREATE_VIRTUAL_DISK_PARAMETERS {
        Version: CREATE_VIRTUAL_DISK_VERSION_2,
        ..Default::default()
    };
    params.Anonymous.Version2 = CREATE_VIRTUAL_DISK_PARAMETERS_0_1 {
        MaximumSize: size_gb << 30,
        BlockSizeInBytes: VHDX_BLOCK_BYTES,
        ..Default::default()
    };
    let mut handle = HANDLE(std::ptr::null_mut());
    // SAFETY: every pointer refers to a live local; the path string outlives the call.
    let rc = unsafe {
        CreateVirtualDisk(
            &storage,
            &wide(path),
            VIRTUAL_DISK_ACCESS_NONE,
            None,
            CREATE_VIRTUAL_DISK_FLAG_NONE,
            0,
            &params,
            None,
            &mut handle,
        )
    };
    if rc.0 != 0 {
        return Err(HcsError::new(
            op,
            rc.to_hresult().0 as u32,
            format!("CreateVirtualDisk {}", path.display()),
        ));
    }
    Ok(handle)
}

fn close(handle: HANDLE) {
    // SAFETY: closes a handle this module opened, once.
    let _ = unsafe { CloseHandle(handle) };
}

/// Reads a pipe until it closes, keeping the last [`MAX_OUTPUT`] bytes; closes it at the end.
fn spawn_reader(raw: Raw, out: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let handle = HANDLE(raw as *mut c_void);
        let mut buf = vec![0u8; 8192];
        loop {
            let mut n = 0u32;
            // SAFETY: `handle` is the pipe HCS returned for this process; this thread owns it
            // until it closes it below. `buf` and `n` outlive the call.
            let r = unsafe { ReadFile(handle, Some(&mut buf), Some(&mut n as *mut u32), None) };
            if r.is_err() || n == 0 {
                break;
            }
            let mut o = lock(&out);
            o.extend_from_slice(&buf[..n as usize]);
            if o.len() > MAX_OUTPUT {
                let cut = o.len() - MAX_OUTPUT;
                o.drain(..cut);
            }
        }
        close(handle);
    })
}

impl HcsApi for RealHcs {
    fn import_layer(&self, layer: &Path, source: &Path, layer_data: &str) -> Result<()> {
        // SAFETY: the three strings outlive the synchronous call.
        unsafe { HcsImportLayer(&wide(layer), &wide(source), &hs(layer_data)) }
            .map_err(|e| err(Op::ImportLayer, &e, ""))
    }

    fn setup_base_os_layer(&self, layer: &Path, vhd: &Path, options: &str) -> Result<()> {
        let op = Op::SetupBaseOsLayer;
        let kind = serde_json::from_str::<serde_json::Value>(options)
            .ok()
            .and_then(|v| v["Type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let handle = create_vhdx(op, vhd, BASE_VHD_SIZE_GB)?;
        if kind == "Vm" {
            // The utility VM's base VHDX stays attached during the setup
            // (hcsshim `SetupUtilityVMBaseLayer`).
            let params = ATTACH_VIRTUAL_DISK_PARAMETERS {
                Version: ATTACH_VIRTUAL_DISK_VERSION_2,
                ..Default::default()
            };
            // SAFETY: `handle` is the open VHDX; `params` outlives the call.
            let rc = unsafe {
                AttachVirtualDisk(
                    handle,
                    None,
                    ATTACH_VIRTUAL_DISK_FLAG_NO_DRIVE_LETTER,
                    0,
                    Some(&params),
                    None,
                )
            };
            if rc.0 != 0 {
                close(handle);
                return Err(HcsError::new(
                    op,
                    rc.to_hresult().0 as u32,
                    "AttachVirtualDisk",
                ));
            }
            // SAFETY: strings outlive the call; `handle` is the attached VHDX.
            let r = unsafe { HcsSetupBaseOSLayer(&wide(layer), handle, &hs(options)) };
            // SAFETY: detaches the disk attached above.
            let _ = unsafe { DetachVirtualDisk(handle, DETACH_VIRTUAL_DISK_FLAG_NONE, 0) };
            close(handle);
            return r.map_err(|e| err(op, &e, ""));
        }
        // Container: format, close, then set up with a NULL handle
        // (hcsshim `SetupContainerBaseLayer`).
        // SAFETY: `handle` is the VHDX just created.
        let formatted = unsafe { HcsFormatWritableLayerVhd(handle) };
        close(handle);
        formatted.map_err(|e| err(op, &e, ""))?;
        // SAFETY: strings outlive the call; a NULL VHD handle is what a container layer takes.
        unsafe { HcsSetupBaseOSLayer(&wide(layer), HANDLE(std::ptr::null_mut()), &hs(options)) }
            .map_err(|e| err(op, &e, ""))?;
        // SAFETY: the path string outlives the call.
        unsafe { HcsGrantVmGroupAccess(&wide(vhd)) }.map_err(|e| err(op, &e, ""))
    }

    fn initialize_writable_layer(
        &self,
        writable: &Path,
        layer_data: &str,
        options: &str,
    ) -> Result<()> {
        let options = if options.is_empty() {
            None
        } else {
            Some(hs(options))
        };
        let opts = options
            .as_ref()
            .map_or(PCWSTR::null(), |h| PCWSTR(h.as_ptr()));
        // SAFETY: the strings (and `options`, which `opts` points into) outlive the call.
        unsafe { HcsInitializeWritableLayer(&wide(writable), &hs(layer_data), opts) }
            .map_err(|e| err(Op::InitializeWritableLayer, &e, ""))
    }

    fn create_scratch_vhd(&self, vhd: &Path, size_gb: u64) -> Result<()> {
        let op = Op::CreateScratchVhd;
        let handle = create_vhdx(op, vhd, size_gb)?;
        // SAFETY: `handle` is the VHDX just created.
        let formatted = unsafe { HcsFormatWritableLayerVhd(handle) };
        close(handle);
        formatted.map_err(|e| err(op, &e, ""))?;
        // SAFETY: the path string outlives the call.
        unsafe { HcsGrantVmGroupAccess(&wide(vhd)) }.map_err(|e| err(op, &e, ""))
    }

    fn attach_layer_storage_filter(&self, writable: &Path, layer_data: &str) -> Result<()> {
        // SAFETY: the strings outlive the synchronous call.
        unsafe { HcsAttachLayerStorageFilter(&wide(writable), &hs(layer_data)) }
            .map_err(|e| err(Op::AttachLayerStorageFilter, &e, ""))
    }

    fn detach_layer_storage_filter(&self, writable: &Path) -> Result<()> {
        // SAFETY: the string outlives the synchronous call.
        unsafe { HcsDetachLayerStorageFilter(&wide(writable)) }
            .map_err(|e| err(Op::DetachLayerStorageFilter, &e, ""))
    }

    fn destroy_layer(&self, layer: &Path) -> Result<()> {
        // SAFETY: the string outlives the synchronous call.
        unsafe { HcsDestroyLayer(&wide(layer)) }.map_err(|e| err(Op::DestroyLayer, &e, ""))
    }

    fn create_compute_system(&self, id: &str, document: &str) -> Result<SystemHandle> {
        let op = Op::CreateComputeSystem;
        let operation = Operation::new(op)?;
        // SAFETY: the strings outlive the call; the operation is live; no security descriptor.
        let sys = unsafe { HcsCreateComputeSystem(&hs(id), &hs(document), operation.0, None) }
            .map_err(|e| err(op, &e, ""))?;
        if let Err(e) = operation.wait(op) {
            // SAFETY: closes the handle just returned, once.
            unsafe { HcsCloseComputeSystem(sys) };
            return Err(e);
        }
        let h = self.id();
        lock(&self.systems).insert(h, sys.0 as Raw);
        Ok(SystemHandle(h))
    }

    fn start_compute_system(&self, h: SystemHandle) -> Result<()> {
        // SAFETY: `sys` is open (looked up in the map), the operation is live.
        self.system_op(Op::StartComputeSystem, h, |sys, o| unsafe {
            HcsStartComputeSystem(sys, o, PCWSTR::null())
        })
    }

    fn terminate_compute_system(&self, h: SystemHandle) -> Result<()> {
        // SAFETY: `sys` is open (looked up in the map), the operation is live.
        self.system_op(Op::TerminateComputeSystem, h, |sys, o| unsafe {
            HcsTerminateComputeSystem(sys, o, PCWSTR::null())
        })
    }

    fn close_compute_system(&self, h: SystemHandle) {
        if let Some(raw) = lock(&self.systems).remove(&h.0) {
            // SAFETY: removed from the map, so it is closed exactly once.
            unsafe { HcsCloseComputeSystem(system(raw)) };
        }
    }

    fn create_process(&self, h: SystemHandle, parameters: &str) -> Result<ProcessHandle> {
        let op = Op::CreateProcess;
        let sys = self.system(op, h)?;
        let operation = Operation::new(op)?;
        // SAFETY: `sys` is open, the string outlives the call, the operation is live.
        let proc_handle = unsafe { HcsCreateProcess(sys, &hs(parameters), operation.0, None) }
            .map_err(|e| err(op, &e, ""))?;
        let mut info = HCS_PROCESS_INFORMATION::default();
        let mut doc = PWSTR::null();
        // SAFETY: `info` and `doc` are valid out pointers for the duration of the call.
        let r = unsafe {
            HcsWaitForOperationResultAndProcessInfo(
                operation.0,
                INFINITE,
                Some(&mut info as *mut HCS_PROCESS_INFORMATION),
                Some(&mut doc as *mut PWSTR),
            )
        };
        let text = take(doc);
        if let Err(e) = r {
            // SAFETY: closes the process handle just returned, once.
            unsafe { HcsCloseProcess(proc_handle) };
            return Err(err(op, &e, &text));
        }
        let output = Arc::new(Mutex::new(Vec::new()));
        let readers = [info.StdOutput, info.StdError]
            .into_iter()
            .filter(|p| !p.is_invalid())
            .map(|p| spawn_reader(p.0 as Raw, Arc::clone(&output)))
            .collect();
        if !info.StdInput.is_invalid() {
            close(info.StdInput);
        }
        let id = self.id();
        lock(&self.processes).insert(
            id,
            ProcessEntry {
                raw: proc_handle.0 as Raw,
                output,
                readers,
            },
        );
        Ok(ProcessHandle(id))
    }

    fn wait_for_process_exit(
        &self,
        p: ProcessHandle,
        timeout: Duration,
    ) -> Result<Option<ProcessExit>> {
        let op = Op::WaitForProcessExit;
        let (raw, output) = {
            let procs = lock(&self.processes);
            let e = procs.get(&p.0).ok_or_else(|| {
                HcsError::new(
                    op,
                    hresult::E_INVALIDARG,
                    format!("unknown process #{}", p.0),
                )
            })?;
            (e.raw, Arc::clone(&e.output))
        };
        let ms = u32::try_from(timeout.as_millis())
            .unwrap_or(INFINITE - 1)
            .min(INFINITE - 1);
        let mut doc = PWSTR::null();
        // SAFETY: the process handle is open (closed only by close_process); `doc` is valid.
        let r = unsafe { HcsWaitForProcessExit(process(raw), ms, Some(&mut doc as *mut PWSTR)) };
        let text = take(doc);
        match r {
            Err(e) if api::is_timeout(hr_of(&e)) => return Ok(None),
            Err(e) => return Err(err(op, &e, &text)),
            Ok(()) => {}
        }
        let exit_code = match api::exit_code_from(&text) {
            Some(c) => c,
            None => {
                let operation = Operation::new(op)?;
                // SAFETY: the process handle is open; the operation is live; no query.
                unsafe { HcsGetProcessProperties(process(raw), operation.0, PCWSTR::null()) }
                    .map_err(|e| err(op, &e, ""))?;
                let props = operation.wait(op)?;
                api::exit_code_from(&props).ok_or_else(|| {
                    HcsError::new(op, hresult::E_FAIL, format!("no ExitCode in {props}"))
                })?
            }
        };
        // Let the pipes drain (they close when the process and its children are gone).
        let deadline = Instant::now() + DRAIN;
        loop {
            let done = lock(&self.processes)
                .get(&p.0)
                .is_none_or(|e| e.readers.iter().all(JoinHandle::is_finished));
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = lock(&output).clone();
        Ok(Some(ProcessExit { exit_code, output }))
    }

    fn close_process(&self, p: ProcessHandle) {
        if let Some(e) = lock(&self.processes).remove(&p.0) {
            // SAFETY: removed from the map, so it is closed exactly once. Reader threads still
            // blocked end when the system is terminated and the pipes break.
            unsafe { HcsCloseProcess(process(e.raw)) };
        }
    }
}

// === Host version ===

const CURRENT_VERSION: &str = r"SOFTWARE\Microsoft\Windows NT\CurrentVersion";

fn reg_dword(name: &str) -> Option<u32> {
    let mut value = 0u32;
    let mut size = std::mem::size_of::<u32>() as u32;
    // SAFETY: `value` and `size` are valid for writes of 4 bytes; the strings outlive the call.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            &hs(CURRENT_VERSION),
            &hs(name),
            RRF_RT_REG_DWORD,
            None,
            Some(&mut value as *mut u32 as *mut c_void),
            Some(&mut size as *mut u32),
        )
    };
    (rc.0 == 0).then_some(value)
}

fn reg_string(name: &str) -> Option<String> {
    let mut buf = [0u16; 128];
    let mut size = std::mem::size_of_val(&buf) as u32;
    // SAFETY: `buf` holds `size` bytes; RegGetValueW NUL-terminates REG_SZ values.
    let rc = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            &hs(CURRENT_VERSION),
            &hs(name),
            RRF_RT_REG_SZ,
            None,
            Some(buf.as_mut_ptr() as *mut c_void),
            Some(&mut size as *mut u32),
        )
    };
    if rc.0 != 0 {
        return None;
    }
    let len = buf.iter().position(|c| *c == 0).unwrap_or(buf.len());
    Some(String::from_utf16_lossy(&buf[..len]))
}

/// This host's platform, `os.version` = `major.minor.build.UBR` from the registry.
pub fn host_platform() -> Platform {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    let mut p = Platform::new("windows", arch);
    let major = reg_dword("CurrentMajorVersionNumber");
    let minor = reg_dword("CurrentMinorVersionNumber");
    let build = reg_string("CurrentBuildNumber").and_then(|b| b.trim().parse::<u32>().ok());
    if let (Some(major), Some(minor), Some(build)) = (major, minor, build) {
        p.os_version = Some(match reg_dword("UBR") {
            Some(ubr) => format!("{major}.{minor}.{build}.{ubr}"),
            None => format!("{major}.{minor}.{build}"),
        });
    }
    p
}
