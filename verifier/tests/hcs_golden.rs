//! Golden tests of the HCS documents the runner sends (schema 2.1): the compute systems of
//! both isolation modes, the process parameters and the storage calls' layer data. Each is
//! compared as JSON with `tests/golden/<name>.json`. After an intended change, rewrite them
//! with `UPDATE_GOLDEN=1 cargo test -p berth-verifier --test hcs_golden` and review the diff.

use berth_verifier::hcs::doc::{self, ContainerSpec, Layer, UtilityVmSpec};
use serde_json::Value;
use std::path::PathBuf;

fn golden(name: &str, doc: &impl serde::Serialize) {
    // The exact text HCS would receive, parsed back: what is compared is what is sent.
    let actual: Value = serde_json::from_str(&doc::to_json(doc)).expect("document is JSON");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&actual).expect("pretty") + "\n";
        std::fs::write(&path, text).expect("write golden file");
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; create it with UPDATE_GOLDEN=1 cargo test -p berth-verifier --test hcs_golden",
            path.display()
        )
    });
    let expected: Value = serde_json::from_str(&text).expect("golden file is JSON");
    assert_eq!(
        actual,
        expected,
        "{name} differs from {}:\n{}",
        path.display(),
        serde_json::to_string_pretty(&actual).unwrap_or_default()
    );
}

const BASE: &str = r"C:\ProgramData\berth\work\berth-w1-42-1\layers\00-3a4b5c6d7e8f";
const APP: &str = r"C:\ProgramData\berth\work\berth-w1-42-1\layers\01-0123456789ab";
const RUN: &str = r"C:\ProgramData\berth\work\berth-w1-42-1";

fn layers() -> Vec<Layer> {
    // Topmost first, base last.
    vec![Layer::at(APP), Layer::at(BASE)]
}

#[test]
fn process_isolated_container() {
    let d = doc::process_container(&ContainerSpec {
        hostname: "berth-w1-42-1".into(),
        layers: layers(),
        scratch: r"\\?\Volume{66d1ef4c-7a00-11e6-8948-00155ddbef9d}\".into(),
    });
    golden("process_container", &d);
}

#[test]
fn hyperv_utility_vm() {
    let d = doc::utility_vm(&UtilityVmSpec {
        os_files: format!(r"{BASE}\UtilityVM\Files"),
        uvm_scratch_vhd: format!(r"{RUN}\uvm\sandbox.vhdx"),
        layers: layers(),
        memory_mb: doc::DEFAULT_UVM_MEMORY_MB,
        processors: doc::DEFAULT_UVM_PROCESSORS,
    });
    golden("hyperv_utility_vm", &d);
}

#[test]
fn hyperv_hosted_container() {
    let d = doc::hosted_container("berth-w1-42-1-uvm", "berth-w1-42-1", &layers());
    golden("hyperv_hosted_container", &d);
}

#[test]
fn hyperv_guest_storage_requests() {
    golden(
        "hyperv_add_mapped_virtual_disk",
        &doc::add_mapped_virtual_disk(
            &format!(r"{RUN}\uvm\container-scratch.vhdx"),
            doc::CONTAINER_SCRATCH_LUN,
            doc::HOSTED_SCRATCH_GUEST_PATH,
        ),
    );
    golden(
        "hyperv_combine_layers",
        &doc::combine_layers(
            doc::HOSTED_SCRATCH_GUEST_PATH,
            &doc::guest_layers(&layers()),
        ),
    );
}

#[test]
fn probe_process() {
    let d = doc::process_parameters(
        &[
            "cmd".into(),
            "/c".into(),
            r#"echo "hello world" & ver"#.into(),
            r"C:\Program Files\probe\".into(),
        ],
        r"C:\app",
        &[
            r"PATH=C:\Windows\system32;C:\Windows".into(),
            "GREETING=hi there".into(),
        ],
        "ContainerUser",
    );
    golden("process", &d);
}

#[test]
fn probe_process_defaults() {
    let d = doc::process_parameters(&["cmd".into(), "/c".into(), "ver".into()], "", &[], "");
    golden("process_defaults", &d);
}

#[test]
fn storage_layer_data_and_options() {
    golden("layer_data", &doc::layer_data(&layers()));
    golden("base_options_container", &doc::container_base_options());
    golden("base_options_vm", &doc::vm_base_options());
}
