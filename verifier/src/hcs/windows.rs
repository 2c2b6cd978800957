//! `RealHcs`: the [`HcsApi`] over the documented HCS DLLs, computecore.dll (compute systems,
//! processes, operations) and computestorage.dll (layers), plus virtdisk.dll for the VHDX files
//! and the registry for the host's version. Windows only, and the only module with `unsafe`.
//!
//! Plumbing only: every decision is in the cross-platform runner.
//!
//! * **Every HCS export is resolved at run time** (`LoadLibraryExW` from System32 +
//!   `GetProcAddress`, once per function, like hcsshim's `//sys …?` lazy procs in
//!   `internal/computecore/computecore.go` and `computestorage/storage.go`). The executable
//!   therefore imports nothing from computecore.dll or computestorage.dll and starts on every
//!   build: a function the host lacks (`HcsWaitForProcessExit` before Windows Server 2022) is
//!   reported by [`HcsApi::has`] and the runner falls back; calling it anyway is
//!   `ERROR_PROC_NOT_FOUND`, an infrastructure error.
//! * Each asynchronous call gets its own operation (`HcsCreateOperation` without callback) and
//!   is waited with `HcsWaitForOperationResult` **bounded by a deadline**; when it passes, the
//!   operation is cancelled (`HcsCancelOperation`) and waited for again, never abandoned while
//!   HCS still uses its buffers (hcsshim `computecore.go` `execute`). The result document's
//!   message becomes the error message, also when the call fails synchronously
//!   (`HcsGetOperationResult`).
//! * `HcsFormatWritableLayerVhd` takes a `CreateFile` handle of the VHDX on Windows Server 2019
//!   and a virtdisk handle later (hcsshim `computestorage/format.go`).
//! * Output pipes are read with an `OVERLAPPED` and `GetOverlappedResult`, which works whether
//!   HCS opened them for overlapped I/O or not.
//!
//! Not verified by running: this machine kind has no Windows host. It is type-checked for
//! `x86_64-pc-windows-gnu` (tests/windows-check.sh); functional tests need a Windows Server
//! host with the Containers feature (and Hyper-V for Hyper-V isolation). See docs/HCS.md.
#![expect(
    unsafe_code,
    reason = "FFI to computecore.dll, computestorage.dll, virtdisk.dll, kernel32.dll and advapi32.dll"
)]

use super::api::{
    self, hresult, HcsApi, HcsError, Op, ProcessExit, ProcessHandle, Result, SystemHandle,
};
use berth_oci::platform::Platform;
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use windows::core::{HRESULT, HSTRING, PCSTR, PCWSTR, PWSTR};
use windows::Win32::Foundation::{
    CloseHandle, GetLastError, LocalFree, ERROR_IO_PENDING, ERROR_NOT_ALL_ASSIGNED, HANDLE, HLOCAL,
    HMODULE, LUID,
};
use windows::Win32::Security::{
    AdjustTokenPrivileges, LookupPrivilegeValueW, LUID_AND_ATTRIBUTES, SECURITY_DESCRIPTOR,
    SE_PRIVILEGE_ENABLED, TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows::Win32::Storage::FileSystem::{
    CreateFileW, ReadFile, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows::Win32::Storage::Vhd::{
    AttachVirtualDisk, CreateVirtualDisk, DetachVirtualDisk, OpenVirtualDisk,
    ATTACH_VIRTUAL_DISK_FLAG_NONE, ATTACH_VIRTUAL_DISK_FLAG_NO_DRIVE_LETTER,
    ATTACH_VIRTUAL_DISK_PARAMETERS, ATTACH_VIRTUAL_DISK_VERSION_2, CREATE_VIRTUAL_DISK_FLAG_NONE,
    CREATE_VIRTUAL_DISK_PARAMETERS, CREATE_VIRTUAL_DISK_PARAMETERS_0_1,
    CREATE_VIRTUAL_DISK_VERSION_2, DETACH_VIRTUAL_DISK_FLAG_NONE, OPEN_VIRTUAL_DISK_FLAG_NONE,
    OPEN_VIRTUAL_DISK_PARAMETERS, OPEN_VIRTUAL_DISK_VERSION_2, VIRTUAL_DISK_ACCESS_NONE,
    VIRTUAL_STORAGE_TYPE, VIRTUAL_STORAGE_TYPE_DEVICE_VHDX, VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
};
use windows::Win32::System::HostComputeSystem::{
    HCS_OPERATION, HCS_PROCESS, HCS_PROCESS_INFORMATION, HCS_SYSTEM,
};
use windows::Win32::System::LibraryLoader::{
    GetProcAddress, LoadLibraryExW, LOAD_LIBRARY_SEARCH_SYSTEM32,
};
use windows::Win32::System::Registry::{
    RegGetValueW, HKEY_LOCAL_MACHINE, RRF_RT_REG_DWORD, RRF_RT_REG_SZ,
};
use windows::Win32::System::Threading::{CreateEventW, GetCurrentProcess, OpenProcessToken};
use windows::Win32::System::IO::{GetOverlappedResult, OVERLAPPED};

/// Output kept per process (the runner keeps the last 8 KiB of it).
const MAX_OUTPUT: usize = 64 * 1024;
/// Size of the base-layer VHDX files (`blank-base.vhdx`, `SystemTemplateBase.vhdx`), in GB.
const BASE_VHD_SIZE_GB: u64 = 20;
/// VHDX block size (hcsshim `defaultVHDXBlockSizeInMB`).
const VHDX_BLOCK_BYTES: u32 = 1 << 20;
/// How long to wait for the output pipes to drain after the process exited.
const DRAIN: Duration = Duration::from_secs(5);
/// Default bound of every operation wait (hcsshim's `timeout.SystemCreate` and friends are 4
/// minutes); below the runner's 10-minute watchdog, so HCS is cancelled before it is abandoned.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a cancelled operation gets to finish before its handle is given up.
const CANCEL_GRACE: Duration = Duration::from_secs(30);
/// The last build with the Windows Server 2019 `HcsFormatWritableLayerVhd` (file handle).
const LAST_RS5_BUILD: u32 = 17763;
/// `GENERIC_READ | GENERIC_WRITE`.
const GENERIC_READ_WRITE: u32 = 0x8000_0000 | 0x4000_0000;

// === Run-time resolution of the HCS exports ===

fn module(dll: &'static str) -> Option<HMODULE> {
    static MODULES: OnceLock<Mutex<HashMap<&'static str, usize>>> = OnceLock::new();
    let m = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut m = lock(m);
    let raw = *m.entry(dll).or_insert_with(|| {
        // SAFETY: loads a system DLL from System32 only (no search path hijacking); the
        // module stays loaded for the life of the process, so pointers into it stay valid.
        unsafe { LoadLibraryExW(&hs(dll), None, LOAD_LIBRARY_SEARCH_SYSTEM32) }
            .map_or(0, |h| h.0 as usize)
    });
    (raw != 0).then_some(HMODULE(raw as *mut c_void))
}

/// The address of `name` (NUL-terminated) in `dll`, 0 when the DLL or the export is missing.
fn lookup(dll: &'static str, name: &'static str) -> usize {
    let Some(m) = module(dll) else {
        return 0;
    };
    // SAFETY: `m` is a loaded module and `name` is NUL-terminated ASCII.
    unsafe { GetProcAddress(m, PCSTR(name.as_ptr())) }.map_or(0, |f| f as usize)
}

/// Declares `fn <Name>() -> Option<fn pointer>`, resolved once at first use.
macro_rules! hcs_fns {
    ($dll:literal { $( $name:ident ( $($arg:ty),* ) $( -> $ret:ty )? ; )* }) => {
        $(
            #[allow(non_snake_case)]
            fn $name() -> Option<unsafe extern "system" fn($($arg),*) $( -> $ret )?> {
                static ADDR: OnceLock<usize> = OnceLock::new();
                let addr = *ADDR.get_or_init(|| lookup($dll, concat!(stringify!($name), "\0")));
                // SAFETY: `addr` is the export of that name, whose C signature (computecore.h,
                // computestorage.h) is the one declared here.
                (addr != 0).then(|| unsafe {
                    std::mem::transmute::<usize, unsafe extern "system" fn($($arg),*) $( -> $ret )?>(addr)
                })
            }
        )*
    };
}

hcs_fns!("computecore.dll" {
    HcsCreateOperation(*const c_void, *const c_void) -> HCS_OPERATION;
    HcsCloseOperation(HCS_OPERATION);
    HcsWaitForOperationResult(HCS_OPERATION, u32, *mut PWSTR) -> HRESULT;
    HcsWaitForOperationResultAndProcessInfo(HCS_OPERATION, u32, *mut HCS_PROCESS_INFORMATION, *mut PWSTR) -> HRESULT;
    HcsGetOperationResult(HCS_OPERATION, *mut PWSTR) -> HRESULT;
    HcsCancelOperation(HCS_OPERATION) -> HRESULT;
    HcsCreateComputeSystem(PCWSTR, PCWSTR, HCS_OPERATION, *const SECURITY_DESCRIPTOR, *mut HCS_SYSTEM) -> HRESULT;
    HcsStartComputeSystem(HCS_SYSTEM, HCS_OPERATION, PCWSTR) -> HRESULT;
    HcsTerminateComputeSystem(HCS_SYSTEM, HCS_OPERATION, PCWSTR) -> HRESULT;
    HcsModifyComputeSystem(HCS_SYSTEM, HCS_OPERATION, PCWSTR, HANDLE) -> HRESULT;
    HcsCloseComputeSystem(HCS_SYSTEM);
    HcsCreateProcess(HCS_SYSTEM, PCWSTR, HCS_OPERATION, *const SECURITY_DESCRIPTOR, *mut HCS_PROCESS) -> HRESULT;
    HcsGetProcessProperties(HCS_PROCESS, HCS_OPERATION, PCWSTR) -> HRESULT;
    HcsWaitForProcessExit(HCS_PROCESS, u32, *mut PWSTR) -> HRESULT;
    HcsCloseProcess(HCS_PROCESS);
    HcsGrantVmAccess(PCWSTR, PCWSTR) -> HRESULT;
    HcsGrantVmGroupAccess(PCWSTR) -> HRESULT;
});

hcs_fns!("computestorage.dll" {
    HcsImportLayer(PCWSTR, PCWSTR, PCWSTR) -> HRESULT;
    HcsDestroyLayer(PCWSTR) -> HRESULT;
    HcsSetupBaseOSLayer(PCWSTR, HANDLE, PCWSTR) -> HRESULT;
    HcsInitializeWritableLayer(PCWSTR, PCWSTR, PCWSTR) -> HRESULT;
    HcsAttachLayerStorageFilter(PCWSTR, PCWSTR) -> HRESULT;
    HcsDetachLayerStorageFilter(PCWSTR) -> HRESULT;
    HcsFormatWritableLayerVhd(HANDLE) -> HRESULT;
    HcsGetLayerVhdMountPath(HANDLE, *mut PWSTR) -> HRESULT;
});

/// The function, or `ERROR_PROC_NOT_FOUND` naming it.
fn need<F>(op: Op, f: Option<F>, name: &str) -> Result<F> {
    f.ok_or_else(|| {
        HcsError::new(
            op,
            hresult::E_PROC_NOT_FOUND,
            format!("{name} is not exported by this Windows build"),
        )
    })
}

fn wide(p: &Path) -> HSTRING {
    HSTRING::from(p.as_os_str())
}

fn hs(s: &str) -> HSTRING {
    HSTRING::from(s)
}

fn pc(h: &HSTRING) -> PCWSTR {
    PCWSTR(h.as_ptr())
}

fn hr_u32(hr: HRESULT) -> u32 {
    hr.0 as u32
}

/// An error from a failed call, with the result document's message when there is one.
fn err_hr(op: Op, hr: HRESULT, doc: &str) -> HcsError {
    let message = api::result_message(doc).unwrap_or_else(|| hr.message());
    HcsError::new(op, hr_u32(hr), message)
}

fn check(op: Op, hr: HRESULT) -> Result<()> {
    if hr.is_ok() {
        Ok(())
    } else {
        Err(err_hr(op, hr, ""))
    }
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

fn millis(d: Duration) -> u32 {
    // INFINITE (u32::MAX) is never passed.
    u32::try_from(d.as_millis())
        .unwrap_or(u32::MAX - 1)
        .min(u32::MAX - 1)
}

/// An HCS operation, closed on drop.
struct Operation(HCS_OPERATION);

impl Operation {
    fn new(op: Op) -> Result<Self> {
        let create = need(op, HcsCreateOperation(), "HcsCreateOperation")?;
        need(op, HcsCloseOperation(), "HcsCloseOperation")?;
        // SAFETY: no context and no callback: the operation is waited synchronously.
        let h = unsafe { create(std::ptr::null(), std::ptr::null()) };
        if h.is_invalid() {
            return Err(HcsError::new(
                op,
                hresult::E_FAIL,
                "HcsCreateOperation returned no handle",
            ));
        }
        Ok(Self(h))
    }

    /// The result document of an operation whose call failed synchronously (it may hold the
    /// reason), or empty.
    fn result_now(&self) -> String {
        let Some(get) = HcsGetOperationResult() else {
            return String::new();
        };
        let mut doc = PWSTR::null();
        // SAFETY: self.0 is a live operation; `doc` receives a LocalAlloc'd string or null.
        let _ = unsafe { get(self.0, &mut doc) };
        take(doc)
    }

    /// A failed synchronous call, with the operation's result document.
    fn sync_error(&self, op: Op, hr: HRESULT) -> HcsError {
        err_hr(op, hr, &self.result_now())
    }

    /// Waits for the operation's result for at most `limit`; on timeout cancels it and waits
    /// [`CANCEL_GRACE`] for it to finish. Its document on success.
    fn wait(&self, op: Op, limit: Duration) -> Result<String> {
        self.wait_with(op, limit, |ms, doc| {
            let wait = need(op, HcsWaitForOperationResult(), "HcsWaitForOperationResult")?;
            // SAFETY: self.0 is a live operation; `doc` is a valid out pointer.
            Ok(unsafe { wait(self.0, ms, doc) })
        })
    }

    fn wait_with(
        &self,
        op: Op,
        limit: Duration,
        mut f: impl FnMut(u32, *mut PWSTR) -> Result<HRESULT>,
    ) -> Result<String> {
        let mut doc = PWSTR::null();
        let hr = f(millis(limit), &mut doc)?;
        let text = take(doc);
        if hr.is_ok() {
            return Ok(text);
        }
        if !api::is_timeout(hr_u32(hr)) {
            return Err(err_hr(op, hr, &text));
        }
        let cancelled = HcsCancelOperation().is_some_and(|cancel| {
            // SAFETY: self.0 is a live operation.
            unsafe { cancel(self.0) }.is_ok()
        });
        let mut doc = PWSTR::null();
        let hr2 = f(millis(CANCEL_GRACE), &mut doc)?;
        let _ = take(doc);
        let what = if cancelled {
            "cancelled"
        } else {
            "could not be cancelled"
        };
        tracing::warn!(%op, ?limit, cancelled, after = ?hr2, "HCS operation timed out");
        Err(HcsError::new(
            op,
            hresult::HCS_E_OPERATION_TIMEOUT,
            format!(
                "no result within {} s; the operation was {what}",
                limit.as_secs()
            ),
        ))
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(close) = HcsCloseOperation() {
            // SAFETY: the handle came from HcsCreateOperation and is closed exactly once.
            unsafe { close(self.0) }
        }
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
    /// Attached sandbox VHDX files and their virtdisk handles (attached for the handle's
    /// lifetime: a crash detaches them).
    vhds: Mutex<HashMap<PathBuf, Raw>>,
    next: AtomicU64,
    /// Why SeBackup/SeRestore could not be enabled, if so (layer calls then fail early).
    privileges: std::result::Result<(), String>,
    /// The host's build number (0 when unknown).
    build: u32,
    /// Bound of every operation wait.
    operation_timeout: Duration,
}

impl std::fmt::Debug for RealHcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealHcs")
            .field("build", &self.build)
            .finish_non_exhaustive()
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
    /// Enables the backup and restore privileges that layer import needs (hcsshim runs
    /// `ImportLayer` under `SeBackupPrivilege`/`SeRestorePrivilege`). When they cannot be
    /// enabled (also `ERROR_NOT_ALL_ASSIGNED`: the account does not hold them), the layer
    /// calls fail with access denied, an infrastructure error.
    pub fn new() -> Self {
        let mut privileges = Ok(());
        for p in ["SeBackupPrivilege", "SeRestorePrivilege"] {
            if let Err(e) = enable_privilege(p) {
                tracing::warn!(privilege = p, error = %e, "cannot enable privilege");
                privileges = Err(format!("{p}: {e}"));
            }
        }
        let build = reg_string("CurrentBuildNumber")
            .and_then(|b| b.trim().parse::<u32>().ok())
            .unwrap_or(0);
        Self {
            systems: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            vhds: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            privileges,
            build,
            operation_timeout: OPERATION_TIMEOUT,
        }
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn privileged(&self, op: Op) -> Result<()> {
        self.privileges.clone().map_err(|e| {
            HcsError::new(
                op,
                hresult::E_ACCESSDENIED,
                format!("layer calls need SeBackupPrivilege and SeRestorePrivilege: {e}"),
            )
        })
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
        f: impl FnOnce(HCS_SYSTEM, HCS_OPERATION) -> Result<HRESULT>,
    ) -> Result<()> {
        let sys = self.system(op, h)?;
        let operation = Operation::new(op)?;
        let hr = f(sys, operation.0)?;
        if hr.is_err() {
            return Err(operation.sync_error(op, hr));
        }
        operation.wait(op, self.operation_timeout).map(|_| ())
    }

    /// `HcsFormatWritableLayerVhd` with the handle this build wants: on Windows Server 2019
    /// a `CreateFile` handle of the file (the virtdisk `handle` is closed first and `None`
    /// returned), later the virtdisk handle itself (returned, still open).
    fn format_vhd(&self, op: Op, path: &Path, handle: HANDLE) -> Result<Option<HANDLE>> {
        let format = need(op, HcsFormatWritableLayerVhd(), "HcsFormatWritableLayerVhd")?;
        if self.build != 0 && self.build <= LAST_RS5_BUILD {
            close(handle);
            // SAFETY: the path string outlives the call; the handle is closed below.
            let file = unsafe {
                CreateFileW(
                    &wide(path),
                    GENERIC_READ_WRITE,
                    FILE_SHARE_READ | FILE_SHARE_WRITE,
                    None,
                    OPEN_EXISTING,
                    FILE_ATTRIBUTE_NORMAL,
                    None,
                )
            }
            .map_err(|e| {
                HcsError::new(
                    op,
                    e.code().0 as u32,
                    format!("CreateFile {}", path.display()),
                )
            })?;
            // SAFETY: `file` is the VHDX file just opened.
            let hr = unsafe { format(file) };
            close(file);
            check(op, hr)?;
            return Ok(None);
        }
        // SAFETY: `handle` is the open VHDX.
        let hr = unsafe { format(handle) };
        if hr.is_err() {
            close(handle);
            return Err(err_hr(op, hr, ""));
        }
        Ok(Some(handle))
    }

    fn grant_group(&self, op: Op, path: &Path) -> Result<()> {
        let grant = need(op, HcsGrantVmGroupAccess(), "HcsGrantVmGroupAccess")?;
        let p = wide(path);
        // SAFETY: the path string outlives the call.
        check(op, unsafe { grant(pc(&p)) })
    }

    /// Output collected so far, after letting the pipes drain.
    fn collected(&self, p: ProcessHandle, output: &Arc<Mutex<Vec<u8>>>) -> Vec<u8> {
        // The pipes close when the process and its children are gone.
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
        lock(output).clone()
    }

    fn process_entry(&self, op: Op, p: ProcessHandle) -> Result<(Raw, Arc<Mutex<Vec<u8>>>)> {
        let procs = lock(&self.processes);
        let e = procs.get(&p.0).ok_or_else(|| {
            HcsError::new(
                op,
                hresult::E_INVALIDARG,
                format!("unknown process #{}", p.0),
            )
        })?;
        Ok((e.raw, Arc::clone(&e.output)))
    }

    /// The status of a process (`HcsGetProcessProperties`).
    fn process_status(&self, op: Op, raw: Raw) -> Result<api::ProcessStatus> {
        let get = need(op, HcsGetProcessProperties(), "HcsGetProcessProperties")?;
        let operation = Operation::new(op)?;
        // SAFETY: the process handle is open; the operation is live; no query.
        let hr = unsafe { get(process(raw), operation.0, PCWSTR::null()) };
        if hr.is_err() {
            return Err(operation.sync_error(op, hr));
        }
        let props = operation.wait(op, self.operation_timeout)?;
        api::process_status(&props)
            .ok_or_else(|| HcsError::new(op, hresult::E_FAIL, format!("bad status {props}")))
    }
}

/// A process status with a usable exit code: `LastWaitResult` must be 0.
fn exit_of(op: Op, st: api::ProcessStatus) -> Result<Option<i64>> {
    if st.last_wait_result != 0 {
        return Err(HcsError::new(
            op,
            st.last_wait_result as u32,
            "HCS could not wait for the process (LastWaitResult)",
        ));
    }
    Ok(st.exit_code)
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
        unsafe { AdjustTokenPrivileges(token, false, Some(&tp), 0, None, None) }?;
        // It "succeeds" without assigning a privilege the account does not hold.
        // SAFETY: reads this thread's last-error value, set by the call above.
        if unsafe { GetLastError() } == ERROR_NOT_ALL_ASSIGNED {
            return Err(windows::core::Error::from(
                ERROR_NOT_ALL_ASSIGNED.to_hresult(),
            ));
        }
        Ok(())
    });
    // SAFETY: closes the token opened above, once.
    let _ = unsafe { CloseHandle(token) };
    r
}

fn storage_type() -> VIRTUAL_STORAGE_TYPE {
    VIRTUAL_STORAGE_TYPE {
        DeviceId: VIRTUAL_STORAGE_TYPE_DEVICE_VHDX,
        VendorId: VIRTUAL_STORAGE_TYPE_VENDOR_MICROSOFT,
    }
}

/// Creates a dynamic VHDX of `size_gb` at `path` (or, with `parent`, a differencing disk over
/// it); returns its open handle.
fn create_vhdx(op: Op, path: &Path, size_gb: u64, parent: Option<&Path>) -> Result<HANDLE> {
    let storage = storage_type();
    let parent_path = parent.map(wide);
    let mut params = CREATE_VIRTUAL_DISK_PARAMETERS {
        Version: CREATE_VIRTUAL_DISK_VERSION_2,
        ..Default::default()
    };
    params.Anonymous.Version2 = CREATE_VIRTUAL_DISK_PARAMETERS_0_1 {
        MaximumSize: if parent.is_some() { 0 } else { size_gb << 30 },
        BlockSizeInBytes: VHDX_BLOCK_BYTES,
        ParentPath: parent_path.as_ref().map_or(PCWSTR::null(), pc),
        ..Default::default()
    };
    let mut handle = HANDLE(std::ptr::null_mut());
    // SAFETY: every pointer refers to a live local; the path strings outlive the call.
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

/// Opens an existing VHDX for attaching.
fn open_vhdx(op: Op, path: &Path) -> Result<HANDLE> {
    let storage = storage_type();
    let params = OPEN_VIRTUAL_DISK_PARAMETERS {
        Version: OPEN_VIRTUAL_DISK_VERSION_2,
        ..Default::default()
    };
    let mut handle = HANDLE(std::ptr::null_mut());
    // SAFETY: every pointer refers to a live local; the path string outlives the call.
    let rc = unsafe {
        OpenVirtualDisk(
            &storage,
            &wide(path),
            VIRTUAL_DISK_ACCESS_NONE,
            OPEN_VIRTUAL_DISK_FLAG_NONE,
            Some(&params),
            &mut handle,
        )
    };
    if rc.0 != 0 {
        return Err(HcsError::new(
            op,
            rc.to_hresult().0 as u32,
            format!("OpenVirtualDisk {}", path.display()),
        ));
    }
    Ok(handle)
}

fn attach(op: Op, handle: HANDLE, no_drive_letter: bool) -> Result<()> {
    let params = ATTACH_VIRTUAL_DISK_PARAMETERS {
        Version: ATTACH_VIRTUAL_DISK_VERSION_2,
        ..Default::default()
    };
    let flags = if no_drive_letter {
        ATTACH_VIRTUAL_DISK_FLAG_NO_DRIVE_LETTER
    } else {
        ATTACH_VIRTUAL_DISK_FLAG_NONE
    };
    // SAFETY: `handle` is an open VHDX; `params` outlives the call.
    let rc = unsafe { AttachVirtualDisk(handle, None, flags, 0, Some(&params), None) };
    if rc.0 != 0 {
        return Err(HcsError::new(
            op,
            rc.to_hresult().0 as u32,
            "AttachVirtualDisk",
        ));
    }
    Ok(())
}

fn detach(handle: HANDLE) {
    // SAFETY: detaches a disk this module attached through `handle`.
    let _ = unsafe { DetachVirtualDisk(handle, DETACH_VIRTUAL_DISK_FLAG_NONE, 0) };
}

fn close(handle: HANDLE) {
    // SAFETY: closes a handle this module opened, once.
    let _ = unsafe { CloseHandle(handle) };
}

/// Reads a pipe until it closes, keeping the last [`MAX_OUTPUT`] bytes; closes it at the end.
/// Uses an `OVERLAPPED` with its own event, which is right for pipes opened with
/// `FILE_FLAG_OVERLAPPED` and harmless for synchronous ones.
fn spawn_reader(raw: Raw, out: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let handle = HANDLE(raw as *mut c_void);
        // SAFETY: a manual-reset event without name or attributes, closed below.
        let Ok(event) = (unsafe { CreateEventW(None, true, false, PCWSTR::null()) }) else {
            close(handle);
            return;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            let mut ov = OVERLAPPED {
                hEvent: event,
                ..Default::default()
            };
            let mut n = 0u32;
            // SAFETY: `handle` is the pipe HCS returned for this process; this thread owns it
            // until it closes it below. `buf`, `n` and `ov` outlive the call and the wait for
            // its completion below.
            let r = unsafe {
                ReadFile(
                    handle,
                    Some(&mut buf),
                    Some(&mut n as *mut u32),
                    Some(&mut ov),
                )
            };
            let ok = match r {
                Ok(()) => true,
                Err(e) if e.code() == ERROR_IO_PENDING.to_hresult() => {
                    // SAFETY: waits for the read started above on the same `ov`.
                    unsafe { GetOverlappedResult(handle, &ov, &mut n, true) }.is_ok()
                }
                Err(_) => false,
            };
            if !ok || n == 0 {
                break;
            }
            let mut o = lock(&out);
            o.extend_from_slice(&buf[..n as usize]);
            if o.len() > MAX_OUTPUT {
                let cut = o.len() - MAX_OUTPUT;
                o.drain(..cut);
            }
        }
        close(event);
        close(handle);
    })
}

impl HcsApi for RealHcs {
    fn has(&self, op: Op) -> bool {
        match op {
            Op::WaitForProcessExit => HcsWaitForProcessExit().is_some(),
            Op::GetProcessProperties => HcsGetProcessProperties().is_some(),
            _ => true,
        }
    }

    fn import_layer(&self, layer: &Path, source: &Path, layer_data: &str) -> Result<()> {
        let op = Op::ImportLayer;
        self.privileged(op)?;
        let f = need(op, HcsImportLayer(), "HcsImportLayer")?;
        let (l, s, d) = (wide(layer), wide(source), hs(layer_data));
        // SAFETY: the three strings outlive the synchronous call.
        check(op, unsafe { f(pc(&l), pc(&s), pc(&d)) })
    }

    fn setup_base_os_layer(&self, layer: &Path, vhd: &Path, options: &str) -> Result<()> {
        let op = Op::SetupBaseOsLayer;
        self.privileged(op)?;
        let setup = need(op, HcsSetupBaseOSLayer(), "HcsSetupBaseOSLayer")?;
        let kind = serde_json::from_str::<serde_json::Value>(options)
            .ok()
            .and_then(|v| v["Type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let handle = create_vhdx(op, vhd, BASE_VHD_SIZE_GB, None)?;
        let (l, o) = (wide(layer), hs(options));
        let diff = if kind == "Vm" {
            // The utility VM's base VHDX stays attached during the setup
            // (hcsshim `SetupUtilityVMBaseLayer`); its scratches copy SystemTemplate.vhdx.
            if let Err(e) = attach(op, handle, false) {
                close(handle);
                return Err(e);
            }
            // SAFETY: strings outlive the call; `handle` is the attached VHDX.
            let hr = unsafe { setup(pc(&l), handle, pc(&o)) };
            detach(handle);
            close(handle);
            check(op, hr)?;
            layer.join("SystemTemplate.vhdx")
        } else {
            // Container: format, close, then set up with a NULL handle
            // (hcsshim `SetupContainerBaseLayer`); the differencing blank.vhdx next to it.
            if let Some(h) = self.format_vhd(op, vhd, handle)? {
                close(h);
            }
            // SAFETY: strings outlive the call; a NULL VHD handle is what a container layer takes.
            check(op, unsafe {
                setup(pc(&l), HANDLE(std::ptr::null_mut()), pc(&o))
            })?;
            layer.join("blank.vhdx")
        };
        close(create_vhdx(op, &diff, 0, Some(vhd))?);
        self.grant_group(op, vhd)?;
        self.grant_group(op, &diff)
    }

    fn initialize_writable_layer(
        &self,
        writable: &Path,
        layer_data: &str,
        options: &str,
    ) -> Result<()> {
        let op = Op::InitializeWritableLayer;
        let f = need(
            op,
            HcsInitializeWritableLayer(),
            "HcsInitializeWritableLayer",
        )?;
        let options = (!options.is_empty()).then(|| hs(options));
        let opts = options.as_ref().map_or(PCWSTR::null(), pc);
        let (w, d) = (wide(writable), hs(layer_data));
        // SAFETY: the strings (and `options`, which `opts` points into) outlive the call.
        check(op, unsafe { f(pc(&w), pc(&d), opts) })
    }

    fn create_scratch_vhd(&self, vhd: &Path, size_gb: u64) -> Result<()> {
        let op = Op::CreateScratchVhd;
        let handle = create_vhdx(op, vhd, size_gb, None)?;
        if let Some(h) = self.format_vhd(op, vhd, handle)? {
            close(h);
        }
        self.grant_group(op, vhd)
    }

    fn mount_sandbox_vhd(&self, vhd: &Path, size_gb: u64) -> Result<String> {
        let op = Op::MountSandboxVhd;
        let mount_path = need(op, HcsGetLayerVhdMountPath(), "HcsGetLayerVhdMountPath")?;
        let created = create_vhdx(op, vhd, size_gb, None)?;
        let handle = match self.format_vhd(op, vhd, created) {
            Ok(Some(h)) => h,
            Ok(None) => open_vhdx(op, vhd)?,
            Err(e) => {
                let _ = std::fs::remove_file(vhd);
                return Err(e);
            }
        };
        if let Err(e) = attach(op, handle, true) {
            close(handle);
            let _ = std::fs::remove_file(vhd);
            return Err(e);
        }
        let mut path = PWSTR::null();
        // SAFETY: `handle` is the attached VHDX; `path` receives a LocalAlloc'd string.
        let hr = unsafe { mount_path(handle, &mut path) };
        let volume = take(path);
        if hr.is_err() || volume.is_empty() {
            detach(handle);
            close(handle);
            let _ = std::fs::remove_file(vhd);
            return Err(err_hr(
                op,
                if hr.is_err() {
                    hr
                } else {
                    HRESULT(hresult::E_NOT_READY as i32)
                },
                "",
            ));
        }
        lock(&self.vhds).insert(vhd.to_path_buf(), handle.0 as Raw);
        Ok(volume)
    }

    fn detach_sandbox_vhd(&self, vhd: &Path) -> Result<()> {
        let op = Op::DetachSandboxVhd;
        let Some(raw) = lock(&self.vhds).remove(vhd) else {
            return Err(HcsError::new(
                op,
                hresult::E_NOT_FOUND,
                "not attached by this process",
            ));
        };
        let handle = HANDLE(raw as *mut c_void);
        detach(handle);
        close(handle);
        std::fs::remove_file(vhd).map_err(|e| {
            HcsError::new(
                op,
                hresult::E_FAIL,
                format!("removing {}: {e}", vhd.display()),
            )
        })
    }

    fn create_uvm_scratch(&self, template: &Path, scratch: &Path, vm_id: &str) -> Result<()> {
        let op = Op::CreateUvmScratch;
        let grant = need(op, HcsGrantVmAccess(), "HcsGrantVmAccess")?;
        std::fs::copy(template, scratch).map_err(|e| {
            HcsError::new(
                op,
                hresult::E_FAIL,
                format!(
                    "copying {} to {}: {e}",
                    template.display(),
                    scratch.display()
                ),
            )
        })?;
        let (id, p) = (hs(vm_id), wide(scratch));
        // SAFETY: the strings outlive the synchronous call.
        check(op, unsafe { grant(pc(&id), pc(&p)) })
    }

    fn attach_layer_storage_filter(&self, writable: &Path, layer_data: &str) -> Result<()> {
        let op = Op::AttachLayerStorageFilter;
        let f = need(
            op,
            HcsAttachLayerStorageFilter(),
            "HcsAttachLayerStorageFilter",
        )?;
        let (w, d) = (wide(writable), hs(layer_data));
        // SAFETY: the strings outlive the synchronous call.
        check(op, unsafe { f(pc(&w), pc(&d)) })
    }

    fn detach_layer_storage_filter(&self, writable: &Path) -> Result<()> {
        let op = Op::DetachLayerStorageFilter;
        let f = need(
            op,
            HcsDetachLayerStorageFilter(),
            "HcsDetachLayerStorageFilter",
        )?;
        let w = wide(writable);
        // SAFETY: the string outlives the synchronous call.
        check(op, unsafe { f(pc(&w)) })
    }

    fn destroy_layer(&self, layer: &Path) -> Result<()> {
        let op = Op::DestroyLayer;
        let f = need(op, HcsDestroyLayer(), "HcsDestroyLayer")?;
        let l = wide(layer);
        // SAFETY: the string outlives the synchronous call.
        check(op, unsafe { f(pc(&l)) })
    }

    fn create_compute_system(&self, id: &str, document: &str) -> Result<SystemHandle> {
        let op = Op::CreateComputeSystem;
        let create = need(op, HcsCreateComputeSystem(), "HcsCreateComputeSystem")?;
        let close_sys = need(op, HcsCloseComputeSystem(), "HcsCloseComputeSystem")?;
        let operation = Operation::new(op)?;
        let (i, d) = (hs(id), hs(document));
        let mut sys = HCS_SYSTEM(std::ptr::null_mut());
        // SAFETY: the strings outlive the call; the operation is live; no security descriptor;
        // `sys` is a valid out pointer.
        let hr = unsafe { create(pc(&i), pc(&d), operation.0, std::ptr::null(), &mut sys) };
        if hr.is_err() {
            return Err(operation.sync_error(op, hr));
        }
        if let Err(e) = operation.wait(op, self.operation_timeout) {
            // SAFETY: closes the handle just returned, once.
            unsafe { close_sys(sys) };
            return Err(e);
        }
        let h = self.id();
        lock(&self.systems).insert(h, sys.0 as Raw);
        Ok(SystemHandle(h))
    }

    fn start_compute_system(&self, h: SystemHandle) -> Result<()> {
        let op = Op::StartComputeSystem;
        let start = need(op, HcsStartComputeSystem(), "HcsStartComputeSystem")?;
        // SAFETY: `sys` is open (looked up in the map), the operation is live.
        self.system_op(op, h, |sys, o| Ok(unsafe { start(sys, o, PCWSTR::null()) }))
    }

    fn modify_compute_system(&self, h: SystemHandle, request: &str) -> Result<()> {
        let op = Op::ModifyComputeSystem;
        let modify = need(op, HcsModifyComputeSystem(), "HcsModifyComputeSystem")?;
        let r = hs(request);
        // SAFETY: `sys` is open, the request string outlives the call, no identity handle.
        self.system_op(op, h, |sys, o| {
            Ok(unsafe { modify(sys, o, pc(&r), HANDLE(std::ptr::null_mut())) })
        })
    }

    fn terminate_compute_system(&self, h: SystemHandle) -> Result<()> {
        let op = Op::TerminateComputeSystem;
        let terminate = need(op, HcsTerminateComputeSystem(), "HcsTerminateComputeSystem")?;
        // SAFETY: `sys` is open (looked up in the map), the operation is live.
        self.system_op(op, h, |sys, o| {
            Ok(unsafe { terminate(sys, o, PCWSTR::null()) })
        })
    }

    fn close_compute_system(&self, h: SystemHandle) {
        let Some(close_sys) = HcsCloseComputeSystem() else {
            return;
        };
        if let Some(raw) = lock(&self.systems).remove(&h.0) {
            // SAFETY: removed from the map, so it is closed exactly once.
            unsafe { close_sys(system(raw)) };
        }
    }

    fn create_process(&self, h: SystemHandle, parameters: &str) -> Result<ProcessHandle> {
        let op = Op::CreateProcess;
        let create = need(op, HcsCreateProcess(), "HcsCreateProcess")?;
        let close_proc = need(op, HcsCloseProcess(), "HcsCloseProcess")?;
        let wait = need(
            op,
            HcsWaitForOperationResultAndProcessInfo(),
            "HcsWaitForOperationResultAndProcessInfo",
        )?;
        let sys = self.system(op, h)?;
        let operation = Operation::new(op)?;
        let params = hs(parameters);
        let mut proc_handle = HCS_PROCESS(std::ptr::null_mut());
        // SAFETY: `sys` is open, the string outlives the call, the operation is live,
        // `proc_handle` is a valid out pointer.
        let hr = unsafe {
            create(
                sys,
                pc(&params),
                operation.0,
                std::ptr::null(),
                &mut proc_handle,
            )
        };
        if hr.is_err() {
            return Err(operation.sync_error(op, hr));
        }
        let mut info = HCS_PROCESS_INFORMATION::default();
        let r = operation.wait_with(op, self.operation_timeout, |ms, doc| {
            // SAFETY: `info` and `doc` are valid out pointers for the duration of the call.
            Ok(unsafe { wait(operation.0, ms, &mut info, doc) })
        });
        if let Err(e) = r {
            // SAFETY: closes the process handle just returned, once.
            unsafe { close_proc(proc_handle) };
            return Err(e);
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
        let wait = need(op, HcsWaitForProcessExit(), "HcsWaitForProcessExit")?;
        let (raw, output) = self.process_entry(op, p)?;
        let mut doc = PWSTR::null();
        // SAFETY: the process handle is open (closed only by close_process); `doc` is valid.
        let hr = unsafe { wait(process(raw), millis(timeout), &mut doc) };
        let text = take(doc);
        if hr.is_err() {
            if api::is_timeout(hr_u32(hr)) {
                return Ok(None);
            }
            return Err(err_hr(op, hr, &text));
        }
        let exit_code = match api::process_status(&text).map(|st| exit_of(op, st)) {
            Some(Ok(Some(c))) => c,
            Some(Err(e)) => return Err(e),
            _ => exit_of(op, self.process_status(op, raw)?)?.ok_or_else(|| {
                HcsError::new(op, hresult::E_FAIL, "the process status has no ExitCode")
            })?,
        };
        let output = self.collected(p, &output);
        Ok(Some(ProcessExit { exit_code, output }))
    }

    fn get_process_exit(&self, p: ProcessHandle) -> Result<Option<ProcessExit>> {
        let op = Op::GetProcessProperties;
        let (raw, output) = self.process_entry(op, p)?;
        let st = self.process_status(op, raw)?;
        if !st.exited {
            return Ok(None);
        }
        let exit_code = exit_of(op, st)?.ok_or_else(|| {
            HcsError::new(op, hresult::E_FAIL, "the process status has no ExitCode")
        })?;
        let output = self.collected(p, &output);
        Ok(Some(ProcessExit { exit_code, output }))
    }

    fn close_process(&self, p: ProcessHandle) {
        let Some(close_proc) = HcsCloseProcess() else {
            return;
        };
        if let Some(e) = lock(&self.processes).remove(&p.0) {
            // SAFETY: removed from the map, so it is closed exactly once. Reader threads still
            // blocked end when the system is terminated and the pipes break.
            unsafe { close_proc(process(e.raw)) };
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
