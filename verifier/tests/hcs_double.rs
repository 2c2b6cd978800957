//! The `hcs` runner against the HCS test double: verdicts, call order, timeouts, HCS errors,
//! Hyper-V isolation, cleanup after every case and the sweep after a crash. The images are
//! small fake Windows layer tars built here (a base layer with `Files/`, `Hives/` and
//! `UtilityVM/`, and an application layer with a whiteout).

// Test helpers outside `#[test]` functions unwrap too (clippy.toml allows it only inside them).
#![expect(clippy::unwrap_used)]

use berth_oci::platform::{Isolation, Platform};
use berth_oci::worker_protocol::JobState;
use berth_verifier::hcs::api::{hresult, Op};
use berth_verifier::hcs::runner::MARKER;
use berth_verifier::hcs::{double_runner, HcsDouble, HcsRunner, Script};
use berth_verifier::runner::{Image, Layer, Outcome, RunRequest, Runner};
use flate2::write::GzEncoder;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const OCI_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const OCI_TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn tar_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        if name.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(0o755);
            b.append_data(&mut h, name.trim_end_matches('/'), &[][..])
                .unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// Raw tar with a name `append_data` would refuse (for the traversal case).
fn tar_with_raw_name(name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o644);
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    b.into_inner().unwrap()
}

fn write_layer(dir: &Path, name: &str, bytes: &[u8], media_type: &str) -> Layer {
    let path = dir.join(name);
    let data = if media_type.ends_with("+gzip") {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    } else {
        bytes.to_vec()
    };
    std::fs::write(&path, &data).unwrap();
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data))
    );
    Layer {
        digest,
        media_type: media_type.into(),
        path,
        size: data.len() as u64,
    }
}

fn base_layer(dir: &Path, with_uvm: bool) -> Layer {
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("Files/", b""),
        ("Files/Windows/System32/config/SYSTEM", b"system hive"),
        ("Files/Windows/System32/config/SOFTWARE", b"software hive"),
        ("Files/Windows/System32/cmd.exe", b"MZ fake cmd"),
        ("Hives/", b""),
        ("Hives/System_Base", b"system hive"),
    ];
    if with_uvm {
        entries.extend([
            (
                "UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi",
                &b"efi"[..],
            ),
            ("UtilityVM/Files/EFI/Microsoft/Boot/BCD", &b"bcd"[..]),
            ("UtilityVM/Files/Windows/System32/ntoskrnl.exe", &b"MZ"[..]),
        ]);
    }
    write_layer(dir, "base.tar", &tar_bytes(&entries), OCI_TAR)
}

fn app_layer(dir: &Path) -> Layer {
    let t = tar_bytes(&[
        ("Files/app/", b""),
        ("Files/app/probe.cmd", b"@echo probe ok"),
        ("Files/Windows/.wh.Temp", b""),
        ("Hives/Software_Delta", b"delta"),
    ]);
    write_layer(dir, "app.tar.gz", &t, OCI_TAR_GZ)
}

struct Case {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    blobs: PathBuf,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        Self {
            _tmp: tmp,
            work,
            blobs,
        }
    }

    fn request(&self, layers: Vec<Layer>, isolation: Isolation, timeout: Duration) -> RunRequest {
        let container_id = "berth-w1-42-1".to_owned();
        RunRequest {
            job_id: 42,
            dir: self.work.join(&container_id),
            container_id,
            image: Image {
                digest: "sha256:feed".into(),
                config: serde_json::json!({}),
                layers,
            },
            platform: Platform::new("windows", "amd64").with_os_version("10.0.20348.2527"),
            isolation,
            command: vec!["cmd".into(), "/c".into(), r"C:\app\probe.cmd".into()],
            env: vec!["GREETING=hi".into()],
            working_dir: r"C:\app".into(),
            user: "ContainerUser".into(),
            timeout,
            limits: Default::default(),
        }
    }

    fn image(&self, with_uvm: bool) -> Vec<Layer> {
        vec![base_layer(&self.blobs, with_uvm), app_layer(&self.blobs)]
    }
}

fn runner(script: Script) -> (Arc<HcsDouble>, HcsRunner<HcsDouble>) {
    let d = Arc::new(HcsDouble::with_script(script));
    (Arc::clone(&d), double_runner(d))
}

/// The double saw nothing wrong, nothing is left open and the run directory is empty.
fn assert_clean(d: &HcsDouble, req: &RunRequest) {
    assert_eq!(
        d.violations(),
        Vec::<String>::new(),
        "HCS would have refused calls"
    );
    assert_eq!(d.leaks(), Vec::<String>::new(), "leaked HCS resources");
    let left: Vec<_> = std::fs::read_dir(&req.dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "run directory not emptied: {left:?}");
}

fn count(d: &HcsDouble, op: Op) -> usize {
    d.ops().iter().filter(|o| **o == op).count()
}

async fn run(r: &HcsRunner<HcsDouble>, req: &RunRequest) -> Outcome {
    r.run(req.clone()).await
}

#[tokio::test]
async fn runner_identity() {
    let (_, r) = runner(Script::default());
    assert_eq!(r.name(), "hcs-double");
    assert!(r.simulated());
    assert_eq!(r.os(), "windows");
    assert_eq!(r.isolation(), vec![Isolation::Process, Isolation::HyperV]);
}

#[tokio::test]
async fn process_isolation_passes_with_the_full_call_sequence() {
    let c = Case::new();
    let (d, r) = runner(Script {
        output: b"probe ok\r\n".to_vec(),
        ..Script::default()
    });
    let req = c.request(c.image(true), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(o.log_tail, "probe ok\r\n");
    for (name, v) in [
        ("unpack", o.timings.unpack_ms),
        ("create", o.timings.create_ms),
        ("start", o.timings.start_ms),
        ("exit", o.timings.exit_ms),
    ] {
        assert!(v.is_some(), "{name} timing missing");
    }
    assert_eq!(o.timings.pull_ms, None);
    use Op::*;
    assert_eq!(
        d.ops(),
        vec![
            SetupBaseOsLayer,
            ImportLayer,
            MountSandboxVhd,
            InitializeWritableLayer,
            AttachLayerStorageFilter,
            CreateComputeSystem,
            StartComputeSystem,
            CreateProcess,
            WaitForProcessExit,
            CloseProcess,
            TerminateComputeSystem,
            CloseComputeSystem,
            DetachLayerStorageFilter,
            DetachSandboxVhd,
            DestroyLayer,
            DestroyLayer,
            DestroyLayer,
        ]
    );
    let calls = d.calls();
    // The base layer is set up as a container base; no utility VM for process isolation.
    assert!(calls[0].args[2].contains(r#""Type":"Container""#));
    // The application layer is imported with the base layer as its parent.
    let import = &calls[1];
    assert!(import.args[0].ends_with("01-") || import.args[0].contains("layers"));
    assert!(import.args[2].contains(&calls[0].args[0].replace('\\', "\\\\")));
    // Cleanup: the filter comes off the sandbox volume before the disk is detached, then the
    // scratch folder is destroyed first, then the layers from the top.
    assert!(calls[12].args[0].starts_with(r"\\?\Volume{"));
    assert!(calls[13].args[0].ends_with("sandbox.vhdx"));
    assert!(calls[14].args[0].ends_with("scratch"));
    assert!(calls[15].args[0].contains("01-"));
    assert!(calls[16].args[0].contains("00-"));
    // The documents: container with both layers topmost first, the probe's command line.
    let docs = d.documents();
    let (op, sys) = &docs[0];
    assert_eq!(*op, CreateComputeSystem);
    let layers = sys["Container"]["Storage"]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers[0]["Path"].as_str().unwrap().contains("01-"));
    assert!(layers[1]["Path"].as_str().unwrap().contains("00-"));
    let (_, proc_doc) = &docs[1];
    assert_eq!(proc_doc["CommandLine"], r"cmd /c C:\app\probe.cmd");
    assert_eq!(proc_doc["Environment"]["GREETING"], "hi");
    assert_eq!(proc_doc["WorkingDirectory"], r"C:\app");
    assert_eq!(proc_doc["User"], "ContainerUser");
    assert_clean(&d, &req);
}

#[tokio::test]
async fn failing_probe_is_failed_with_the_log_tail() {
    let c = Case::new();
    let mut output = vec![b'.'; 20_000];
    output.extend_from_slice(b"\r\nprobe: C:\\app\\config.json not found\r\n");
    let (d, r) = runner(Script {
        exit_code: 1,
        output,
        ..Script::default()
    });
    let req = c.request(c.image(false), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert_eq!(o.exit_code, Some(1));
    assert_eq!(o.message, "probe exited with code 1");
    assert!(o.log_tail.ends_with("config.json not found\r\n"));
    assert!(o.log_tail.len() <= 8 * 1024);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn a_hanging_probe_times_out_is_terminated_and_cleaned_up() {
    let c = Case::new();
    let (d, r) = runner(Script {
        hang: true,
        ..Script::default()
    });
    let req = c.request(
        c.image(false),
        Isolation::Process,
        Duration::from_millis(200),
    );
    let started = std::time::Instant::now();
    let o = run(&r, &req).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert_eq!(o.exit_code, None);
    assert_eq!(o.message, "timed out after 200 ms");
    let ops = d.ops();
    let wait = ops
        .iter()
        .position(|o| *o == Op::WaitForProcessExit)
        .unwrap();
    assert_eq!(
        ops[wait + 1],
        Op::TerminateComputeSystem,
        "terminated right after the timeout"
    );
    assert_eq!(
        count(&d, Op::TerminateComputeSystem),
        1,
        "not terminated twice"
    );
    assert_eq!(count(&d, Op::CloseComputeSystem), 1);
    assert!(o.timings.exit_ms.unwrap() >= 200);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn image_mismatch_at_create_is_incompatible() {
    let c = Case::new();
    let (d, r) = runner(Script {
        failures: vec![(
            Op::CreateComputeSystem,
            hresult::STATUS_IMAGE_MISMATCH,
            "The operating system of the container does not match the operating system of the host."
                .into(),
        )],
        ..Script::default()
    });
    let req = c.request(c.image(false), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Incompatible, "{o:?}");
    assert!(
        o.message.contains("HcsCreateComputeSystem"),
        "{}",
        o.message
    );
    assert!(o.message.contains("0xc0370101"), "{}", o.message);
    assert!(o.message.contains("HCS_E_IMAGE_MISMATCH"), "{}", o.message);
    assert_eq!(count(&d, Op::StartComputeSystem), 0);
    assert_eq!(count(&d, Op::CloseComputeSystem), 0, "nothing was opened");
    assert_eq!(count(&d, Op::DetachLayerStorageFilter), 1);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn errors_at_start_map_to_the_right_state() {
    use hresult::*;
    let table = [
        (STATUS_IMAGE_MISMATCH, JobState::Incompatible, "0xc0370101"),
        (HCS_E_IMAGE_MISMATCH, JobState::Incompatible, "0x80370101"),
        (
            HCS_E_CONNECTION_TIMEOUT,
            JobState::Error,
            "HCS_E_CONNECTION_TIMEOUT",
        ),
        (HCS_E_TERMINATED, JobState::Error, "HCS_E_TERMINATED"),
        (0xC037_0106, JobState::Failed, "HCS_E_UNEXPECTED_EXIT"),
        (
            HCS_E_SERVICE_NOT_AVAILABLE,
            JobState::Error,
            "HCS_E_SERVICE_NOT_AVAILABLE",
        ),
    ];
    for (hr, want, shown) in table {
        for isolation in [Isolation::Process, Isolation::HyperV] {
            let c = Case::new();
            let (d, r) = runner(Script::default());
            // For Hyper-V the first start is the utility VM's: fail that one.
            d.set_script(Script {
                failures: vec![(Op::StartComputeSystem, hr, "scripted".into())],
                ..Script::default()
            });
            let req = c.request(c.image(true), isolation, Duration::from_secs(30));
            let o = run(&r, &req).await;
            assert_eq!(o.status, want, "{hr:#x} {isolation:?}: {o:?}");
            assert!(o.message.contains("HcsStartComputeSystem"), "{}", o.message);
            assert!(o.message.contains(shown), "{}", o.message);
            assert_eq!(count(&d, Op::CreateProcess), 0);
            assert_eq!(count(&d, Op::TerminateComputeSystem), 0, "never started");
            assert_clean(&d, &req);
        }
    }
}

#[tokio::test]
async fn a_missing_command_is_the_images_fault() {
    let c = Case::new();
    let (d, r) = runner(Script {
        failures: vec![(
            Op::CreateProcess,
            hresult::E_FILE_NOT_FOUND,
            "The system cannot find the file specified.".into(),
        )],
        ..Script::default()
    });
    let req = c.request(c.image(false), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert!(o.message.contains("ERROR_FILE_NOT_FOUND"));
    assert_eq!(
        count(&d, Op::TerminateComputeSystem),
        1,
        "the started container is stopped"
    );
    assert_clean(&d, &req);
}

#[tokio::test]
async fn infrastructure_errors_while_importing_are_retried_and_cleaned() {
    let c = Case::new();
    let (d, r) = runner(Script {
        failures: vec![(
            Op::ImportLayer,
            hresult::E_ACCESSDENIED,
            "Access is denied.".into(),
        )],
        ..Script::default()
    });
    let req = c.request(c.image(false), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Error, "{o:?}");
    assert!(o
        .message
        .starts_with("HcsImportLayer: HCS error 0x80070005 (E_ACCESSDENIED)"));
    assert_clean(&d, &req);

    let (d, r) = runner(Script {
        failures: vec![(
            Op::ImportLayer,
            hresult::HCS_E_INVALID_LAYER,
            "bad layer".into(),
        )],
        ..Script::default()
    });
    // The runner writes the import source itself: HCS refusing it is never the image's fault
    // (issue 19).
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Error, "{o:?}");
    assert_clean(&d, &req);

    let (d, r) = runner(Script {
        failures: vec![(
            Op::ImportLayer,
            hresult::E_INVALID_DATA,
            "The data is invalid.".into(),
        )],
        ..Script::default()
    });
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Error, "{o:?}");
    assert_clean(&d, &req);
}

#[tokio::test]
async fn hyperv_boots_the_utility_vm_of_the_base_layer() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(c.image(true), Isolation::HyperV, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    use Op::*;
    assert_eq!(
        d.ops(),
        vec![
            SetupBaseOsLayer,
            ImportLayer,
            SetupBaseOsLayer,
            CreateUvmScratch,
            CreateScratchVhd,
            CreateComputeSystem,
            StartComputeSystem,
            ModifyComputeSystem,
            ModifyComputeSystem,
            CreateComputeSystem,
            StartComputeSystem,
            CreateProcess,
            WaitForProcessExit,
            CloseProcess,
            TerminateComputeSystem,
            CloseComputeSystem,
            TerminateComputeSystem,
            CloseComputeSystem,
            DestroyLayer,
            DestroyLayer,
        ]
    );
    let calls = d.calls();
    assert!(calls[2].args[0].ends_with("UtilityVM"));
    assert!(calls[2].args[2].contains(r#""Type":"Vm""#));
    let docs = d.documents();
    let vm = &docs[0].1["VirtualMachine"];
    let os = vm["Devices"]["VirtualSmb"]["Shares"][0].clone();
    assert_eq!(os["Name"], "os");
    let os_path = PathBuf::from(os["Path"].as_str().unwrap());
    assert!(os_path.ends_with("UtilityVM/Files"), "{os_path:?}");
    assert!(
        os_path.to_string_lossy().contains("00-"),
        "the base layer's UtilityVM"
    );
    assert_eq!(vm["Chipset"]["Uefi"]["BootThis"]["DeviceType"], "VmbFs");
    let hosted = &docs[3].1;
    assert_eq!(hosted["HostingSystemId"], "berth-w1-42-1-uvm");
    assert_eq!(calls[5].args[0], "berth-w1-42-1-uvm");
    assert_eq!(calls[9].args[0], "berth-w1-42-1");
    let layers = hosted["HostedSystem"]["Container"]["Storage"]["Layers"]
        .as_array()
        .unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers[0]["Path"]
        .as_str()
        .unwrap()
        .starts_with(r"\\?\VMSMB\"));
    // The container stops before its utility VM.
    assert_eq!(calls[14].args, calls[10].args);
    assert_eq!(calls[16].args, calls[6].args);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn hyperv_needs_a_utility_vm() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(c.image(false), Isolation::HyperV, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert!(o.message.contains("UtilityVM"), "{}", o.message);
    assert_eq!(count(&d, Op::CreateComputeSystem), 0);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn a_first_layer_that_is_not_a_base_layer_fails() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(
        vec![app_layer(&c.blobs)],
        Isolation::Process,
        Duration::from_secs(30),
    );
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert!(
        o.message.contains("not a Windows base layer"),
        "{}",
        o.message
    );
    assert!(d.ops().is_empty(), "no HCS call for a non-Windows image");
    assert_clean(&d, &req);
}

#[tokio::test]
async fn path_traversal_in_a_layer_fails_and_writes_nothing_outside() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let evil = write_layer(
        &c.blobs,
        "evil.tar",
        &tar_with_raw_name("Files/../../../escaped.txt"),
        OCI_TAR,
    );
    let req = c.request(
        vec![base_layer(&c.blobs, false), evil],
        Isolation::Process,
        Duration::from_secs(30),
    );
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Failed, "{o:?}");
    assert!(o.message.contains("parent-directory"), "{}", o.message);
    assert_eq!(count(&d, Op::ImportLayer), 0);
    for p in [
        c.work.join("escaped.txt"),
        req.dir.join("escaped.txt"),
        req.dir.join("layers/escaped.txt"),
    ] {
        assert!(!p.exists(), "{} written", p.display());
    }
    assert_clean(&d, &req);
}

#[tokio::test]
async fn sweep_cleans_up_after_a_crashed_run() {
    let c = Case::new();
    let (d, r) = runner(Script {
        hang: true,
        ..Script::default()
    });
    let req = c.request(
        c.image(false),
        Isolation::Process,
        Duration::from_millis(1500),
    );
    // The worker dies while the probe runs: the run future is dropped, nothing is cleaned.
    let crashed = tokio::time::timeout(Duration::from_millis(400), r.run(req.clone())).await;
    assert!(crashed.is_err(), "the run should still be waiting");
    d.simulate_crash();
    assert!(req.dir.join(MARKER).is_file());
    assert!(
        !d.leaks().is_empty(),
        "the crash left layers and a filter behind"
    );
    // Something else in the work directory that is not a run of ours stays.
    let other = c.work.join("not-a-run");
    std::fs::create_dir_all(&other).unwrap();

    let before = d.calls().len();
    r.sweep(&c.work).await.expect("sweep");
    let swept: Vec<Op> = d.ops()[before..].to_vec();
    assert_eq!(
        swept,
        vec![
            Op::DetachSandboxVhd,
            Op::DestroyLayer,
            Op::DestroyLayer,
            Op::DestroyLayer
        ]
    );
    assert_eq!(d.leaks(), Vec::<String>::new());
    assert_eq!(d.violations(), Vec::<String>::new());
    assert!(!req.dir.exists(), "the crashed run's directory is deleted");
    assert!(other.is_dir(), "foreign folders are left alone");
    // A second sweep finds nothing to do.
    let n = d.calls().len();
    r.sweep(&c.work).await.expect("sweep again");
    assert_eq!(d.calls().len(), n);
}

#[tokio::test]
async fn consecutive_runs_on_one_double_stay_clean() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    for isolation in [Isolation::Process, Isolation::HyperV, Isolation::Process] {
        let req = c.request(c.image(true), isolation, Duration::from_secs(30));
        let o = run(&r, &req).await;
        assert_eq!(o.status, JobState::Passed, "{isolation:?}: {o:?}");
        assert_clean(&d, &req);
    }
}

#[test]
fn the_double_refuses_what_hcs_would_refuse() {
    use berth_verifier::hcs::api::{HcsApi, SystemHandle};
    use berth_verifier::hcs::doc;
    let tmp = tempfile::tempdir().unwrap();
    let d = HcsDouble::new();
    let layer = tmp.path().join("layers").join("00-base");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let container = doc::to_json(&doc::process_container(&doc::ContainerSpec {
        hostname: "h".into(),
        layers: vec![doc::Layer::at(&layer.display().to_string())],
        scratch: scratch.display().to_string(),
    }));

    // A compute system over layers never imported.
    let e = d.create_compute_system("c1", &container).unwrap_err();
    assert_eq!(e.op, Op::CreateComputeSystem);
    // Start of a system that does not exist.
    assert!(d.start_compute_system(SystemHandle(99)).is_err());
    // Bad JSON.
    assert_eq!(
        d.create_compute_system("c2", "{not json")
            .unwrap_err()
            .hresult,
        hresult::HCS_E_INVALID_JSON
    );
    // A writable layer over unknown layers.
    let data = doc::to_json(&doc::layer_data(&[doc::Layer::at(
        &layer.display().to_string(),
    )]));
    assert!(d.initialize_writable_layer(&scratch, &data, "").is_err());
    assert_eq!(d.violations().len(), 4, "{:?}", d.violations());

    // Now in order: base layer, sandbox volume, writable layer, filter, system; then close
    // twice.
    std::fs::create_dir_all(layer.join("Files")).unwrap();
    d.setup_base_os_layer(
        &layer,
        &layer.join("blank-base.vhdx"),
        r#"{"Type":"Container"}"#,
    )
    .unwrap();
    // A folder as the process container's Storage.Path is refused (hcsdoc_wcow.go).
    d.initialize_writable_layer(&scratch, &data, "").unwrap();
    d.attach_layer_storage_filter(&scratch, &data).unwrap();
    let e = d.create_compute_system("c3", &container).unwrap_err();
    assert!(e.message.contains("volume GUID path"), "{e}");
    d.detach_layer_storage_filter(&scratch).unwrap();
    let volume = d
        .mount_sandbox_vhd(&scratch.join("sandbox.vhdx"), 20)
        .unwrap();
    let vpath = std::path::PathBuf::from(&volume);
    d.initialize_writable_layer(&vpath, &data, "").unwrap();
    d.attach_layer_storage_filter(&vpath, &data).unwrap();
    let container = doc::to_json(&doc::process_container(&doc::ContainerSpec {
        hostname: "h".into(),
        layers: vec![doc::Layer::at(&layer.display().to_string())],
        scratch: volume.clone(),
    }));
    let h = d.create_compute_system("c3", &container).unwrap();
    // Destroying a layer whose filter is attached is refused.
    assert!(d.destroy_layer(&vpath).is_err());
    d.close_compute_system(h);
    d.close_compute_system(h);
    let v = d.violations();
    assert!(v.last().unwrap().contains("used after close"), "{v:?}");
    // Leaks: the filter, the writable layers (folder and volume), the base layer, the disk.
    assert_eq!(d.leaks().len(), 5, "{:?}", d.leaks());
    // The disk must not go before its filter.
    d.detach_sandbox_vhd(&scratch.join("sandbox.vhdx")).unwrap();
    assert!(
        d.violations()
            .last()
            .unwrap()
            .contains("detached before its storage filter"),
        "{:?}",
        d.violations()
    );
}

#[test]
fn the_double_models_what_hcsshim_learned() {
    use berth_verifier::hcs::api::HcsApi;
    use berth_verifier::hcs::doc;
    let tmp = tempfile::tempdir().unwrap();
    let d = HcsDouble::new();
    let base = tmp.path().join("00");
    std::fs::create_dir_all(base.join("Files")).unwrap();
    std::fs::create_dir_all(base.join("UtilityVM/Files/EFI/Microsoft/Boot")).unwrap();
    std::fs::write(
        base.join("UtilityVM/Files/EFI/Microsoft/Boot/bootmgfw.efi"),
        b"efi",
    )
    .unwrap();
    d.setup_base_os_layer(
        &base,
        &base.join("blank-base.vhdx"),
        r#"{"Type":"Container"}"#,
    )
    .unwrap();
    let data = doc::to_json(&doc::layer_data(&[doc::Layer::at(
        &base.display().to_string(),
    )]));

    // An import source of plain files (not the transport format) is ERROR_INVALID_DATA.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("Files/app")).unwrap();
    std::fs::write(src.join("Files/app/probe.cmd"), b"@echo ok").unwrap();
    let e = d
        .import_layer(&tmp.path().join("01"), &src, &data)
        .unwrap_err();
    assert_eq!(e.hresult, hresult::E_INVALID_DATA, "{e}");
    assert!(e.message.contains("$wcidirs$"), "{e}");

    // A utility VM over a fresh empty VHDX does not boot.
    let uvm = base.join("UtilityVM");
    let empty = tmp.path().join("empty.vhdx");
    d.create_scratch_vhd(&empty, 20).unwrap();
    let vm_doc = |scratch: &Path| {
        doc::to_json(&doc::utility_vm(&doc::UtilityVmSpec {
            os_files: uvm.join("Files").display().to_string(),
            uvm_scratch_vhd: scratch.display().to_string(),
            layers: vec![doc::Layer::at(&base.display().to_string())],
            memory_mb: 1024,
            processors: 2,
        }))
    };
    let e = d.create_compute_system("vm", &vm_doc(&empty)).unwrap_err();
    assert!(e.message.contains("SystemTemplate.vhdx"), "{e}");
    // A copy of the prepared template, granted to that VM, does.
    d.setup_base_os_layer(
        &uvm,
        &uvm.join("SystemTemplateBase.vhdx"),
        r#"{"Type":"Vm"}"#,
    )
    .unwrap();
    let copy = tmp.path().join("sandbox.vhdx");
    d.create_uvm_scratch(&uvm.join("SystemTemplate.vhdx"), &copy, "other-vm")
        .unwrap();
    let e = d.create_compute_system("vm", &vm_doc(&copy)).unwrap_err();
    assert!(e.message.contains("granted to other-vm"), "{e}");
    std::fs::remove_file(&copy).unwrap();
    d.create_uvm_scratch(&uvm.join("SystemTemplate.vhdx"), &copy, "vm")
        .unwrap();
    let vm = d.create_compute_system("vm", &vm_doc(&copy)).unwrap();
    d.start_compute_system(vm).unwrap();

    // A hosted container whose guest storage was never prepared is refused.
    let layers = [doc::Layer::at(&base.display().to_string())];
    let hosted = doc::to_json(&doc::hosted_container("vm", "c", &layers));
    let e = d.create_compute_system("c", &hosted).unwrap_err();
    assert!(e.message.contains("never prepared in the guest"), "{e}");
    // Combining before mapping is refused too; in order both succeed.
    let combine = doc::to_json(&doc::combine_layers(
        doc::HOSTED_SCRATCH_GUEST_PATH,
        &doc::guest_layers(&layers),
    ));
    assert!(d.modify_compute_system(vm, &combine).is_err());
    let disk = tmp.path().join("c.vhdx");
    d.create_scratch_vhd(&disk, 20).unwrap();
    let map = doc::to_json(&doc::add_mapped_virtual_disk(
        &disk.display().to_string(),
        doc::CONTAINER_SCRATCH_LUN,
        doc::HOSTED_SCRATCH_GUEST_PATH,
    ));
    d.modify_compute_system(vm, &map).unwrap();
    d.modify_compute_system(vm, &combine).unwrap();
    let c = d.create_compute_system("c", &hosted).unwrap();
    d.close_compute_system(c);
    d.close_compute_system(vm);

    // Windows Server 2019 has no HcsWaitForProcessExit.
    let old = HcsDouble::for_build(17763, Script::default());
    assert!(!old.has(Op::WaitForProcessExit));
    assert!(HcsDouble::new().has(Op::WaitForProcessExit));
    let e = old
        .wait_for_process_exit(
            berth_verifier::hcs::api::ProcessHandle(1),
            Duration::from_millis(1),
        )
        .unwrap_err();
    assert_eq!(e.hresult, hresult::E_PROC_NOT_FOUND, "{e}");
}

// === Issue 19: one test per defect of the runner as it was (each failed on it) ===

/// A servercore-like image: base layer plus an update layer with directories, files carrying
/// Windows metadata, a hard link to a file of the base layer, a whiteout, a hive delta and an
/// update of the utility VM's boot configuration.
fn servercore(dir: &Path) -> Vec<Layer> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], pax: &[(&str, &[u8])]| {
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("Files", tar::EntryType::Directory, b"", &[]);
    add(
        "Files/Windows",
        tar::EntryType::Directory,
        b"",
        &[("MSWINDOWS.fileattr", b"16")],
    );
    add(
        "Files/Windows/System32",
        tar::EntryType::Directory,
        b"",
        &[("MSWINDOWS.fileattr", b"16")],
    );
    add(
        "Files/Windows/System32/kernel32.dll",
        tar::EntryType::Regular,
        b"MZ patched",
        &[
            ("MSWINDOWS.fileattr", b"32"),
            ("MSWINDOWS.rawsd", b"AQAEgA=="),
        ],
    );
    add("Files/Windows/.wh.Temp", tar::EntryType::Regular, b"", &[]);
    add("Hives", tar::EntryType::Directory, b"", &[]);
    add(
        "Hives/Software_Delta",
        tar::EntryType::Regular,
        b"regf delta",
        &[],
    );
    add("UtilityVM", tar::EntryType::Directory, b"", &[]);
    add(
        "UtilityVM/Files/EFI/Microsoft/Boot/BCD",
        tar::EntryType::Regular,
        b"bcd v2",
        &[],
    );
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(
        &mut h,
        "Files/Windows/System32/cmd2.exe",
        "Files/Windows/System32/cmd.exe",
    )
    .unwrap();
    let update = write_layer(dir, "update.tar", &b.into_inner().unwrap(), OCI_TAR);
    vec![base_layer(dir, true), update]
}

#[tokio::test]
async fn issue19_defect1_app_layers_are_imported_in_the_transport_format() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(
        servercore(&c.blobs),
        Isolation::Process,
        Duration::from_secs(30),
    );
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    assert_eq!(count(&d, Op::ImportLayer), 1);
    assert_clean(&d, &req);
}

#[tokio::test]
async fn issue19_defect2_process_isolation_runs_on_the_mounted_sandbox_volume() {
    let c = Case::new();
    // Windows Server 2019's flake: the volume is not ready the first time.
    let (d, r) = runner(Script {
        failures: vec![(
            Op::AttachLayerStorageFilter,
            hresult::E_NOT_READY,
            "The device is not ready.".into(),
        )],
        ..Script::default()
    });
    let req = c.request(c.image(false), Isolation::Process, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    assert_eq!(
        count(&d, Op::MountSandboxVhd),
        2,
        "retried after ERROR_NOT_READY"
    );
    let docs = d.documents();
    let path = docs[0].1["Container"]["Storage"]["Path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        berth_verifier::hcs::doc::is_volume_guid_path(&path),
        "Storage.Path {path}"
    );
    // Cleanup detaches the filter, then the disk.
    let ops = d.ops();
    let filter = ops.iter().rposition(|o| *o == Op::DetachLayerStorageFilter);
    let disk = ops.iter().rposition(|o| *o == Op::DetachSandboxVhd);
    assert!(filter.unwrap() < disk.unwrap(), "{ops:?}");
    assert_clean(&d, &req);
}

#[tokio::test]
async fn issue19_defect3_hyperv_prepares_the_hosted_containers_guest_storage() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(
        servercore(&c.blobs),
        Isolation::HyperV,
        Duration::from_secs(30),
    );
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    let modify: Vec<_> = d
        .documents()
        .into_iter()
        .filter(|(op, _)| *op == Op::ModifyComputeSystem)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(modify.len(), 2);
    assert_eq!(
        modify[0]["GuestRequest"]["ResourceType"],
        "MappedVirtualDisk"
    );
    assert_eq!(modify[1]["GuestRequest"]["ResourceType"], "CombinedLayers");
    // The utility VM boots from the update layer's (cloned and patched) utility VM.
    let vm = &d.documents()[0].1["VirtualMachine"];
    let os = vm["Devices"]["VirtualSmb"]["Shares"][0]["Path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(os.contains("01-"), "{os}");
    assert_clean(&d, &req);
}

#[tokio::test]
async fn issue19_defect4_the_utility_vm_boots_from_a_copy_of_system_template() {
    let c = Case::new();
    let (d, r) = runner(Script::default());
    let req = c.request(c.image(true), Isolation::HyperV, Duration::from_secs(30));
    let o = run(&r, &req).await;
    assert_eq!(o.status, JobState::Passed, "{o:?}");
    let copy = d
        .calls()
        .into_iter()
        .find(|c| c.op == Op::CreateUvmScratch)
        .expect("the scratch is copied from the template");
    assert!(
        copy.args[0].ends_with("SystemTemplate.vhdx"),
        "{:?}",
        copy.args
    );
    assert_eq!(copy.args[2], "berth-w1-42-1-uvm", "granted to the VM");
    let vm = &d.documents()[0].1["VirtualMachine"];
    assert_eq!(
        vm["Devices"]["Scsi"]["0"]["Attachments"]["0"]["Path"],
        copy.args[1].as_str()
    );
    assert_clean(&d, &req);
}

#[tokio::test]
async fn issue19_defect5_ltsc2019_has_no_wait_for_process_exit() {
    for (hang, want) in [(false, JobState::Passed), (true, JobState::Failed)] {
        let c = Case::new();
        let d = Arc::new(HcsDouble::for_build(
            17763,
            Script {
                hang,
                output: b"ok\r\n".to_vec(),
                ..Script::default()
            },
        ));
        let r = double_runner(Arc::clone(&d));
        let req = c.request(
            c.image(false),
            Isolation::Process,
            Duration::from_millis(600),
        );
        let o = run(&r, &req).await;
        assert_eq!(o.status, want, "hang={hang}: {o:?}");
        assert_eq!(count(&d, Op::WaitForProcessExit), 0);
        assert!(count(&d, Op::GetProcessProperties) >= 1);
        if hang {
            assert_eq!(o.message, "timed out after 600 ms");
        } else {
            assert_eq!(o.log_tail, "ok\r\n");
        }
        assert_clean(&d, &req);
    }
}
