//! `HcsDouble`: a **test double** of [`HcsApi`]. It never talks to HCS. It records every call
//! with its arguments, in order; it answers as scripted (probe exit code and output, a probe
//! that hangs, an HRESULT for a given call); it checks what a real HCS would refuse (documents
//! that do not parse or lack required fields, calls out of order, handles used after close)
//! and it reports what a run leaked (systems and processes not closed, filters not detached,
//! layers not destroyed).
//!
//! The preconditions it enforces are the ones hcsshim learned from the real service (issue 19):
//! a process-isolated container's `Storage.Path` must be the `\\?\Volume{GUID}\` of a mounted
//! sandbox (not a folder); an import source must be in the transport format (attribute word +
//! backup stream per file, `$wcidirs$` per directory, no `UtilityVM\`); a utility VM's SCSI 0:0
//! must be a copy of the layer's `SystemTemplate.vhdx` granted to that VM (not an empty VHDX);
//! a hosted container's storage must have been mounted (`MappedVirtualDisk`) and combined
//! (`CombinedLayers`) in the guest first; and a call that the registered host build does not
//! export fails with `ERROR_PROC_NOT_FOUND` ([`HcsDouble::for_build`]).
//!
//! It touches the file system as HCS would, so the runner's cleanup can be checked on disk:
//! imported and base layers and VHDX files are created as folders/files, `HcsDestroyLayer`
//! deletes the folder. Results of a runner built on it are marked simulated and never satisfy
//! a gate (`Runner::simulated`). Used by the tests and by a worker without a Windows host.

use super::api::{hresult, HcsApi, HcsError, Op, ProcessExit, ProcessHandle, Result, SystemHandle};
use super::doc::{is_volume_guid_path, VSMB_SHARE_PREFIX};
use super::unpack::{parse_backup_stream, FILE_ATTRIBUTE_DIRECTORY, WCIDIRS};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub op: Op,
    /// Its arguments, as text (paths, ids, JSON documents, handles as `#n`).
    pub args: Vec<String>,
}

/// What the probe does, and which calls fail.
#[derive(Debug, Clone, Default)]
pub struct Script {
    /// Exit code of every process.
    pub exit_code: i64,
    /// Output of every process.
    pub output: Vec<u8>,
    /// Processes never exit: waits run into their timeout.
    pub hang: bool,
    /// Calls to fail: the first call of that op fails with that HRESULT and message (once).
    pub failures: Vec<(Op, u32, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SysState {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone)]
struct Sys {
    id: String,
    state: SysState,
    closed: bool,
    is_vm: bool,
    hosting: Option<u64>,
    /// A utility VM's SCSI controllers and LUNs in use, and its VSMB share names.
    scsi: BTreeMap<String, BTreeSet<String>>,
    shares: BTreeSet<String>,
    /// Guest paths a `MappedVirtualDisk` request mounted, and those `CombinedLayers` combined.
    mapped: BTreeSet<String>,
    combined: BTreeSet<String>,
}

/// The Windows Server 2022 build: the first with every function the runner uses.
pub const BUILD_LTSC2022: u32 = 20348;

#[derive(Debug, Clone)]
struct Proc {
    system: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct State {
    script: Script,
    calls: Vec<Call>,
    violations: Vec<String>,
    /// Read-only layers (imported or base), by path.
    layers: BTreeSet<PathBuf>,
    /// Writable layers initialized, by path.
    writable: BTreeSet<PathBuf>,
    /// Filters attached, by writable path.
    filters: BTreeSet<PathBuf>,
    /// VHDX files created by `create_scratch_vhd`.
    vhds: BTreeSet<PathBuf>,
    /// Sandbox VHDX files attached, with their volume paths.
    mounted: BTreeMap<PathBuf, String>,
    /// `SystemTemplate.vhdx` files prepared by `HcsSetupBaseOSLayer` (`Vm`).
    templates: BTreeSet<PathBuf>,
    /// Utility VM scratches copied from a template, with the VM granted access.
    uvm_scratches: BTreeMap<PathBuf, String>,
    systems: BTreeMap<u64, Sys>,
    processes: BTreeMap<u64, Proc>,
    documents: Vec<(Op, Value)>,
    next: u64,
    /// The registered host build (0: [`BUILD_LTSC2022`]).
    build: u32,
}

/// The test double. Share it with `Arc` to inspect it while a runner owns it.
#[derive(Debug, Default)]
pub struct HcsDouble {
    state: Mutex<State>,
}

impl HcsDouble {
    /// A double whose probes exit 0 with no output.
    pub fn new() -> Self {
        Self::default()
    }

    /// A double of the HCS of Windows build `build` (e.g. 17763 for ltsc2019): functions that
    /// build does not export are not offered ([`HcsApi::has`]) and fail with
    /// `ERROR_PROC_NOT_FOUND` when called anyway.
    pub fn for_build(build: u32, script: Script) -> Self {
        let d = Self::with_script(script);
        d.lock().build = build;
        d
    }

    /// A double following `script`.
    pub fn with_script(script: Script) -> Self {
        let d = Self::default();
        d.lock().script = script;
        d
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a failed assertion in a test) must not hide the
        // recorded calls from the next reader.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The ops of every call so far, in order.
    pub fn ops(&self) -> Vec<Op> {
        self.lock().calls.iter().map(|c| c.op).collect()
    }

    /// The parsed documents received (compute systems and process parameters), in order.
    pub fn documents(&self) -> Vec<(Op, Value)> {
        self.lock().documents.clone()
    }

    /// What a real HCS would have refused: bad documents, calls out of order, double closes.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// What is still open: systems and processes not closed, filters attached, layers and
    /// VHDX files not destroyed.
    pub fn leaks(&self) -> Vec<String> {
        let s = self.lock();
        let mut out = Vec::new();
        for (h, sys) in &s.systems {
            if !sys.closed {
                out.push(format!("system #{h} ({}) not closed", sys.id));
            }
        }
        for (h, p) in &s.processes {
            if !p.closed {
                out.push(format!("process #{h} (system #{}) not closed", p.system));
            }
        }
        out.extend(
            s.filters
                .iter()
                .map(|p| format!("filter attached at {}", p.display())),
        );
        out.extend(
            s.writable
                .iter()
                .map(|p| format!("writable layer {} not destroyed", p.display())),
        );
        out.extend(
            s.layers
                .iter()
                .map(|p| format!("layer {} not destroyed", p.display())),
        );
        out.extend(
            s.vhds
                .iter()
                .filter(|p| p.exists())
                .map(|p| format!("scratch VHDX {} not removed", p.display())),
        );
        out.extend(
            s.mounted
                .keys()
                .map(|p| format!("sandbox VHDX {} still attached", p.display())),
        );
        out.extend(
            s.uvm_scratches
                .keys()
                .filter(|p| p.exists())
                .map(|p| format!("utility VM scratch {} not removed", p.display())),
        );
        out
    }

    /// Simulates the death of the process holding the handles: every open handle is released,
    /// and systems created with `ShouldTerminateOnLastHandleClosed` stop (which the double
    /// requires of every document). Layers and filters stay, as they do on a real host.
    pub fn simulate_crash(&self) {
        let mut s = self.lock();
        for p in s.processes.values_mut() {
            p.closed = true;
        }
        for sys in s.systems.values_mut() {
            sys.closed = true;
            sys.state = SysState::Stopped;
        }
        // Sandbox disks are attached for the lifetime of the handle: they detach, and their
        // volumes (with the filter and writable layer on them) disappear.
        let volumes: Vec<String> = std::mem::take(&mut s.mounted).into_values().collect();
        for v in volumes {
            s.filters.remove(Path::new(&v));
            s.writable.remove(Path::new(&v));
        }
    }

    /// Changes the script (e.g. between runs).
    pub fn set_script(&self, script: Script) {
        self.lock().script = script;
    }
}

impl State {
    fn record(&mut self, op: Op, args: Vec<String>) -> Result<()> {
        self.calls.push(Call { op, args });
        if let Some(i) = self.script.failures.iter().position(|(o, _, _)| *o == op) {
            let (_, hr, msg) = self.script.failures.remove(i);
            return Err(HcsError::new(op, hr, msg));
        }
        Ok(())
    }

    fn violation(&mut self, op: Op, what: impl Into<String>) {
        self.violations.push(format!("{op}: {}", what.into()));
    }

    /// A violation that a real HCS would answer with an error.
    fn refuse(&mut self, op: Op, hr: u32, what: impl Into<String>) -> HcsError {
        let what = what.into();
        self.violation(op, what.clone());
        HcsError::new(op, hr, what)
    }

    fn parse(&mut self, op: Op, text: &str) -> Result<Value> {
        serde_json::from_str(text)
            .map_err(|e| self.refuse(op, hresult::HCS_E_INVALID_JSON, format!("bad JSON: {e}")))
    }

    /// Checks a `{"SchemaVersion":…,"Layers":[{"Id","Path"}…]}` document whose layers must all
    /// be known read-only layers.
    fn check_layer_data(&mut self, op: Op, text: &str, allow_empty: bool) -> Result<Vec<PathBuf>> {
        let v = self.parse(op, text)?;
        check_schema_version(&v).map_err(|e| self.refuse(op, hresult::HCS_E_INVALID_JSON, e))?;
        let layers = v["Layers"].as_array().cloned().unwrap_or_default();
        if layers.is_empty() && !allow_empty {
            return Err(self.refuse(op, hresult::E_INVALIDARG, "layer data without layers"));
        }
        let mut paths = Vec::new();
        for l in &layers {
            let path = self.check_layer_ref(op, l)?;
            paths.push(path);
        }
        Ok(paths)
    }

    fn check_layer_ref(&mut self, op: Op, l: &Value) -> Result<PathBuf> {
        let id = l["Id"].as_str().unwrap_or("");
        if !is_guid(id) {
            return Err(self.refuse(
                op,
                hresult::HCS_E_INVALID_JSON,
                format!("layer Id {id:?} is not a GUID"),
            ));
        }
        let path = PathBuf::from(l["Path"].as_str().unwrap_or(""));
        if !self.layers.contains(&path) {
            return Err(self.refuse(
                op,
                hresult::E_NOT_FOUND,
                format!("layer {} was never imported", path.display()),
            ));
        }
        Ok(path)
    }

    fn build(&self) -> u32 {
        if self.build == 0 {
            BUILD_LTSC2022
        } else {
            self.build
        }
    }

    /// Whether the registered build exports what `op` needs (computecore.dll's
    /// "minimum supported" lines: `HcsWaitForProcessExit` from Windows Server 2022).
    fn has(&self, op: Op) -> bool {
        !(op == Op::WaitForProcessExit && self.build() < BUILD_LTSC2022)
    }

    /// Refuses a call the registered build does not export.
    fn require(&mut self, op: Op) -> Result<()> {
        if self.has(op) {
            return Ok(());
        }
        let build = self.build();
        Err(self.refuse(
            op,
            hresult::E_PROC_NOT_FOUND,
            format!("build {build} does not export {op}"),
        ))
    }

    /// Checks an `HcsImportLayer` source folder: the transport format hcsshim's
    /// `legacyLayerWriter` writes (and vmcompute's `ExportLayer` produces).
    fn check_transport(&self, source: &Path) -> std::result::Result<(), String> {
        if source.join("UtilityVM").exists() {
            return Err("UtilityVM\\ in an import source: it is cloned from the parent into the layer folder, never imported".into());
        }
        let files = source.join("Files");
        if !files.is_dir() {
            return Err(format!("{} has no Files folder", p(source)));
        }
        check_transport_dir(&files)
    }

    fn new_handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    fn system(&mut self, op: Op, h: SystemHandle) -> Result<Sys> {
        match self.systems.get(&h.0) {
            Some(s) if !s.closed => Ok(s.clone()),
            Some(_) => Err(self.refuse(
                op,
                hresult::E_INVALIDARG,
                format!("system #{} used after close", h.0),
            )),
            None => Err(self.refuse(
                op,
                hresult::E_INVALIDARG,
                format!("unknown system #{}", h.0),
            )),
        }
    }

    fn check_compute_system(
        &mut self,
        id: &str,
        v: &Value,
    ) -> std::result::Result<(bool, Option<u64>), String> {
        check_schema_version(v)?;
        if v["Owner"].as_str().unwrap_or("").is_empty() {
            return Err("Owner missing".into());
        }
        if v["ShouldTerminateOnLastHandleClosed"] != Value::Bool(true) {
            return Err("ShouldTerminateOnLastHandleClosed must be true (crash safety)".into());
        }
        let kinds = ["Container", "VirtualMachine", "HostedSystem"]
            .iter()
            .filter(|k| !v[**k].is_null())
            .count();
        if kinds != 1 {
            return Err(
                "exactly one of Container, VirtualMachine, HostedSystem must be set".into(),
            );
        }
        if !v["Container"].is_null() {
            let storage = &v["Container"]["Storage"];
            let layers = storage["Layers"].as_array().cloned().unwrap_or_default();
            if layers.is_empty() {
                return Err("Container.Storage.Layers is empty".into());
            }
            for l in &layers {
                let p = PathBuf::from(l["Path"].as_str().unwrap_or(""));
                if !is_guid(l["Id"].as_str().unwrap_or("")) || !self.layers.contains(&p) {
                    return Err(format!("Container layer {l} is not an imported layer"));
                }
            }
            let path = storage["Path"].as_str().unwrap_or("");
            if !is_volume_guid_path(path) {
                return Err(format!(
                    "Container.Storage.Path {path:?} must be a volume GUID path \\\\?\\Volume{{GUID}}\\ (the mounted sandbox) for a process-isolated container"
                ));
            }
            if !self.mounted.values().any(|v| v == path) {
                return Err(format!(
                    "Container.Storage.Path {path} is not the volume of an attached sandbox VHDX"
                ));
            }
            let scratch = PathBuf::from(path);
            if !self.filters.contains(&scratch) {
                return Err(format!(
                    "Container.Storage.Path {} has no storage filter attached",
                    scratch.display()
                ));
            }
            return Ok((false, None));
        }
        if !v["VirtualMachine"].is_null() {
            let vm = &v["VirtualMachine"];
            let boot = &vm["Chipset"]["Uefi"]["BootThis"];
            if boot["DeviceType"] != "VmbFs"
                || !boot["DevicePath"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("bootmgfw.efi")
            {
                return Err("VirtualMachine must boot bootmgfw.efi from VmbFs".into());
            }
            if vm["ComputeTopology"]["Memory"]["SizeInMB"]
                .as_u64()
                .unwrap_or(0)
                == 0
                || vm["ComputeTopology"]["Processor"]["Count"]
                    .as_u64()
                    .unwrap_or(0)
                    == 0
            {
                return Err("VirtualMachine needs memory and processors".into());
            }
            let shares = vm["Devices"]["VirtualSmb"]["Shares"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let os = shares
                .iter()
                .find(|s| s["Name"] == "os")
                .ok_or("no VSMB share named os")?;
            let os_path = PathBuf::from(os["Path"].as_str().unwrap_or(""));
            if !os_path
                .join("EFI")
                .join("Microsoft")
                .join("Boot")
                .join("bootmgfw.efi")
                .is_file()
            {
                return Err(format!(
                    "os share {} has no EFI/Microsoft/Boot/bootmgfw.efi",
                    os_path.display()
                ));
            }
            if os_path.file_name().and_then(|n| n.to_str()) != Some("Files")
                || os_path
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    != Some("UtilityVM")
            {
                return Err(format!(
                    "os share {} is not a UtilityVM\\Files folder",
                    os_path.display()
                ));
            }
            for s in shares.iter().filter(|s| s["Name"] != "os") {
                let p = PathBuf::from(s["Path"].as_str().unwrap_or(""));
                if !self.layers.contains(&p) {
                    return Err(format!(
                        "VSMB share {} is not an imported layer",
                        p.display()
                    ));
                }
            }
            let scsi = vm["Devices"]["Scsi"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let mut boot_scratch = false;
            for (c, ctl) in &scsi {
                for (lun, a) in ctl["Attachments"].as_object().cloned().unwrap_or_default() {
                    let p = PathBuf::from(a["Path"].as_str().unwrap_or(""));
                    if a["Type"] != "VirtualDisk" {
                        return Err(format!("SCSI attachment {a} is not a VirtualDisk"));
                    }
                    if c == "0" && lun == "0" {
                        match self.uvm_scratches.get(&p) {
                            Some(vm) if vm == id && p.is_file() => boot_scratch = true,
                            Some(vm) => {
                                return Err(format!(
                                    "SCSI 0:0 {} was granted to {vm}, not to {id}",
                                    p.display()
                                ))
                            }
                            None => {
                                return Err(format!(
                                    "SCSI 0:0 {} is not a copy of the layer's UtilityVM\\SystemTemplate.vhdx: an empty VHDX does not boot the utility VM",
                                    p.display()
                                ))
                            }
                        }
                    } else if !self.vhds.contains(&p) {
                        return Err(format!("SCSI attachment {a} is not a scratch VHDX"));
                    }
                }
            }
            if !boot_scratch {
                return Err("VirtualMachine has no scratch at SCSI \"0\" LUN 0".into());
            }
            if vm["GuestConnection"].is_null() {
                return Err(
                    "VirtualMachine has no GuestConnection (needed to host a container)".into(),
                );
            }
            return Ok((true, None));
        }
        let host_id = v["HostingSystemId"].as_str().unwrap_or("");
        let host = self
            .systems
            .iter()
            .find(|(_, s)| s.id == host_id && s.is_vm && !s.closed)
            .map(|(h, s)| (*h, s.state));
        match host {
            Some((h, SysState::Running)) => {
                check_schema_version(&v["HostedSystem"])?;
                let storage = &v["HostedSystem"]["Container"]["Storage"];
                let layers = storage["Layers"].as_array().cloned().unwrap_or_default();
                if layers.is_empty() {
                    return Err("HostedSystem.Container.Storage.Layers is empty".into());
                }
                let path = storage["Path"].as_str().unwrap_or("");
                let vm = &self.systems[&h];
                if !vm.combined.contains(path) {
                    return Err(format!(
                        "hosted container storage {path:?} was never prepared in the guest: no MappedVirtualDisk mounted it and no CombinedLayers combined the layers there"
                    ));
                }
                Ok((false, Some(h)))
            }
            Some(_) => Err(format!("hosting system {host_id} is not running")),
            None => Err(format!(
                "HostingSystemId {host_id:?} is not an open utility VM"
            )),
        }
    }
}

fn check_schema_version(v: &Value) -> std::result::Result<(), String> {
    let sv = &v["SchemaVersion"];
    if sv["Major"].as_u64() != Some(2) || sv["Minor"].as_u64().is_none() {
        return Err(format!("SchemaVersion must be 2.x, got {sv}"));
    }
    Ok(())
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Checks one folder of an import source's `Files\\` recursively.
fn check_transport_dir(dir: &Path) -> std::result::Result<(), String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("{}: {e}", p(dir)))?;
    for e in rd {
        let e = e.map_err(|e| e.to_string())?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let meta = dir.join(format!("{name}{WCIDIRS}"));
            let b = fs::read(&meta).map_err(|_| {
                format!(
                    "directory {} has no {WCIDIRS} file: not the transport format",
                    p(&path)
                )
            })?;
            check_transport_file(&meta, &b, true)?;
            check_transport_dir(&path)?;
        } else if !name.ends_with(WCIDIRS) {
            let b = fs::read(&path).map_err(|e| format!("{}: {e}", p(&path)))?;
            check_transport_file(&path, &b, false)?;
        }
    }
    Ok(())
}

fn check_transport_file(path: &Path, b: &[u8], dir: bool) -> std::result::Result<(), String> {
    if b.len() < 4 {
        return Err(format!(
            "{}: no attribute word: not the transport format (ERROR_INVALID_DATA)",
            p(path)
        ));
    }
    let attr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if dir != (attr & FILE_ATTRIBUTE_DIRECTORY != 0) {
        return Err(format!("{}: attributes {attr:#x} do not match", p(path)));
    }
    parse_backup_stream(&b[4..]).map_err(|e| {
        format!(
            "{}: not a Win32 backup stream after the attribute word: {e} (ERROR_INVALID_DATA)",
            p(path)
        )
    })?;
    Ok(())
}

/// Copies the folders and (empty) files of `from` into `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else if e.file_name() != "tombstones.txt"
            && !e.file_name().to_string_lossy().ends_with(WCIDIRS)
        {
            fs::write(&target, b"")?;
        }
    }
    Ok(())
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

impl HcsApi for HcsDouble {
    fn runner_name(&self) -> &'static str {
        "hcs-double"
    }

    fn simulated(&self) -> bool {
        true
    }

    fn has(&self, op: Op) -> bool {
        self.lock().has(op)
    }

    fn import_layer(&self, layer: &Path, source: &Path, layer_data: &str) -> Result<()> {
        let op = Op::ImportLayer;
        let mut s = self.lock();
        s.record(op, vec![p(layer), p(source), layer_data.into()])?;
        s.check_layer_data(op, layer_data, false)?;
        if s.layers.contains(layer) {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                format!("layer {} imported twice", p(layer)),
            ));
        }
        if let Err(e) = s.check_transport(source) {
            return Err(s.refuse(op, hresult::E_INVALID_DATA, e));
        }
        // HCS writes the layer's files into the layer folder; the double keeps the folder
        // structure (files are empty) so later checks (the UtilityVM boot files) see it.
        copy_tree(source, layer).map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        s.layers.insert(layer.to_path_buf());
        Ok(())
    }

    fn setup_base_os_layer(&self, layer: &Path, vhd: &Path, options: &str) -> Result<()> {
        let op = Op::SetupBaseOsLayer;
        let mut s = self.lock();
        s.record(op, vec![p(layer), p(vhd), options.into()])?;
        let v = s.parse(op, options)?;
        let kind = v["Type"].as_str().unwrap_or("").to_owned();
        match kind.as_str() {
            "Container" => {
                if !layer.join("Files").is_dir() {
                    return Err(s.refuse(
                        op,
                        hresult::HCS_E_INVALID_LAYER,
                        format!("{} has no Files folder", p(layer)),
                    ));
                }
                if layer.join("Hives").exists() {
                    return Err(s.refuse(
                        op,
                        hresult::E_INVALIDARG,
                        "Hives must not exist before HcsSetupBaseOSLayer",
                    ));
                }
                s.layers.insert(layer.to_path_buf());
            }
            "Vm" => {
                let parent_known = layer.parent().is_some_and(|l| s.layers.contains(l));
                if layer.file_name().and_then(|n| n.to_str()) != Some("UtilityVM") || !parent_known
                {
                    return Err(s.refuse(
                        op,
                        hresult::E_INVALIDARG,
                        format!("{} is not the UtilityVM folder of a base layer", p(layer)),
                    ));
                }
                if !layer.join("Files").is_dir() {
                    return Err(s.refuse(
                        op,
                        hresult::HCS_E_INVALID_LAYER,
                        format!("{} has no Files folder", p(layer)),
                    ));
                }
                // The differencing disk over the base VHDX that utility VM scratches are
                // copied from (computestorage `SetupUtilityVMBaseLayer`).
                let template = layer.join("SystemTemplate.vhdx");
                fs::write(&template, b"double system template")
                    .map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
                s.templates.insert(template);
            }
            other => {
                return Err(s.refuse(
                    op,
                    hresult::HCS_E_INVALID_JSON,
                    format!("OsLayerOptions Type {other:?}"),
                ));
            }
        }
        fs::write(vhd, b"double vhdx")
            .map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        Ok(())
    }

    fn initialize_writable_layer(
        &self,
        writable: &Path,
        layer_data: &str,
        options: &str,
    ) -> Result<()> {
        let op = Op::InitializeWritableLayer;
        let mut s = self.lock();
        s.record(op, vec![p(writable), layer_data.into(), options.into()])?;
        s.check_layer_data(op, layer_data, false)?;
        if s.writable.contains(writable) {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                "writable layer initialized twice",
            ));
        }
        let volume = writable.to_string_lossy().into_owned();
        if is_volume_guid_path(&volume) {
            if !s.mounted.values().any(|v| *v == volume) {
                return Err(s.refuse(
                    op,
                    hresult::E_PATH_NOT_FOUND,
                    format!("{volume} is not an attached volume"),
                ));
            }
        } else if !writable.is_dir() {
            return Err(s.refuse(
                op,
                hresult::E_PATH_NOT_FOUND,
                format!("{} does not exist", p(writable)),
            ));
        }
        s.writable.insert(writable.to_path_buf());
        Ok(())
    }

    fn create_scratch_vhd(&self, vhd: &Path, size_gb: u64) -> Result<()> {
        let op = Op::CreateScratchVhd;
        let mut s = self.lock();
        s.record(op, vec![p(vhd), size_gb.to_string()])?;
        if size_gb == 0 {
            return Err(s.refuse(op, hresult::E_INVALIDARG, "size 0"));
        }
        if vhd.exists() {
            return Err(s.refuse(op, hresult::E_INVALIDARG, format!("{} exists", p(vhd))));
        }
        fs::write(vhd, b"double vhdx")
            .map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        s.vhds.insert(vhd.to_path_buf());
        Ok(())
    }

    fn mount_sandbox_vhd(&self, vhd: &Path, size_gb: u64) -> Result<String> {
        let op = Op::MountSandboxVhd;
        let mut s = self.lock();
        s.record(op, vec![p(vhd), size_gb.to_string()])?;
        if size_gb == 0 || vhd.exists() || !vhd.parent().is_some_and(Path::is_dir) {
            return Err(s.refuse(
                op,
                hresult::E_INVALIDARG,
                format!("cannot create {}", p(vhd)),
            ));
        }
        fs::write(vhd, b"double sandbox vhdx")
            .map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        let n = s.new_handle();
        let volume = format!(r"\\?\Volume{{0000{n:04x}-0000-4000-8000-{n:012x}}}\");
        s.mounted.insert(vhd.to_path_buf(), volume.clone());
        Ok(volume)
    }

    fn detach_sandbox_vhd(&self, vhd: &Path) -> Result<()> {
        let op = Op::DetachSandboxVhd;
        let mut s = self.lock();
        s.record(op, vec![p(vhd)])?;
        let Some(volume) = s.mounted.get(vhd).cloned() else {
            // Not a violation: sweep detaches blindly.
            return Err(HcsError::new(op, hresult::E_NOT_FOUND, "not attached"));
        };
        if s.filters.contains(Path::new(&volume)) {
            s.violation(op, format!("{} detached before its storage filter", p(vhd)));
        }
        s.mounted.remove(vhd);
        s.writable.remove(Path::new(&volume));
        let _ = fs::remove_file(vhd);
        Ok(())
    }

    fn create_uvm_scratch(&self, template: &Path, scratch: &Path, vm_id: &str) -> Result<()> {
        let op = Op::CreateUvmScratch;
        let mut s = self.lock();
        s.record(op, vec![p(template), p(scratch), vm_id.into()])?;
        if !s.templates.contains(template) || !template.is_file() {
            return Err(s.refuse(
                op,
                hresult::E_FILE_NOT_FOUND,
                format!(
                    "{} is not a SystemTemplate.vhdx prepared by HcsSetupBaseOSLayer",
                    p(template)
                ),
            ));
        }
        fs::copy(template, scratch)
            .map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        s.uvm_scratches
            .insert(scratch.to_path_buf(), vm_id.to_owned());
        Ok(())
    }

    fn attach_layer_storage_filter(&self, writable: &Path, layer_data: &str) -> Result<()> {
        let op = Op::AttachLayerStorageFilter;
        let mut s = self.lock();
        s.record(op, vec![p(writable), layer_data.into()])?;
        s.check_layer_data(op, layer_data, false)?;
        if !s.writable.contains(writable) {
            return Err(s.refuse(
                op,
                hresult::E_INVALIDARG,
                "filter attached to an uninitialized writable layer",
            ));
        }
        if !s.filters.insert(writable.to_path_buf()) {
            return Err(s.refuse(op, hresult::HCS_E_INVALID_STATE, "filter attached twice"));
        }
        Ok(())
    }

    fn detach_layer_storage_filter(&self, writable: &Path) -> Result<()> {
        let op = Op::DetachLayerStorageFilter;
        let mut s = self.lock();
        s.record(op, vec![p(writable)])?;
        if s.systems
            .values()
            .any(|sys| !sys.closed && sys.state == SysState::Running && !sys.is_vm)
        {
            s.violation(op, "filter detached while a container runs");
        }
        if !s.filters.remove(writable) {
            // Not a violation: sweep detaches blindly. HCS answers ERROR_NOT_FOUND.
            return Err(HcsError::new(
                op,
                hresult::E_NOT_FOUND,
                "no filter attached",
            ));
        }
        Ok(())
    }

    fn destroy_layer(&self, layer: &Path) -> Result<()> {
        let op = Op::DestroyLayer;
        let mut s = self.lock();
        s.record(op, vec![p(layer)])?;
        if s.filters.contains(layer) {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                format!("{} destroyed with its filter attached", p(layer)),
            ));
        }
        let known = s.layers.remove(layer) | s.writable.remove(layer);
        if !layer.exists() {
            return if known {
                Err(s.refuse(
                    op,
                    hresult::E_PATH_NOT_FOUND,
                    format!("{} vanished", p(layer)),
                ))
            } else {
                Err(HcsError::new(
                    op,
                    hresult::E_PATH_NOT_FOUND,
                    "no such layer",
                ))
            };
        }
        fs::remove_dir_all(layer).map_err(|e| HcsError::new(op, hresult::E_FAIL, e.to_string()))?;
        Ok(())
    }

    fn create_compute_system(&self, id: &str, document: &str) -> Result<SystemHandle> {
        let op = Op::CreateComputeSystem;
        let mut s = self.lock();
        s.record(op, vec![id.into(), document.into()])?;
        let v = s.parse(op, document)?;
        s.documents.push((op, v.clone()));
        if s.systems.values().any(|sys| sys.id == id && !sys.closed) {
            return Err(s.refuse(
                op,
                hresult::HCS_E_SYSTEM_ALREADY_EXISTS,
                format!("system {id} exists"),
            ));
        }
        let (is_vm, hosting) = match s.check_compute_system(id, &v) {
            Ok(k) => k,
            Err(e) => return Err(s.refuse(op, hresult::HCS_E_INVALID_JSON, e)),
        };
        let devices = &v["VirtualMachine"]["Devices"];
        let scsi = devices["Scsi"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(c, ctl)| {
                        let luns = ctl["Attachments"]
                            .as_object()
                            .map(|a| a.keys().cloned().collect())
                            .unwrap_or_default();
                        (c.clone(), luns)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shares = devices["VirtualSmb"]["Shares"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|sh| sh["Name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let h = s.new_handle();
        s.systems.insert(
            h,
            Sys {
                id: id.to_owned(),
                state: SysState::Created,
                closed: false,
                is_vm,
                hosting,
                scsi,
                shares,
                mapped: BTreeSet::new(),
                combined: BTreeSet::new(),
            },
        );
        Ok(SystemHandle(h))
    }

    fn start_compute_system(&self, system: SystemHandle) -> Result<()> {
        let op = Op::StartComputeSystem;
        let mut s = self.lock();
        s.record(op, vec![format!("#{}", system.0)])?;
        let sys = s.system(op, system)?;
        if sys.state != SysState::Created {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                format!("start of system #{} in state {:?}", system.0, sys.state),
            ));
        }
        if let Some(host) = sys.hosting {
            if s.systems.get(&host).map(|h| h.state) != Some(SysState::Running) {
                return Err(s.refuse(
                    op,
                    hresult::HCS_E_INVALID_STATE,
                    "hosting utility VM is not running",
                ));
            }
        }
        if let Some(x) = s.systems.get_mut(&system.0) {
            x.state = SysState::Running;
        }
        Ok(())
    }

    fn modify_compute_system(&self, system: SystemHandle, request: &str) -> Result<()> {
        let op = Op::ModifyComputeSystem;
        let mut s = self.lock();
        s.record(op, vec![format!("#{}", system.0), request.into()])?;
        let sys = s.system(op, system)?;
        let v = s.parse(op, request)?;
        s.documents.push((op, v.clone()));
        if !sys.is_vm || sys.state != SysState::Running {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                "guest requests need a running utility VM",
            ));
        }
        let g = &v["GuestRequest"];
        let settings = &g["Settings"];
        if g["RequestType"] != "Add" {
            return Err(s.refuse(op, hresult::E_INVALIDARG, "only Add is modelled"));
        }
        let resource = v["ResourcePath"].as_str().unwrap_or("");
        match g["ResourceType"].as_str().unwrap_or("") {
            "MappedVirtualDisk" => {
                let parts: Vec<&str> = resource.split('/').collect();
                let ok_path = parts.len() == 6
                    && parts[..3] == ["VirtualMachine", "Devices", "Scsi"]
                    && parts[4] == "Attachments";
                let (ctl, lun) = if ok_path {
                    (parts[3], parts[5])
                } else {
                    ("", "")
                };
                let disk = PathBuf::from(v["Settings"]["Path"].as_str().unwrap_or(""));
                let problem = if !ok_path || v["RequestType"] != "Add" {
                    Some(format!(
                        "ResourcePath {resource:?} is not a SCSI attachment"
                    ))
                } else if !sys.scsi.contains_key(ctl) {
                    Some(format!("the utility VM has no SCSI controller {ctl:?}"))
                } else if sys.scsi[ctl].contains(lun) {
                    Some(format!("SCSI {ctl}:{lun} is in use"))
                } else if v["Settings"]["Type"] != "VirtualDisk" || !s.vhds.contains(&disk) {
                    Some(format!("{} is not a scratch VHDX", p(&disk)))
                } else if settings["Lun"].as_u64().map(|l| l.to_string()).as_deref() != Some(lun) {
                    Some("MappedVirtualDisk Lun differs from the attachment's".into())
                } else if settings["ContainerPath"].as_str().unwrap_or("").is_empty() {
                    Some("MappedVirtualDisk without ContainerPath".into())
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(s.refuse(op, hresult::E_INVALIDARG, problem));
                }
                let guest = settings["ContainerPath"].as_str().unwrap_or("").to_owned();
                if let Some(x) = s.systems.get_mut(&system.0) {
                    x.scsi
                        .entry(ctl.to_owned())
                        .or_default()
                        .insert(lun.to_owned());
                    x.mapped.insert(guest);
                }
                Ok(())
            }
            "CombinedLayers" => {
                let root = settings["ContainerRootPath"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let layers = settings["Layers"].as_array().cloned().unwrap_or_default();
                let problem = if !resource.is_empty() {
                    Some("CombinedLayers is a guest-only request".to_owned())
                } else if !sys.mapped.contains(&root) {
                    Some(format!(
                        "CombinedLayers over {root:?}, which no MappedVirtualDisk mounted"
                    ))
                } else if layers.is_empty() {
                    Some("CombinedLayers without layers".into())
                } else {
                    layers.iter().find_map(|l| {
                        let path = l["Path"].as_str().unwrap_or("");
                        let share = path.strip_prefix(VSMB_SHARE_PREFIX).unwrap_or("");
                        (!sys.shares.contains(share))
                            .then(|| format!("layer {path:?} is not a VSMB share of the VM"))
                    })
                };
                if let Some(problem) = problem {
                    return Err(s.refuse(op, hresult::E_INVALIDARG, problem));
                }
                if let Some(x) = s.systems.get_mut(&system.0) {
                    x.combined.insert(root);
                }
                Ok(())
            }
            other => Err(s.refuse(
                op,
                hresult::E_INVALIDARG,
                format!("guest request {other:?} is not modelled"),
            )),
        }
    }

    fn terminate_compute_system(&self, system: SystemHandle) -> Result<()> {
        let op = Op::TerminateComputeSystem;
        let mut s = self.lock();
        s.record(op, vec![format!("#{}", system.0)])?;
        let sys = s.system(op, system)?;
        if sys.state == SysState::Stopped {
            return Err(HcsError::new(
                op,
                hresult::HCS_E_SYSTEM_ALREADY_STOPPED,
                "already stopped",
            ));
        }
        if sys.is_vm {
            let hosted_running = s
                .systems
                .values()
                .any(|c| c.hosting == Some(system.0) && !c.closed && c.state == SysState::Running);
            if hosted_running {
                s.violation(op, "utility VM terminated before its hosted container");
            }
        }
        if let Some(x) = s.systems.get_mut(&system.0) {
            x.state = SysState::Stopped;
        }
        Ok(())
    }

    fn close_compute_system(&self, system: SystemHandle) {
        let op = Op::CloseComputeSystem;
        let mut s = self.lock();
        // Close cannot fail; a scripted failure of it is ignored.
        let _ = s.record(op, vec![format!("#{}", system.0)]);
        if s.system(op, system).is_err() {
            return;
        }
        if s.processes
            .values()
            .any(|p| p.system == system.0 && !p.closed)
        {
            s.violation(
                op,
                format!("system #{} closed before its processes", system.0),
            );
        }
        if let Some(x) = s.systems.get_mut(&system.0) {
            x.closed = true;
            // ShouldTerminateOnLastHandleClosed.
            x.state = SysState::Stopped;
        }
    }

    fn create_process(&self, system: SystemHandle, parameters: &str) -> Result<ProcessHandle> {
        let op = Op::CreateProcess;
        let mut s = self.lock();
        s.record(op, vec![format!("#{}", system.0), parameters.into()])?;
        let sys = s.system(op, system)?;
        let v = s.parse(op, parameters)?;
        s.documents.push((op, v.clone()));
        if sys.state != SysState::Running {
            return Err(s.refuse(
                op,
                hresult::HCS_E_INVALID_STATE,
                "process created in a system that is not running",
            ));
        }
        if sys.is_vm {
            s.violation(op, "probe started in the utility VM, not in the container");
        }
        if v["CommandLine"].as_str().unwrap_or("").is_empty() {
            return Err(s.refuse(op, hresult::E_INVALIDARG, "empty CommandLine"));
        }
        if v["CreateStdOutPipe"] != Value::Bool(true) || v["CreateStdErrPipe"] != Value::Bool(true)
        {
            s.violation(
                op,
                "output pipes not requested: the log tail would be empty",
            );
        }
        let h = s.new_handle();
        s.processes.insert(
            h,
            Proc {
                system: system.0,
                closed: false,
            },
        );
        Ok(ProcessHandle(h))
    }

    fn wait_for_process_exit(
        &self,
        process: ProcessHandle,
        timeout: Duration,
    ) -> Result<Option<ProcessExit>> {
        let op = Op::WaitForProcessExit;
        let hang = {
            let mut s = self.lock();
            s.record(
                op,
                vec![
                    format!("#{}", process.0),
                    format!("{}ms", timeout.as_millis()),
                ],
            )?;
            s.require(op)?;
            match s.processes.get(&process.0) {
                Some(pr) if !pr.closed => {}
                _ => {
                    return Err(s.refuse(
                        op,
                        hresult::E_INVALIDARG,
                        format!("wait on unknown or closed process #{}", process.0),
                    ))
                }
            }
            if s.script.hang {
                None
            } else {
                Some(ProcessExit {
                    exit_code: s.script.exit_code,
                    output: s.script.output.clone(),
                })
            }
        };
        match hang {
            Some(exit) => Ok(Some(exit)),
            None => {
                // A real wait blocks until the timeout; so does the double (without the lock).
                std::thread::sleep(timeout);
                Ok(None)
            }
        }
    }

    fn get_process_exit(&self, process: ProcessHandle) -> Result<Option<ProcessExit>> {
        let op = Op::GetProcessProperties;
        let mut s = self.lock();
        s.record(op, vec![format!("#{}", process.0)])?;
        match s.processes.get(&process.0) {
            Some(pr) if !pr.closed => {}
            _ => {
                return Err(s.refuse(
                    op,
                    hresult::E_INVALIDARG,
                    format!("properties of unknown or closed process #{}", process.0),
                ))
            }
        }
        Ok((!s.script.hang).then(|| ProcessExit {
            exit_code: s.script.exit_code,
            output: s.script.output.clone(),
        }))
    }

    fn close_process(&self, process: ProcessHandle) {
        let op = Op::CloseProcess;
        let mut s = self.lock();
        let _ = s.record(op, vec![format!("#{}", process.0)]);
        match s.processes.get_mut(&process.0) {
            Some(pr) if !pr.closed => pr.closed = true,
            Some(_) => s.violation(op, format!("process #{} closed twice", process.0)),
            None => s.violation(op, format!("unknown process #{}", process.0)),
        }
    }
}
