//! `openapi.yaml` and the code agree: the same routes, request examples that
//! parse, and schemas with the model's fields, required fields and enum
//! values.

use husk_api::model::*;
use husk_api::{parse, ROUTES};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

const METHODS: &[&str] = &[
    "get", "put", "patch", "post", "delete", "head", "options", "trace",
];

fn doc() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    serde_norway::from_str(&text).expect("openapi.yaml is not valid YAML")
}

/// Follows a `$ref` within the document.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let pointer = r.strip_prefix('#').expect("only local refs");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {r}")),
            )
        }
        None => v,
    }
}

/// Every documented (METHOD, path template) with its operation object.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (key, op) in item.as_object().unwrap() {
            if METHODS.contains(&key.as_str()) {
                ops.push((key.to_uppercase(), path.clone(), op));
            } else {
                assert!(
                    ["parameters", "summary", "description"].contains(&key.as_str()),
                    "{path}: {key}"
                );
            }
        }
    }
    ops
}

/// A concrete path: each `{param}` replaced by the parameter's example.
fn concrete(doc: &Value, path: &str) -> String {
    let item = &doc["paths"][path];
    let mut out = path.to_owned();
    for p in item["parameters"].as_array().into_iter().flatten() {
        let p = resolve(doc, p);
        let name = p["name"].as_str().unwrap();
        let example = p["example"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no example for {name}"));
        out = out.replace(&format!("{{{name}}}"), example);
    }
    assert!(!out.contains('{'), "{path}: undocumented parameter");
    out
}

#[test]
fn the_document_is_openapi_3() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string());
    // Every $ref resolves.
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if m.contains_key("$ref") {
                    resolve(doc, v);
                }
                m.values().for_each(|c| walk(doc, c));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(doc, c)),
            _ => {}
        }
    }
    walk(&doc, &doc);
}

#[test]
fn documented_routes_are_served() {
    let doc = doc();
    for (method, path, _) in operations(&doc) {
        let uri = concrete(&doc, &path);
        if let Err(e) = parse(&method, &uri, b"") {
            assert!(
                e.status() != 404 && e.status() != 405,
                "{method} {path} is documented but answers {e:?}"
            );
        }
    }
}

#[test]
fn served_routes_are_documented() {
    let doc = doc();
    let documented: BTreeSet<(String, String)> = operations(&doc)
        .into_iter()
        .map(|(m, p, _)| (m, p.to_owned()))
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, served);
}

#[test]
fn every_operation_answers_and_request_examples_parse() {
    let doc = doc();
    for (method, path, op) in operations(&doc) {
        let responses = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}: no responses"));
        assert!(
            responses.contains_key("default"),
            "{method} {path}: errors undocumented"
        );
        let success = if method == "GET" { "200" } else { "204" };
        assert!(
            responses.contains_key(success),
            "{method} {path}: no {success}"
        );
        let body = &op["requestBody"];
        if method == "GET" {
            assert!(body.is_null(), "{method} {path} takes no body");
            continue;
        }
        assert_eq!(body["required"], true, "{method} {path}");
        let example = &body["content"]["application/json"]["example"];
        assert!(!example.is_null(), "{method} {path}: no request example");
        let uri = concrete(&doc, &path);
        let bytes = serde_json::to_vec(example).unwrap();
        if let Err(e) = parse(&method, &uri, &bytes) {
            panic!("{method} {uri} example {example} is refused: {e:?}");
        }
    }
}

/// The error body, for its schema.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorBody {
    fault_message: String,
}

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    Ok(serde_json::to_value(t).unwrap())
}

/// Deserializes `v` as the model type of schema `name`, and serializes it
/// back.
fn as_model(name: &str, v: &Value) -> Result<Value, String> {
    match name {
        "Error" => round_trip::<ErrorBody>(v),
        "InstanceInfo" => round_trip::<InstanceInfo>(v),
        "VersionInfo" => round_trip::<VersionInfo>(v),
        "BootSource" => round_trip::<BootSource>(v),
        "MachineConfig" => round_trip::<MachineConfig>(v),
        "MachineConfigPatch" => round_trip::<MachineConfigPatch>(v),
        "CpuTemplate" => round_trip::<CpuTemplate>(v),
        "TokenBucket" => round_trip::<TokenBucket>(v),
        "RateLimiter" => round_trip::<RateLimiter>(v),
        "Drive" => round_trip::<Drive>(v),
        "DrivePatch" => round_trip::<DrivePatch>(v),
        "NetworkInterface" => round_trip::<NetworkInterface>(v),
        "NetworkInterfacePatch" => round_trip::<NetworkInterfacePatch>(v),
        "Vsock" => round_trip::<Vsock>(v),
        "SharedFs" => round_trip::<SharedFs>(v),
        "Logger" => round_trip::<Logger>(v),
        "Metrics" => round_trip::<Metrics>(v),
        "Action" => round_trip::<Action>(v),
        "Vm" => round_trip::<Vm>(v),
        "SnapshotCreate" => round_trip::<SnapshotCreate>(v),
        "SnapshotLoad" => round_trip::<SnapshotLoad>(v),
        "MemBackend" => round_trip::<MemBackend>(v),
        "VmConfig" => round_trip::<VmConfigFile>(v),
        other => panic!("schema {other} has no model type in this test"),
    }
}

fn with(example: &Map<String, Value>, key: &str, value: Option<Value>) -> Value {
    let mut m = example.clone();
    match value {
        Some(v) => m.insert(key.to_owned(), v),
        None => m.remove(key),
    };
    Value::Object(m)
}

#[test]
fn schemas_match_the_model() {
    let doc = doc();
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let example = &schema["example"];
        if let Some(values) = schema["enum"].as_array() {
            for v in values {
                as_model(name, v).unwrap_or_else(|e| panic!("{name}: {v} refused: {e}"));
            }
            assert!(as_model(name, &Value::from("Bogus")).is_err(), "{name}");
            continue;
        }
        let properties = schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no properties"));
        let example = example
            .as_object()
            .unwrap_or_else(|| panic!("{name}: no example object"));
        let documented: BTreeSet<&String> = properties.keys().collect();
        // The example shows every property, and the model takes it and
        // gives every one back: documented fields == model fields.
        assert_eq!(
            example.keys().collect::<BTreeSet<_>>(),
            documented,
            "{name}: example"
        );
        let back = as_model(name, &Value::Object(example.clone()))
            .unwrap_or_else(|e| panic!("{name}: example refused: {e}"));
        assert_eq!(
            back.as_object().unwrap().keys().collect::<BTreeSet<_>>(),
            documented,
            "{name}: model"
        );
        // An undocumented field is refused.
        assert!(
            as_model(name, &with(example, "undocumented", Some(Value::from(1)))).is_err(),
            "{name}"
        );
        // Required means required; the rest may be left out.
        let required: BTreeSet<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap())
            .collect();
        for key in properties.keys() {
            let result = as_model(name, &with(example, key, None));
            if required.contains(key.as_str()) {
                assert!(
                    result.is_err(),
                    "{name}: {key} is documented as required but may be left out"
                );
            } else {
                result
                    .unwrap_or_else(|e| panic!("{name}: {key} is documented as optional but: {e}"));
            }
        }
        // Every documented enum value is taken.
        for (key, property) in properties {
            let property = resolve(&doc, property);
            for v in property["enum"].as_array().into_iter().flatten() {
                as_model(name, &with(example, key, Some(v.clone())))
                    .unwrap_or_else(|e| panic!("{name}.{key} = {v} refused: {e}"));
            }
        }
    }
}
