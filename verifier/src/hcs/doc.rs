//! The JSON documents the runner hands to HCS (schema 2.1), built by pure functions with
//! deterministic output: the compute system of a process-isolated container, the utility VM
//! and the hosted container of Hyper-V isolation, the process parameters, the layer data and
//! the base-layer options of the storage calls.
//!
//! Field names and shapes follow hcsshim `internal/hcs/schema2/*.go` (swagger-generated from
//! the HCS schema), `internal/hcsoci/hcsdoc_wc.go` and `internal/uvm/create_wcow.go`. Only the
//! fields the runner sets are modelled; absent options are omitted, as hcsshim's `omitempty`
//! does. Cross-platform: the golden tests pin these documents on Linux. Nothing here does I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// `Owner` of every compute system the verifier creates (shows in `hcsdiag list`).
pub const OWNER: &str = "berth-verifier";

/// Prefix of a VSMB share's path as a Windows guest sees it (hcsshim `vsmbSharePrefix`).
pub const VSMB_SHARE_PREFIX: &str = r"\\?\VMSMB\VSMB-{dcc079ae-60ba-4d07-847c-3493609c0870}\";

/// Key of the utility VM's SCSI controller. With the HCS-brokered guest connection hcsshim
/// named it `"0"` (c68147485 `internal/uvm/create_wcow.go`, and `scsiResourceFormat`
/// `VirtualMachine/Devices/Scsi/%s/Attachments/%d` in `resourcepaths.go`); the GUID names of
/// hcsshim HEAD belong to its own GCS bridge.
pub const SCSI_CONTROLLER_0: &str = "0";

/// LUN of the utility VM's own scratch (boot depends on it being 0: create_wcow.go).
pub const UVM_SCRATCH_LUN: u32 = 0;
/// LUN the hosted container's scratch is hot-added at.
pub const CONTAINER_SCRATCH_LUN: u32 = 1;

/// Boot loader inside the utility VM's `Files` share (create_wcow.go: `OSRelativeBootDirPath`
/// + `bootmgfw.efi`).
pub const UVM_BOOT_PATH: &str = r"\EFI\Microsoft\Boot\bootmgfw.efi";

/// Where the hosted container's scratch (hot-added at SCSI 0:1 of the utility VM with a
/// `MappedVirtualDisk` guest request) is mounted in the guest and its layers combined
/// (`CombinedLayers`): hcsshim c68147485 `hcsoci/create.go` `wcowRootInUVM = C:\c\%s`.
pub const HOSTED_SCRATCH_GUEST_PATH: &str = r"C:\c\0";

/// Default memory of the utility VM, in MB (hcsshim's WCOW default is 1024).
pub const DEFAULT_UVM_MEMORY_MB: u64 = 1024;
/// Default virtual processors of the utility VM (hcsshim's default is 2).
pub const DEFAULT_UVM_PROCESSORS: u32 = 2;

// === Shared pieces ===

/// `SchemaVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SchemaVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

/// Schema 2.1, the version the documented computecore API takes (hcsshim `SchemaV21`).
pub const SCHEMA_V21: SchemaVersion = SchemaVersion { major: 2, minor: 1 };

/// A layer as HCS names it: an `Id` (GUID) and its folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Layer {
    /// GUID of the layer.
    pub id: String,
    /// Folder (host path, or a VSMB path inside a utility VM).
    pub path: String,
}

impl Layer {
    /// The layer in `folder` with its id from [`layer_id`].
    pub fn at(folder: &str) -> Self {
        Self {
            id: layer_id(folder),
            path: folder.to_owned(),
        }
    }
}

/// A stable GUID for a layer folder, from the SHA-256 of its whole path (trailing separators
/// ignored; formatted as a version-5-style GUID). hcsshim derives the id with vmcompute's
/// `NameToGuid(basename)`, which exists only in the undocumented vmcompute.dll; HCS needs only
/// an id that is unique on the host and used consistently across the storage calls and the
/// compute system document. The whole path, not the base name, so that two runs of one image
/// (same `NN-<digest>` folder names in different run directories) never share an id.
pub fn layer_id(folder: &str) -> String {
    let full = folder.trim_end_matches(['\\', '/']);
    let h = Sha256::digest(format!("berth-hcs-layer:{full}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&b[0..4]),
        hex::encode(&b[4..6]),
        hex::encode(&b[6..8]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// The `layerData` argument of the computestorage calls: `{"SchemaVersion":{2,1},"Layers":[…]}`
/// (HcsImportLayer.md, HcsAttachLayerStorageFilter.md), layers topmost first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LayerData {
    /// 2.1.
    pub schema_version: SchemaVersion,
    /// Layers, topmost first, base last.
    pub layers: Vec<Layer>,
}

/// Layer data for `layers` (topmost first).
pub fn layer_data(layers: &[Layer]) -> LayerData {
    LayerData {
        schema_version: SCHEMA_V21,
        layers: layers.to_vec(),
    }
}

/// `OsLayerOptions` of `HcsSetupBaseOSLayer` (hcsshim `computestorage/storage.go`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OsLayerOptions {
    /// `Container` for the container's base layer, `Vm` for the utility VM's.
    #[serde(rename = "Type")]
    pub kind: String,
}

/// Options for the container base layer.
pub fn container_base_options() -> OsLayerOptions {
    OsLayerOptions {
        kind: "Container".into(),
    }
}

/// Options for the utility VM base layer.
pub fn vm_base_options() -> OsLayerOptions {
    OsLayerOptions { kind: "Vm".into() }
}

/// True for a volume GUID path `\\?\Volume{xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx}\` (trailing
/// backslash optional), what a process-isolated container's `Storage.Path` must be (hcsshim
/// `hcsdoc_wcow.go` `volumeGUIDRegex`).
pub fn is_volume_guid_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix(r"\\?\Volume{") else {
        return false;
    };
    let rest = rest.strip_suffix('\\').unwrap_or(rest);
    let Some(guid) = rest.strip_suffix('}') else {
        return false;
    };
    let groups: Vec<&str> = guid.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

// === Modify requests (HcsModifyComputeSystem) ===

/// `ModifySettingRequest` (schema2 modify_setting_request.go) with a guest request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModifySettingRequest {
    /// The VM resource (host side), e.g. a SCSI attachment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_path: String,
    /// `Add`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_type: String,
    /// The resource's settings (host side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Attachment>,
    /// What the guest does with it.
    pub guest_request: GuestRequest,
}

/// `guestrequest.GuestRequest` (c68147485 `internal/guestrequest/types.go`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GuestRequest {
    /// `MappedVirtualDisk` or `CombinedLayers`.
    pub resource_type: String,
    /// `Add`.
    pub request_type: String,
    /// `WCOWMappedVirtualDisk` or `CombinedLayers`.
    pub settings: serde_json::Value,
}

/// Hot-adds the hosted container's scratch `vhd` at SCSI 0:`lun` of the utility VM and has
/// the guest mount it at `guest_path` (c68147485 `uvm/scsi.go` `addSCSIActual`:
/// `ResourcePath` from `scsiResourceFormat`, `WCOWMappedVirtualDisk{ContainerPath, Lun}`).
pub fn add_mapped_virtual_disk(vhd: &str, lun: u32, guest_path: &str) -> ModifySettingRequest {
    ModifySettingRequest {
        resource_path: format!("VirtualMachine/Devices/Scsi/{SCSI_CONTROLLER_0}/Attachments/{lun}"),
        request_type: "Add".into(),
        settings: Some(Attachment {
            path: vhd.to_owned(),
            kind: "VirtualDisk".into(),
        }),
        guest_request: GuestRequest {
            resource_type: "MappedVirtualDisk".into(),
            request_type: "Add".into(),
            settings: serde_json::json!({"ContainerPath": guest_path, "Lun": lun}),
        },
    }
}

/// Has the guest combine the read-only `layers` (guest paths, topmost first) over the scratch
/// mounted at `root` (c68147485 `uvm/combine_layers.go` `CombineLayersWCOW`).
pub fn combine_layers(root: &str, layers: &[Layer]) -> ModifySettingRequest {
    ModifySettingRequest {
        resource_path: String::new(),
        request_type: String::new(),
        settings: None,
        guest_request: GuestRequest {
            resource_type: "CombinedLayers".into(),
            request_type: "Add".into(),
            settings: serde_json::json!({"ContainerRootPath": root, "Layers": layers}),
        },
    }
}

/// The layers of a hosted container as the guest sees them: the VSMB share of each layer,
/// named by its id (see [`utility_vm`]).
pub fn guest_layers(layers: &[Layer]) -> Vec<Layer> {
    layers
        .iter()
        .map(|l| Layer {
            id: l.id.clone(),
            path: format!("{VSMB_SHARE_PREFIX}{}", l.id),
        })
        .collect()
}

// === Compute systems ===

/// `ComputeSystem` (schema2 compute_system.go). Exactly one of `container`, `virtual_machine`
/// and `hosted_system` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComputeSystem {
    /// Who created it.
    pub owner: String,
    /// 2.1.
    pub schema_version: SchemaVersion,
    /// For a container hosted in a utility VM: the VM's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosting_system_id: Option<String>,
    /// The container inside the hosting VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosted_system: Option<HostedSystem>,
    /// A process-isolated container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// A utility VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine: Option<VirtualMachine>,
    /// Always true here: if the verifier dies, HCS tears the system down with its last handle,
    /// so a crash leaves no running systems behind (only layers, which `sweep` removes).
    pub should_terminate_on_last_handle_closed: bool,
}

/// `HostedSystem`: the container document sent through the hosting VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostedSystem {
    /// 2.1.
    pub schema_version: SchemaVersion,
    /// The container.
    pub container: Container,
}

/// `Container` (schema2 container.go). No mapped directories, pipes or network endpoints: the
/// probe sees only the image (and loopback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    /// Host name inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<GuestOs>,
    /// Layers and scratch.
    pub storage: Storage,
}

/// `GuestOs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GuestOs {
    /// Host name.
    pub host_name: String,
}

/// `Storage` (schema2 storage.go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Storage {
    /// Read-only layers, topmost first, base last.
    pub layers: Vec<Layer>,
    /// The scratch: the writable layer folder (process isolation) or its guest path.
    pub path: String,
}

/// `VirtualMachine` (schema2 virtual_machine.go), as create_wcow.go `prepareConfigDoc` fills it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualMachine {
    /// Stop instead of rebooting.
    pub stop_on_reset: bool,
    /// Firmware and boot entry.
    pub chipset: Chipset,
    /// Memory and processors.
    pub compute_topology: Topology,
    /// Devices.
    pub devices: Devices,
    /// HCS talks to the guest compute service (needed for a hosted container).
    pub guest_connection: GuestConnection,
}

/// `Chipset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Chipset {
    /// UEFI.
    pub uefi: Uefi,
}

/// `Uefi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Uefi {
    /// What to boot.
    pub boot_this: UefiBootEntry,
}

/// `UefiBootEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UefiBootEntry {
    /// `VmbFs`: boot from the VSMB share named `os`.
    pub device_type: String,
    /// Boot loader path inside that share.
    pub device_path: String,
}

/// `Topology`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Topology {
    /// Memory.
    pub memory: Memory,
    /// Processors.
    pub processor: Processor,
}

/// `VirtualMachineMemory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Memory {
    /// Size in MB.
    #[serde(rename = "SizeInMB")]
    pub size_in_mb: u64,
    /// Virtual (pageable) memory backing.
    pub allow_overcommit: bool,
}

/// `VirtualMachineProcessor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Processor {
    /// Virtual processors.
    pub count: u32,
}

/// `Devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Devices {
    /// SCSI controllers by GUID.
    pub scsi: BTreeMap<String, Scsi>,
    /// Hyper-V sockets (the GCS connection).
    pub hv_socket: HvSocket2,
    /// VSMB shares: the utility VM's OS files and the image layers.
    pub virtual_smb: VirtualSmb,
}

/// `Scsi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Scsi {
    /// Attachments by LUN.
    pub attachments: BTreeMap<String, Attachment>,
}

/// `Attachment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    /// Host path of the VHDX.
    pub path: String,
    /// `VirtualDisk`.
    #[serde(rename = "Type")]
    pub kind: String,
}

/// `HvSocket2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HvSocket2 {
    /// Socket configuration.
    pub hv_socket_config: HvSocketSystemConfig,
}

/// `HvSocketSystemConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HvSocketSystemConfig {
    /// SDDL of who may bind: SYSTEM and Administrators (create_wcow.go).
    pub default_bind_security_descriptor: String,
}

/// `VirtualSmb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualSmb {
    /// Shares.
    pub shares: Vec<VirtualSmbShare>,
    /// create_wcow.go's default.
    #[serde(rename = "DirectFileMappingInMB")]
    pub direct_file_mapping_in_mb: u64,
}

/// `VirtualSmbShare`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualSmbShare {
    /// Share name (`os`, or a layer id).
    pub name: String,
    /// Host folder.
    pub path: String,
    /// Options.
    pub options: VirtualSmbShareOptions,
}

/// `VirtualSmbShareOptions`: the read-only set of hcsshim `DefaultVSMBOptions(true)` plus
/// `TakeBackupPrivilege`, as used for the OS share and for layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualSmbShareOptions {
    /// Read only.
    pub read_only: bool,
    /// Shared read access.
    pub share_read: bool,
    /// Cached I/O.
    #[serde(rename = "CacheIo")]
    pub cache_io: bool,
    /// Pseudo-oplocks.
    pub pseudo_oplocks: bool,
    /// Open with the backup privilege (layer files carry their own ACLs).
    pub take_backup_privilege: bool,
}

impl VirtualSmbShareOptions {
    fn read_only() -> Self {
        Self {
            read_only: true,
            share_read: true,
            cache_io: true,
            pseudo_oplocks: true,
            take_backup_privilege: true,
        }
    }
}

/// `GuestConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GuestConnection {
    /// Use vsock (Linux guests only): false.
    pub use_vsock: bool,
}

/// What a process-isolated container is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Host name inside the container (the container id).
    pub hostname: String,
    /// Read-only layers, topmost first, base last.
    pub layers: Vec<Layer>,
    /// The writable layer folder, storage filter attached.
    pub scratch: String,
}

/// The compute system of a process-isolated ("Argon") container (hcsdoc_wc.go;
/// ../shared/docs/WINDOWS.md §3.3 step 4).
pub fn process_container(spec: &ContainerSpec) -> ComputeSystem {
    ComputeSystem {
        owner: OWNER.into(),
        schema_version: SCHEMA_V21,
        hosting_system_id: None,
        hosted_system: None,
        container: Some(Container {
            guest_os: Some(GuestOs {
                host_name: spec.hostname.clone(),
            }),
            storage: Storage {
                layers: spec.layers.clone(),
                path: spec.scratch.clone(),
            },
        }),
        virtual_machine: None,
        should_terminate_on_last_handle_closed: true,
    }
}

/// What a Hyper-V isolated ("Xenon") run is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UtilityVmSpec {
    /// `<layer>\UtilityVM\Files` of the topmost layer with a `UtilityVM` folder: the VM boots
    /// from it (shared as `os`).
    pub os_files: String,
    /// The utility VM's scratch VHDX (SCSI 0:0): a copy of `UtilityVM\SystemTemplate.vhdx`.
    pub uvm_scratch_vhd: String,
    /// The image layers (host folders), topmost first: each is shared over VSMB under its id.
    pub layers: Vec<Layer>,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Virtual processors.
    pub processors: u32,
}

/// The utility VM (create_wcow.go `prepareCommonConfigDoc` + `prepareConfigDoc`): UEFI boot of
/// `bootmgfw.efi` from the `os` VSMB share, its scratch on SCSI 0:0, the image layers as
/// read-only VSMB shares, and a guest connection for the hosted container. The container's
/// scratch is hot-added later ([`add_mapped_virtual_disk`]).
pub fn utility_vm(spec: &UtilityVmSpec) -> ComputeSystem {
    let mut attachments = BTreeMap::new();
    attachments.insert(
        UVM_SCRATCH_LUN.to_string(),
        Attachment {
            path: spec.uvm_scratch_vhd.clone(),
            kind: "VirtualDisk".into(),
        },
    );
    let mut scsi = BTreeMap::new();
    scsi.insert(SCSI_CONTROLLER_0.to_owned(), Scsi { attachments });
    let mut shares = vec![VirtualSmbShare {
        name: "os".into(),
        path: spec.os_files.clone(),
        options: VirtualSmbShareOptions::read_only(),
    }];
    shares.extend(spec.layers.iter().map(|l| VirtualSmbShare {
        name: l.id.clone(),
        path: l.path.clone(),
        options: VirtualSmbShareOptions::read_only(),
    }));
    ComputeSystem {
        owner: OWNER.into(),
        schema_version: SCHEMA_V21,
        hosting_system_id: None,
        hosted_system: None,
        container: None,
        virtual_machine: Some(VirtualMachine {
            stop_on_reset: true,
            chipset: Chipset {
                uefi: Uefi {
                    boot_this: UefiBootEntry {
                        device_type: "VmbFs".into(),
                        device_path: UVM_BOOT_PATH.into(),
                    },
                },
            },
            compute_topology: Topology {
                memory: Memory {
                    size_in_mb: spec.memory_mb,
                    allow_overcommit: true,
                },
                processor: Processor {
                    count: spec.processors,
                },
            },
            devices: Devices {
                scsi,
                hv_socket: HvSocket2 {
                    hv_socket_config: HvSocketSystemConfig {
                        default_bind_security_descriptor: "D:P(A;;FA;;;SY)(A;;FA;;;BA)".into(),
                    },
                },
                virtual_smb: VirtualSmb {
                    shares,
                    direct_file_mapping_in_mb: 1024,
                },
            },
            guest_connection: GuestConnection { use_vsock: false },
        }),
        should_terminate_on_last_handle_closed: true,
    }
}

/// The container hosted in the utility VM `uvm_id` (hcsshim c68147485 `internal/uvm/create.go`
/// `CreateContainer`: `{HostingSystemId, HostedSystem{SchemaVersion, Container}}`). Its layers
/// are the VSMB shares of [`utility_vm`], seen from the guest; its storage is the scratch
/// mounted and combined at [`HOSTED_SCRATCH_GUEST_PATH`] by the two modify requests.
pub fn hosted_container(uvm_id: &str, hostname: &str, layers: &[Layer]) -> ComputeSystem {
    let guest_layers = guest_layers(layers);
    ComputeSystem {
        owner: OWNER.into(),
        schema_version: SCHEMA_V21,
        hosting_system_id: Some(uvm_id.to_owned()),
        hosted_system: Some(HostedSystem {
            schema_version: SCHEMA_V21,
            container: Container {
                guest_os: Some(GuestOs {
                    host_name: hostname.to_owned(),
                }),
                storage: Storage {
                    layers: guest_layers,
                    path: HOSTED_SCRATCH_GUEST_PATH.into(),
                },
            },
        }),
        container: None,
        virtual_machine: None,
        should_terminate_on_last_handle_closed: true,
    }
}

// === Processes ===

/// `ProcessParameters` (schema2 process_parameters.go).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessParameters {
    /// The command line, quoted with [`command_line`].
    pub command_line: String,
    /// Working directory (omitted: the image's default, `C:\`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub working_directory: String,
    /// Environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// User name (omitted: the image's default user).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Always false: no console, plain pipes.
    pub emulate_console: bool,
    /// Always false: the probe gets no stdin.
    pub create_std_in_pipe: bool,
    /// Always true.
    pub create_std_out_pipe: bool,
    /// Always true.
    pub create_std_err_pipe: bool,
}

/// The parameters of the probe process: `command` quoted into one command line, `env`
/// (`KEY=value`, later entries win; entries without `=` are dropped), working directory and
/// user as given (empty: omitted).
pub fn process_parameters(
    command: &[String],
    working_dir: &str,
    env: &[String],
    user: &str,
) -> ProcessParameters {
    let environment = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    ProcessParameters {
        command_line: command_line(command),
        working_directory: working_dir.to_owned(),
        environment,
        user: user.to_owned(),
        emulate_console: false,
        create_std_in_pipe: false,
        create_std_out_pipe: true,
        create_std_err_pipe: true,
    }
}

/// Joins arguments into a Windows command line that `CommandLineToArgvW` (and the MSVC C
/// runtime) splits back into the same arguments: an argument without spaces, tabs, newlines
/// or quotes is kept as is; any other is quoted, with each `"` escaped as `\"`, and the
/// backslashes before a `"` or before the closing quote doubled. (Go's
/// `syscall.EscapeArg`, Rust std's `make_command_line`.)
pub fn command_line(args: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        quote_arg(arg, &mut out);
    }
    out
}

fn quote_arg(arg: &str, out: &mut String) {
    let needs_quotes = arg.is_empty() || arg.contains([' ', '\t', '\n', '\u{0b}', '"']);
    if !needs_quotes {
        out.push_str(arg);
        return;
    }
    out.push('"');
    let mut backslashes = 0usize;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.extend(std::iter::repeat_n('\\', backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.extend(std::iter::repeat_n('\\', backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.extend(std::iter::repeat_n('\\', backslashes * 2));
    out.push('"');
}

/// A document as the JSON text HCS receives (compact, fields in declaration order).
pub fn to_json<T: Serialize>(doc: &T) -> String {
    // Serializing these plain structs (string keys, no floats) cannot fail.
    serde_json::to_string(doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(args: &[&str]) -> String {
        command_line(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Splits like `CommandLineToArgvW` (post-2008 rules), to check the round trip.
    fn split(line: &str) -> Vec<String> {
        let mut args = Vec::new();
        let mut cur = String::new();
        let mut in_arg = false;
        let mut quoted = false;
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '\\' {
                let mut n = 0;
                while i < chars.len() && chars[i] == '\\' {
                    n += 1;
                    i += 1;
                }
                in_arg = true;
                if i < chars.len() && chars[i] == '"' {
                    cur.extend(std::iter::repeat_n('\\', n / 2));
                    if n % 2 == 1 {
                        cur.push('"');
                        i += 1;
                    }
                } else {
                    cur.extend(std::iter::repeat_n('\\', n));
                }
                continue;
            }
            if c == '"' {
                in_arg = true;
                if quoted && i + 1 < chars.len() && chars[i + 1] == '"' {
                    cur.push('"');
                    i += 2;
                    continue;
                }
                quoted = !quoted;
            } else if (c == ' ' || c == '\t') && !quoted {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            } else {
                in_arg = true;
                cur.push(c);
            }
            i += 1;
        }
        if in_arg {
            args.push(cur);
        }
        args
    }

    #[test]
    fn command_line_quotes_like_windows() {
        assert_eq!(cl(&["cmd", "/c", "ver"]), "cmd /c ver");
        assert_eq!(cl(&["a b", ""]), r#""a b" """#);
        assert_eq!(cl(&[r"C:\Program Files\x\"]), r#""C:\Program Files\x\\""#);
        assert_eq!(cl(&[r#"say "hi""#]), r#""say \"hi\"""#);
        assert_eq!(cl(&[r"a\\b"]), r"a\\b");
        assert_eq!(cl(&[r#"a\"b"#]), r#""a\\\"b""#);
        for args in [
            vec![
                "cmd",
                "/c",
                "echo",
                "a b",
                r#"q"q"#,
                r"tr\",
                r"\\srv\share\",
                "",
                "x\ty",
            ],
            vec![r#"\""#, r#"\\"#, r#"""#, "ünï cödé"],
        ] {
            let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                split(&command_line(&owned)),
                owned,
                "round trip of {args:?}"
            );
        }
    }

    #[test]
    fn volume_guid_paths() {
        assert!(is_volume_guid_path(
            r"\\?\Volume{66d1ef4c-7a00-11e6-8948-00155ddbef9d}\"
        ));
        assert!(is_volume_guid_path(
            r"\\?\Volume{66d1ef4c-7a00-11e6-8948-00155ddbef9d}"
        ));
        for bad in [
            r"C:\w\job\scratch",
            r"\\?\Volume{66d1ef4c-7a00-11e6-8948}\",
            r"\\?\Volume{zzd1ef4c-7a00-11e6-8948-00155ddbef9d}\",
        ] {
            assert!(!is_volume_guid_path(bad), "{bad}");
        }
    }

    #[test]
    fn layer_ids_are_stable_guids() {
        let a = layer_id(r"C:\w\job\layers\00-abc");
        assert_eq!(a, layer_id("C:\\w\\job\\layers\\00-abc\\"));
        // Two runs of one image: same folder name, different run directory.
        assert_ne!(a, layer_id(r"C:\w\job2\layers\00-abc"));
        assert_ne!(a, layer_id(r"C:\w\job\layers\01-abc"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "5");
    }

    #[test]
    fn env_entries_become_a_map() {
        let p = process_parameters(
            &["cmd".into()],
            "",
            &["A=1".into(), "B=x=y".into(), "NOVALUE".into(), "A=2".into()],
            "",
        );
        assert_eq!(p.environment.get("A").map(String::as_str), Some("2"));
        assert_eq!(p.environment.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(p.environment.len(), 2);
        let v = serde_json::to_value(&p).unwrap();
        assert!(v.get("WorkingDirectory").is_none());
        assert_eq!(v["CreateStdOutPipe"], true);
    }
}
