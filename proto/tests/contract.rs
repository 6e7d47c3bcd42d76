//! The proto is the contract with stubs in every language. These checks keep it so:
//! - every message, field, enum value and RPC in the compiled descriptor carries a comment;
//! - enums start with an `…_UNSPECIFIED` zero;
//! - no field number, enum number or RPC signature changes meaning: `proto/contract.lock`
//!   records each one, a change or reuse fails, and a new one must be added to the lock
//!   (run with `CARPOOL_UPDATE_CONTRACT=1` to append the new entries, then review the diff).
//!   A removed field must have its number `reserved`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a failed expectation is a failed test

use std::collections::BTreeMap;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

const LOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contract.lock");

fn carpool_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(carpool_proto::FILE_DESCRIPTOR_SET).expect("descriptor decodes");
    set.file
        .into_iter()
        .find(|f| f.package() == "carpool.v1")
        .expect("carpool.v1 in the descriptor set")
}

/// Every numbered element as `key -> meaning`, e.g. `field carpool.v1.Payload#1 -> text string`.
fn entries(file: &FileDescriptorProto) -> BTreeMap<String, String> {
    fn message(prefix: &str, m: &DescriptorProto, out: &mut BTreeMap<String, String>) {
        let name = format!("{prefix}.{}", m.name());
        for f in &m.field {
            let ty = if f.type_name().is_empty() {
                format!("{:?}", f.r#type()).to_lowercase()
            } else {
                f.type_name().trim_start_matches('.').to_owned()
            };
            let label = if f.label() == prost_types::field_descriptor_proto::Label::Repeated {
                "repeated "
            } else {
                ""
            };
            out.insert(
                format!("field {name}#{}", f.number()),
                format!("{} {label}{ty}", f.name()),
            );
        }
        for nested in &m.nested_type {
            message(&name, nested, out);
        }
        for e in &m.enum_type {
            for v in &e.value {
                out.insert(
                    format!("enum {name}.{}#{}", e.name(), v.number()),
                    v.name().to_owned(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    let package = file.package();
    for m in &file.message_type {
        message(package, m, &mut out);
    }
    for e in &file.enum_type {
        for v in &e.value {
            out.insert(
                format!("enum {package}.{}#{}", e.name(), v.number()),
                v.name().to_owned(),
            );
        }
    }
    for s in &file.service {
        for m in &s.method {
            let stream = |b: bool| if b { "stream " } else { "" };
            out.insert(
                format!("rpc {package}.{}/{}", s.name(), m.name()),
                format!(
                    "({}{}) -> ({}{})",
                    stream(m.client_streaming()),
                    m.input_type().trim_start_matches('.'),
                    stream(m.server_streaming()),
                    m.output_type().trim_start_matches('.')
                ),
            );
        }
    }
    out
}

fn read_lock() -> BTreeMap<String, String> {
    std::fs::read_to_string(LOCK)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" -> ").map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn reserved(file: &FileDescriptorProto, key: &str) -> bool {
    // key: "field carpool.v1.Msg#N" (top-level messages only need this today)
    let Some(rest) = key.strip_prefix("field carpool.v1.") else {
        return false;
    };
    let Some((name, number)) = rest.split_once('#') else {
        return false;
    };
    let number: i32 = number.parse().unwrap_or(-1);
    file.message_type
        .iter()
        .filter(|m| m.name() == name)
        .flat_map(|m| &m.reserved_range)
        .any(|r| r.start() <= number && number < r.end())
}

#[test]
fn no_number_changes_meaning_and_every_new_one_is_locked() {
    let file = carpool_file();
    let now = entries(&file);
    let lock = read_lock();
    let mut problems = Vec::new();
    for (key, meaning) in &lock {
        match now.get(key) {
            Some(m) if m == meaning => {}
            Some(m) => problems.push(format!(
                "{key} was `{meaning}`, is now `{m}`: numbers never change meaning"
            )),
            None if key.starts_with("field ") && !reserved(&file, key) => problems.push(format!(
                "{key} (`{meaning}`) was removed without reserving its number"
            )),
            None if key.starts_with("rpc ") => {
                problems.push(format!("{key} was removed: stubs still call it"))
            }
            None => {}
        }
    }
    let new: Vec<String> = now
        .iter()
        .filter(|(k, _)| !lock.contains_key(*k))
        .map(|(k, v)| format!("{k} -> {v}"))
        .collect();
    if !new.is_empty() {
        if std::env::var_os("CARPOOL_UPDATE_CONTRACT").is_some() {
            let mut text = std::fs::read_to_string(LOCK).unwrap_or_else(|_| {
                "# Every field, enum value and RPC of carpool.proto, with its meaning. Generated by\n# `CARPOOL_UPDATE_CONTRACT=1 cargo test -p carpool-proto`; entries are only ever added.\n".to_owned()
            });
            for line in &new {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(LOCK, text).expect("write contract.lock");
        } else {
            problems.push(format!(
                "not in proto/contract.lock yet (add with CARPOOL_UPDATE_CONTRACT=1 cargo test -p carpool-proto):\n  {}",
                new.join("\n  ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_message_field_enum_and_rpc_is_commented() {
    let file = carpool_file();
    let info = file.source_code_info.clone().expect("source info is compiled in");
    let commented: std::collections::HashSet<Vec<i32>> = info
        .location
        .iter()
        .filter(|l| !l.leading_comments().trim().is_empty())
        .map(|l| l.path.clone())
        .collect();
    let mut missing = Vec::new();
    let mut check = |path: Vec<i32>, what: String| {
        if !commented.contains(&path) {
            missing.push(what);
        }
    };
    // Paths follow descriptor.proto's field numbers: message_type 4, field 2, nested 3,
    // enum_type 5 (4 inside a message), value 2, oneof_decl 8, service 6, method 2.
    fn walk(m: &DescriptorProto, path: Vec<i32>, name: &str, check: &mut dyn FnMut(Vec<i32>, String)) {
        check(path.clone(), format!("message {name}"));
        for (i, f) in m.field.iter().enumerate() {
            check(
                [path.clone(), vec![2, i as i32]].concat(),
                format!("field {name}.{}", f.name()),
            );
        }
        for (i, o) in m.oneof_decl.iter().enumerate() {
            check(
                [path.clone(), vec![8, i as i32]].concat(),
                format!("oneof {name}.{}", o.name()),
            );
        }
        for (i, n) in m.nested_type.iter().enumerate() {
            walk(
                n,
                [path.clone(), vec![3, i as i32]].concat(),
                &format!("{name}.{}", n.name()),
                check,
            );
        }
    }
    for (i, m) in file.message_type.iter().enumerate() {
        walk(m, vec![4, i as i32], m.name(), &mut check);
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        check(vec![5, i as i32], format!("enum {}", e.name()));
        for (j, v) in e.value.iter().enumerate() {
            check(vec![5, i as i32, 2, j as i32], format!("enum value {}", v.name()));
        }
    }
    for (i, s) in file.service.iter().enumerate() {
        check(vec![6, i as i32], format!("service {}", s.name()));
        for (j, m) in s.method.iter().enumerate() {
            check(
                vec![6, i as i32, 2, j as i32],
                format!("rpc {}/{}", s.name(), m.name()),
            );
        }
    }
    assert!(missing.is_empty(), "without a comment: {missing:?}");
}

#[test]
fn enums_start_with_an_unspecified_zero() {
    for e in &carpool_file().enum_type {
        let zero = e
            .value
            .iter()
            .find(|v| v.number() == 0)
            .map(|v| v.name().to_owned())
            .unwrap_or_default();
        assert!(
            zero.ends_with("_UNSPECIFIED"),
            "enum {} has zero value {zero:?}",
            e.name()
        );
    }
}
