//! Token scopes (`auth/src/scope.rs`: `repository:team/app:pull,push`, OAuth2's space-separated
//! lists, actions, `covers`, the `access` claim): what parses renders back and re-parses to the
//! same value, a slow reference parser agrees, and action coverage follows its stated rules.
//!
//! The module is compiled here from its source file: the auth crate depends on berth-storage
//! (sqlx, aws-sdk-s3), which would take far too long to build with instrumentation, and
//! `scope.rs` uses nothing but serde. It is the same code the auth crate builds.
#![no_main]

#[allow(dead_code)]
#[path = "../../auth/src/scope.rs"]
mod scope;

use libfuzzer_sys::fuzz_target;
use scope::{covers, Access, Action, Scope};
use std::collections::BTreeSet;

const ALL: [Action; 5] = [
    Action::Pull,
    Action::Push,
    Action::Delete,
    Action::Verify,
    Action::All,
];

/// `type:name:actions` the slow way: of every pair of `:` positions, the first and the last;
/// type and name non-empty; actions are the comma-separated, trimmed, non-empty pieces.
fn reference_scope(s: &str) -> Option<(String, String, Vec<String>)> {
    let colons: Vec<usize> = s
        .char_indices()
        .filter(|(_, c)| *c == ':')
        .map(|(i, _)| i)
        .collect();
    let mut best: Option<(usize, usize)> = None;
    for (a, &i) in colons.iter().enumerate() {
        for &j in &colons[a + 1..] {
            if best.is_none_or(|(bi, bj)| i < bi || (i == bi && j > bj)) {
                best = Some((i, j));
            }
        }
    }
    let (i, j) = best?;
    let (kind, name) = (&s[..i], &s[i + 1..j]);
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let mut actions = Vec::new();
    let mut cur = String::new();
    for c in s[j + 1..].chars().chain(std::iter::once(',')) {
        if c == ',' {
            let t = cur.trim();
            if !t.is_empty() {
                actions.push(t.to_owned());
            }
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    Some((kind.to_owned(), name.to_owned(), actions))
}

fn reference_action(s: &str) -> Option<Action> {
    let t = s.trim();
    ALL.into_iter()
        .find(|a| a.as_str() == t)
        .or((t == "admin").then_some(Action::All))
}

fn reference_covers(granted: &BTreeSet<Action>, needed: Action) -> bool {
    granted.iter().any(|g| {
        *g == Action::All || *g == needed || (*g == Action::Verify && needed == Action::Pull)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let got = Scope::parse(s);
    assert_eq!(
        got.clone().map(|g| (g.kind, g.name, g.actions)),
        reference_scope(s),
        "{s:?}"
    );
    if let Some(sc) = &got {
        let rendered = sc.to_string();
        assert_eq!(Scope::parse(&rendered).as_ref(), Some(sc), "{rendered:?}");
        assert!(
            rendered.len() <= s.len(),
            "{s:?} renders longer: {rendered:?}"
        );
    }

    // OAuth2 lists: each space-separated piece on its own.
    let (a, b) = s.split_once('\n').unwrap_or((s, ""));
    let all = Scope::parse_all([a, b]);
    let expected: Vec<Scope> = [a, b]
        .iter()
        .flat_map(|p| p.split(' '))
        .filter_map(Scope::parse)
        .collect();
    assert_eq!(all, expected);

    // Actions: the table, the list, coverage.
    for piece in s.split(',') {
        assert_eq!(Action::parse(piece), reference_action(piece), "{piece:?}");
    }
    let list = Action::parse_list(s);
    let expected: BTreeSet<Action> = s.split(',').filter_map(reference_action).collect();
    assert_eq!(list, expected);
    for needed in ALL {
        let c = covers(&list, needed);
        assert_eq!(c, reference_covers(&list, needed), "{list:?} {needed:?}");
        for extra in ALL {
            let mut more = list.clone();
            more.insert(extra);
            assert!(!c || covers(&more, needed), "more actions never cover less");
        }
    }

    // The access claim: a serde round trip, and its action set is its parsed actions.
    if let Some(sc) = got {
        let access = Access {
            kind: sc.kind,
            name: sc.name,
            actions: sc.actions,
        };
        let json = serde_json::to_string(&access).expect("serialises");
        let back: Access = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, access);
        let set: BTreeSet<Action> = access
            .actions
            .iter()
            .filter_map(|a| reference_action(a))
            .collect();
        assert_eq!(access.action_set(), set);
        for a in &set {
            let j = serde_json::to_string(a).expect("serialises");
            assert_eq!(j, format!("\"{}\"", a.as_str()));
            assert_eq!(serde_json::from_str::<Action>(&j).expect("decodes"), *a);
        }
    }
});
