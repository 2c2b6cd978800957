//! The platform resolver: for any host and index, the answer is internally consistent, and the
//! chosen entry is one the host can run under the stated rules (or the mismatch is flagged).
#![no_main]

use arbitrary::Arbitrary;
use berth_oci::platform::{
    resolve, runnable, Candidate, ClientRule, Host, Isolation, Platform, Runnability,
    WindowsVersion,
};
use libfuzzer_sys::fuzz_target;

const OS: &[&str] = &["windows", "linux", "Windows", "", "freebsd"];
const ARCH: &[&str] = &["amd64", "arm64", "x86_64", "aarch64", "arm", "386", ""];
const VARIANT: &[&str] = &["", "v8", "v7", "v6", "v5", "v1", "v2", "v3", "v9.2"];
const VERSION: &[&str] = &[
    "",
    "10.0.14393.1000",
    "10.0.14393.999",
    "10.0.17763.5458",
    "10.0.17763",
    "10.0.20348.2340",
    "10.0.20348.999",
    "10.0.22621.1",
    "10.0.25398.1",
    "10.0.26100.1742",
    "10.0.26200.1",
    "6.3.9600.1",
    "10.0",
    "10.0.x.1",
];
const FEATURES: &[&str] = &["win32k", "sse4"];

#[derive(Arbitrary, Debug)]
struct P {
    os: u8,
    arch: u8,
    variant: u8,
    version: u8,
    free_version: Option<String>,
    features: u8,
}

impl P {
    fn platform(&self) -> Platform {
        let pick = |t: &[&str], i: u8| t[i as usize % t.len()].to_owned();
        let version = match &self.free_version {
            Some(v) if self.version.is_multiple_of(5) => v.clone(),
            _ => pick(VERSION, self.version),
        };
        Platform {
            os: pick(OS, self.os),
            architecture: pick(ARCH, self.arch),
            variant: Some(pick(VARIANT, self.variant)).filter(|v| !v.is_empty()),
            os_version: Some(version).filter(|v| !v.is_empty()),
            os_features: FEATURES
                .iter()
                .enumerate()
                .filter(|(i, _)| self.features & (1 << i) != 0)
                .map(|(_, f)| (*f).to_owned())
                .collect(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    host: P,
    hyperv: bool,
    moby: bool,
    entries: Vec<P>,
}

fuzz_target!(|input: Input| {
    let host = Host {
        platform: input.host.platform(),
        isolation: if input.hyperv {
            Isolation::HyperV
        } else {
            Isolation::Process
        },
        rule: if input.moby {
            ClientRule::Moby
        } else {
            ClientRule::Containerd
        },
    };
    let candidates: Vec<Candidate> = input
        .entries
        .iter()
        .take(16)
        .enumerate()
        .map(|(i, p)| Candidate {
            index: i,
            digest: format!("sha256:{i:064x}"),
            platform: p.platform(),
        })
        .collect();
    let r = resolve(&candidates, &host);
    assert_eq!(r, resolve(&candidates, &host), "deterministic");
    assert_eq!(r.verdicts.len(), candidates.len());

    // Ranks are 0..k over the kept entries; the chosen entry is rank 0.
    let mut ranks: Vec<usize> = r.verdicts.iter().filter_map(|v| v.rank).collect();
    ranks.sort_unstable();
    let kept = r.verdicts.iter().filter(|v| v.kept).count();
    assert_eq!(ranks, (0..kept).collect::<Vec<_>>());
    assert!(r.verdicts.iter().all(|v| v.kept == v.rank.is_some()));
    match &r.chosen {
        None => assert_eq!(kept, 0),
        Some(c) => {
            let v = &r.verdicts[c.index];
            assert!(v.kept && v.rank == Some(0));
            assert_eq!(&candidates[c.index], c);
        }
    }
    for i in &r.missed_runnable {
        assert!(!r.verdicts[*i].kept);
        assert_eq!(
            runnable(&host, &candidates[*i].platform).verdict,
            Runnability::Runnable
        );
    }

    let Some(chosen) = &r.chosen else { return };
    let compat = r
        .chosen_compat
        .clone()
        .expect("a chosen entry has a verdict");
    assert_eq!(compat, runnable(&host, &chosen.platform));
    let hp = host.platform.normalized();
    let windows_host = hp.os == "windows";
    // A process-isolated host pulling what it cannot run is always flagged.
    assert_eq!(
        r.process_mismatch,
        windows_host
            && host.isolation == Isolation::Process
            && compat.verdict == Runnability::NotRunnable
    );
    if !windows_host {
        // Linux hosts: platforms.Only never picks what the host cannot run.
        assert_eq!(
            compat.verdict,
            Runnability::Runnable,
            "{chosen:?} on {hp:?}"
        );
        return;
    }
    let (Some(hv), Ok(iv)) = (
        hp.windows_version(),
        chosen.platform.os_version_str().parse::<WindowsVersion>(),
    ) else {
        return;
    };
    match host.rule {
        // containerd's window admits only builds a process-isolated host runs (from 1809 on).
        ClientRule::Containerd if iv.build >= 17763 => {
            let process = Host {
                isolation: Isolation::Process,
                ..host.clone()
            };
            assert_eq!(
                runnable(&process, &chosen.platform).verdict,
                Runnability::Runnable,
                "{chosen:?} on {hp:?}"
            );
        }
        // moby never pulls a build newer than the host's.
        ClientRule::Moby => assert!(iv.build <= hv.build, "{chosen:?} on {hp:?}"),
        _ => {}
    }
});
