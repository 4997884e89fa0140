use super::*;
use crate::types::FieldValue;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn def(vhost: &str, name: &str, pattern: &str, apply_to: &str, priority: i64, definition: Value) -> PolicyDef {
    PolicyDef {
        vhost: vhost.into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to: apply_to.into(),
        definition: definition.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        priority: priority.into(),
    }
}

fn set(kind: PolicyKind, p: PolicyDef) -> PolicyChange {
    PolicyChange::Set { kind, policy: p }
}

fn request<'a>(pattern: &'a Value, definition: &'a Value) -> PolicyRequest<'a> {
    PolicyRequest { pattern, definition: definition.as_object().unwrap(), priority: None, apply_to: None }
}

fn invalid(
    kind: PolicyKind,
    pattern: Value,
    definition: Value,
    priority: Option<Value>,
    apply_to: Option<Value>,
) -> String {
    let r = PolicyRequest {
        pattern: &pattern,
        definition: definition.as_object().unwrap(),
        priority: priority.as_ref(),
        apply_to: apply_to.as_ref(),
    };
    validate(kind, "/", "p", &r).unwrap_err()
}

#[test]
fn validation_texts_are_rabbitmqs_in_its_order() {
    assert_eq!(
        invalid(PolicyKind::Policy, json!("^q"), json!({"max-length": "ten"}), Some(json!("x")), Some(json!("bogus"))),
        "Validation failed\n\n<<\"ten\">> is not a valid maximum length\napply-to 'bogus' unrecognised; should be \
         'queues', 'exchanges' or 'all'\npriority should be a number, actually was <<\"x\">>\n"
    );
    assert_eq!(
        invalid(PolicyKind::Policy, json!("^q"), json!({}), None, None),
        "Validation failed\n\nno policy provided\n"
    );
    assert_eq!(
        invalid(PolicyKind::Policy, json!("^q"), json!({"bananas": 1, "zebra": "x"}), None, None),
        "Validation failed\n\n[{<<\"bananas\">>,1},{<<\"zebra\">>,<<\"x\">>}] are not recognised policy settings\n"
    );
    // An operator policy takes only the limits.
    assert!(invalid(PolicyKind::OperatorPolicy, json!(".*"), json!({"dead-letter-exchange": "dlx"}), None, None)
        .contains("are not recognised policy settings"));
    assert_eq!(
        invalid(PolicyKind::Policy, json!("(q"), json!({"max-length": 1}), None, None),
        "Validation failed\n\npattern should be regular expression but is invalid: {\"missing )\",2}\n"
    );
    assert_eq!(
        invalid(PolicyKind::Policy, json!(5), json!({"expires": 0}), None, None),
        "Validation failed\n\n0 is not a valid queue expiry\npattern should be a binary but was 5\n"
    );
    assert!(invalid(PolicyKind::Policy, json!("."), json!({"ha-params": 2}), None, None)
        .contains("ha-mode must be specified"));
    assert!(invalid(PolicyKind::Policy, json!("."), json!({"ha-mode": "exactly"}), None, None)
        .contains("ha-mode=\"exactly\" takes an integer, none given"));
}

#[test]
fn valid_policies_keep_their_fields_and_defaults() {
    let p =
        validate(PolicyKind::Policy, "v", "p", &request(&json!("^(?!amq\\.).*"), &json!({"ha-mode": "all"}))).unwrap();
    assert_eq!((p.apply_to.as_str(), p.priority.as_i64()), ("all", Some(0)));
    let p = validate(
        PolicyKind::Policy,
        "v",
        "p",
        &PolicyRequest {
            pattern: &json!("^q"),
            definition: json!({"max-age": "7D", "queue-mode": "lazy"}).as_object().unwrap(),
            priority: Some(&json!(2.5)),
            apply_to: Some(&json!("queues")),
        },
    )
    .unwrap();
    assert_eq!(p.to_json()["priority"], json!(2.5));
    assert_eq!(p.to_json()["apply-to"], json!("queues"));
}

#[test]
fn the_highest_priority_applies_and_keys_a_queue_type_lacks_rule_a_policy_out() {
    let mut s = PolicyState::default();
    s.apply(&set(PolicyKind::Policy, def("/", "low", "^q", "all", 0, json!({"max-length": 5}))));
    s.apply(&set(PolicyKind::Policy, def("/", "high", "^q1", "queues", 9, json!({"delivery-limit": 2}))));
    s.apply(&set(PolicyKind::Policy, def("/", "ex", "^q", "exchanges", 20, json!({"alternate-exchange": "ae"}))));
    s.apply(&set(PolicyKind::OperatorPolicy, def("/", "op", ".*", "queues", 0, json!({"max-length": 3}))));
    s.apply(&set(PolicyKind::Policy, def("other", "elsewhere", ".*", "all", 99, json!({"max-length": 1}))));
    let c = s.compile("/");
    // delivery-limit is a quorum queue's: not for a classic queue, which gets the next one.
    let a = c.matching("q1", Target::ClassicQueue);
    assert_eq!((a.policy_name(), a.operator_name()), (Some("low"), Some("op")));
    assert_eq!(a.effective_definition(), [("max-length".to_string(), json!(3))].into_iter().collect());
    assert_eq!(c.matching("q1", Target::QuorumQueue).policy_name(), Some("high"));
    assert_eq!(c.matching("q1", Target::Exchange).policy_name(), Some("ex"));
    assert!(c.matching("x", Target::ClassicQueue).policy.is_none());
    // Matched anywhere in the name, as PCRE's re:run.
    s.apply(&set(PolicyKind::Policy, def("/", "mid", "orders", "queues", 1, json!({"message-ttl": 10}))));
    assert_eq!(s.compile("/").matching("big-orders-eu", Target::ClassicQueue).policy_name(), Some("mid"));
    // Cleared: gone.
    s.apply(&PolicyChange::Clear { kind: PolicyKind::Policy, vhost: "/".into(), name: "low".into() });
    assert_eq!(s.compile("/").matching("q2", Target::ClassicQueue).policy_name(), None);
    s.forget_vhost("/");
    assert!(s.compile("/").is_empty());
    assert_eq!(s.list(PolicyKind::Policy, None).count(), 1);
}

#[test]
fn a_policy_resolves_against_the_queues_own_arguments_as_rabbitmq_3_10() {
    let mut table = FieldTable::new();
    table.insert("x-max-length", FieldValue::I32(10));
    table.insert("x-message-ttl", FieldValue::I32(1000));
    table.insert("x-dead-letter-exchange", FieldValue::string("mine"));
    table.insert("x-overflow", FieldValue::string("reject-publish"));
    let declared = QueueArguments::parse(&table, "q", "/").unwrap();
    let policy = def(
        "/",
        "p",
        ".*",
        "all",
        0,
        json!({"max-length": 20, "message-ttl": 500, "dead-letter-exchange": "theirs",
               "dead-letter-routing-key": "k", "overflow": "drop-head", "expires": 9000}),
    );
    let applied = Applied { policy: Some(Arc::new(policy)), operator: None };
    let a = applied.resolve_queue(&declared, &table);
    assert_eq!(a.max_length, Some(10), "the lower of the two");
    assert_eq!(a.message_ttl, Some(500), "the lower of the two");
    assert_eq!(a.dead_letter_exchange.as_deref(), Some("mine"), "the argument wins");
    assert_eq!(a.dead_letter_routing_key.as_deref(), Some("k"), "the policy fills what the arguments lack");
    assert_eq!(a.overflow, Overflow::RejectPublish, "the argument wins");
    assert_eq!(a.expires, Some(9000));
    // A quorum queue takes the policy's overflow and expires.
    let mut qtable = table.clone();
    qtable.insert("x-queue-type", FieldValue::string("quorum"));
    qtable.insert("x-expires", FieldValue::I32(100));
    let qdeclared = QueueArguments::parse(&qtable, "q", "/").unwrap();
    let a = applied.resolve_queue(&qdeclared, &qtable);
    assert_eq!((a.overflow, a.expires), (Overflow::DropHead, Some(9000)));
    // No policy: the arguments as declared.
    assert_eq!(Applied::default().resolve_queue(&declared, &table), declared);
    // A stream takes the policy's retention over its own arguments.
    let mut stable = FieldTable::new();
    stable.insert("x-queue-type", FieldValue::string("stream"));
    stable.insert("x-max-length-bytes", FieldValue::I64(1_000_000));
    stable.insert("x-max-age", FieldValue::string("7D"));
    let sdeclared = QueueArguments::parse(&stable, "s", "/").unwrap();
    let retention = Applied {
        policy: Some(Arc::new(def("/", "r", ".*", "queues", 0, json!({"max-length-bytes": 5000, "max-age": "1h"})))),
        operator: None,
    };
    let a = retention.resolve_queue(&sdeclared, &stable);
    assert_eq!((a.max_length_bytes, a.max_age), (Some(5000), Some(3_600_000)));
    // An exchange's argument wins over the policy's alternate exchange.
    let ae = Applied {
        policy: Some(Arc::new(def("/", "p", ".*", "all", 0, json!({"alternate-exchange": "pol"})))),
        operator: None,
    };
    assert_eq!(ae.alternate_exchange(&FieldTable::new()).as_deref(), Some("pol"));
    let mut own = FieldTable::new();
    own.insert("alternate-exchange", FieldValue::string("own"));
    assert_eq!(ae.alternate_exchange(&own).as_deref(), Some("own"));
}

/// The obvious model: every policy in a list, the matching one found by sorting them all.
fn model_match(
    list: &[(PolicyKind, PolicyDef)],
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    t: Target,
) -> Option<String> {
    let mut found: Vec<&PolicyDef> = list
        .iter()
        .filter(|(k, p)| *k == kind && p.vhost == vhost)
        .map(|(_, p)| p)
        .filter(|p| match p.apply_to.as_str() {
            "queues" => t != Target::Exchange,
            "exchanges" => t == Target::Exchange,
            _ => true,
        })
        .filter(|p| p.definition.keys().all(|k| t.supports(k)))
        .filter(|p| {
            thread_local! {
                static CACHE: std::cell::RefCell<std::collections::HashMap<String, fancy_regex::Regex>> =
                    Default::default();
            }
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                let r = c.entry(p.pattern.clone()).or_insert_with(|| fancy_regex::Regex::new(&p.pattern).unwrap());
                r.is_match(name).unwrap()
            })
        })
        .collect();
    found.sort_by(|a, b| b.priority().total_cmp(&a.priority()).then(a.name.cmp(&b.name)));
    found.first().map(|p| p.name.clone())
}

#[test]
fn random_changes_match_as_the_list_model_does_and_survive_a_snapshot() {
    let patterns = ["^q", "1$", ".*", "^(?!amq\\.).*", "x|q2", "^$"];
    let keys = [
        json!({"max-length": 3}),
        json!({"delivery-limit": 1}),
        json!({"queue-mode": "lazy"}),
        json!({"max-age": "1h"}),
    ];
    let names = ["q1", "q2", "x1", "amq.q", ""];
    let targets = [Target::ClassicQueue, Target::QuorumQueue, Target::StreamQueue, Target::Exchange];
    for seed in 0..100u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut state = PolicyState::default();
        let mut model: Vec<(PolicyKind, PolicyDef)> = Vec::new();
        for step in 0..60 {
            let kind = if rng.gen_bool(0.7) { PolicyKind::Policy } else { PolicyKind::OperatorPolicy };
            let vhost = ["/", "v"][rng.gen_range(0..2)];
            let name = format!("p{}", rng.gen_range(0..5));
            let change = if rng.gen_bool(0.75) {
                let p = def(
                    vhost,
                    &name,
                    patterns[rng.gen_range(0..patterns.len())],
                    ["all", "queues", "exchanges"][rng.gen_range(0..3)],
                    rng.gen_range(-2..3),
                    keys[rng.gen_range(0..keys.len())].clone(),
                );
                model.retain(|(k, m)| !(*k == kind && m.vhost == vhost && m.name == name));
                model.push((kind, p.clone()));
                set(kind, p)
            } else {
                model.retain(|(k, m)| !(*k == kind && m.vhost == vhost && m.name == name));
                PolicyChange::Clear { kind, vhost: vhost.into(), name }
            };
            state.apply(&change);
            if step % 20 == 19 {
                // A snapshot (and a journal line) read back is the same state.
                let back = PolicyState::from_list(
                    &serde_json::from_str::<Vec<StoredPolicy>>(&serde_json::to_string(&state.to_list()).unwrap())
                        .unwrap(),
                );
                assert_eq!(back, state, "seed {seed} step {step}");
                let line = serde_json::to_string(&change).unwrap();
                assert_eq!(serde_json::from_str::<PolicyChange>(&line).unwrap(), change);
            }
            for vhost in ["/", "v"] {
                let compiled = state.compile(vhost);
                for name in names {
                    for t in targets {
                        let got = compiled.matching(name, t);
                        for (kind, got) in
                            [(PolicyKind::Policy, got.policy_name()), (PolicyKind::OperatorPolicy, got.operator_name())]
                        {
                            assert_eq!(
                                got.map(str::to_string),
                                model_match(&model, kind, vhost, name, t),
                                "seed {seed} step {step}: {kind:?} for {name:?} as {t:?} in {vhost}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn operator_values_merge_by_the_lower_limit() {
    let applied = Applied {
        policy: Some(Arc::new(def(
            "/",
            "p",
            ".*",
            "all",
            0,
            json!({"max-length": 5, "message-ttl": 100, "overflow": "reject-publish"}),
        ))),
        operator: Some(Arc::new(def(
            "/",
            "o",
            ".*",
            "all",
            0,
            json!({"max-length": 9, "message-ttl": 50, "expires": 1000}),
        ))),
    };
    let eff = applied.effective_definition();
    assert_eq!(eff["max-length"], json!(5));
    assert_eq!(eff["message-ttl"], json!(50));
    assert_eq!(eff["expires"], json!(1000));
    assert_eq!(eff["overflow"], json!("reject-publish"));
}
