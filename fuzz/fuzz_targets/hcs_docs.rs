//! The HCS document builders (`berth_verifier::hcs::doc`), from fuzzer-chosen layers, paths,
//! ids, host names, memory, LUNs, commands and environments, for both isolation modes: every
//! document serialises to JSON that decodes back to the same value (and re-serialises to the
//! same text), the layers appear in every document in the input order, layer ids are stable
//! version-5-style GUIDs, the command line splits back into the arguments under the
//! `CommandLineToArgvW` rules, and the environment is the last-wins map of the `KEY=value`
//! entries.
#![no_main]

use arbitrary::Arbitrary;
use berth_verifier::hcs::doc::{self, Layer};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;

const FOLDERS: &[&str] = &[
    r"C:\w\job\layers\00-abc",
    r"C:\w\job\layers\01-def\",
    r"C:\w\job2\layers\00-abc",
    "/var/lib/berth/l/0",
    r"\\?\Volume{66d1ef4c-7a00-11e6-8948-00155ddbef9d}\",
    "",
    "ünï\\cödé",
];

#[derive(Arbitrary, Debug)]
struct L {
    folder: u8,
    free_folder: Option<String>,
    /// An id other than [`doc::layer_id`]'s.
    free_id: Option<String>,
}

impl L {
    fn layer(&self) -> Layer {
        let path = match &self.free_folder {
            Some(f) if self.folder.is_multiple_of(3) => f.clone(),
            _ => FOLDERS[self.folder as usize % FOLDERS.len()].to_owned(),
        };
        match &self.free_id {
            Some(id) => Layer {
                id: id.clone(),
                path,
            },
            None => Layer::at(&path),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    layers: Vec<L>,
    hyperv: bool,
    hostname: String,
    scratch: String,
    os_files: String,
    uvm_scratch: String,
    uvm_id: String,
    memory_mb: u64,
    processors: u32,
    vhd: String,
    lun: u32,
    guest_path: String,
    command: Vec<String>,
    working_dir: String,
    env: Vec<String>,
    user: String,
}

/// Serialises, decodes, compares, and re-serialises to the same text.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(what: &str, d: &T) -> String {
    let json = doc::to_json(d);
    assert!(!json.is_empty(), "{what} did not serialise: {d:?}");
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{what}: {e}: {json}"));
    assert_eq!(&back, d, "{what} round trip: {json}");
    assert_eq!(doc::to_json(&back), json, "{what} renders the same twice");
    json
}

/// `CommandLineToArgvW` (post-2008 rules) for every argument.
fn split(line: &str) -> Vec<String> {
    let chars: Vec<char> = line.chars().collect();
    let (mut args, mut cur, mut in_arg, mut quoted, mut i) =
        (Vec::new(), String::new(), false, false, 0);
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                let start = i;
                while i < chars.len() && chars[i] == '\\' {
                    i += 1;
                }
                let n = i - start;
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
            '"' => {
                in_arg = true;
                if quoted && chars.get(i + 1) == Some(&'"') {
                    cur.push('"');
                    i += 1;
                } else {
                    quoted = !quoted;
                }
            }
            ' ' | '\t' if !quoted => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            c => {
                in_arg = true;
                cur.push(c);
            }
        }
        i += 1;
    }
    if in_arg {
        args.push(cur);
    }
    args
}

fn ids(ls: &[Layer]) -> Vec<&str> {
    ls.iter().map(|l| l.id.as_str()).collect()
}

fuzz_target!(|input: Input| {
    let layers: Vec<Layer> = input.layers.iter().take(12).map(L::layer).collect();

    // Layer ids: GUID-shaped, version nibble 5, variant 10xx, blind to trailing separators.
    for l in &input.layers {
        if l.free_id.is_some() {
            continue;
        }
        let layer = l.layer();
        let id = &layer.id;
        assert_eq!(id.len(), 36, "{id}");
        for (i, c) in id.chars().enumerate() {
            match i {
                8 | 13 | 18 | 23 => assert_eq!(c, '-', "{id}"),
                14 => assert_eq!(c, '5', "{id}"),
                19 => assert!("89ab".contains(c), "{id}"),
                _ => assert!(matches!(c, '0'..='9' | 'a'..='f'), "{id}"),
            }
        }
        let trimmed = layer.path.trim_end_matches(['\\', '/']);
        assert_eq!(doc::layer_id(&format!("{trimmed}\\")), *id);
        assert_eq!(doc::layer_id(&format!("{trimmed}/")), *id);
    }

    // Storage calls.
    let ld = doc::layer_data(&layers);
    round_trip("layer data", &ld);
    assert_eq!(ld.layers, layers);
    assert_eq!(ld.schema_version, doc::SCHEMA_V21);
    round_trip("container base options", &doc::container_base_options());
    round_trip("vm base options", &doc::vm_base_options());

    if input.hyperv {
        let spec = doc::UtilityVmSpec {
            os_files: input.os_files.clone(),
            uvm_scratch_vhd: input.uvm_scratch.clone(),
            layers: layers.clone(),
            memory_mb: input.memory_mb,
            processors: input.processors,
        };
        let uvm = doc::utility_vm(&spec);
        round_trip("utility vm", &uvm);
        let vm = uvm.virtual_machine.as_ref().expect("a utility VM");
        assert!(uvm.container.is_none() && uvm.hosted_system.is_none());
        let shares = &vm.devices.virtual_smb.shares;
        assert_eq!(shares.len(), layers.len() + 1);
        assert_eq!(
            (shares[0].name.as_str(), &shares[0].path),
            ("os", &input.os_files)
        );
        for (s, l) in shares[1..].iter().zip(&layers) {
            assert_eq!((&s.name, &s.path), (&l.id, &l.path), "share order");
            assert!(s.options.read_only);
        }
        let scsi = &vm.devices.scsi[doc::SCSI_CONTROLLER_0].attachments;
        assert_eq!(
            scsi[&doc::UVM_SCRATCH_LUN.to_string()].path,
            input.uvm_scratch
        );
        assert_eq!(vm.compute_topology.memory.size_in_mb, input.memory_mb);
        assert_eq!(vm.compute_topology.processor.count, input.processors);

        let hosted = doc::hosted_container(&input.uvm_id, &input.hostname, &layers);
        round_trip("hosted container", &hosted);
        assert_eq!(
            hosted.hosting_system_id.as_deref(),
            Some(input.uvm_id.as_str())
        );
        let c = &hosted.hosted_system.as_ref().expect("hosted").container;
        let guest = doc::guest_layers(&layers);
        assert_eq!(c.storage.layers, guest);
        assert_eq!(ids(&guest), ids(&layers), "guest layer order");
        for g in &guest {
            assert_eq!(g.path, format!("{}{}", doc::VSMB_SHARE_PREFIX, g.id));
        }
        assert_eq!(c.storage.path, doc::HOSTED_SCRATCH_GUEST_PATH);

        let add = doc::add_mapped_virtual_disk(&input.vhd, input.lun, &input.guest_path);
        round_trip("add mapped virtual disk", &add);
        assert_eq!(
            add.resource_path,
            format!("VirtualMachine/Devices/Scsi/0/Attachments/{}", input.lun)
        );
        assert_eq!(add.guest_request.settings["Lun"], input.lun);
        assert_eq!(
            add.guest_request.settings["ContainerPath"],
            *input.guest_path
        );
        let combine = doc::combine_layers(&input.guest_path, &guest);
        round_trip("combine layers", &combine);
        let combined: Vec<Layer> =
            serde_json::from_value(combine.guest_request.settings["Layers"].clone())
                .expect("layers in CombinedLayers");
        assert_eq!(combined, guest, "combined layer order");
    } else {
        let spec = doc::ContainerSpec {
            hostname: input.hostname.clone(),
            layers: layers.clone(),
            scratch: input.scratch.clone(),
        };
        let cs = doc::process_container(&spec);
        round_trip("process container", &cs);
        assert!(cs.virtual_machine.is_none() && cs.hosted_system.is_none());
        let c = cs.container.as_ref().expect("a container");
        assert_eq!(c.storage.layers, layers, "container layer order");
        assert_eq!(c.storage.path, input.scratch);
        assert_eq!(
            c.guest_os.as_ref().map(|g| g.host_name.as_str()),
            Some(input.hostname.as_str())
        );
    }

    // The probe process.
    let command: Vec<String> = input.command.iter().take(8).cloned().collect();
    let p = doc::process_parameters(&command, &input.working_dir, &input.env, &input.user);
    round_trip("process parameters", &p);
    assert_eq!(split(&p.command_line), command, "{:?}", p.command_line);
    let mut env = BTreeMap::new();
    for e in &input.env {
        if let Some((k, v)) = e.split_once('=') {
            if !k.is_empty() {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    assert_eq!(p.environment, env);
    assert_eq!(p.working_directory, input.working_dir);
    assert_eq!(p.user, input.user);
    assert!(!p.emulate_console && !p.create_std_in_pipe);
    assert!(p.create_std_out_pipe && p.create_std_err_pipe);
});
